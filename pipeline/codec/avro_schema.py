"""Avro schemas derived from a table's Relation: the type mapping and the schema texts.

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

The codec built on these schemas is split along its seams: :mod:`.avro_values`
(Python value <-> Avro datum converters), :mod:`.avro_writer` (direct Avro binary
writers), :mod:`.table_codec` (:func:`~pipeline.codec.table_codec.compile_table`: a
table's schemas, converters and writers, compiled once) and :mod:`.avro_decode`
(records back to events and keys); :mod:`.jsontext` writes and reads json/jsonb text.

Speed: :func:`~pipeline.codec.table_codec.compile_table` and
:class:`~pipeline.codec.avro_decode.EnvelopeDecoder` build per-column converter
closures once per schema; the per-event work is one loop over precomputed tuples.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

from fastavro import parse_schema

from pipeline.events import Column, TableSchema

AvroSchema = Any
"""An Avro schema as JSON-compatible Python data (dict, list or type name)."""

UNAVAILABLE_NAME: Final = "catalog_cdc.Unavailable"
UNAVAILABLE_SYMBOL: Final = "UNCHANGED_TOAST"
SOURCE_NAME: Final = "catalog_cdc.Source"
JSON_MARK: Final = "io.debezium.data.Json"
DECIMAL_MARK: Final = "catalog_cdc.data.Decimal"
TIMETZ_MARK: Final = "catalog_cdc.data.TimeTz"
COLUMN_ATTR: Final = "pg.column"
MAX_ARRAY_DIMS: Final = 6
"""PostgreSQL's MAXDIM: arrays have at most 6 dimensions."""

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
    # kept as their text by the reader (pipeline.values)
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


def parse(schema: AvroSchema) -> Any:
    """fastavro's parsed form of ``schema`` (parse once, reuse: parsing is slow)."""
    return parse_schema(schema)


def is_envelope_schema(schema: AvroSchema) -> bool:
    """Whether ``schema`` is a change-event envelope (has ``before``/``after``/``op``)."""
    if not isinstance(schema, dict) or schema.get("type") != "record":
        return False
    fields = {f.get("name") for f in schema.get("fields", [])}
    return {"before", "after", "op"} <= fields
