"""Avro schemas derived from a table's Relation, and the fast row <-> record converters.

For every :class:`~pipeline.events.TableSchema` this module derives

* a **key schema**: record ``{namespace}.Key`` of the key columns (plain, non-null);
* a **value schema**: Debezium's envelope, record ``{namespace}.Envelope`` with
  ``before``/``after`` (``["null", Value]``; ``Value`` holds every column), ``op``,
  ``ts_ms`` and ``source`` (record ``catalog_cdc.Source``: db, schema, table, lsn,
  txId, ts_ms, snapshot).

The namespace is ``{topic prefix}.{schema}.{table}``, each part made Avro-valid
(characters outside ``[A-Za-z0-9_]`` become ``_``; a leading digit gets a ``_``).  A
column whose name is not a valid Avro name keeps its PostgreSQL name in the field
attribute ``pg.column``, so decoding restores it.

Guarantee: for every value of the PostgreSQL -> Python table in :mod:`pipeline.events`
``from_avro(to_avro(row)) == row`` exactly, with :data:`~pipeline.events.UNCHANGED_TOAST`
and ``None`` kept distinct.  A column absent from a row image is encoded as NULL.

Type mapping (by type OID, ``Column.type_name`` as a fallback; anything else ->
``string``):

============================  ==============================================================
PostgreSQL                    Avro
============================  ==============================================================
int2, int4                    ``int``
int8, oid                     ``long``
numeric (any typmod)          ``string`` marked ``connect.name: catalog_cdc.data.Decimal``
                              (``str(Decimal)``; precision/scale, when declared, in
                              ``connect.parameters``)
float4, float8                ``double``
bool                          ``boolean``
text, varchar, bpchar, name   ``string``
timestamptz                   ``long`` ``timestamp-micros`` (UTC; decodes aware, UTC)
timestamp                     ``long`` ``local-timestamp-micros`` (decodes naive)
date                          ``int`` ``date``
time                          ``long`` ``time-micros``
timetz                        ``string`` marked ``connect.name: catalog_cdc.data.TimeTz``
                              (ISO text with its offset)
json, jsonb                   ``string`` marked ``connect.name: io.debezium.data.Json``
                              (compact JSON text, ``Decimal`` numbers exact; decoded
                              with ``parse_float=Decimal``, as the reader parses it)
xml, inet, interval, money..  ``string`` (the reader keeps their text)
uuid                          ``string`` ``uuid``
bytea                         ``bytes``
arrays                        ``array`` of ``["null", element, array...]`` nested up to
                              PostgreSQL's 6 dimensions
============================  ==============================================================

Decisions:

* **numeric** is a decimal *string*: exact for every value PostgreSQL can hold,
  ``NaN`` and ``±Infinity`` included (``numeric(p,s)`` accepts ``NaN``, which Avro's
  ``decimal`` cannot carry), and a change of precision or scale stays a compatible
  ``string`` -> ``string``.  Avro's ``decimal`` logical type would also be invisible to
  the single-object fingerprint (Parsing Canonical Form drops ``precision``/``scale``),
  so two scales would share one fingerprint.
* **float4** is widened to ``double``: the reader's Python float for a ``real`` (parsed
  from PostgreSQL's shortest text, e.g. ``1.1``) is not a float32 value, and Avro
  ``float`` would turn it into ``1.100000023841858``.  ``double`` carries it exactly.
* **Unchanged TOAST**: every ``Value`` field is ``["null", T, catalog_cdc.Unavailable]``
  with ``default: null``; ``Unavailable`` is an enum with the single symbol
  ``UNCHANGED_TOAST``, defined once and referenced by name afterwards.  Encoding picks
  the union branch explicitly (fastavro's tuple notation), so a text value
  ``"UNCHANGED_TOAST"`` is never confused with the marker.
* JSON ``null`` inside a json/jsonb column is ``None`` in the event model, as is SQL
  NULL; both encode as Avro ``null``.

Evolution: a new column becomes a new nullable field with ``default: null`` and
``int4 -> int8`` is Avro's ``int -> long`` promotion, so data written with an older
value schema reads with the newer one (fastavro schema resolution).

Speed: :func:`compile_table` and :class:`EnvelopeDecoder` build per-column converter
closures once per schema; the per-event work is one loop over precomputed tuples.
"""

from __future__ import annotations

import datetime
import json
import re
import struct
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, cast

from fastavro import parse_schema

from pipeline.codec.errors import DecodeError, EncodeError
from pipeline.events import (
    UNCHANGED_TOAST,
    ChangeEvent,
    Column,
    Row,
    Source,
    TableSchema,
)

AvroSchema = Any
"""An Avro schema as JSON-compatible Python data (dict, list or type name)."""

Converter = Callable[[Any], Any]

UNAVAILABLE_NAME: Final = "catalog_cdc.Unavailable"
UNAVAILABLE_SYMBOL: Final = "UNCHANGED_TOAST"
SOURCE_NAME: Final = "catalog_cdc.Source"
JSON_MARK: Final = "io.debezium.data.Json"
DECIMAL_MARK: Final = "catalog_cdc.data.Decimal"
TIMETZ_MARK: Final = "catalog_cdc.data.TimeTz"
COLUMN_ATTR: Final = "pg.column"
MAX_ARRAY_DIMS: Final = 6
"""PostgreSQL's MAXDIM: arrays have at most 6 dimensions."""

_TOAST_DATUM: Final = (UNAVAILABLE_NAME, UNAVAILABLE_SYMBOL)
_INVALID_NAME_CHARS = re.compile(r"[^A-Za-z0-9_]")

# --- PostgreSQL type -> Avro type -------------------------------------------------

