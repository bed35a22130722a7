"""The re-snapshot chunk's staleness rule, without a database: which live changes make
a chunk row stale (the window, and transactions the chunk's read did not see)."""

from __future__ import annotations

from collections.abc import Collection

import pytest

from pipeline.events import Column, Row, TableSchema
from pipeline.reader.incremental import IncrementalSnapshot, Seen, SnapshotHost, _Chunk
from pipeline.reader.pgoutput import Relation

SCHEMA = TableSchema(
    1, "public", "product_variants", (Column("id", 20, is_key=True), Column("quantity", 23))
)


def test_seen_parses_pg_current_snapshot_and_follows_xid_wraparound() -> None:
    seen = Seen.parse("100:110:100,104")
    assert seen == Seen(110, frozenset({100, 104}))
    seen_xids = [x for x in range(95, 115) if seen.saw(x)]
    assert seen_xids == [95, 96, 97, 98, 99, 101, 102, 103, 105, 106, 107, 108, 109]
    # 64-bit xids with an epoch; pgoutput's are 32-bit: compared modulo 2^32.
    epoch = 3 * 2**32
    wrapped = Seen.parse(f"{epoch - 5}:{epoch + 3}:{epoch - 2}")
    assert wrapped.saw(2**32 - 4) and wrapped.saw(1) and not wrapped.saw(2**32 - 2)
    assert not wrapped.saw(3) and not wrapped.saw(10)


class _Host:
    """The reader, as far as a re-snapshot sees it (:class:`SnapshotHost`)."""

    def __init__(self, xid: int | None) -> None:
        self.captured_tables = {"public.product_variants"}
        self.transaction_xid = xid
        self.emitted: list[Row] = []

    def keyed_relation(self, rel: Relation) -> Relation:
        return rel

    def primary_key(self, schema: TableSchema) -> tuple[str, ...]:
        return {("public", "product_variants"): ("id",)}.get((schema.schema, schema.table), ())

    def emit_snapshot_rows(self, schema: TableSchema, rows: Collection[Row]) -> None:
        self.emitted.extend(rows)


def _snapshot(seen: Seen, xid: int | None) -> tuple[IncrementalSnapshot, _Host]:
    reader = _Host(xid)
    host: SnapshotHost = reader  # the fake must be what the reader is to the snapshot
    inc = IncrementalSnapshot(
        host,
        None,  # type: ignore[arg-type]
        chunk_size=3,
        signal_table=("public", "catalog_cdc_signal"),
    )
    rows = {(i,): {"id": i, "quantity": 5} for i in (1, 2, 3)}
    inc.chunk = _Chunk("c", None, SCHEMA, rows, None, 3, seen)  # type: ignore[arg-type]
    return inc, reader


@pytest.mark.parametrize(
    ("xid", "window_open", "stale"),
    [
        (90, False, False),  # before the window, seen by the read: the chunk row is newer
        (104, False, True),  # before the window, running when read: committed, unseen
        (120, False, True),  # before the window, begun after the read (cannot happen)
        (90, True, True),  # in the window: always newer (or the same)
        (104, True, True),
    ],
)
def test_which_changes_make_a_chunk_row_stale(xid: int, window_open: bool, stale: bool) -> None:
    inc, _ = _snapshot(Seen(110, frozenset({104})), xid)
    assert inc.chunk is not None
    inc.chunk.window_open = window_open
    assert inc.watching(SCHEMA) is stale
    inc.on_change(SCHEMA, None, {"id": 2})
    assert sorted(inc.chunk.rows) == ([(1,), (3,)] if stale else [(1,), (2,), (3,)])


def test_changes_of_other_tables_or_an_emptied_chunk_are_not_watched() -> None:
    inc, _ = _snapshot(Seen(110, frozenset({104})), 104)
    other = TableSchema(2, "public", "products", SCHEMA.columns)
    assert not inc.watching(other)
    inc.on_change(other, None, {"id": 2})
    assert inc.chunk is not None and len(inc.chunk.rows) == 3
    inc.chunk.rows.clear()
    assert not inc.watching(SCHEMA)
