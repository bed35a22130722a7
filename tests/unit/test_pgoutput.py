"""Unit tests of the pgoutput decoder and the relation cache, on hand-built messages."""

from __future__ import annotations

import contextlib
import struct
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.events import UNCHANGED_TOAST, Column, TableSchema
from pipeline.reader.errors import PgOutputDecodeError, UnknownRelationError
from pipeline.reader.pgoutput import (
    Begin,
    BinaryValue,
    Commit,
    Datum,
    Delete,
    Insert,
    Message,
    Origin,
    Relation,
    RelationColumn,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    Type,
    Update,
    decode_insert,
    decode_message,
    format_lsn,
    insert_parser,
    pg_timestamp_to_epoch_ms,
)
from pipeline.reader.relations import RelationCache
from pipeline.values import SchemaMismatchError, ValueConversionError

# ----------------------------------------------------------------------------- builder


def _s(text: str) -> bytes:
    return text.encode() + b"\x00"


def _xid(xid: int | None) -> bytes:
    return b"" if xid is None else struct.pack(">I", xid)


def tupledata(values: tuple[Datum, ...]) -> bytes:
    out = [struct.pack(">H", len(values))]
    for value in values:
        if value is None:
            out.append(b"n")
        elif value is UNCHANGED_TOAST:
            out.append(b"u")
        elif isinstance(value, BinaryValue):
            out.append(b"b" + struct.pack(">I", len(value.data)) + value.data)
        else:
            assert isinstance(value, bytes)
            out.append(b"t" + struct.pack(">I", len(value)) + value)
    return b"".join(out)


def begin(final_lsn: int, ts: int, xid: int) -> bytes:
    return b"B" + struct.pack(">QqI", final_lsn, ts, xid)


def commit(flags: int, commit_lsn: int, end_lsn: int, ts: int) -> bytes:
    return b"C" + struct.pack(">BQQq", flags, commit_lsn, end_lsn, ts)


def origin(lsn: int, name: str) -> bytes:
    return b"O" + struct.pack(">Q", lsn) + _s(name)


def relation(
    relid: int,
    namespace: str,
    name: str,
    identity: str,
    columns: list[tuple[int, str, int, int]],
    xid: int | None = None,
) -> bytes:
    body = [b"R", _xid(xid), struct.pack(">I", relid), _s(namespace), _s(name), identity.encode()]
    body.append(struct.pack(">H", len(columns)))
    for flags, colname, oid, typmod in columns:
        body.append(bytes([flags]) + _s(colname) + struct.pack(">Ii", oid, typmod))
    return b"".join(body)


def type_(oid: int, namespace: str, name: str, xid: int | None = None) -> bytes:
    return b"Y" + _xid(xid) + struct.pack(">I", oid) + _s(namespace) + _s(name)


def insert(relid: int, new: tuple[Datum, ...], xid: int | None = None) -> bytes:
    return b"I" + _xid(xid) + struct.pack(">I", relid) + b"N" + tupledata(new)


def update(
    relid: int,
    new: tuple[Datum, ...],
    old: tuple[Datum, ...] | None = None,
    kind: bytes = b"K",
    xid: int | None = None,
) -> bytes:
    head = b"U" + _xid(xid) + struct.pack(">I", relid)
    if old is not None:
        head += kind + tupledata(old)
    return head + b"N" + tupledata(new)


def delete(relid: int, old: tuple[Datum, ...], kind: bytes = b"K", xid: int | None = None) -> bytes:
    return b"D" + _xid(xid) + struct.pack(">I", relid) + kind + tupledata(old)


def truncate(relids: list[int], options: int, xid: int | None = None) -> bytes:
    return (
        b"T"
        + _xid(xid)
        + struct.pack(">IB", len(relids), options)
        + b"".join(struct.pack(">I", r) for r in relids)
    )


def message(
    transactional: bool, lsn: int, prefix: str, content: bytes, xid: int | None = None
) -> bytes:
    return (
        b"M"
        + _xid(xid)
        + struct.pack(">BQ", int(transactional), lsn)
        + _s(prefix)
        + struct.pack(">I", len(content))
        + content
    )


# ----------------------------------------------------------------------- v1 messages

TS = 767_000_000_123_456  # 2024-04-20 ... since 2000-01-01


