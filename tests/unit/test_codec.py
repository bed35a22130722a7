"""Avro codec: schemas from relations, exact round trips, single-object framing."""

from __future__ import annotations

import dataclasses
import datetime
import io
import json
import math
import uuid
from decimal import Decimal
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint as fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.codec import (
    DecodeError,
    EncodeError,
    InMemorySchemaStore,
    SchemaConflictError,
    SchemaNotFoundError,
    SingleObjectCodec,
    compile_table,
    key_schema,
    make_codec,
    value_schema,
)
from pipeline.codec.avro_schema import avro_namespace, column_avro_type
from pipeline.codec.fingerprint import crc64_avro, fingerprint
from pipeline.codec.single_object import MAGIC, split_header
from pipeline.events import UNCHANGED_TOAST, ChangeEvent, Column, Source, TableSchema

UTC = datetime.UTC
PREFIX = "catalog"
TOPIC = "catalog.public.items"

# (column, value strategy) for every row of the events.py type table, and more
INT8_MIN, INT8_MAX = -(2**63), 2**63 - 1
# as the reader parses JSON: integers as int, other numbers as Decimal (parse_float=Decimal)
JSON_NUMBERS = st.decimals(allow_nan=False, allow_infinity=False, places=3) | st.builds(
    lambda text: Decimal(text), st.sampled_from(["1e400", "-0.0", "1.5E-7", "12.50"])
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | JSON_NUMBERS | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)
NUMERIC = st.decimals(allow_nan=True, allow_infinity=True) | st.decimals(places=2)
MATRIX = st.integers(1, 3).flatmap(
    lambda n: st.lists(
        st.lists(st.none() | st.integers(-(2**31), 2**31 - 1), min_size=n, max_size=n), max_size=3
    )
)
FIXED_OFFSETS = st.builds(  # timetz values carry a fixed offset (pipeline.values)
    lambda s: datetime.timezone(datetime.timedelta(seconds=s)), st.integers(-15 * 3600, 15 * 3600)
)
COLUMNS: list[tuple[Column, st.SearchStrategy[Any]]] = [
    (Column("id", 20, is_key=True), st.integers(INT8_MIN, INT8_MAX)),
    (Column("small", 21), st.integers(-(2**15), 2**15 - 1)),
    (Column("qty", 23), st.integers(-(2**31), 2**31 - 1)),
    (
        Column("price", 1700, (10 << 16 | 2) + 4),
        st.decimals(places=2, min_value=-(10**7), max_value=10**7),
    ),
    (Column("exact", 1700), NUMERIC),
    (Column("ratio", 700), st.floats(width=32) | st.sampled_from([1.1, 0.1, 3.4e38])),
    (Column("score", 701), st.floats()),
    (Column("title", 25), st.text() | st.just("UNCHANGED_TOAST")),
    (Column("code", 1043), st.text(max_size=10)),
    (Column("flag", 1042), st.text(max_size=3)),
    (Column("nm", 19), st.text(max_size=10)),
    (Column("active", 16), st.booleans()),
    (Column("changed", 1184), st.datetimes(timezones=st.just(UTC))),
    (Column("local", 1114), st.datetimes()),
    (Column("day", 1082), st.dates()),
    (Column("at", 1083), st.times()),
    (Column("at_tz", 1266), st.times(timezones=FIXED_OFFSETS)),
    (
        Column("hosts", 1041),
        st.lists(st.none() | st.sampled_from(["10.0.0.1", "::1/128"]), max_size=3),
    ),
    (Column("span", 1186), st.sampled_from(["1 day 02:00:00", "-00:00:01"])),
    (Column("doc", 3802), JSON_VALUES),
    (Column("raw_json", 114), JSON_VALUES),
    (Column("ref", 2950), st.uuids()),
    (Column("blob", 17), st.binary()),
    (Column("tags", 1009), st.lists(st.none() | st.text(max_size=5), max_size=4)),
    (Column("grid", 1007), MATRIX),
    (Column("amounts", 1231), st.lists(st.none() | NUMERIC, max_size=3)),
    (Column("mood", 91234, type_name="mood"), st.text(max_size=5)),
    (Column("Odd Name-é", 25), st.text(max_size=5)),
    (Column("odd_name__", 25), st.text(max_size=5)),
]
TABLE = TableSchema(7, "public", "items", tuple(c for c, _ in COLUMNS))


