"""A table's compiled codec: its schemas, converters and binary writers, built once.

:func:`compile_table` derives a :class:`~pipeline.events.TableSchema`'s key and value
schemas (:mod:`pipeline.codec.avro_schema`) and compiles their converters
(:mod:`pipeline.codec.avro_values`) and writers (:mod:`pipeline.codec.avro_writer`) into
a :class:`TableCodec`; every later event of that table only runs the precompiled steps.
Decoding is :mod:`pipeline.codec.avro_decode`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.codec.avro_schema import (
    avro_namespace,
    canonical_json,
    key_schema,
    parse,
    value_schema,
)
from pipeline.codec.avro_values import (
    RowEncoder,
    key_encoder,
    named_types,
    record_fields,
    row_encoder,
    union_value_type,
)
from pipeline.codec.avro_writer import (
    FieldWriter,
    RowWriter,
    key_record_writers,
    key_writer,
    row_writer,
    value_record_writers,
    write_long,
    write_string,
)
from pipeline.codec.errors import EncodeError
from pipeline.events import ChangeEvent, Row, TableSchema


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
    names = named_types(parsed_value)
    key_names = named_types(parsed_key)
    value_name = f"{avro_namespace(topic_prefix, table_schema)}.Value"
    value_fields = record_fields(names[value_name], names)
    key_fields = record_fields(parsed_key, key_names)
    return TableCodec(
        table_schema=table_schema,
        key_schema=k_schema,
        value_schema=v_schema,
        parsed_key=parsed_key,
        parsed_value=parsed_value,
        key_json=canonical_json(k_schema),
        value_json=canonical_json(v_schema),
        _key_encoder=key_encoder(key_fields, key_names),
        _row_encoder=row_encoder(value_fields, names),
        _value_name=value_name,
        _key_writer=key_writer(key_fields, key_names),
        _envelope_writer=_envelope_writer(row_writer(value_fields, names)),
    )


def value_field_writers(codec: TableCodec) -> tuple[FieldWriter, ...]:
    """The per-field writers :meth:`TableCodec.write_value` uses for a row image, in order.

    Writing ``field.null_tag`` / ``field.toast_tag`` / ``field.value_tag`` +
    ``field.write(out, value)`` for every field (a column absent from the row is NULL)
    gives exactly the bytes of the envelope's ``before``/``after`` record.
    """
    names = named_types(codec.parsed_value)
    before = next(f for f in codec.parsed_value["fields"] if f["name"] == "before")
    value = union_value_type(before["type"], names)
    return value_record_writers(record_fields(value, names), names)


def key_field_writers(codec: TableCodec) -> tuple[FieldWriter, ...]:
    """The per-field writers :meth:`TableCodec.write_key` uses, in key-field order."""
    names = named_types(codec.parsed_key)
    return key_record_writers(record_fields(codec.parsed_key, names), names)


def encode_error(table_schema: TableSchema, what: str, exc: BaseException) -> EncodeError:
    """A clear :class:`EncodeError` for a value that does not fit its table's schema."""
    return EncodeError(
        f"cannot encode the {what} of a change to {table_schema.qualified_name} "
        f"(relation {table_schema.relation_id}): {exc}. A value does not match its "
        "column's PostgreSQL type; see the type table in pipeline/events.py"
    )
