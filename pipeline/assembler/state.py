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
                  and is not soft-deleted), ``rlsn``/``rts`` (LSN and commit time of the
                  last change to the row that a document shows: a document's version is
                  at least the highest ``rlsn`` of the rows it is built from, graves of
                  removed child rows included, so it does not depend on batching);
                  ``plsn``/``pts`` the same for the columns of a category that make
                  paths (name, parent), ``klsn``/``kts`` for its url key; for a
                  product, ``klsn``/``kts`` is when it went away (deleted or
                  soft-deleted), the version of its tombstone.
``docs``          per emitted document: the ``version`` last emitted and the ``hash`` of
                  the content last emitted (``-`` for a tombstone).
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

import orjson

from pipeline.codec.jsontext import json_dumps as _json_dumps
from pipeline.errors import CatalogCdcError
from pipeline.events import UNCHANGED_TOAST, Row
from pipeline.jsonify import jsonable, loads

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
    rlsn       INTEGER NOT NULL DEFAULT 0,
    rts        INTEGER NOT NULL DEFAULT 0,
    plsn       INTEGER NOT NULL DEFAULT 0,
    pts        INTEGER NOT NULL DEFAULT 0,
    klsn       INTEGER NOT NULL DEFAULT 0,
    kts        INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tbl, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS rows_product ON rows (tbl, product_id);