def _cell(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), st.just(UNCHANGED_TOAST), strategy)


ROWS = st.fixed_dictionaries({c.name: (s if c.is_key else _cell(s)) for c, s in COLUMNS})
SOURCES = st.builds(
    Source,
    db=st.just("catalog"),
    schema=st.just("public"),
    table=st.just("items"),
    lsn=st.integers(0, 2**63 - 1),
    tx_id=st.none() | st.integers(0, 2**32),
    ts_ms=st.integers(0, 2**45),
    snapshot=st.sampled_from(["false", "true", "first", "last", "incremental"]),
)
EVENTS = st.builds(
    ChangeEvent,
    op=st.sampled_from(["c", "u", "d", "r", "t"]),
    source=SOURCES,
    ts_ms=st.integers(0, 2**45),
    before=st.none() | ROWS,
    after=st.none() | ROWS,
)


def norm(value: Any) -> Any:
    """Comparable form: exact Decimal text, NaN equal to NaN, types kept apart."""
    if value is UNCHANGED_TOAST:
        return ("TOAST",)
    if isinstance(value, Decimal):
        return ("D", str(value))
    if isinstance(value, float):
        return ("F", "nan" if math.isnan(value) else value.hex())
    if isinstance(value, bool | int):
        return (type(value).__name__, value)
    if isinstance(value, datetime.datetime):
        return ("DT", value.isoformat(), str(value.tzinfo))
    if isinstance(value, dict):
        return {k: norm(v) for k, v in value.items()}
    if isinstance(value, list):
        return [norm(v) for v in value]
    return (type(value).__name__, value)


def norm_event(event: ChangeEvent) -> Any:
    return (event.op, event.source, event.ts_ms, norm(event.before), norm(event.after), event.key)


@pytest.fixture
def codec() -> SingleObjectCodec:
    return SingleObjectCodec(InMemorySchemaStore(), PREFIX)


# --- schemas ---------------------------------------------------------------------------


def test_type_mapping_by_oid_and_name() -> None:
    assert column_avro_type(Column("a", 21)) == "int"
    assert column_avro_type(Column("a", 23)) == "int"
    assert column_avro_type(Column("a", 20)) == "long"
    assert column_avro_type(Column("a", 701)) == "double"
    assert column_avro_type(Column("a", 16)) == "boolean"
    assert column_avro_type(Column("a", 17)) == "bytes"
    assert column_avro_type(Column("a", 1184)) == {
        "type": "long",
        "logicalType": "timestamp-micros",
    }
    assert column_avro_type(Column("a", 1114))["logicalType"] == "local-timestamp-micros"
    assert column_avro_type(Column("a", 1082)) == {"type": "int", "logicalType": "date"}
    assert column_avro_type(Column("a", 1083))["logicalType"] == "time-micros"
    assert column_avro_type(Column("a", 2950)) == {"type": "string", "logicalType": "uuid"}
    assert column_avro_type(Column("a", 3802))["connect.name"] == "io.debezium.data.Json"
    numeric = column_avro_type(Column("a", 1700, (12 << 16 | 3) + 4))
    assert numeric["connect.parameters"] == {"precision": "12", "scale": "3"}
    assert "connect.parameters" not in column_avro_type(Column("a", 1700))
    # type-name fallback for unknown OIDs, arrays by name, unknown -> string
    assert column_avro_type(Column("a", 99999, type_name="int8")) == "long"
    assert column_avro_type(Column("a", 99999, type_name="_int4"))["type"] == "array"
    assert column_avro_type(Column("a", 99999, type_name="text[]"))["type"] == "array"
    assert column_avro_type(Column("a", 99999, type_name="mood")) == "string"
    array = column_avro_type(Column("a", 1007))
    assert array["items"][:2] == ["null", "int"]
    depth, items = 1, array["items"]
    while len(items) == 3:
        depth, items = depth + 1, items[2]["items"]
    assert depth == 6  # PostgreSQL's MAXDIM


