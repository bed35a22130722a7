"""The sink's small SQLite state file: what was sent, the schema, the circuit breaker.

Tables: ``sent`` (per kind and id: the last version sent, the content hash, deleted or
not) and ``meta`` (``target``: the API URL this state belongs to, ``schema_hash``,
``initial_import``: ``done`` once the first full import completed, ``breaker``: the
JSON of an open circuit breaker).  Every change is committed at once, with the policy of
:mod:`consumers.toolkit.ledger` (WAL, ``synchronous=FULL``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consumers.toolkit.ledger import open_ledger, transaction

__all__ = ["Sent", "State"]

_DDL = """
CREATE TABLE IF NOT EXISTS sent (
    kind TEXT NOT NULL, id INTEGER NOT NULL, version INTEGER NOT NULL,
    hash TEXT, deleted INTEGER NOT NULL, PRIMARY KEY (kind, id)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class Sent:
    version: int
    hash: str | None
    deleted: bool


class State:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.new = not path.exists()
        self._db = open_ledger(path, _DDL, shared=True)

    def close(self) -> None:
        self._db.close()

    # -- meta -------------------------------------------------------------------------

    def get(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def put(self, key: str, value: str | None) -> None:
        if value is None:
            self._db.execute("DELETE FROM meta WHERE key = ?", (key,))
        else:
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    @property
    def breaker(self) -> dict[str, Any] | None:
        text = self.get("breaker")
        return None if text is None else dict(json.loads(text))

    def open_breaker(self, info: dict[str, Any]) -> None:
        self.put("breaker", json.dumps(info, ensure_ascii=False))

    # -- sent -------------------------------------------------------------------------

    def sent(self, kind: str, doc_id: int) -> Sent | None:
        row = self._db.execute(
            "SELECT version, hash, deleted FROM sent WHERE kind = ? AND id = ?", (kind, doc_id)
        ).fetchone()
        return None if row is None else Sent(int(row[0]), row[1], bool(row[2]))

    def record(self, rows: Iterable[tuple[str, int, int, str | None]]) -> None:
        """(kind, id, version, hash) of what the service confirmed; hash None: deleted."""
        with transaction(self._db):
            self._db.executemany(
                "INSERT INTO sent (kind, id, version, hash, deleted) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (kind, id) DO UPDATE SET version = excluded.version, "
                "hash = excluded.hash, deleted = excluded.deleted",
                [(k, i, v, h, h is None) for k, i, v, h in rows],
            )

    def forget_sent(self) -> None:
        """A full import starts: what the index held no longer counts."""
        self._db.execute("DELETE FROM sent")

    def count(self) -> int:
        row = self._db.execute("SELECT count(*) FROM sent WHERE NOT deleted").fetchone()
        return int(row[0])
