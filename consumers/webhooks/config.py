"""The subscribers file (TOML, read with :mod:`tomllib`) and duration options.

::

    [[subscribers]]
    name = "erp"                                   # letters, digits, - and _; unique
    url = "https://erp.example.com/webhooks/pixlpay"
    secret_env = "ERP_WEBHOOK_SECRET"              # or: secret = "..." (>= 32 chars)
    events = ["product.created", "product.updated", "product.deleted"]  # default: all
    timeout = 10                                   # seconds per request (default 10)

See ``docs/webhooks.example.toml``.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from consumers.webhooks.events import EVENT_TYPES
from pipeline.errors import ConfigurationError

__all__ = ["MIN_SECRET_LENGTH", "Subscriber", "load_subscribers", "parse_duration"]

MIN_SECRET_LENGTH: Final = 32
"""The ERP seed's "strong webhook secret (minimum 32 characters)"."""

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


@dataclass(frozen=True)
class Subscriber:
    name: str
    url: str
    secret: str
    events: frozenset[str] = frozenset(EVENT_TYPES)
    timeout: float = 10.0

    def __repr__(self) -> str:  # never print the secret
        return f"Subscriber(name={self.name!r}, url={self.url!r}, events={sorted(self.events)})"


def parse_duration(text: str, what: str) -> float:
    """``"24h"``, ``"90m"``, ``"2s"``, ``"500ms"``, ``"1d"`` or plain seconds."""
    m = _DURATION.match(text)
    if m is None:
        raise ConfigurationError(
            f"{what}={text!r}: expected a duration such as 24h, 90m, 2s, 500ms or seconds"
        )
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def load_subscribers(path: Path, env: Mapping[str, str] | None = None) -> list[Subscriber]:
    """Read and check the subscribers file; errors name the file, subscriber and field."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigurationError(
            f"webhooks config {path} not found: create it (see docs/webhooks.example.toml) "
            "or pass --option config=FILE"
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"webhooks config {path}: not valid TOML: {exc}") from exc
    return subscribers_from(raw, str(path), os.environ if env is None else env)


def subscribers_from(
    raw: Mapping[str, Any], where: str, env: Mapping[str, str]
) -> list[Subscriber]:
    items = raw.get("subscribers")
    if not isinstance(items, list) or not items:
        raise ConfigurationError(f"{where}: no [[subscribers]] table; at least one is needed")
    out: list[Subscriber] = []
    for i, item in enumerate(items):
        out.append(_subscriber(item, f"{where}: subscribers[{i}]", env))
    names = [s.name for s in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigurationError(f"{where}: subscriber names must be unique; repeated: {dupes}")
    return out


def _subscriber(item: Any, where: str, env: Mapping[str, str]) -> Subscriber:
    if not isinstance(item, dict):
        raise ConfigurationError(f"{where}: expected a table")
    known = {"name", "url", "secret", "secret_env", "events", "timeout"}
    unknown = sorted(set(item) - known)
    if unknown:
        raise ConfigurationError(f"{where}: unknown field(s) {unknown}; known: {sorted(known)}")
    name = item.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigurationError(
            f"{where}.name={name!r}: required, 1-64 letters, digits, '-' or '_'"
        )
    where = f"{where} ({name})"
    url = item.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ConfigurationError(f"{where}.url={url!r}: required, an http(s) URL")
    secret = _secret(item, where, env)
    events_raw = item.get("events", list(EVENT_TYPES))
    if (
        not isinstance(events_raw, list)
        or not events_raw
        or any(e not in EVENT_TYPES for e in events_raw)
    ):
        raise ConfigurationError(
            f"{where}.events={events_raw!r}: a non-empty list of {list(EVENT_TYPES)}"
        )
    timeout = item.get("timeout", 10)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise ConfigurationError(f"{where}.timeout={timeout!r}: seconds, a number > 0")
    return Subscriber(name, url, secret, frozenset(events_raw), float(timeout))


def _secret(item: Mapping[str, Any], where: str, env: Mapping[str, str]) -> str:
    if ("secret" in item) == ("secret_env" in item):
        raise ConfigurationError(f"{where}: give exactly one of secret or secret_env")
    if "secret_env" in item:
        var = item["secret_env"]
        if not isinstance(var, str) or not var:
            raise ConfigurationError(f"{where}.secret_env: the name of an environment variable")
        secret = env.get(var)
        if not secret:
            raise ConfigurationError(
                f"{where}.secret_env={var!r}: the environment variable {var} is not set"
            )
    else:
        secret = item["secret"]
        if not isinstance(secret, str):
            raise ConfigurationError(f"{where}.secret: a string")
    if len(secret) < MIN_SECRET_LENGTH:
        raise ConfigurationError(
            f"{where}: the webhook secret has {len(secret)} characters; use a strong secret of "
            f"at least {MIN_SECRET_LENGTH}"
        )
    return secret