def test_envelope_and_key_schemas() -> None:
    table = TableSchema(1, "Sales-EU", "2024 orders", (Column("id", 23, is_key=True),))
    assert avro_namespace("my.prefix", table) == "my.prefix.Sales_EU._2024_orders"
    env = value_schema(table, "my.prefix")
    parse_schema(env)  # valid Avro
    assert env["name"] == "Envelope"
    fields = {f["name"]: f for f in env["fields"]}
    assert list(fields) == ["before", "after", "op", "ts_ms", "source"]
    assert fields["before"]["type"][0] == "null" and fields["before"]["default"] is None
    assert fields["after"]["type"] == ["null", "my.prefix.Sales_EU._2024_orders.Value"]
    source = {f["name"]: f["type"] for f in fields["source"]["type"]["fields"]}
    assert source == {
        "db": "string",
        "schema": "string",
        "table": "string",
        "lsn": "long",
        "txId": ["null", "long"],
        "ts_ms": "long",
        "snapshot": "string",
    }
    key = key_schema(table, "my.prefix")
    assert key["name"] == "Key" and key["fields"] == [{"name": "id", "type": "int"}]


def test_unavailable_enum_defined_once_then_referenced() -> None:
    env = value_schema(TABLE, PREFIX)
    value = env["fields"][0]["type"][1]
    unions = [f["type"] for f in value["fields"]]
    assert unions[0][2]["type"] == "enum" and unions[0][2]["symbols"] == ["UNCHANGED_TOAST"]
    assert all(u[2] == "catalog_cdc.Unavailable" for u in unions[1:])
    assert all(f["default"] is None for f in value["fields"])


def test_invalid_column_names_are_sanitized_and_restored(codec: SingleObjectCodec) -> None:
    value = value_schema(TABLE, PREFIX)["fields"][0]["type"][1]
    names = [f["name"] for f in value["fields"]]
    assert len(set(names)) == len(names)
    odd = next(f for f in value["fields"] if f.get("pg.column") == "Odd Name-é")
    assert odd["name"] == "Odd_Name__"
    assert "odd_name___2" in names or "odd_name__" in names


# --- fingerprints and framing -------------------------------------------------------------

SPEC_VECTORS = [  # apache/avro share/test/data/schema-tests.txt
    ('"null"', 7195948357588979594),
    ('"int"', 8247732601305521295),
    ('"string"', -8142146995180207161),
    ('{"name":"foo","type":"record","fields":[]}', -4824392279771201922),
    ('{"name":"x.y.foo","type":"record","fields":[]}', 5916914534497305771),
    ('{"name":"foo","type":"fixed","size":15}', 1756455273707447556),
    ('{"type":"map","values":"string"}', -8732877298790414990),
]


@pytest.mark.parametrize(("canonical", "expected"), SPEC_VECTORS)
def test_crc64_avro_spec_vectors(canonical: str, expected: int) -> None:
    assert crc64_avro(canonical.encode()) == expected & (2**64 - 1)
    assert fingerprint(json.loads(canonical)) == (expected & (2**64 - 1)).to_bytes(8, "little")


def test_fingerprint_matches_fastavro() -> None:
    for schema in (value_schema(TABLE, PREFIX), key_schema(TABLE, PREFIX)):
        pcf = to_parsing_canonical_form(schema)
        assert fingerprint(schema).hex() == fastavro_fingerprint(pcf, "CRC-64-AVRO")


def test_single_object_header(codec: SingleObjectCodec) -> None:
    event = ChangeEvent("c", Source("catalog", "public", "items", 1, 2, 3), 4, after={"id": 1})
    data = codec.encode_value(TOPIC, TABLE, event)
    assert data[:2] == MAGIC == b"\xc3\x01"
    fp, body = split_header(data)
    assert fp == fingerprint(value_schema(TABLE, PREFIX))
    # the body is plain Avro binary of the writer schema
    record: Any = schemaless_reader(
        io.BytesIO(body), parse_schema(value_schema(TABLE, PREFIX)), None
    )
    assert record["after"]["id"] == 1 and record["after"]["title"] is None