_INT: Final = "int"
_LONG: Final = "long"
_DOUBLE: Final = "double"
_BOOL: Final = "boolean"
_STRING: Final = "string"
_BYTES: Final = "bytes"
_TIMESTAMPTZ: Final = {"type": "long", "logicalType": "timestamp-micros"}
_TIMESTAMP: Final = {"type": "long", "logicalType": "local-timestamp-micros"}
_DATE: Final = {"type": "int", "logicalType": "date"}
_TIME: Final = {"type": "long", "logicalType": "time-micros"}
_JSON: Final = {"type": "string", "connect.name": JSON_MARK}
_UUID: Final = {"type": "string", "logicalType": "uuid"}
_TIMETZ: Final = {"type": "string", "connect.name": "catalog_cdc.data.TimeTz"}
_NUMERIC: Final = "numeric"  # placeholder: the Avro type depends on the typmod

# scalar OID -> Avro type; array OID -> element OID
_SCALAR_OIDS: Final[dict[int, Any]] = {
    16: _BOOL,
    17: _BYTES,
    18: _STRING,  # "char"
    19: _STRING,  # name
    20: _LONG,
    21: _INT,
    23: _INT,
    25: _STRING,
    26: _LONG,  # oid (unsigned 32 bit)
    114: _JSON,
    700: _DOUBLE,
    701: _DOUBLE,
    1042: _STRING,
    1043: _STRING,
    1082: _DATE,
    1083: _TIME,
    1114: _TIMESTAMP,
    1184: _TIMESTAMPTZ,
    1700: _NUMERIC,
    2950: _UUID,
    3802: _JSON,
    1266: _TIMETZ,
    # kept as their text by the reader (pipeline.reader.values)
    142: _STRING,  # xml
    650: _STRING,  # cidr
    790: _STRING,  # money
    829: _STRING,  # macaddr
    869: _STRING,  # inet
    1186: _STRING,  # interval
    1560: _STRING,  # bit
    1562: _STRING,  # varbit
    3614: _STRING,  # tsvector
}
_ARRAY_OIDS: Final[dict[int, int]] = {
    1000: 16,
    1001: 17,
    1002: 18,
    1003: 19,
    1016: 20,
    1005: 21,
    1007: 23,
    1009: 25,
    1028: 26,
    199: 114,
    1021: 700,
    1022: 701,
    1014: 1042,
    1015: 1043,
    1182: 1082,
    1183: 1083,
    1115: 1114,
    1185: 1184,
    1231: 1700,
    2951: 2950,
    3807: 3802,
    1270: 1266,
    143: 142,
    651: 650,
    791: 790,
    1040: 829,
    1041: 869,
    1187: 1186,
    1561: 1560,
    1563: 1562,
    3643: 3614,
}
_TYPE_NAMES: Final[dict[str, int]] = {
    "bool": 16,
    "boolean": 16,
    "bytea": 17,
    "char": 18,
    "name": 19,
    "int8": 20,
    "bigint": 20,
    "int2": 21,
    "smallint": 21,
    "int4": 23,
    "integer": 23,
    "int": 23,
    "text": 25,
    "oid": 26,
    "json": 114,
    "float4": 700,
    "real": 700,
    "float8": 701,
    "double precision": 701,
    "bpchar": 1042,
    "character": 1042,
    "varchar": 1043,
    "character varying": 1043,
    "date": 1082,
    "time": 1083,
    "time without time zone": 1083,
    "timestamp": 1114,
    "timestamp without time zone": 1114,
    "timestamptz": 1184,
    "timestamp with time zone": 1184,
    "numeric": 1700,
    "decimal": 1700,
    "uuid": 2950,
    "jsonb": 3802,
    "timetz": 1266,
    "time with time zone": 1266,
    "xml": 142,
    "cidr": 650,
    "money": 790,
    "macaddr": 829,
    "inet": 869,
    "interval": 1186,
    "bit": 1560,
    "varbit": 1562,
    "tsvector": 3614,
}


def avro_name(text: str) -> str:
    """``text`` made a valid Avro name: ``[A-Za-z_][A-Za-z0-9_]*``."""
    name = _INVALID_NAME_CHARS.sub("_", text)
    if not name or name[0].isdigit():
        name = "_" + name
    return name


def avro_namespace(topic_prefix: str, table_schema: TableSchema) -> str:
    """Namespace of a table's schemas: ``{prefix}.{schema}.{table}``, each part sanitized."""
    parts = [*topic_prefix.split("."), table_schema.schema, table_schema.table]
    return ".".join(avro_name(p) for p in parts if p)


