"""The assembler's embedded state: the catalog's rows as the raw topics say, in SQLite.

Everything here is derived from the raw change topics and nothing else, so a lost
state file is rebuilt by reading the topics from the beginning (``catalog-cdc
assembler --rebuild``).  One SQLite file, WAL journal, ``synchronous=FULL``: a batch is
applied in one transaction, together with the input offsets it consumed, so after a
crash the state and its offsets always agree (the batch is read again and applied once).

Tables
======

``rows``          one row per source row: ``(tbl, key)`` -> ``lsn`` of the change that
                  wrote it, ``data`` (the row as JSON; ``NULL`` once deleted: a *grave*
                  that keeps the delete's LSN so a replayed older event cannot resurrect
                  the row), ``product_id``/``part`` for product-owned rows, ``ref`` (the
                  category id of a ``product_categories`` link, the brand id of a
                  product), ``store_id`` of a product, ``live`` (a product that exists
                  and is not soft-deleted).
``docs``          per emitted document: ``pending`` (LSN of the newest change seen that
                  touches it) with its commit time, the ``version`` last emitted and the
                  ``hash`` of the content last emitted (``-`` for a tombstone).
``counts``        the per-partition product counts of categories, as read back from the
                  ``{prefix}._assembler.counts`` topic (every instance publishes the
                  counts of the partitions it owns).
``offsets``       the next offset to read of every input topic-partition.

The global tables (``stores``, ``brands``, ``categories``) are small and are also kept
in memory (:attr:`AssemblerState.globals`), loaded at open.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from pipeline.codec.avro_schema import _json_dumps
from pipeline.errors import CatalogCdcError
from pipeline.events import UNCHANGED_TOAST, Row
from pipeline.jsonify import jsonable

__all__ = ["GLOBAL_TABLES", "OWNED_TABLES", "AssemblerState", "StateError", "serialize_row"]

GLOBAL_TABLES: Final = ("stores", "brands", "categories")
"""Read in full by every assembler instance (small; every product document uses them)."""

OWNED_TABLES: Final = (
    "products",
    "product_variants",
    "product_images",
    "technical_data",
    "product_categories",
)
"""Co-partitioned by product id: an instance holds the partitions its group gave it."""

TOMBSTONE: Final = "-"
"""``docs.hash`` of a document last emitted as a tombstone."""

JSON_COLUMNS: Final = {("product_variants", "attributes")}
"""jsonb columns kept as exact JSON text (numbers are ``Decimal``; see documents.py)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rows (
    tbl        TEXT    NOT NULL,
    key        TEXT    NOT NULL,
    lsn        INTEGER NOT NULL,
    data       TEXT,
    product_id INTEGER,
    part       INTEGER,
    ref        INTEGER,
    store_id   INTEGER,
    live       INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tbl, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS rows_product ON rows (tbl, product_id);
CREATE INDEX IF NOT EXISTS rows_ref ON rows (tbl, ref);
CREATE INDEX IF NOT EXISTS rows_part ON rows (tbl, part);
CREATE INDEX IF NOT EXISTS rows_store ON rows (tbl, store_id);
CREATE TABLE IF NOT EXISTS docs (
    kind       TEXT    NOT NULL,
    id         INTEGER NOT NULL,
    pending    INTEGER NOT NULL DEFAULT 0,
    pending_ts INTEGER NOT NULL DEFAULT 0,
    version    INTEGER NOT NULL DEFAULT 0,
    hash       TEXT,
    PRIMARY KEY (kind, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counts (
    category_id INTEGER NOT NULL,
    part        INTEGER NOT NULL,
    count       INTEGER NOT NULL,
    lsn         INTEGER NOT NULL,
    PRIMARY KEY (category_id, part)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS offsets (
    topic     TEXT    NOT NULL,
    partition INTEGER NOT NULL,
    next      INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
"""


class StateError(CatalogCdcError):
    """The assembler's state cannot take a change (names the record and the field)."""


def serialize_row(table: str, key: str, row: Row, previous: dict[str, Any] | None) -> str:
    """The JSON text kept for ``row``; an unchanged TOASTed value keeps the stored one.

    Raises :class:`StateError` when a value is "unchanged TOAST" but no earlier image of
    the row is known: writing it as NULL would blank the field downstream.
    """
    out: dict[str, Any] = {}
    for column, value in row.items():
        if value is UNCHANGED_TOAST:
            if previous is None or column not in previous:
                raise StateError(
                    f"{table} key {key}: column {column!r} arrived as 'unchanged TOAST' but the "
                    "assembler has no earlier image of the row. The raw topics do not hold the "
                    "row's history (retention?): run `catalog-cdc resnapshot --tables "
                    f"public.{table}` (or rebuild from a topic that still has it)"
                )
            out[column] = previous[column]
        elif (table, column) in JSON_COLUMNS:
            out[column] = None if value is None else _json_dumps(value)
        else:
            out[column] = jsonable(value)
    return json.dumps(out, separators=(",", ":"), ensure_ascii=False)


class AssemblerState:
    """The SQLite state file (see the module docstring).  One writer; not thread-safe."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)
        self.globals: dict[str, dict[int, dict[str, Any]]] = {t: {} for t in GLOBAL_TABLES}
        for tbl, key, data in self.db.execute(
            "SELECT tbl, key, data FROM rows WHERE tbl IN ('stores','brands','categories') "
            "AND data IS NOT NULL"
        ):
            self.globals[tbl][int(key)] = json.loads(data)
        self._in_tx = False

    def close(self) -> None:
        self.db.close()

    # -- transactions -------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One batch: everything or nothing (the in-memory mirror is reloaded on failure)."""
        self.db.execute("BEGIN IMMEDIATE")
        self._in_tx = True
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            self._reload_globals()
            raise
        else:
            self.db.execute("COMMIT")
        finally:
            self._in_tx = False

    def _reload_globals(self) -> None:
        self.globals = {t: {} for t in GLOBAL_TABLES}
        for tbl, key, data in self.db.execute(
            "SELECT tbl, key, data FROM rows WHERE tbl IN ('stores','brands','categories') "
            "AND data IS NOT NULL"
        ):
            self.globals[tbl][int(key)] = json.loads(data)

    # -- meta and offsets ---------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def offsets(self) -> dict[tuple[str, int], int]:
        return {
            (t, p): n for t, p, n in self.db.execute("SELECT topic, partition, next FROM offsets")
        }

    def set_offsets(self, offsets: dict[tuple[str, int], int]) -> None:
        self.db.executemany(
            "INSERT OR REPLACE INTO offsets (topic, partition, next) VALUES (?, ?, ?)",
            [(t, p, n) for (t, p), n in offsets.items()],
        )

    # -- rows ---------------------------------------------------------------------------

    def row(self, tbl: str, key: str) -> tuple[int, dict[str, Any] | None] | None:
        """``(lsn, data or None for a grave)`` of a stored row, ``None`` if never seen."""
        found = self.db.execute(
            "SELECT lsn, data FROM rows WHERE tbl = ? AND key = ?", (tbl, key)
        ).fetchone()
        if found is None:
            return None
        return int(found[0]), (None if found[1] is None else json.loads(found[1]))

    def put(
        self,
        tbl: str,
        key: str,
        lsn: int,
        data: str | None,
        *,
        product_id: int | None = None,
        part: int | None = None,
        ref: int | None = None,
        store_id: int | None = None,
        live: bool = False,
    ) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO rows (tbl, key, lsn, data, product_id, part, ref, store_id, "
            "live) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (tbl, key, lsn, data, product_id, part, ref, store_id, 1 if live else 0),
        )
        if tbl in self.globals:
            if data is None:
                self.globals[tbl].pop(int(key), None)
            else:
                self.globals[tbl][int(key)] = json.loads(data)

    def live_rows(self, tbl: str, part: int | None = None) -> list[tuple[str, dict[str, Any]]]:
        """``(key, data)`` of every live row of ``tbl`` (in partition ``part``)."""
        if part is None:
            cur = self.db.execute(
                "SELECT key, data FROM rows WHERE tbl = ? AND data IS NOT NULL", (tbl,)
            )
        else:
            cur = self.db.execute(
                "SELECT key, data FROM rows WHERE tbl = ? AND part = ? AND data IS NOT NULL",
                (tbl, part),
            )
        return [(k, json.loads(d)) for k, d in cur]

    def children(self, tbl: str, product_id: int) -> list[dict[str, Any]]:
        """Live rows of a product-owned table for one product."""
        return [
            json.loads(d)
            for (d,) in self.db.execute(
                "SELECT data FROM rows WHERE tbl = ? AND product_id = ? AND data IS NOT NULL",
                (tbl, product_id),
            )
        ]

    def product(self, product_id: int) -> dict[str, Any] | None:
        found = self.row("products", str(product_id))
        return None if found is None else found[1]

    def products_where(self, column: str, values: Iterable[int], parts: Iterable[int]) -> set[int]:
        """Ids of stored products with ``column`` (``ref`` = brand, ``store_id``) in ``values``."""
        assert column in ("ref", "store_id")
        values, parts = list(values), list(parts)
        if not values or not parts:
            return set()
        sql = (
            f"SELECT product_id FROM rows WHERE tbl = 'products' AND data IS NOT NULL "
            f"AND {column} IN ({','.join('?' * len(values))}) "
            f"AND part IN ({','.join('?' * len(parts))})"
        )
        return {int(r[0]) for r in self.db.execute(sql, [*values, *parts])}

    def products_in_categories(self, category_ids: Iterable[int], parts: Iterable[int]) -> set[int]:
        """Ids of products linked to any of ``category_ids`` in partitions ``parts``."""
        ids, parts = list(category_ids), list(parts)
        if not ids or not parts:
            return set()
        out: set[int] = set()
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            sql = (
                "SELECT DISTINCT product_id FROM rows WHERE tbl = 'product_categories' "
                f"AND data IS NOT NULL AND ref IN ({','.join('?' * len(chunk))}) "
                f"AND part IN ({','.join('?' * len(parts))})"
            )
            out.update(int(r[0]) for r in self.db.execute(sql, [*chunk, *parts]))
        return out

    def category_links(self, product_id: int) -> list[int]:
        """Category ids a product is linked to (live links)."""
        return [
            int(r[0])
            for r in self.db.execute(
                "SELECT ref FROM rows WHERE tbl = 'product_categories' AND product_id = ? "
                "AND data IS NOT NULL",
                (product_id,),
            )
        ]

    def local_count(self, category_id: int, part: int) -> int:
        """Live products linked to ``category_id`` among the rows of partition ``part``."""
        row = self.db.execute(
            "SELECT count(*) FROM rows l JOIN rows p ON p.tbl = 'products' "
            "AND p.key = CAST(l.product_id AS TEXT) AND p.live = 1 "
            "WHERE l.tbl = 'product_categories' AND l.ref = ? AND l.part = ? "
            "AND l.data IS NOT NULL",
            (category_id, part),
        ).fetchone()
        return int(row[0])

    def truncate(self, tbl: str, part: int | None, lsn: int) -> list[dict[str, Any]]:
        """Make every live row of ``tbl`` (in ``part``) a grave; return their old data."""
        rows = self.live_rows(tbl, part)
        if part is None:
            self.db.execute(
                "UPDATE rows SET data = NULL, live = 0, lsn = ? WHERE tbl = ? AND data IS NOT NULL",
                (lsn, tbl),
            )
        else:
            self.db.execute(
                "UPDATE rows SET data = NULL, live = 0, lsn = ? "
                "WHERE tbl = ? AND part = ? AND data IS NOT NULL",
                (lsn, tbl, part),
            )
        if tbl in self.globals:
            self.globals[tbl].clear()
        return [d for _, d in rows]

    # -- category counts (from the counts topic) ----------------------------------------

    def set_count(self, category_id: int, part: int, count: int, lsn: int) -> bool:
        """Record a published count; whether the category's total may have changed."""
        old = self.db.execute(
            "SELECT count FROM counts WHERE category_id = ? AND part = ?", (category_id, part)
        ).fetchone()
        if old is not None and int(old[0]) == count:
            return False
        self.db.execute(
            "INSERT OR REPLACE INTO counts (category_id, part, count, lsn) VALUES (?, ?, ?, ?)",
            (category_id, part, count, lsn),
        )
        return True

    def product_count(self, category_id: int) -> int:
        row = self.db.execute(
            "SELECT coalesce(sum(count), 0) FROM counts WHERE category_id = ?", (category_id,)
        ).fetchone()
        return int(row[0])

    # -- emitted documents ----------------------------------------------------------------

    def doc(self, kind: str, doc_id: int) -> tuple[int, int, int, str | None] | None:
        """``(pending, pending_ts, version, hash)`` of a document, ``None`` if never seen."""
        found = self.db.execute(
            "SELECT pending, pending_ts, version, hash FROM docs WHERE kind = ? AND id = ?",
            (kind, doc_id),
        ).fetchone()
        if found is None:
            return None
        return int(found[0]), int(found[1]), int(found[2]), found[3]

    def set_doc(
        self, kind: str, doc_id: int, pending: int, pending_ts: int, version: int, hash_: str | None
    ) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO docs (kind, id, pending, pending_ts, version, hash) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (kind, doc_id, pending, pending_ts, version, hash_),
        )