def test_decode_errors(codec: SingleObjectCodec) -> None:
    with pytest.raises(DecodeError, match="single-object"):
        codec.decode_value(b"\x00\x00\x00\x00\x01abc")
    with pytest.raises(SchemaNotFoundError, match="0102030405060708"):
        codec.decode_value(MAGIC + bytes(range(1, 9)) + b"\x00")
    with pytest.raises(DecodeError, match="fingerprint"):
        event = ChangeEvent("c", Source("d", "s", "t", 1, None, 1), 1, after={"id": 1})
        codec.decode_value(codec.encode_value(TOPIC, TABLE, event)[:-3])


def test_encode_error_names_the_table(codec: SingleObjectCodec) -> None:
    event = ChangeEvent("c", Source("d", "s", "t", 1, None, 1), 1, after={"id": 1, "qty": "7"})
    with pytest.raises(EncodeError, match=r"public\.items"):
        codec.encode_value(TOPIC, TABLE, event)
    too_big = ChangeEvent("c", Source("d", "s", "t", 1, None, 1), 1, after={"id": 1, "qty": 2**31})
    with pytest.raises(EncodeError, match="int4"):
        codec.encode_value(TOPIC, TABLE, too_big)
    with pytest.raises(EncodeError, match="key"):
        codec.encode_key(TOPIC, TABLE, {})


# --- round trips ---------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(event=EVENTS, key=st.integers(INT8_MIN, INT8_MAX))
def test_round_trip_is_exact(event: ChangeEvent, key: int) -> None:
    codec = SingleObjectCodec(InMemorySchemaStore(), PREFIX)
    event.key = {"id": key}
    value = codec.encode_value(TOPIC, TABLE, event)
    decoded = codec.decode(codec.encode_key(TOPIC, TABLE, event.key), value)
    assert decoded is not None
    assert norm_event(decoded) == norm_event(event)


@settings(max_examples=200, deadline=None)
@given(event=EVENTS)
def test_fast_writer_bytes_equal_fastavro(event: ChangeEvent) -> None:
    table = compile_table(TABLE, PREFIX)
    fast = bytearray()
    table.write_value(fast, event)
    reference = io.BytesIO()
    schemaless_writer(reference, table.parsed_value, table.to_avro_record(event))
    assert bytes(fast) == reference.getvalue()


@settings(max_examples=200, deadline=None)
@given(event=EVENTS)
def test_before_of_deletes_only_leaves_out_just_the_before_of_other_ops(
    event: ChangeEvent,
) -> None:
    codec = SingleObjectCodec(InMemorySchemaStore(), PREFIX)
    value = codec.encode_value(TOPIC, TABLE, event)
    full = codec.decode_value(value)
    lean = codec.decode_value(value, before_of_deletes_only=True)
    assert norm_event(lean) == norm_event(
        dataclasses.replace(full, before=full.before if event.op == "d" else None)
    )


def test_toast_null_and_lookalike_text_stay_distinct(codec: SingleObjectCodec) -> None:
    row = {"id": 1, "title": UNCHANGED_TOAST, "code": "UNCHANGED_TOAST", "doc": None}
    event = ChangeEvent("u", Source("d", "s", "t", 1, None, 1), 1, before=None, after=row)
    decoded = codec.decode_value(codec.encode_value(TOPIC, TABLE, event))
    assert decoded.after is not None
    assert decoded.after["title"] is UNCHANGED_TOAST
    assert decoded.after["code"] == "UNCHANGED_TOAST"
    assert decoded.after["doc"] is None
    assert decoded.after["blob"] is None  # absent from the image -> NULL


