"""The embedded SQLite KV store (the default backend): one table ``kv(key, value)``.

``apply`` is one transaction (WAL mode, ``synchronous=FULL``: the policy of
:mod:`consumers.toolkit.ledger`): confirmed = committed.
Readers (``catalog-cdc kv get``) may read while the consumer writes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Mapping
from pathlib import Path

from consumers.contract import TransientSinkError
from consumers.toolkit.ledger import open_ledger, transaction

__all__ = ["SqliteBackend"]

_SCHEMA = "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);"


class SqliteBackend:
    name = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    def open(self) -> None:
        if self._db is not None:
            return
        self._db = open_ledger(self.path, _SCHEMA)

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            self.open()
        assert self._db is not None
        return self._db

    def apply(self, writes: Mapping[str, str], deletes: Collection[str]) -> None:
        with transaction(self.db, busy=self._busy) as db:
            db.executemany("DELETE FROM kv WHERE key = ?", [(k,) for k in deletes])
            db.executemany(
                "INSERT INTO kv (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                list(writes.items()),
            )

    def _busy(self, exc: sqlite3.OperationalError) -> TransientSinkError:
        """Locked by another writer beyond the busy timeout: try again later."""
        return TransientSinkError(f"SQLite KV store {self.path} busy: {exc}")

    def get(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def list(self, prefix: str) -> list[str]:
        # A range scan on the primary key (no LIKE: keys may hold % and _).
        rows = self.db.execute(
            "SELECT key FROM kv WHERE key >= ? AND substr(key, 1, ?) = ? ORDER BY key",
            (prefix, len(prefix), prefix),
        )
        return [str(r[0]) for r in rows]

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
