"""The edge KV sink's own state: what it knows and what it wrote (one SQLite file).

Tables: ``entities`` (kind, id, version, body: the latest product / category document
and ``stores`` / ``cms_pages`` row, ``body`` NULL for a delete, so that an older
redelivered version is recognised), ``keys`` (key -> scope, content hash: the index of
what the backend holds, so a change is diffed without reading the store) and ``meta``
(the current ``pulse``).

The state is saved in one transaction *after* the backend confirmed the batch: a crash
in between redelivers the batch, which computes the same writes again (idempotent).
The state describes the backend's content: wipe both together.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from consumers.edge_kv.layout import Catalog, CmsRow, Kind, MemoryIndex, Plan, StoreRow
from pipeline.assembler.documents import CategoryDocument, ProductDocument, from_json, to_json

__all__ = ["SinkState", "decode_body", "encode_body"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entities (
    kind TEXT NOT NULL, id INTEGER NOT NULL, version INTEGER NOT NULL, body TEXT,
    PRIMARY KEY (kind, id)
);
CREATE TABLE IF NOT EXISTS keys (key TEXT PRIMARY KEY, scope TEXT NOT NULL, hash TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def encode_body(kind: Kind, value: Any) -> str | None:
    if value is None:
        return None
    if kind in ("product", "category"):
        return to_json(value)
    return json.dumps(dataclasses.asdict(value), ensure_ascii=False)


def decode_body(kind: Kind, body: str | None) -> Any:
    if body is None:
        return None
    if kind == "product":
        return from_json(body, ProductDocument)
    if kind == "category":
        return from_json(body, CategoryDocument)
    data = json.loads(body)
    return StoreRow(**data) if kind == "store" else CmsRow(**data)


class SinkState:
    """The state file; :meth:`load` fills a catalog and an index, :meth:`save` persists a
    confirmed batch."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)

    def load(self, catalog: Catalog, index: MemoryIndex) -> tuple[dict[tuple[str, int], int], str]:
        """Fill ``catalog`` and ``index``; return the versions of every entity and the
        pulse."""
        versions: dict[tuple[str, int], int] = {}
        for kind, ident, version, body in self.db.execute(
            "SELECT kind, id, version, body FROM entities"
        ):
            versions[(kind, ident)] = version
            value = decode_body(kind, body)
            if value is not None:
                catalog.put(kind, ident, value)
        for key, scope, hash_ in self.db.execute("SELECT key, scope, hash FROM keys"):
            index.set(key, scope, hash_)
        row = self.db.execute("SELECT value FROM meta WHERE name = 'pulse'").fetchone()
        return versions, "" if row is None else str(row[0])

    def save(
        self,
        entities: Iterable[tuple[Kind, int, int, str | None]],
        plan: Plan,
        pulse: str,
    ) -> None:
        """One transaction: the entities changed, the index update, the pulse."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                "INSERT INTO entities (kind, id, version, body) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (kind, id) DO UPDATE SET version = excluded.version, "
                "body = excluded.body",
                list(entities),
            )
            db.executemany("DELETE FROM keys WHERE key = ?", [(k,) for k in plan.deletes])
            db.executemany(
                "INSERT INTO keys (key, scope, hash) VALUES (?, ?, ?) ON CONFLICT (key) "
                "DO UPDATE SET scope = excluded.scope, hash = excluded.hash",
                [(k, s, h) for k, (s, h) in plan.owners.items()],
            )
            db.execute(
                "INSERT INTO meta (name, value) VALUES ('pulse', ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (pulse,),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.db.close()