def test_specific_values(codec: SingleObjectCodec) -> None:
    row = {
        "id": INT8_MAX,
        "price": Decimal("12345.60"),
        "exact": Decimal("-1.000000000000000000000000000000000001E+40"),
        "ratio": 1.1,
        "changed": datetime.datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=UTC),
        "local": datetime.datetime(1900, 1, 1, 0, 0, 0, 1),
        "day": datetime.date(1, 1, 1),
        "doc": {
            "a": [1, Decimal("2.50"), None, {"b": 'ü\n"'}],
            "big": 2**80,
            "e": Decimal("1E+400"),
        },
        "raw_json": [Decimal("0.1"), "x"],
        "at_tz": datetime.time(
            12,
            0,
            1,
            5,
            tzinfo=datetime.timezone(datetime.timedelta(hours=-4, minutes=-56, seconds=-2)),
        ),
        "grid": [[1, None], [3, 4]],
        "amounts": [Decimal("NaN"), Decimal("-Infinity"), None, Decimal("0.00")],
        "ref": uuid.UUID(int=0),
    }
    event = ChangeEvent("r", Source("d", "s", "t", 1, None, 1), 1, after=row)
    decoded = codec.decode_value(codec.encode_value(TOPIC, TABLE, event))
    assert decoded.after is not None
    assert norm({k: decoded.after[k] for k in row}) == norm(row)
    assert decoded.after["changed"].tzinfo is not None
    assert decoded.after["local"].tzinfo is None


def test_tombstone_and_key(codec: SingleObjectCodec) -> None:
    assert codec.decode(codec.encode_key(TOPIC, TABLE, {"id": 5}), None) is None
    assert codec.decode_key(codec.encode_key(TOPIC, TABLE, {"id": -5})) == {"id": -5}


# --- evolution -------------------------------------------------------------------------------

V1 = TableSchema(9, "public", "stock", (Column("id", 23, is_key=True), Column("qty", 23)))
V2 = TableSchema(
    9,
    "public",
    "stock",
    (
        Column("id", 20, is_key=True),
        Column("qty", 20),
        Column("note", 25),
        Column("updated", 1184),
    ),
)


def test_new_version_reads_old_data() -> None:
    codec = SingleObjectCodec(InMemorySchemaStore(), PREFIX)
    old = ChangeEvent(
        "u",
        Source("d", "public", "stock", 10, 3, 100),
        101,
        before={"id": 1, "qty": UNCHANGED_TOAST},
        after={"id": 1, "qty": 2**31 - 1},
    )
    old_bytes = codec.encode_value("catalog.public.stock", V1, old)
    new_bytes = codec.encode_value(
        "catalog.public.stock",
        V2,
        ChangeEvent("c", old.source, 1, after={"id": 2**40, "qty": 2**40, "note": "n"}),
    )
    assert split_header(old_bytes)[0] != split_header(new_bytes)[0]
    reader = value_schema(V2, PREFIX)
    resolved = codec.decode_value(old_bytes, reader_schema=reader)
    assert resolved.after == {"id": 1, "qty": 2**31 - 1, "note": None, "updated": None}
    assert resolved.before == {"id": 1, "qty": UNCHANGED_TOAST, "note": None, "updated": None}
    assert codec.decode_value(old_bytes).after == {"id": 1, "qty": 2**31 - 1}  # writer's view
    assert codec.decode_value(new_bytes).after == {
        "id": 2**40,
        "qty": 2**40,
        "note": "n",
        "updated": None,
    }


def test_same_canonical_form_different_logical_type_is_a_conflict() -> None:
    store = InMemorySchemaStore()
    codec = SingleObjectCodec(store, PREFIX)
    as_text = TableSchema(3, "public", "t", (Column("id", 23, is_key=True), Column("v", 25)))
    as_json = TableSchema(3, "public", "t", (Column("id", 23, is_key=True), Column("v", 3802)))
    event = ChangeEvent("c", Source("d", "public", "t", 1, None, 1), 1, after={"id": 1, "v": "x"})
    codec.encode_value("catalog.public.t", as_text, event)
    with pytest.raises(SchemaConflictError, match="Parsing Canonical Form"):
        codec.encode_value("catalog.public.t", as_json, event)


def test_in_memory_store_register_is_idempotent() -> None:
    store = InMemorySchemaStore()
    schema = value_schema(TABLE, PREFIX)
    assert store.register(schema) == store.register(json.loads(json.dumps(schema)))
    assert len(store) == 1
    assert store.lookup(fingerprint(schema)) == json.loads(json.dumps(schema))


def test_make_codec_picks_single_object_without_registry() -> None:
    store = InMemorySchemaStore()
    codec = make_codec(topic_prefix=PREFIX, schema_store=store)
    assert isinstance(codec, SingleObjectCodec)