def _numeric_type(type_modifier: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", "connect.name": DECIMAL_MARK}
    if type_modifier >= 4:
        packed = type_modifier - 4
        precision = (packed >> 16) & 0xFFFF
        scale = ((packed & 0x7FF) ^ 1024) - 1024  # PostgreSQL 15: 11-bit signed scale
        schema["connect.parameters"] = {"precision": str(precision), "scale": str(scale)}
    return schema


def _scalar_type(oid: int, type_modifier: int) -> AvroSchema:
    avro = _SCALAR_OIDS.get(oid, _STRING)
    if avro is _NUMERIC:
        return _numeric_type(type_modifier)
    return dict(avro) if isinstance(avro, dict) else avro


def _array_items(element: AvroSchema, depth: int) -> list[AvroSchema]:
    if depth >= MAX_ARRAY_DIMS:
        return ["null", element]
    return ["null", element, {"type": "array", "items": _array_items(element, depth + 1)}]


def column_avro_type(column: Column) -> AvroSchema:
    """The (non-null) Avro type of a column's values; see the module's table."""
    oid = column.type_oid
    if oid not in _SCALAR_OIDS and oid not in _ARRAY_OIDS and column.type_name:
        name = column.type_name.strip().lower()
        if name.endswith("[]"):
            element = _TYPE_NAMES.get(name[:-2].strip())
            oid = (
                -1
                if element is None
                else next((a for a, e in _ARRAY_OIDS.items() if e == element), -1)
            )
        elif name.startswith("_") and name[1:] in _TYPE_NAMES:
            element = _TYPE_NAMES[name[1:]]
            oid = next(a for a, e in _ARRAY_OIDS.items() if e == element)
        else:
            oid = _TYPE_NAMES.get(name, -1)
    element_oid = _ARRAY_OIDS.get(oid)
    if element_oid is not None:
        element = _scalar_type(element_oid, column.type_modifier)
        return {"type": "array", "items": _array_items(element, 1)}
    return _scalar_type(oid, column.type_modifier)


def _field_names(columns: tuple[Column, ...]) -> list[str]:
    taken: set[str] = set()
    names: list[str] = []
    for column in columns:
        base = avro_name(column.name)
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{base}_{n}"
        taken.add(name)
        names.append(name)
    return names


def _field(name: str, column: Column, type_: AvroSchema, nullable: bool) -> dict[str, Any]:
    field: dict[str, Any] = {"name": name, "type": type_}
    if nullable:
        field["default"] = None
    if name != column.name:
        field[COLUMN_ATTR] = column.name
    return field


def key_schema(table_schema: TableSchema, topic_prefix: str) -> dict[str, Any]:
    """Record ``{namespace}.Key`` of the key columns, in column order, non-null."""
    keys = table_schema.key_columns
    return {
        "type": "record",
        "name": "Key",
        "namespace": avro_namespace(topic_prefix, table_schema),
        "fields": [
            _field(name, col, column_avro_type(col), nullable=False)
            for name, col in zip(_field_names(keys), keys, strict=True)
        ],
    }


def row_schema(table_schema: TableSchema, topic_prefix: str) -> dict[str, Any]:
    """Record ``{namespace}.Value``: every column as ``["null", T, Unavailable]``."""
    fields: list[dict[str, Any]] = []
    unavailable: AvroSchema = {
        "type": "enum",
        "name": UNAVAILABLE_NAME,
        "doc": "A TOASTed value the change did not carry because it did not change.",
        "symbols": [UNAVAILABLE_SYMBOL],
    }
    columns = table_schema.columns
    for name, col in zip(_field_names(columns), columns, strict=True):
        fields.append(_field(name, col, ["null", column_avro_type(col), unavailable], True))
        unavailable = UNAVAILABLE_NAME  # defined once, referenced afterwards
    return {
        "type": "record",
        "name": "Value",
        "namespace": avro_namespace(topic_prefix, table_schema),
        "fields": fields,
    }


def source_schema() -> dict[str, Any]:
    """Record ``catalog_cdc.Source``: where a change came from (Debezium's ``source``)."""
    return {
        "type": "record",
        "name": SOURCE_NAME,
        "fields": [
            {"name": "db", "type": "string"},
            {"name": "schema", "type": "string"},
            {"name": "table", "type": "string"},
            {"name": "lsn", "type": "long"},
            {"name": "txId", "type": ["null", "long"], "default": None},
            {"name": "ts_ms", "type": "long"},
            {"name": "snapshot", "type": "string"},
        ],
    }


def value_schema(table_schema: TableSchema, topic_prefix: str) -> dict[str, Any]:
    """Debezium envelope ``{namespace}.Envelope`` for a table's change events."""
    namespace = avro_namespace(topic_prefix, table_schema)
    return {
        "type": "record",
        "name": "Envelope",
        "namespace": namespace,
        "fields": [
            {
                "name": "before",
                "type": ["null", row_schema(table_schema, topic_prefix)],
                "default": None,
            },
            {"name": "after", "type": ["null", f"{namespace}.Value"], "default": None},
            {"name": "op", "type": "string"},
            {"name": "ts_ms", "type": "long"},
            {"name": "source", "type": source_schema()},
        ],
    }


def canonical_json(schema: AvroSchema) -> str:
    """Deterministic JSON text of a full schema (sorted keys, no spaces, ASCII).

    Unlike Parsing Canonical Form it keeps logical types, defaults and attributes, which
    decoding needs; equal schemas give equal text.
    """
    return json.dumps(schema, sort_keys=True, separators=(",", ":"))


# --- converters -----------------------------------------------------------------------


def _decimal_to_str(value: Any) -> str:
    """Exact text of a numeric value (an ``int`` is accepted and decodes as ``Decimal``)."""
    if isinstance(value, Decimal | int) and not isinstance(value, bool):
        return str(value)
    raise TypeError(f"numeric value must be a Decimal or an int, not {type(value).__name__}")


_json_fast: Final[Callable[[Any], str]] = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False
).encode
"""Compact JSON text (one prebuilt encoder: ``json.dumps`` with options builds one per call)."""
_json_string: Final[Callable[[str], str]] = json.encoder.encode_basestring


def _json_parts(value: Any, emit: Callable[[str], Any]) -> None:
    if value is None:
        emit("null")
    elif value is True:
        emit("true")
    elif value is False:
        emit("false")
    elif isinstance(value, str):
        emit(_json_string(value))
    elif isinstance(value, Decimal):
        if not value.is_finite():
            raise TypeError(f"JSON has no {value} number")
        emit(str(value))
    elif isinstance(value, int | float):
        emit(_json_fast(value))
    elif isinstance(value, dict):
        emit("{")
        for i, (k, v) in enumerate(value.items()):
            if not isinstance(k, str):
                raise TypeError(f"JSON object keys must be str, not {type(k).__name__}")
            emit("," + _json_string(k) + ":" if i else _json_string(k) + ":")
            _json_parts(v, emit)
        emit("}")
    elif isinstance(value, list | tuple):
        emit("[")
        for i, v in enumerate(value):
            if i:
                emit(",")
            _json_parts(v, emit)
        emit("]")
    else:
        raise TypeError(f"{type(value).__name__} is not a JSON value")


