"""API tokens of the admin HTTP API: named, with a role, stored hashed.

The file (JSON, mode 0600) holds, per token, its name, role, creation time, a random
salt and ``sha256(salt + token)``, never the token itself: the plaintext is shown
once, by ``catalog-cdc admin token add``.  A token is 32 random bytes (256 bits, from
:mod:`secrets`), so a fast salted hash is enough; comparisons are constant-time.

The file is re-read when it changes (its modification time and size), so a revoked
token stops working at once, without restarting the server.  Writes are atomic
(temporary file, fsync, rename).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import threading
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pipeline.errors import ConfigurationError

__all__ = ["ROLES", "Role", "Token", "TokenStore"]

Role = Literal["admin", "reader"]
ROLES: tuple[Role, ...] = ("admin", "reader")
PREFIX = "ccdc_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


@dataclass(frozen=True)
class Token:
    """A stored token (without its secret)."""

    name: str
    role: Role
    created_at: str
    salt: str
    sha256: str

    def matches(self, plaintext: str) -> bool:
        digest = _digest(self.salt, plaintext)
        return hmac.compare_digest(digest, self.sha256)


def _digest(salt: str, plaintext: str) -> str:
    return hashlib.sha256(
        bytes.fromhex(salt) + plaintext.encode("utf-8", "surrogatepass")
    ).hexdigest()


class TokenStore:
    """The token file; safe to share between threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._seen: tuple[int, int] | None = None
        self._tokens: dict[str, Token] = {}

    # -- reading ------------------------------------------------------------------------

    def _reload(self) -> dict[str, Token]:
        """The tokens, re-read when the file changed (callers hold the lock)."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._seen, self._tokens = None, {}
            return self._tokens
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._seen:
            return self._tokens
        try:
            raw: dict[str, Any] = json.loads(self.path.read_text(encoding="utf-8"))
            tokens = {t["name"]: Token(**t) for t in raw.get("tokens", [])}
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise ConfigurationError(
                f"token file {self.path} is unreadable ({exc}): fix or remove it, then "
                "add tokens with `catalog-cdc admin token add NAME --role admin|reader`"
            ) from exc
        for t in tokens.values():
            if t.role not in ROLES:
                raise ConfigurationError(
                    f"token file {self.path}: token {t.name!r} has role "
                    f"{t.role!r}, expected one of {', '.join(ROLES)}"
                )
        self._seen, self._tokens = stamp, tokens
        return tokens

    def list(self) -> list[Token]:
        with self._lock:
            return sorted(self._reload().values(), key=lambda t: t.name)

    def verify(self, plaintext: str) -> Token | None:
        """The token ``plaintext`` is, or None (unknown, revoked or malformed)."""
        if not plaintext.startswith(PREFIX) or len(plaintext) > 200:
            return None
        with self._lock:
            tokens = list(self._reload().values())
        found = None
        for t in tokens:  # no early exit: the time taken does not tell which one matched
            if t.matches(plaintext):
                found = t
        return found

    # -- writing ------------------------------------------------------------------------

    def add(self, name: str, role: str) -> str:
        """Store a new token; return its plaintext (shown once, never stored)."""
        if not _NAME.match(name):
            raise ConfigurationError(
                f"token name {name!r}: use 1-64 letters, digits, '_', '.', '@' or '-'"
            )
        if role not in ROLES:
            raise ConfigurationError(f"role {role!r}: expected one of {', '.join(ROLES)}")
        plaintext = PREFIX + secrets.token_urlsafe(32)
        salt = secrets.token_hex(16)
        with self._lock:
            tokens = dict(self._reload())
            if name in tokens:
                raise ConfigurationError(
                    f"a token named {name!r} exists: revoke it first "
                    f"(`catalog-cdc admin token revoke {name}`) or choose another name"
                )
            tokens[name] = Token(
                name=name,
                role=role,  # checked against ROLES above
                created_at=datetime.now(UTC).isoformat(timespec="seconds"),
                salt=salt,
                sha256=_digest(salt, plaintext),
            )
            self._write(tokens)
        return plaintext

    def revoke(self, name: str) -> None:
        with self._lock:
            tokens = dict(self._reload())
            if name not in tokens:
                known = ", ".join(sorted(tokens)) or "none"
                raise ConfigurationError(
                    f"no token named {name!r} in {self.path} (tokens: {known})"
                )
            del tokens[name]
            self._write(tokens)

    def _write(self, tokens: dict[str, Token]) -> None:
        """Atomically, readable by the owner only (callers hold the lock)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        body = json.dumps({"tokens": [asdict(t) for t in tokens.values()]}, indent=2)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(body + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        tmp.replace(self.path)
        self._seen = None
        self._reload()