def test_begin_and_commit() -> None:
    b = decode_message(begin(0x16_B374D848, TS, 742))
    assert b == Begin(final_lsn=0x16_B374D848, commit_ts=TS, xid=742)
    c = decode_message(commit(0, 0x16_B374D848, 0x16_B374D878, TS))
    assert c == Commit(flags=0, commit_lsn=0x16_B374D848, end_lsn=0x16_B374D878, commit_ts=TS)
    assert isinstance(b, Begin) and isinstance(c, Commit)
    expected_ms = int((datetime(2000, 1, 1, tzinfo=UTC).timestamp() * 1_000_000 + TS) // 1000)
    assert b.commit_ts_ms == c.commit_ts_ms == expected_ms
    assert format_lsn(b.final_lsn) == "16/B374D848"


def test_epoch_conversion() -> None:
    assert pg_timestamp_to_epoch_ms(0) == 946_684_800_000
    assert pg_timestamp_to_epoch_ms(-946_684_800_000_000) == 0
    assert pg_timestamp_to_epoch_ms(1_999) == 946_684_800_001  # floor
    assert pg_timestamp_to_epoch_ms(-1) == 946_684_799_999  # floor, not towards zero


def test_origin() -> None:
    assert decode_message(origin(99, "node_a")) == Origin(commit_lsn=99, name="node_a")


def test_relation_and_type() -> None:
    raw = relation(
        16384,
        "public",
        "prodüct",
        "d",
        [(1, "id", 20, -1), (0, "name", 1043, 104), (0, "mood", 70000, -1)],
    )
    rel = decode_message(raw)
    assert rel == Relation(
        relation_id=16384,
        namespace="public",
        name="prodüct",
        replica_identity="d",
        columns=(
            RelationColumn(1, "id", 20, -1),
            RelationColumn(0, "name", 1043, 104),
            RelationColumn(0, "mood", 70000, -1),
        ),
        xid=None,
    )
    assert isinstance(rel, Relation)
    assert [c.is_key for c in rel.columns] == [True, False, False]
    assert decode_message(type_(70000, "public", "mood")) == Type(70000, "public", "mood")


def test_insert_all_column_kinds() -> None:
    values: tuple[Datum, ...] = (b"1", None, UNCHANGED_TOAST, BinaryValue(b"\x00\x01"), b"")
    assert decode_message(insert(5, values)) == Insert(relation_id=5, new=values)


def test_update_variants() -> None:
    new: tuple[Datum, ...] = (b"2", b"x")
    assert decode_message(update(5, new)) == Update(5, None, None, new)
    old_key: tuple[Datum, ...] = (b"1", None)
    assert decode_message(update(5, new, old_key, b"K")) == Update(5, "K", old_key, new)
    old_row: tuple[Datum, ...] = (b"1", b"y")
    assert decode_message(update(5, new, old_row, b"O")) == Update(5, "O", old_row, new)


def test_delete_variants() -> None:
    assert decode_message(delete(5, (b"1", None), b"K")) == Delete(5, "K", (b"1", None))
    assert decode_message(delete(5, (b"1", b"y"), b"O")) == Delete(5, "O", (b"1", b"y"))


@pytest.mark.parametrize(
    ("options", "cascade", "restart"), [(0, False, False), (1, True, False), (3, True, True)]
)
def test_truncate(options: int, cascade: bool, restart: bool) -> None:
    t = decode_message(truncate([5, 6, 7], options))
    assert isinstance(t, Truncate)
    assert t.relation_ids == (5, 6, 7)
    assert (t.cascade, t.restart_identity) == (cascade, restart)


def test_message() -> None:
    m = decode_message(message(True, 1234, "prefix", b"\x00content\xff"))
    assert m == Message(transactional=True, lsn=1234, prefix="prefix", content=b"\x00content\xff")
    m2 = decode_message(message(False, 1, "", b""))
    assert m2 == Message(transactional=False, lsn=1, prefix="", content=b"")


def test_accepts_memoryview_and_bytearray() -> None:
    raw = b"\x00" * 25 + insert(5, (b"abc", None))
    expected = Insert(5, (b"abc", None))
    assert decode_message(memoryview(raw)[25:]) == expected
    assert decode_message(bytearray(raw[25:])) == expected


# ----------------------------------------------------------------------- v2 streaming


def test_stream_control_messages() -> None:
    assert decode_message(b"S" + struct.pack(">IB", 900, 1)) == StreamStart(900, True)
    assert decode_message(b"S" + struct.pack(">IB", 900, 0)) == StreamStart(900, False)
    assert decode_message(b"E") == StreamStop()
    sc = decode_message(b"c" + struct.pack(">IBQQq", 900, 0, 10, 20, TS))
    assert sc == StreamCommit(xid=900, flags=0, commit_lsn=10, end_lsn=20, commit_ts=TS)
    assert isinstance(sc, StreamCommit)
    assert sc.commit_ts_ms == pg_timestamp_to_epoch_ms(TS)
    assert decode_message(b"A" + struct.pack(">II", 900, 901)) == StreamAbort(900, 901)


def test_stream_block_messages_carry_xid() -> None:
    cases = [
        (relation(5, "s", "t", "f", [(1, "a", 23, -1)], xid=77), Relation, 77),
        (type_(70000, "", "numeric", xid=77), Type, 77),
        (insert(5, (b"1",), xid=77), Insert, 77),
        (update(5, (b"1",), (b"0",), b"O", xid=77), Update, 77),
        (delete(5, (b"1",), xid=77), Delete, 77),
        (truncate([5], 2, xid=77), Truncate, 77),
        (message(True, 9, "p", b"c", xid=77), Message, 77),
    ]
    for raw, cls, xid in cases:
        decoded = decode_message(raw, in_stream=True)
        assert isinstance(decoded, cls)
        assert decoded.xid == xid  # type: ignore[union-attr]
    # Stream control and Begin/Commit have no extra xid even inside a stream block.
    assert decode_message(b"E", in_stream=True) == StreamStop()
    assert decode_message(begin(1, 2, 3), in_stream=True) == Begin(1, 2, 3)


def test_stream_xid_is_not_read_outside_a_stream() -> None:
    # The same bytes read without in_stream leave 4 bytes over (or misparse): rejected.
    with pytest.raises(PgOutputDecodeError):
        decode_message(insert(5, (b"1",), xid=77))


# ----------------------------------------------------------------------------- errors


def test_empty_and_unknown_type() -> None:
    with pytest.raises(PgOutputDecodeError, match="empty message"):
        decode_message(b"")
    with pytest.raises(PgOutputDecodeError, match=r"unknown \('Z'\).*offset 0"):
        decode_message(b"Z\x00")


def test_trailing_bytes() -> None:
    with pytest.raises(PgOutputDecodeError, match=r"Commit \('C'\).*offset 26.*2 unexpected"):
        decode_message(commit(0, 1, 2, 3) + b"xx")


def test_unknown_tuple_kind_names_offset() -> None:
    raw = insert(5, (b"ab",)).replace(b"t\x00\x00\x00\x02", b"x\x00\x00\x00\x02")
    with pytest.raises(PgOutputDecodeError, match=r"Insert \('I'\).*offset 8.*'x'") as info:
        decode_message(raw)
    assert info.value.offset == 8
    assert info.value.message_type == "Insert ('I')"


def test_bad_markers() -> None:
    with pytest.raises(PgOutputDecodeError, match=r"Update.*offset 5.*got 'Q'"):
        decode_message(b"U" + struct.pack(">I", 5) + b"Q" + tupledata((b"1",)))
    with pytest.raises(PgOutputDecodeError, match=r"Delete.*expected 'K' or 'O'"):
        decode_message(b"D" + struct.pack(">I", 5) + b"N" + tupledata((b"1",)))
    with pytest.raises(PgOutputDecodeError, match=r"Insert.*expected 'N'"):
        decode_message(b"I" + struct.pack(">I", 5) + b"K" + tupledata((b"1",)))


def test_missing_string_terminator() -> None:
    with pytest.raises(PgOutputDecodeError, match=r"Type \('Y'\).*offset 5"):
        decode_message(b"Y" + struct.pack(">I", 1) + b"public")


def test_truncate_count_beyond_buffer() -> None:
    with pytest.raises(PgOutputDecodeError, match="Truncate"):
        decode_message(b"T" + struct.pack(">IB", 1_000_000_000, 0) + b"\x00\x00\x00\x01")


VALID_MESSAGES = [
    begin(1, 2, 3),
    commit(0, 1, 2, 3),
    origin(1, "o"),
    relation(5, "public", "t", "d", [(1, "id", 20, -1), (0, "v", 25, -1)]),
    type_(70000, "public", "mood"),
    insert(5, (b"1", b"hello", None, UNCHANGED_TOAST)),
    update(5, (b"1", b"x"), (b"0", b"y"), b"O"),
    delete(5, (b"1", None)),
    truncate([5, 6], 1),
    message(True, 5, "p", b"content"),
    b"S" + struct.pack(">IB", 1, 1),
    b"c" + struct.pack(">IBQQq", 1, 0, 2, 3, 4),
    b"A" + struct.pack(">II", 1, 2),
]


@pytest.mark.parametrize("raw", VALID_MESSAGES, ids=lambda raw: chr(raw[0]))
def test_every_truncation_is_a_decode_error(raw: bytes) -> None:
    decode_message(raw)
    for cut in range(len(raw)):
        with pytest.raises(PgOutputDecodeError) as info:
            decode_message(raw[:cut])
        assert 0 <= info.value.offset <= cut
        assert "byte offset" in str(info.value)


@given(st.binary(max_size=64))
def test_garbage_raises_only_decode_errors(raw: bytes) -> None:
    with contextlib.suppress(PgOutputDecodeError):
        decode_message(raw)


def _insert_outcome(fn: Any, raw: bytes) -> Any:
    try:
        return fn(raw)
    except PgOutputDecodeError as exc:
        return ("error", exc.offset, str(exc))


@given(st.binary(max_size=64))
def test_decode_insert_is_decode_message_for_inserts(tail: bytes) -> None:
    """The reader's Insert fast path: same tuple, or the same error, as decode_message."""
    for raw in (b"I" + tail, insert(5, (b"1", None, UNCHANGED_TOAST, BinaryValue(b"x"))) + tail):
        general = _insert_outcome(decode_message, raw)
        if isinstance(general, Insert):
            general = (general.relation_id, general.new)
        assert _insert_outcome(decode_insert, raw) == general


datum = st.one_of(
    st.none(),
    st.just(UNCHANGED_TOAST),
    st.binary(max_size=40),
    st.binary(max_size=10).map(BinaryValue),
)


@given(
    st.lists(datum, max_size=12).map(tuple),
    st.integers(0, 12),
    st.integers(0, 40),
    st.binary(max_size=3),
)
def test_insert_parser_is_decode_insert_or_declines(
    new: tuple[Datum, ...], width: int, cut: int, extra: bytes
) -> None:
    """The generated Insert parser gives decode_insert's tuple, or None (never raises)."""
    raw = insert(9, new)
    for buf in (raw, raw[: len(raw) - cut], raw + extra):
        parsed = insert_parser(width)(buf)
        if parsed is not None:
            assert (9, parsed) == decode_insert(buf)
    if width == len(new) and not any(isinstance(v, BinaryValue) for v in new):
        assert insert_parser(width)(raw) == new


@given(
    st.integers(0, 2**32 - 1),
    st.lists(datum, max_size=30).map(tuple),
    st.one_of(st.none(), st.lists(datum, max_size=30).map(tuple)),
    st.one_of(st.none(), st.integers(0, 2**32 - 1)),
)
def test_update_round_trip(
    relid: int, new: tuple[Datum, ...], old: tuple[Datum, ...] | None, xid: int | None
) -> None:
    decoded = decode_message(update(relid, new, old, b"O", xid=xid), in_stream=xid is not None)
    assert decoded == Update(relid, None if old is None else "O", old, new, xid)


# ----------------------------------------------------------------------- relation cache


def _product_relation(extra: bool = False) -> Relation:
    cols = [
        RelationColumn(1, "id", 20, -1),
        RelationColumn(0, "price", 1700, 786442),
        RelationColumn(0, "mood", 70000, -1),
        RelationColumn(0, "amount", 70001, -1),
        RelationColumn(0, "body", 25, -1),
    ]
    if extra:
        cols.append(RelationColumn(0, "tags", 1009, -1))
    return Relation(16384, "public", "product", "d", tuple(cols))


def _cache() -> RelationCache:
    cache = RelationCache()
    cache.apply(Type(70000, "public", "mood"))
    cache.apply(Type(70001, "", "numeric"))  # a domain over numeric: base type's name
    cache.apply(_product_relation())
    return cache


def test_relation_cache_schema() -> None:
    cache = _cache()
    schema = cache.schema(16384)
    assert schema == TableSchema(
        relation_id=16384,
        schema="public",
        table="product",
        columns=(
            Column("id", 20, -1, True, "int8"),
            Column("price", 1700, 786442, False, "numeric"),
            Column("mood", 70000, -1, False, "mood"),
            Column("amount", 70001, -1, False, "numeric"),
            Column("body", 25, -1, False, "text"),
        ),
        replica_identity="d",
    )
    assert 16384 in cache and 1 not in cache
    assert cache.type_name(3802) == "jsonb"
    assert cache.type_name(99999) is None


def test_relation_cache_rows_and_keys() -> None:
    cache = _cache()
    row = cache.row(16384, (b"7", b"12.50", b"happy", b"3.10", UNCHANGED_TOAST))
    assert row == {
        "id": 7,
        "price": Decimal("12.50"),
        "mood": "happy",
        "amount": Decimal("3.10"),  # domain over numeric converts like numeric
        "body": UNCHANGED_TOAST,
    }
    assert row["body"] is UNCHANGED_TOAST
    assert cache.key(16384, row) == {"id": 7}
    assert cache.row(16384, (b"7", None, None, None, None), kind="K") == {"id": 7}
    assert cache.row(16384, (b"7", None, None, None, None)) == {
        "id": 7,
        "price": None,
        "mood": None,
        "amount": None,
        "body": None,
    }


def test_relation_cache_follows_schema_changes() -> None:
    cache = _cache()
    cache.apply(_product_relation(extra=True))
    row = cache.row(16384, (b"1", b"1", b"sad", b"2", b"b", b'{a,"b c",NULL}'))
    assert row["tags"] == ["a", "b c", None]
    with pytest.raises(SchemaMismatchError, match=r"public\.product.*5 columns.*6"):
        cache.row(16384, (b"1", b"1", b"sad", b"2", b"b"))


def test_relation_cache_type_message_after_relation_recompiles() -> None:
    cache = RelationCache()
    cache.apply(Relation(1, "public", "t", "d", (RelationColumn(1, "a", 80000, -1),)))
    assert cache.row(1, (b"5",)) == {"a": "5"}
    cache.apply(Type(80000, "pg_catalog", "int4"))
    assert cache.row(1, (b"5",)) == {"a": 5}
    assert cache.schema(1).columns[0].type_name == "int4"


def test_relation_cache_unknown_relation() -> None:
    with pytest.raises(UnknownRelationError, match="relation id 42"):
        RelationCache().row(42, (b"1",))
    with pytest.raises(UnknownRelationError):
        RelationCache().schema(42)


def test_relation_cache_conversion_error_names_everything() -> None:
    cache = _cache()
    long_bad = b"not-a-number" * 20
    with pytest.raises(
        ValueConversionError,
        match=r"'price' of public\.product, type numeric \(oid 1700\).*'not-a-number.*240 bytes",
    ) as info:
        cache.row(16384, (b"7", long_bad, None, None, None))
    assert len(str(info.value)) < 400


def test_relation_cache_binary_value_is_a_clear_error() -> None:
    cache = _cache()
    with pytest.raises(ValueConversionError, match=r"'id'.*binary format.*binary 'false'"):
        cache.row(16384, (BinaryValue(b"\x00" * 8), None, None, None, None))
    with pytest.raises(ValueConversionError, match=r"'id'.*binary format"):
        cache.row(16384, (BinaryValue(b"\x00" * 8), None, None, None, None), kind="K")


def test_relation_cache_key_errors() -> None:
    cache = _cache()
    with pytest.raises(SchemaMismatchError, match="'id'"):
        cache.key(16384, {"price": 1})
    nothing = RelationCache()
    nothing.apply(Relation(2, "public", "log", "n", (RelationColumn(0, "msg", 25, -1),)))
    assert nothing.key(2, {"msg": "x"}) == {}