def _json_dumps(value: Any) -> str:
    """Compact JSON text of a json/jsonb value; ``Decimal`` numbers written exactly.

    The reader parses JSON numbers with ``parse_float=Decimal`` (jsonb keeps numbers as
    numeric), which the C encoder refuses: those values take the slower exact path.
    """
    try:
        return _json_fast(value)
    except TypeError:
        parts: list[str] = []
        _json_parts(value, parts.append)
        return "".join(parts)


_DECIMAL_JSON = json.JSONDecoder(parse_float=Decimal)


def _json_loads(text: str) -> Any:
    """Parsed JSON, non-integral numbers as ``Decimal`` (as the reader produces them)."""
    # One decoder for all calls: json.loads(text, parse_float=...) builds a new one each
    # time, which cost as much as the parsing itself on the assembler's hot path.
    return _DECIMAL_JSON.decode(text)


def _timetz_to_str(value: datetime.time) -> str:
    if not isinstance(value, datetime.time):
        raise TypeError(f"timetz value must be a datetime.time, not {type(value).__name__}")
    return value.isoformat()


@dataclass(frozen=True, slots=True)
class _TypeCodec:
    branch: str
    """Name of the type's union branch (fastavro tuple notation)."""
    encode: Converter | None
    decode: Converter | None


def _type_codec(avro_type: AvroSchema, names: Mapping[str, Any]) -> _TypeCodec:
    if isinstance(avro_type, str):
        if avro_type in names:
            return _type_codec(names[avro_type], names)
        return _TypeCodec(avro_type, None, None)
    if isinstance(avro_type, list):
        raise ValueError(f"nested union is not a column type: {avro_type!r}")
    kind = avro_type["type"]
    mark = avro_type.get("connect.name")
    if kind == "string" and mark == JSON_MARK:
        return _TypeCodec("string", _json_dumps, _json_loads)
    if kind == "string" and mark == DECIMAL_MARK:
        return _TypeCodec("string", _decimal_to_str, Decimal)
    if kind == "string" and mark == TIMETZ_MARK:
        return _TypeCodec("string", _timetz_to_str, datetime.time.fromisoformat)
    if kind == "array":
        return _array_codec(avro_type["items"], names)
    if isinstance(kind, dict | list):
        return _type_codec(kind, names)
    return _TypeCodec(kind if kind not in names else names[kind]["type"], None, None)


def _array_codec(items: AvroSchema, names: Mapping[str, Any]) -> _TypeCodec:
    branches = items if isinstance(items, list) else [items]
    element: _TypeCodec | None = None
    nested: _TypeCodec | None = None
    for branch in branches:
        if branch == "null":
            continue
        resolved = names.get(branch, branch) if isinstance(branch, str) else branch
        if isinstance(resolved, dict) and resolved.get("type") == "array":
            nested = _array_codec(resolved["items"], names)
        else:
            element = _type_codec(resolved, names)
    if not isinstance(items, list):  # a plain array (not written by this module)
        assert element is not None or nested is not None
        inner = element or nested
        assert inner is not None
        enc_plain, dec_plain = inner.encode, inner.decode
        return _TypeCodec(
            "array",
            None if enc_plain is None else (lambda v: [enc_plain(x) for x in v]),
            None if dec_plain is None else (lambda v: [dec_plain(x) for x in v]),
        )
    e_branch = element.branch if element else "null"
    e_enc = element.encode if element else None
    e_dec = element.decode if element else None
    n_enc = nested.encode if nested else None
    n_dec = nested.decode if nested else None

    def encode(values: Any) -> list[Any]:
        out: list[Any] = []
        append = out.append
        for x in values:
            if x is None:
                append(None)
            elif type(x) is list:
                append(("array", x if n_enc is None else n_enc(x)))
            else:
                append((e_branch, x if e_enc is None else e_enc(x)))
        return out

    decode: Converter | None = None
    if e_dec is not None or n_dec is not None:

        def decode(values: Any) -> list[Any]:
            out: list[Any] = []
            append = out.append
            for x in values:
                if x is None:
                    append(None)
                elif type(x) is list:
                    append(x if n_dec is None else n_dec(x))
                else:
                    append(x if e_dec is None else e_dec(x))
            return out

    return _TypeCodec("array", encode, decode)


def _union_value_type(union: AvroSchema, names: Mapping[str, Any]) -> AvroSchema:
    """The ``T`` of a field typed ``["null", T, Unavailable]`` (or ``T`` itself)."""
    if not isinstance(union, list):
        return union
    for branch in union:
        if branch == "null" or branch == UNAVAILABLE_NAME:
            continue
        if isinstance(branch, dict) and branch.get("name") == UNAVAILABLE_NAME:
            continue
        return branch
    return "null"


def _named_types(parsed: Any) -> dict[str, Any]:
    if isinstance(parsed, dict):
        return cast(dict[str, Any], parsed.get("__named_schemas", {}))
    return {}


def _record_fields(record: Any, names: Mapping[str, Any]) -> list[dict[str, Any]]:
    if isinstance(record, str):
        record = names[record]
    return cast(list[dict[str, Any]], record["fields"])


def _column_name(field: Mapping[str, Any]) -> str:
    return str(field.get(COLUMN_ATTR, field["name"]))


RowEncoder = Callable[[Row], dict[str, Any]]
RowDecoder = Callable[[Mapping[str, Any]], Row]


