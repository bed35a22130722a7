"""The edge KV sink's own state: what it knows and what it wrote (one SQLite file).

Tables: ``entities`` (kind, id, version, body: the latest product / category document
and ``stores`` / ``cms_pages`` row, ``body`` NULL for a delete, so that an older
redelivered version is recognised; ``facts``: of a product, the
:class:`~consumers.edge_kv.layout.ProductFacts` its listings need, all the sink keeps
of it in memory: ``body`` is read back when the product key is recomputed), ``keys``
(key -> scope, content hash: the index of what the backend holds, so a change is diffed
without reading the store) and ``meta``
(the current ``pulse``).

The state is saved in one transaction *after* the backend confirmed the batch: a crash
in between redelivers the batch, which computes the same writes again (idempotent).
Opened and written with the policy of :mod:`consumers.toolkit.ledger` (WAL,
``synchronous=FULL``: a saved batch survives a power loss, as the backend's copy does).
The state describes the backend's content: wipe both together.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from consumers.edge_kv.layout import (
    Catalog,
    CmsRow,
    Kind,
    MemoryIndex,
    Plan,
    ProductFacts,
    StoreRow,
)
from consumers.toolkit.ledger import open_ledger, transaction
from pipeline.documents.model import CategoryDocument, ProductDocument, from_json, to_json

__all__ = ["Entity", "SinkState", "decode_body", "encode_body", "entity"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entities (
    kind TEXT NOT NULL, id INTEGER NOT NULL, version INTEGER NOT NULL, body TEXT, facts TEXT,
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


Entity = tuple[Kind, int, int, str | None, str | None]
"""An ``entities`` row to save: kind, id, version, body, facts."""


def entity(
    kind: Kind, ident: int, version: int, value: Any, facts: ProductFacts | None = None
) -> Entity:
    """The ``entities`` row of ``value`` (``None``: deleted); ``facts``: a product's."""
    return (
        kind,
        ident,
        version,
        encode_body(kind, value),
        None if facts is None else facts.to_json(),
    )


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
        self.path = path
        self.db = open_ledger(path, _SCHEMA)
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(entities)")}
        if "facts" not in columns:  # a state file of an older version: filled by load()
            self.db.execute("ALTER TABLE entities ADD COLUMN facts TEXT")

    def document(self, product_id: int) -> ProductDocument | None:
        """The stored document of a product (``None``: none, or deleted)."""
        row = self.db.execute(
            "SELECT body FROM entities WHERE kind = 'product' AND id = ?", (product_id,)
        ).fetchone()
        doc: ProductDocument | None = None if row is None else decode_body("product", row[0])
        return doc

    def load(self, catalog: Catalog, index: MemoryIndex) -> tuple[dict[tuple[str, int], int], str]:
        """Fill ``catalog`` and ``index``; return the versions of every entity and the
        pulse.  Of a product only its facts are read (its document stays on disk)."""
        versions: dict[tuple[str, int], int] = {}
        missing: list[tuple[str, int]] = []
        for kind, ident, version, body, facts in self.db.execute(
            "SELECT kind, id, version, CASE WHEN kind = 'product' AND facts IS NOT NULL "
            "THEN NULL ELSE body END, facts FROM entities"
        ):
            versions[(kind, ident)] = version
            if kind == "product" and facts is not None:
                catalog.put_product(ident, ProductFacts.from_json(facts))
                continue
            value = decode_body(kind, body)
            if value is not None:
                catalog.put(kind, ident, value)
                if kind == "product":
                    missing.append((catalog.products[ident].to_json(), ident))
        if missing:
            self.db.executemany(
                "UPDATE entities SET facts = ? WHERE kind = 'product' AND id = ?", missing
            )
        catalog.release_documents()
        for key, scope, hash_ in self.db.execute("SELECT key, scope, hash FROM keys"):
            index.set(key, scope, hash_)
        row = self.db.execute("SELECT value FROM meta WHERE name = 'pulse'").fetchone()
        return versions, "" if row is None else str(row[0])

    def save(
        self,
        entities: Iterable[Entity],
        plan: Plan,
        pulse: str,
    ) -> None:
        """One transaction: the entities changed, the index update, the pulse."""
        with transaction(self.db) as db:
            db.executemany(
                "INSERT INTO entities (kind, id, version, body, facts) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (kind, id) DO UPDATE SET version = excluded.version, "
                "body = excluded.body, facts = excluded.facts",
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

    def close(self) -> None:
        self.db.close()
