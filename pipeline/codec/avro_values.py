"""Python value <-> Avro datum converters of a table's records (fastavro's data model).

Per column type of :mod:`pipeline.codec.avro_schema`'s mapping: numeric as its exact
decimal text, json/jsonb as compact JSON text (:mod:`pipeline.codec.jsontext`), timetz
as ISO text, arrays element by element, union branches in fastavro's tuple notation.
:func:`row_encoder` / :func:`key_encoder` turn rows into the records fastavro writes,
:func:`row_decoder` / :func:`key_decoder` turn the records it reads back into rows;
each is compiled once per schema into one loop over precomputed tuples.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, cast

from pipeline.codec.avro_schema import (
    COLUMN_ATTR,
    DECIMAL_MARK,
    JSON_MARK,
    TIMETZ_MARK,
    UNAVAILABLE_NAME,
    UNAVAILABLE_SYMBOL,
    AvroSchema,
)
from pipeline.codec.jsontext import json_dumps, json_loads
from pipeline.events import UNCHANGED_TOAST, Row

Converter = Callable[[Any], Any]


_TOAST_DATUM: Final = (UNAVAILABLE_NAME, UNAVAILABLE_SYMBOL)


def decimal_to_str(value: Any) -> str:
    """Exact text of a numeric value (an ``int`` is accepted and decodes as ``Decimal``)."""
    if isinstance(value, Decimal | int) and not isinstance(value, bool):
        return str(value)
    raise TypeError(f"numeric value must be a Decimal or an int, not {type(value).__name__}")


def timetz_to_str(value: datetime.time) -> str:
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
        return _TypeCodec("string", json_dumps, json_loads)
    if kind == "string" and mark == DECIMAL_MARK:
        return _TypeCodec("string", decimal_to_str, Decimal)
    if kind == "string" and mark == TIMETZ_MARK:
        return _TypeCodec("string", timetz_to_str, datetime.time.fromisoformat)
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


def union_value_type(union: AvroSchema, names: Mapping[str, Any]) -> AvroSchema:
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


def named_types(parsed: Any) -> dict[str, Any]:
    if isinstance(parsed, dict):
        return cast(dict[str, Any], parsed.get("__named_schemas", {}))
    return {}


def record_fields(record: Any, names: Mapping[str, Any]) -> list[dict[str, Any]]:
    if isinstance(record, str):
        record = names[record]
    return cast(list[dict[str, Any]], record["fields"])


def column_name(field: Mapping[str, Any]) -> str:
    return str(field.get(COLUMN_ATTR, field["name"]))


RowEncoder = Callable[[Row], dict[str, Any]]
RowDecoder = Callable[[Mapping[str, Any]], Row]


def row_encoder(fields: list[dict[str, Any]], names: Mapping[str, Any]) -> RowEncoder:
    plan = tuple(
        (f["name"], column_name(f), codec.branch, codec.encode)
        for f in fields
        for codec in (_type_codec(union_value_type(f["type"], names), names),)
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


def row_decoder(fields: list[dict[str, Any]], names: Mapping[str, Any]) -> RowDecoder:
    plan = tuple(
        (f["name"], column_name(f), _type_codec(union_value_type(f["type"], names), names).decode)
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


def key_encoder(fields: list[dict[str, Any]], names: Mapping[str, Any]) -> RowEncoder:
    plan = tuple((f["name"], column_name(f), _type_codec(f["type"], names).encode) for f in fields)

    def encode(row: Row) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, column, conv in plan:
            v = row.get(column)
            out[name] = v if conv is None or v is None else conv(v)
        return out

    return encode


def key_decoder(fields: list[dict[str, Any]], names: Mapping[str, Any]) -> RowDecoder:
    plan = tuple((f["name"], column_name(f), _type_codec(f["type"], names).decode) for f in fields)

    def decode(record: Mapping[str, Any]) -> Row:
        return {
            column: (v if conv is None or v is None else conv(v))
            for name, column, conv in plan
            for v in (record[name],)
        }

    return decode
