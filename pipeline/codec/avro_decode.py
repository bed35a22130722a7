"""Avro records back to change events and key rows.

Records read by fastavro (``return_named_type=True``) are turned into
:class:`~pipeline.events.ChangeEvent` / key rows with the converters of
:mod:`pipeline.codec.avro_values`, compiled once per schema.  Only the schema is
needed, not the :class:`~pipeline.events.TableSchema`, so a consumer can decode what it
did not write.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.codec.avro_schema import AvroSchema, parse
from pipeline.codec.avro_values import (
    key_decoder,
    named_types,
    record_fields,
    row_decoder,
    union_value_type,
)
from pipeline.codec.errors import DecodeError
from pipeline.events import ChangeEvent, Row, Source, TableSchema


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
        names = named_types(parsed)
        before = next((f for f in parsed["fields"] if f["name"] == "before"), None)
        if before is None:
            raise DecodeError(f"schema {parsed.get('name')!r} is not a change-event envelope")
        value = union_value_type(before["type"], names)
        self._decode_row = row_decoder(record_fields(value, names), names)

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
        self._decode = key_decoder(record_fields(parsed, {}), named_types(parsed))

    def from_avro_record(self, record: Mapping[str, Any]) -> Row:
        """The key row of a key record."""
        return self._decode(record)
