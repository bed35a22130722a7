"""The embedded SQLite KV store (the default backend): one table ``kv(key, value)``.

``apply`` is one transaction (WAL mode, ``synchronous=FULL``): confirmed = committed.
Readers (``catalog-cdc kv get``) may read while the consumer writes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Mapping
from pathlib import Path

from consumers.runtime import TransientSinkError

__all__ = ["SqliteBackend"]


class SqliteBackend:
    name = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    def open(self) -> None:
        if self._db is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, timeout=10)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self._db = db

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            self.open()
        assert self._db is not None
        return self._db

    def apply(self, writes: Mapping[str, str], deletes: Collection[str]) -> None:
        db = self.db
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:  # locked by another writer
            raise TransientSinkError(f"SQLite KV store {self.path} busy: {exc}") from exc
        try:
            db.executemany("DELETE FROM kv WHERE key = ?", [(k,) for k in deletes])
            db.executemany(
                "INSERT INTO kv (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                list(writes.items()),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

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