def _row_encoder(fields: list[dict[str, Any]], names: Mapping[str, Any]) -> RowEncoder:
    plan = tuple(
        (f["name"], _column_name(f), codec.branch, codec.encode)
        for f in fields
        for codec in (_type_codec(_union_value_type(f["type"], names), names),)
    )
    toast = UNCHANGED_TOAST
    toast_datum = _TOAST_DATUM

    def encode(row: Row) -> dict[str, Any]:
        out: dict[str, Any] = {}
        get = row.get
        for name, column, branch, conv in plan:
            v = get(column)
            if v is None:
                out[name] = None
            elif v is toast:
                out[name] = toast_datum
            elif conv is None:
                out[name] = (branch, v)
            else:
                out[name] = (branch, conv(v))
        return out

    return encode


def _row_decoder(fields: list[dict[str, Any]], names: Mapping[str, Any]) -> RowDecoder:
    plan = tuple(
        (f["name"], _column_name(f), _type_codec(_union_value_type(f["type"], names), names).decode)
        for f in fields
    )
    toast = UNCHANGED_TOAST

    def decode(record: Mapping[str, Any]) -> Row:
        out: Row = {}
        for name, column, conv in plan:
            v = record[name]
            if v is None:
                out[column] = None
            elif type(v) is tuple:  # the named enum branch: Unavailable
                out[column] = toast
            elif conv is None:
                out[column] = v
            else:
                out[column] = conv(v)
        return out

    return decode


def _key_encoder(fields: list[dict[str, Any]], names: Mapping[str, Any]) -> RowEncoder:
    plan = tuple((f["name"], _column_name(f), _type_codec(f["type"], names).encode) for f in fields)

    def encode(row: Row) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, column, conv in plan:
            v = row.get(column)
            out[name] = v if conv is None or v is None else conv(v)
        return out

    return encode


def _key_decoder(fields: list[dict[str, Any]], names: Mapping[str, Any]) -> RowDecoder:
    plan = tuple((f["name"], _column_name(f), _type_codec(f["type"], names).decode) for f in fields)

    def decode(record: Mapping[str, Any]) -> Row:
        return {
            column: (v if conv is None or v is None else conv(v))
            for name, column, conv in plan
            for v in (record[name],)
        }

    return decode


# --- direct Avro binary writers (the encode hot path) -------------------------------
#
# fastavro's generic writer costs ~0.4 us per field plus ~3 us per call; these writers
# are compiled once per schema from the same Avro types and append straight to a
# bytearray.  Tests check that their bytes equal fastavro's for the same record.

Writer = Callable[[bytearray, Any], None]

_LONG_MIN: Final = -(1 << 63)
_LONG_MAX: Final = (1 << 63) - 1
_INT_MIN: Final = -(1 << 31)
_INT_MAX: Final = (1 << 31) - 1
_SMALL_VARINTS: Final = tuple(
    bytes([(n << 1) if n >= 0 else ((-n << 1) - 1)]) for n in range(-64, 64)
)
_PACK_DOUBLE: Final = struct.Struct("<d").pack
_PACK_FLOAT: Final = struct.Struct("<f").pack
_EPOCH_UTC: Final = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_EPOCH_NAIVE: Final = datetime.datetime(1970, 1, 1)
_EPOCH_DATE: Final = datetime.date(1970, 1, 1)


def write_long(out: bytearray, n: int) -> None:
    """Append the zig-zag varint of ``n`` (Avro ``long``)."""
    if -64 <= n < 64:
        out += _SMALL_VARINTS[n + 64]
        return
    if n > _LONG_MAX or n < _LONG_MIN:
        raise OverflowError(f"{n} does not fit an Avro long")
    z = (n << 1) ^ (n >> 63)
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)


def _write_int(out: bytearray, n: int) -> None:
    if n > _INT_MAX or n < _INT_MIN:
        raise OverflowError(f"{n} does not fit an Avro int (int4)")
    write_long(out, n)


def write_string(out: bytearray, text: str) -> None:
    """Append an Avro ``string`` (length + UTF-8)."""
    data = text.encode()
    size = len(data)
    if size < 64:
        out += _SMALL_VARINTS[size + 64]
    else:
        write_long(out, size)
    out += data


def _write_bytes(out: bytearray, data: bytes) -> None:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"bytea value must be bytes, not {type(data).__name__}")
    write_long(out, len(data))
    out += data


def _write_boolean(out: bytearray, value: bool) -> None:
    if value is True:
        out += b"\x01"
    elif value is False:
        out += b"\x00"
    else:
        raise TypeError(f"bool value must be True or False, not {value!r}")


def _write_double(out: bytearray, value: float) -> None:
    out += _PACK_DOUBLE(value)


def _write_float(out: bytearray, value: float) -> None:
    out += _PACK_FLOAT(value)


def _write_null(out: bytearray, value: None) -> None:
    if value is not None:
        raise TypeError(f"expected None, got {value!r}")