CREATE INDEX IF NOT EXISTS rows_ref ON rows (tbl, ref);
CREATE INDEX IF NOT EXISTS rows_part ON rows (tbl, part);
CREATE INDEX IF NOT EXISTS rows_store ON rows (tbl, store_id);
CREATE TABLE IF NOT EXISTS docs (
    kind       TEXT    NOT NULL,
    id         INTEGER NOT NULL,
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
    if all(type(v) in _NATIVE for v in out.values()):
        try:
            return orjson.dumps(out).decode()  # the same text as below, faster
        except TypeError:
            pass  # an integer beyond 64 bits
    return json.dumps(out, separators=(",", ":"), ensure_ascii=False)


_NATIVE: Final = frozenset({str, int, bool, type(None)})
"""Value types orjson writes exactly as ``json.dumps`` does (floats it may write
differently: those rows take the standard encoder)."""


_Lsns = tuple[int, int, int, int, int, int]
"""``(rlsn, rts, plsn, pts, klsn, kts)`` of a row."""
_Indexed = tuple[Any, Any, Any, Any]
"""``(product_id, part, ref, store_id)`` of a stored row: the columns with an index."""


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
        self.globals: dict[str, dict[int, dict[str, Any]]] = {}
        self.global_lsns: dict[str, dict[int, tuple[int, int]]] = {}
        self.category_plsns: dict[int, tuple[int, int]] = {}
        self.category_klsns: dict[int, tuple[int, int]] = {}
        self._reload_globals()
        self._in_tx = False
        self._read: tuple[str, str, _Lsns, _Indexed | None] | None = None
        """The LSN columns of the row :meth:`row` read last (until a write)."""

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
            self._read = None

    def _reload_globals(self) -> None:
        self.globals = {t: {} for t in GLOBAL_TABLES}
        self.global_lsns = {t: {} for t in GLOBAL_TABLES}
        self.category_plsns = {}
        self.category_klsns = {}
        for tbl, key, data, rlsn, rts, plsn, pts, klsn, kts in self.db.execute(
            "SELECT tbl, key, data, rlsn, rts, plsn, pts, klsn, kts FROM rows "
            "WHERE tbl IN ('stores','brands','categories') AND data IS NOT NULL"
        ):
            self.globals[tbl][int(key)] = loads(data)
            self.global_lsns[tbl][int(key)] = (int(rlsn), int(rts))
            if tbl == "categories":
                self.category_plsns[int(key)] = (int(plsn), int(pts))
                self.category_klsns[int(key)] = (int(klsn), int(kts))

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
        """``(lsn, data or None for a grave)`` of a stored row, ``None`` if never seen.

        Its LSN columns are kept for the :meth:`put` of the same row that usually
        follows (one query per change instead of three).
        """
        found = self.db.execute(
            "SELECT lsn, data, rlsn, rts, plsn, pts, klsn, kts, product_id, part, ref, store_id "
            "FROM rows WHERE tbl = ? AND key = ?",
            (tbl, key),
        ).fetchone()
        if found is None:
            self._read = (tbl, key, (0, 0, 0, 0, 0, 0), None)
            return None
        _, _, a, b, c, d, e, f, *indexed = found
        lsns = (int(a), int(b), int(c), int(d), int(e), int(f))
        self._read = (tbl, key, lsns, (indexed[0], indexed[1], indexed[2], indexed[3]))
        return int(found[0]), (None if found[1] is None else loads(found[1]))

    def _lsns(self, tbl: str, key: str) -> _Lsns:
        """``(rlsn, rts, plsn, pts, klsn, kts)`` of a row (zeros if never seen)."""
        read = self._read
        if read is not None and read[0] == tbl and read[1] == key:
            return read[2]
        found = self.db.execute(
            "SELECT rlsn, rts, plsn, pts, klsn, kts FROM rows WHERE tbl = ? AND key = ?",
            (tbl, key),
        ).fetchone()
        if found is None:
            return (0, 0, 0, 0, 0, 0)
        a, b, c, d, e, f = (int(v) for v in found)
        return a, b, c, d, e, f

    def relevant_lsn(self, tbl: str, key: str) -> tuple[int, int]:
        """``(rlsn, rts)`` of a stored row (``(0, 0)`` if never seen)."""
        rlsn, rts, *_ = self._lsns(tbl, key)
        return rlsn, rts

    def _plsn(self, tbl: str, key: str) -> tuple[int, int, int, int]:
        _, _, plsn, pts, klsn, kts = self._lsns(tbl, key)
        return plsn, pts, klsn, kts

    def product_rows(
        self, product_id: int
    ) -> tuple[dict[str, list[dict[str, Any]]], tuple[int, int]]:
        """A product's live child rows by table, and the highest ``(rlsn, rts)`` of its
        row and child rows (graves included): one query."""
        rows: dict[str, list[dict[str, Any]]] = {t: [] for t in OWNED_TABLES[1:]}
        newest = self.relevant_lsn("products", str(product_id))
        for tbl, data, rlsn, rts in self.db.execute(
            "SELECT tbl, data, rlsn, rts FROM rows INDEXED BY rows_product "
            "WHERE tbl IN ('product_variants', 'product_images', 'technical_data', "
            "'product_categories') AND product_id = ?",
            (product_id,),
        ):
            if data is not None:
                rows[tbl].append(loads(data))
            if (rlsn, rts) > newest:
                newest = (int(rlsn), int(rts))
        return rows, newest

    def gone_lsn(self, product_id: int) -> tuple[int, int]:
        """When a product went away (``klsn`` of its row; ``(0, 0)`` if never seen)."""
        return self._plsn("products", str(product_id))[2:]

    def children_lsn(self, product_id: int) -> tuple[int, int]:
        """Highest ``(rlsn, rts)`` of a product's row and child rows, graves included."""
        found = self.db.execute(
            "SELECT rlsn, rts FROM rows INDEXED BY rows_product "
            "WHERE tbl IN ('product_variants', 'product_images', "
            "'technical_data', 'product_categories') AND product_id = ? "
            "ORDER BY rlsn DESC LIMIT 1",
            (product_id,),
        ).fetchone()
        own = self.relevant_lsn("products", str(product_id))
        if found is None:
            return own
        return max(own, (int(found[0]), int(found[1])))

    def put(
        self,
        tbl: str,
        key: str,
        lsn: int,
        data: str | None,
        *,
        relevant: tuple[int, int] | None = None,
        path: tuple[int, int] | None = None,
        url_key: tuple[int, int] | None = None,
        product_id: int | None = None,
        part: int | None = None,
        ref: int | None = None,
        store_id: int | None = None,
        live: bool = False,
    ) -> None:
        """Store a row; ``relevant`` = ``(lsn, ts)`` of this change when a document shows
        it (``None``: keep the row's ``rlsn``), ``path`` and ``url_key`` the same for
        ``plsn`` and ``klsn`` (categories)."""
        read = self._read
        stored = read[3] if read is not None and read[0] == tbl and read[1] == key else None
        known_rlsn, known_rts, plsn, pts, klsn, kts = self._lsns(tbl, key)
        self._read = None
        rlsn, rts = relevant if relevant is not None else (known_rlsn, known_rts)
        if path is not None:
            plsn, pts = path
        if url_key is not None:
            klsn, kts = url_key
        if stored is not None and stored == (product_id, part, ref, store_id):
            # A stored row whose indexed columns stay: updated in place, the indexes
            # untouched (a replace deletes and inserts the row and its four index
            # entries; measured: row() + put() of a stock change 100 -> 44 µs).
            self.db.execute(
                "UPDATE rows SET lsn = ?, data = ?, live = ?, rlsn = ?, rts = ?, plsn = ?, "
                "pts = ?, klsn = ?, kts = ? WHERE tbl = ? AND key = ?",
                (lsn, data, 1 if live else 0, rlsn, rts, plsn, pts, klsn, kts, tbl, key),
            )
        else:
            self.db.execute(
                "INSERT OR REPLACE INTO rows (tbl, key, lsn, data, product_id, part, ref, "
                "store_id, live, rlsn, rts, plsn, pts, klsn, kts) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    tbl, key, lsn, data, product_id, part, ref, store_id, 1 if live else 0,
                    rlsn, rts, plsn, pts, klsn, kts,
                ),
            )  # fmt: skip
        if tbl == "categories":
            if data is None:
                self.category_plsns.pop(int(key), None)
                self.category_klsns.pop(int(key), None)
            else:
                self.category_plsns[int(key)] = (plsn, pts)
                self.category_klsns[int(key)] = (klsn, kts)
        if tbl in self.globals:
            if data is None:
                self.globals[tbl].pop(int(key), None)
                self.global_lsns[tbl].pop(int(key), None)
            else:
                self.globals[tbl][int(key)] = loads(data)
                self.global_lsns[tbl][int(key)] = (rlsn, rts)

    def live_rows(self, tbl: str, part: int | None = None) -> list[tuple[str, dict[str, Any]]]:
        """``(key, data)`` of every live row of ``tbl`` (in partition ``part``)."""
        if part is None:
            cur = self.db.execute(
                "SELECT key, data FROM rows WHERE tbl = ? AND data IS NOT NULL", (tbl,)
            )
        else:
            cur = self.db.execute(
                "SELECT key, data FROM rows INDEXED BY rows_part "
                "WHERE tbl = ? AND part = ? AND data IS NOT NULL",
                (tbl, part),
            )
        return [(k, loads(d)) for k, d in cur]

    def children(self, tbl: str, product_id: int) -> list[dict[str, Any]]:
        """Live rows of a product-owned table for one product."""
        return [
            loads(d)
            for (d,) in self.db.execute(
                "SELECT data FROM rows INDEXED BY rows_product "
                "WHERE tbl = ? AND product_id = ? AND data IS NOT NULL",
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
        index = "rows_ref" if column == "ref" else "rows_store"
        sql = (
            f"SELECT product_id FROM rows INDEXED BY {index} WHERE tbl = 'products' "
            "AND data IS NOT NULL "
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
                "SELECT DISTINCT product_id FROM rows INDEXED BY rows_ref "
                "WHERE tbl = 'product_categories' "
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
                "SELECT ref FROM rows INDEXED BY rows_product "
                "WHERE tbl = 'product_categories' AND product_id = ? "
                "AND data IS NOT NULL",
                (product_id,),
            )
        ]

    def product_ids(self, parts: Iterable[int]) -> list[int]:
        """Every product of partitions ``parts`` the state knows (deleted ones included)."""
        parts = list(parts)
        if not parts:
            return []
        sql = (
            "SELECT product_id FROM rows INDEXED BY rows_part WHERE tbl = 'products' "
            f"AND part IN ({','.join('?' * len(parts))}) ORDER BY product_id"
        )
        return [int(r[0]) for r in self.db.execute(sql, parts)]

    def link_pairs(self, parts: Iterable[int]) -> list[tuple[int, int]]:
        """Every (category id, partition) some link of ``parts`` ever had."""
        parts = list(parts)
        if not parts:
            return []
        sql = (
            "SELECT DISTINCT ref, part FROM rows INDEXED BY rows_part "
            "WHERE tbl = 'product_categories' "
            f"AND part IN ({','.join('?' * len(parts))}) ORDER BY ref, part"
        )
        return [(int(r[0]), int(r[1])) for r in self.db.execute(sql, parts)]

    def local_count(self, category_id: int, part: int) -> int:
        """Live products linked to ``category_id`` among the rows of partition ``part``."""
        row = self.db.execute(
            "SELECT count(*) FROM rows l INDEXED BY rows_ref JOIN rows p ON p.tbl = 'products' "
            "AND p.key = CAST(l.product_id AS TEXT) AND p.live = 1 "
            "WHERE l.tbl = 'product_categories' AND l.ref = ? AND l.part = ? "
            "AND l.data IS NOT NULL",
            (category_id, part),
        ).fetchone()
        return int(row[0])

    def truncate(self, tbl: str, part: int | None, lsn: int, ts: int) -> list[dict[str, Any]]:
        """Make every live row of ``tbl`` (in ``part``) a grave; return their old data."""
        self._read = None
        rows = self.live_rows(tbl, part)
        if part is None:
            self.db.execute(
                "UPDATE rows SET data = NULL, live = 0, lsn = ?, rlsn = ?, rts = ?, plsn = ?, "
                "pts = ?, klsn = ?, kts = ? WHERE tbl = ? AND data IS NOT NULL",
                (lsn, lsn, ts, lsn, ts, lsn, ts, tbl),
            )
        else:
            self.db.execute(
                "UPDATE rows SET data = NULL, live = 0, lsn = ?, rlsn = ?, rts = ?, plsn = ?, "
                "pts = ?, klsn = ?, kts = ? WHERE tbl = ? AND part = ? AND data IS NOT NULL",
                (lsn, lsn, ts, lsn, ts, lsn, ts, tbl, part),
            )
        if tbl in self.globals:
            self.globals[tbl].clear()
            self.global_lsns[tbl].clear()
            if tbl == "categories":
                self.category_plsns.clear()
                self.category_klsns.clear()
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

    def count_lsn(self, category_id: int) -> tuple[int, int]:
        """Highest LSN of the published counts of a category (its time is not kept: 0)."""
        row = self.db.execute(
            "SELECT coalesce(max(lsn), 0) FROM counts WHERE category_id = ?", (category_id,)
        ).fetchone()
        return int(row[0]), 0

    def product_count(self, category_id: int) -> int:
        row = self.db.execute(
            "SELECT coalesce(sum(count), 0) FROM counts WHERE category_id = ?", (category_id,)
        ).fetchone()
        return int(row[0])

    # -- emitted documents ----------------------------------------------------------------

    def doc(self, kind: str, doc_id: int) -> tuple[int, str | None] | None:
        """``(version, hash)`` last emitted for a document, ``None`` if never emitted."""
        found = self.db.execute(
            "SELECT version, hash FROM docs WHERE kind = ? AND id = ?", (kind, doc_id)
        ).fetchone()
        if found is None:
            return None
        return int(found[0]), found[1]

    def set_doc(self, kind: str, doc_id: int, version: int, hash_: str | None) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO docs (kind, id, version, hash) VALUES (?, ?, ?, ?)",
            (kind, doc_id, version, hash_),
        )