def _write_timestamp_micros(out: bytearray, value: datetime.datetime) -> None:
    delta = value - (_EPOCH_UTC if value.tzinfo is not None else _EPOCH_NAIVE)
    write_long(out, (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds)


def _write_local_timestamp_micros(out: bytearray, value: datetime.datetime) -> None:
    if value.tzinfo is not None:
        raise TypeError(f"timestamp (without time zone) value must be naive, got {value!r}")
    delta = value - _EPOCH_NAIVE
    write_long(out, (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds)


def _write_date(out: bytearray, value: datetime.date) -> None:
    if type(value) is not datetime.date:
        raise TypeError(f"date value must be a datetime.date, not {type(value).__name__}")
    write_long(out, (value - _EPOCH_DATE).days)


def _write_time_micros(out: bytearray, value: datetime.time) -> None:
    micros = ((value.hour * 60 + value.minute) * 60 + value.second) * 1_000_000
    write_long(out, micros + value.microsecond)


def _write_uuid(out: bytearray, value: uuid.UUID) -> None:
    if not isinstance(value, uuid.UUID):
        raise TypeError(f"uuid value must be a uuid.UUID, not {type(value).__name__}")
    write_string(out, str(value))


def _converting(conv: Converter, write: Writer) -> Writer:
    def writer(out: bytearray, value: Any) -> None:
        write(out, conv(value))

    return writer


_PRIMITIVE_WRITERS: Final[dict[str, Writer]] = {
    "null": _write_null,
    "boolean": _write_boolean,
    "int": _write_int,
    "long": write_long,
    "float": _write_float,
    "double": _write_double,
    "bytes": _write_bytes,
    "string": write_string,
}
_LOGICAL_WRITERS: Final[dict[tuple[str, str], Writer]] = {
    ("long", "timestamp-micros"): _write_timestamp_micros,
    ("long", "local-timestamp-micros"): _write_local_timestamp_micros,
    ("int", "date"): _write_date,
    ("long", "time-micros"): _write_time_micros,
    ("string", "uuid"): _write_uuid,
}


def binary_writer(avro_type: AvroSchema, names: Mapping[str, Any]) -> Writer:
    """A writer appending values of a (non-union) column type, per this module's mapping."""
    if isinstance(avro_type, str):
        if avro_type in names:
            return binary_writer(names[avro_type], names)
        return _PRIMITIVE_WRITERS[avro_type]
    if isinstance(avro_type, list):
        raise ValueError(f"a union is not a column type: {avro_type!r}")
    kind = avro_type["type"]
    if kind == "array":
        return _array_writer(avro_type["items"], names)
    if kind == "enum":
        symbols = {s: i for i, s in enumerate(avro_type["symbols"])}

        def write_enum(out: bytearray, value: str) -> None:
            write_long(out, symbols[value])

        return write_enum
    if kind == "record":
        plan = tuple((f["name"], binary_writer(f["type"], names)) for f in avro_type["fields"])

        def write_record(out: bytearray, value: Mapping[str, Any]) -> None:
            for name, write in plan:
                write(out, value[name])

        return write_record
    if not isinstance(kind, str):
        return binary_writer(kind, names)
    mark = avro_type.get("connect.name")
    if kind == "string" and mark == JSON_MARK:
        return _converting(_json_dumps, write_string)
    if kind == "string" and mark == DECIMAL_MARK:
        return _converting(_decimal_to_str, write_string)
    if kind == "string" and mark == TIMETZ_MARK:
        return _converting(_timetz_to_str, write_string)
    logical = avro_type.get("logicalType")
    if logical is not None and (kind, logical) in _LOGICAL_WRITERS:
        return _LOGICAL_WRITERS[(kind, logical)]
    return binary_writer(kind, names)


def _array_writer(items: AvroSchema, names: Mapping[str, Any]) -> Writer:
    branches = items if isinstance(items, list) else [items]
    null_index = element_index = nested_index = -1
    element_write: Writer | None = None
    nested_write: Writer | None = None
    for index, branch in enumerate(branches):
        resolved = names.get(branch, branch) if isinstance(branch, str) else branch
        if resolved == "null":
            null_index = index
        elif isinstance(resolved, dict) and resolved.get("type") == "array":
            nested_index, nested_write = index, binary_writer(resolved, names)
        else:
            element_index, element_write = index, binary_writer(resolved, names)
    if not isinstance(items, list):
        plain = element_write or nested_write
        assert plain is not None

        def write_plain(out: bytearray, values: list[Any]) -> None:
            if values:
                write_long(out, len(values))
                for x in values:
                    plain(out, x)
            out += b"\x00"

        return write_plain
    tag_null = _SMALL_VARINTS[null_index + 64] if null_index >= 0 else None
    tag_element = _SMALL_VARINTS[element_index + 64]
    tag_nested = _SMALL_VARINTS[nested_index + 64] if nested_index >= 0 else None

    def write_array(out: bytearray, values: list[Any]) -> None:
        if not isinstance(values, list):
            raise TypeError(f"array value must be a list, not {type(values).__name__}")
        if values:
            write_long(out, len(values))
            for x in values:
                if x is None:
                    if tag_null is None:
                        raise TypeError("array elements may not be None")
                    out += tag_null
                elif type(x) is list:
                    if tag_nested is None or nested_write is None:
                        raise TypeError(f"arrays nest at most {MAX_ARRAY_DIMS} levels deep")
                    out += tag_nested
                    nested_write(out, x)
                else:
                    assert element_write is not None
                    out += tag_element
                    element_write(out, x)
        out += b"\x00"

    return write_array


RowWriter = Callable[[bytearray, Row], None]


@dataclass(frozen=True, slots=True)
class FieldWriter:
    """How one field of a table's ``Value`` or ``Key`` record is written.

    The pieces :meth:`TableCodec.write_value` / :meth:`TableCodec.write_key` run per
    column, exposed (:func:`value_field_writers`, :func:`key_field_writers`) for encoders
    that must produce the same bytes from other inputs (:mod:`pipeline.codec.raw`).
    """

    column: str
    """The PostgreSQL column name (``pg.column``, else the field name)."""
    avro_type: AvroSchema
    """The field's value type: ``T`` of a ``Value`` field ``["null", T, Unavailable]``,
    the field type of a ``Key`` field (fastavro's parsed form)."""
    write: Writer
    """Appends a non-null value of ``avro_type`` (the Python value of the column)."""
    null_tag: bytes
    """Union branch index of ``null`` (``Value`` fields; empty for ``Key`` fields)."""
    value_tag: bytes
    """Union branch index of ``T`` (``Value`` fields; empty for ``Key`` fields)."""
    toast_tag: bytes
    """Branch index of ``Unavailable`` + symbol ``UNCHANGED_TOAST`` (``Value`` fields)."""


def _value_field_writers(
    fields: list[dict[str, Any]], names: Mapping[str, Any]
) -> tuple[FieldWriter, ...]:
    plan = []
    for f in fields:
        union = f["type"]
        value_type = _union_value_type(union, names)
        branches = [b if isinstance(b, str) else b.get("name", b.get("type")) for b in union]
        null_tag = _SMALL_VARINTS[branches.index("null") + 64]
        value_tag = _SMALL_VARINTS[union.index(value_type) + 64]
        # branch index, then the enum's symbol index (UNCHANGED_TOAST is symbol 0)
        toast_tag = _SMALL_VARINTS[branches.index(UNAVAILABLE_NAME) + 64] + b"\x00"
        plan.append(
            FieldWriter(
                _column_name(f),
                value_type,
                binary_writer(value_type, names),
                null_tag,
                value_tag,
                toast_tag,
            )
        )
    return tuple(plan)


def _key_field_writers(
    fields: list[dict[str, Any]], names: Mapping[str, Any]
) -> tuple[FieldWriter, ...]:
    return tuple(
        FieldWriter(_column_name(f), f["type"], binary_writer(f["type"], names), b"", b"", b"")
        for f in fields
    )


def _row_writer(fields: list[dict[str, Any]], names: Mapping[str, Any]) -> RowWriter:
    """Writer of a ``Value`` record: every field ``["null", T, Unavailable]``."""
    steps = tuple(
        (f.column, f.null_tag, f.value_tag, f.toast_tag, f.write)
        for f in _value_field_writers(fields, names)
    )
    toast = UNCHANGED_TOAST

    def write_row(out: bytearray, row: Row) -> None:
        get = row.get
        column = ""
        try:
            for column, null_tag, value_tag, toast_tag, write in steps:
                v = get(column)
                if v is None:
                    out += null_tag
                elif v is toast:
                    out += toast_tag
                else:
                    out += value_tag
                    write(out, v)
        except (ValueError, TypeError, AttributeError, OverflowError) as exc:
            # Name the column (the callers turn this into an EncodeError).
            raise ValueError(f"column {column!r}: {exc}") from exc

    return write_row


def _key_writer(fields: list[dict[str, Any]], names: Mapping[str, Any]) -> RowWriter:
    steps = tuple((f.column, f.write) for f in _key_field_writers(fields, names))

    def write_key(out: bytearray, row: Row) -> None:
        for column, write in steps:
            v = row.get(column)
            if v is None or v is UNCHANGED_TOAST:
                raise TypeError(f"key column {column!r} has no value ({v!r})")
            write(out, v)

    return write_key


def parse(schema: AvroSchema) -> Any:
    """fastavro's parsed form of ``schema`` (parse once, reuse: parsing is slow)."""
    return parse_schema(schema)


def _envelope_writer(write_row: RowWriter) -> Callable[[bytearray, ChangeEvent], None]:
    """Writer of :func:`value_schema`'s envelope (field order and unions as declared)."""

    def write_envelope(out: bytearray, event: ChangeEvent) -> None:
        before, after, source = event.before, event.after, event.source
        if before is None:
            out += b"\x00"
        else:
            out += b"\x02"
            write_row(out, before)
        if after is None:
            out += b"\x00"
        else:
            out += b"\x02"
            write_row(out, after)
        write_string(out, event.op)
        write_long(out, event.ts_ms)
        write_string(out, source.db)
        write_string(out, source.schema)
        write_string(out, source.table)
        write_long(out, source.lsn)
        if source.tx_id is None:
            out += b"\x00"
        else:
            out += b"\x02"
            write_long(out, source.tx_id)
        write_long(out, source.ts_ms)
        write_string(out, source.snapshot)

    return write_envelope


@dataclass(frozen=True, slots=True)
class TableCodec:
    """A table's key and value schemas with their precompiled converters and writers.

    Build once per :class:`TableSchema` with :func:`compile_table`; every later event
    of that table only runs the precompiled steps.  :meth:`write_value` /
    :meth:`write_key` produce exactly the bytes fastavro writes for
    :meth:`to_avro_record` / :meth:`key_to_avro`, several times faster.
    """

    table_schema: TableSchema
    key_schema: dict[str, Any]
    value_schema: dict[str, Any]
    parsed_key: Any
    parsed_value: Any
    key_json: str
    value_json: str
    _key_encoder: RowEncoder
    _row_encoder: RowEncoder
    _value_name: str
    _key_writer: RowWriter
    _envelope_writer: Callable[[bytearray, ChangeEvent], None]

    def write_key(self, out: bytearray, key_row: Row) -> None:
        """Append the Avro binary key record of ``key_row`` to ``out``."""
        self._key_writer(out, key_row)

    def write_value(self, out: bytearray, event: ChangeEvent) -> None:
        """Append the Avro binary envelope of ``event`` to ``out``."""
        self._envelope_writer(out, event)

    def key_to_avro(self, key_row: Row) -> dict[str, Any]:
        """The key record for ``key_row`` (``{column: value}`` of the key columns)."""
        return self._key_encoder(key_row)

    def to_avro_record(self, event: ChangeEvent) -> dict[str, Any]:
        """The envelope record of ``event``, for fastavro's writer (tuple notation)."""
        before, after, source, conv = event.before, event.after, event.source, self._row_encoder
        tx_id = source.tx_id
        return {
            "before": None if before is None else (self._value_name, conv(before)),
            "after": None if after is None else (self._value_name, conv(after)),
            "op": event.op,
            "ts_ms": event.ts_ms,
            "source": {
                "db": source.db,
                "schema": source.schema,
                "table": source.table,
                "lsn": source.lsn,
                "txId": None if tx_id is None else ("long", tx_id),
                "ts_ms": source.ts_ms,
                "snapshot": source.snapshot,
            },
        }


def compile_table(table_schema: TableSchema, topic_prefix: str) -> TableCodec:
    """Derive the key and value schemas of ``table_schema`` and compile their converters."""
    k_schema = key_schema(table_schema, topic_prefix)
    v_schema = value_schema(table_schema, topic_prefix)
    parsed_key = parse(k_schema)
    parsed_value = parse(v_schema)
    names = _named_types(parsed_value)
    key_names = _named_types(parsed_key)
    value_name = f"{avro_namespace(topic_prefix, table_schema)}.Value"
    value_fields = _record_fields(names[value_name], names)
    key_fields = _record_fields(parsed_key, key_names)
    return TableCodec(
        table_schema=table_schema,
        key_schema=k_schema,
        value_schema=v_schema,
        parsed_key=parsed_key,
        parsed_value=parsed_value,
        key_json=canonical_json(k_schema),
        value_json=canonical_json(v_schema),
        _key_encoder=_key_encoder(key_fields, key_names),
        _row_encoder=_row_encoder(value_fields, names),
        _value_name=value_name,
        _key_writer=_key_writer(key_fields, key_names),
        _envelope_writer=_envelope_writer(_row_writer(value_fields, names)),
    )


def value_field_writers(codec: TableCodec) -> tuple[FieldWriter, ...]:
    """The per-field writers :meth:`TableCodec.write_value` uses for a row image, in order.

    Writing ``field.null_tag`` / ``field.toast_tag`` / ``field.value_tag`` +
    ``field.write(out, value)`` for every field (a column absent from the row is NULL)
    gives exactly the bytes of the envelope's ``before``/``after`` record.
    """
    names = _named_types(codec.parsed_value)
    before = next(f for f in codec.parsed_value["fields"] if f["name"] == "before")
    value = _union_value_type(before["type"], names)
    return _value_field_writers(_record_fields(value, names), names)


def key_field_writers(codec: TableCodec) -> tuple[FieldWriter, ...]:
    """The per-field writers :meth:`TableCodec.write_key` uses, in key-field order."""
    names = _named_types(codec.parsed_key)
    return _key_field_writers(_record_fields(codec.parsed_key, names), names)


class EnvelopeDecoder:
    """Turns envelope records (read with ``return_named_type=True``) back into events.

    Built from the schema the record was *read with*: the reader schema when schema
    resolution was used, otherwise the writer schema.  Only the schema is needed, not
    the :class:`TableSchema`, so a consumer can decode what it did not write.
    """

    __slots__ = ("_decode_row",)

    def __init__(self, schema: AvroSchema) -> None:
        parsed = schema if isinstance(schema, dict) and "__fastavro_parsed" in schema else None
        parsed = parsed or parse(schema)
        names = _named_types(parsed)
        before = next((f for f in parsed["fields"] if f["name"] == "before"), None)
        if before is None:
            raise DecodeError(f"schema {parsed.get('name')!r} is not a change-event envelope")
        value = _union_value_type(before["type"], names)
        self._decode_row = _row_decoder(_record_fields(value, names), names)

    def from_avro_record(
        self,
        record: Mapping[str, Any],
        table_schema: TableSchema | None = None,
        *,
        before_of_deletes_only: bool = False,
    ) -> ChangeEvent:
        """The :class:`ChangeEvent` of an envelope record (``key`` left ``None``).

        ``before_of_deletes_only``: leave ``before`` ``None`` unless the event is a
        delete, for a reader that keeps the rows' images itself (the assembler): it
        spares converting an image nobody reads.
        """
        decode = self._decode_row
        before, after, s = record["before"], record["after"], record["source"]
        if before_of_deletes_only and record["op"] != "d":
            before = None
        return ChangeEvent(
            op=record["op"],
            source=Source(
                db=s["db"],
                schema=s["schema"],
                table=s["table"],
                lsn=s["lsn"],
                tx_id=s["txId"],
                ts_ms=s["ts_ms"],
                snapshot=s["snapshot"],
            ),
            ts_ms=record["ts_ms"],
            before=None if before is None else decode(before[1]),
            after=None if after is None else decode(after[1]),
            table_schema=table_schema,
        )


class KeyDecoder:
    """Turns key records back into key rows ``{column: value}``."""

    __slots__ = ("_decode",)

    def __init__(self, schema: AvroSchema) -> None:
        parsed = schema if isinstance(schema, dict) and "__fastavro_parsed" in schema else None
        parsed = parsed or parse(schema)
        self._decode = _key_decoder(_record_fields(parsed, {}), _named_types(parsed))

    def from_avro_record(self, record: Mapping[str, Any]) -> Row:
        """The key row of a key record."""
        return self._decode(record)


def is_envelope_schema(schema: AvroSchema) -> bool:
    """Whether ``schema`` is a change-event envelope (has ``before``/``after``/``op``)."""
    if not isinstance(schema, dict) or schema.get("type") != "record":
        return False
    fields = {f.get("name") for f in schema.get("fields", [])}
    return {"before", "after", "op"} <= fields


def encode_error(table_schema: TableSchema, what: str, exc: BaseException) -> EncodeError:
    """A clear :class:`EncodeError` for a value that does not fit its table's schema."""
    return EncodeError(
        f"cannot encode the {what} of a change to {table_schema.qualified_name} "
        f"(relation {table_schema.relation_id}): {exc}. A value does not match its "
        "column's PostgreSQL type; see the type table in pipeline/events.py"
    )
