"""The Confluent Schema Registry path: Confluent wire format and ``SchemaRegistryClient``.

Used when ``CATALOG_CDC_SCHEMA_REGISTRY_URL`` is set.  A message is::

    00 | schema id (4 bytes, big-endian) | Avro binary body

Schemas are registered under the TopicNameStrategy subjects ``{topic}-key`` and
``{topic}-value``.  Guarantee: a schema is registered (the registry answered with its
id) before the first message using it is returned, so every message written can be
decoded by any client of the same registry.  The registry enforces its compatibility
level on each new version; the schemas this project derives are backward compatible
for added columns and ``int4 -> int8`` (see :mod:`pipeline.codec.avro_schema`).
"""

from __future__ import annotations

import io
import json
import struct
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError
from fastavro import schemaless_reader

from pipeline.codec.avro_decode import EnvelopeDecoder, KeyDecoder
from pipeline.codec.avro_schema import AvroSchema, canonical_json, is_envelope_schema, parse
from pipeline.codec.errors import DecodeError, RegistryError, SchemaNotFoundError
from pipeline.codec.raw import ConverterOf, RawTableEncoder
from pipeline.codec.raw_framed import FramedRawEncoder
from pipeline.codec.table_codec import TableCodec, compile_table, encode_error
from pipeline.events import ChangeEvent, Row, TableSchema
from pipeline.values import converter_for

MAGIC_BYTE: Final = 0
HEADER: Final = struct.Struct(">bI")


def key_subject(topic: str) -> str:
    """TopicNameStrategy subject of a topic's keys."""
    return f"{topic}-key"


def value_subject(topic: str) -> str:
    """TopicNameStrategy subject of a topic's values."""
    return f"{topic}-value"


@dataclass(frozen=True, slots=True)
class _Writer:
    schema: AvroSchema
    parsed: Any
    envelope_decoder: EnvelopeDecoder | None
    key_decoder: KeyDecoder | None


class ConfluentRegistryCodec:
    """:class:`~pipeline.codec.EventCodec` with the Confluent wire format and registry.

    Each (topic, table schema) pair registers its key and value schemas once, on first
    use; schema ids read back are fetched once and cached (parsed, with their decoder).
    Thread-safe.
    """

    def __init__(self, client: SchemaRegistryClient, topic_prefix: str) -> None:
        self._client = client
        self._topic_prefix = topic_prefix
        self._lock = threading.Lock()
        self._tables: dict[int, tuple[TableSchema, TableCodec]] = {}
        self._ids: dict[tuple[str, str], int] = {}  # (subject, schema json) -> id
        self._by_id: dict[int, _Writer] = {}
        self._readers: dict[str, tuple[Any, EnvelopeDecoder]] = {}
        # (topic, id(TableSchema)) -> (TableSchema, converter lookup, raw encoder)
        self._raw: dict[tuple[str, int], tuple[TableSchema, ConverterOf, FramedRawEncoder]] = {}

    @classmethod
    def from_url(
        cls, url: str, topic_prefix: str, client_config: Mapping[str, Any] | None = None
    ) -> ConfluentRegistryCodec:
        """A codec talking to the registry at ``url`` (extra client settings optional)."""
        return cls(SchemaRegistryClient({"url": url, **(client_config or {})}), topic_prefix)

    @property
    def client(self) -> SchemaRegistryClient:
        return self._client

    # -- encoding ---------------------------------------------------------------------

    def _table(self, table_schema: TableSchema) -> TableCodec:
        entry = self._tables.get(id(table_schema))
        if entry is None or entry[0] is not table_schema:
            entry = (table_schema, compile_table(table_schema, self._topic_prefix))
            with self._lock:
                self._tables[id(table_schema)] = entry
        return entry[1]

    def register(self, subject: str, schema_json: str) -> int:
        """Schema id of ``schema_json`` under ``subject``, registering it if needed."""
        cached = self._ids.get((subject, schema_json))
        if cached is not None:
            return cached
        try:
            schema_id = int(self._client.register_schema(subject, Schema(schema_json, "AVRO")))
        except SchemaRegistryError as exc:
            raise RegistryError(
                f"schema registry refused a new schema for subject {subject!r}: {exc}. "
                "If it is a compatibility error, the table changed in a way its consumers "
                "cannot read (e.g. a column type change other than int4 -> int8)."
            ) from exc
        except Exception as exc:
            raise RegistryError(
                f"cannot reach the schema registry to register subject {subject!r}: {exc}"
            ) from exc
        with self._lock:
            self._ids[(subject, schema_json)] = schema_id
        return schema_id

    def encode_key(self, topic: str, table_schema: TableSchema, key_row: Row) -> bytes:
        """Confluent-framed key record of ``key_row`` (subject ``{topic}-key``)."""
        codec = self._table(table_schema)
        schema_id = self.register(key_subject(topic), codec.key_json)
        out = bytearray(HEADER.pack(MAGIC_BYTE, schema_id))
        try:
            codec.write_key(out, key_row)
            return bytes(out)
        except (ValueError, TypeError, AttributeError, OverflowError) as exc:
            raise encode_error(table_schema, "key", exc) from exc

    def encode_value(self, topic: str, table_schema: TableSchema, event: ChangeEvent) -> bytes:
        """Confluent-framed envelope of ``event`` (subject ``{topic}-value``)."""
        codec = self._table(table_schema)
        schema_id = self.register(value_subject(topic), codec.value_json)
        out = bytearray(HEADER.pack(MAGIC_BYTE, schema_id))
        try:
            codec.write_value(out, event)
            return bytes(out)
        except (ValueError, TypeError, AttributeError, OverflowError) as exc:
            raise encode_error(table_schema, f"{event.op!r} event", exc) from exc

    def raw_encoder(
        self, topic: str, table_schema: TableSchema, converter_of: ConverterOf = converter_for
    ) -> FramedRawEncoder:
        """The raw-tuple encoder of ``table_schema`` on ``topic`` (:mod:`pipeline.codec.raw`).

        Its ``value(...)`` / ``key(raw)`` return Confluent-framed messages that decode to
        exactly what :meth:`encode_value` / :meth:`encode_key` give for the rows the
        reader would convert from the same tuples with ``converter_of``.  Both schemas
        are registered (subjects ``{topic}-key`` / ``{topic}-value``) before this
        returns; cached per (topic, table schema).
        """
        cache_key = (topic, id(table_schema))
        entry = self._raw.get(cache_key)
        if entry is None or entry[0] is not table_schema or entry[1] != converter_of:
            codec = self._table(table_schema)
            key_id = self.register(key_subject(topic), codec.key_json)
            value_id = self.register(value_subject(topic), codec.value_json)
            encoder = FramedRawEncoder(
                RawTableEncoder(codec, converter_of),
                HEADER.pack(MAGIC_BYTE, key_id),
                HEADER.pack(MAGIC_BYTE, value_id),
            )
            entry = (table_schema, converter_of, encoder)
            with self._lock:
                self._raw[cache_key] = entry
        return entry[2]

    # -- decoding ---------------------------------------------------------------------

    @staticmethod
    def split(data: bytes) -> tuple[int, memoryview]:
        """``(schema id, body)`` of a Confluent-framed message."""
        if len(data) < HEADER.size or data[0] != MAGIC_BYTE:
            raise DecodeError(
                f"not a Confluent Schema Registry message (expected magic byte 0 and a 4-byte "
                f"schema id, got {bytes(data[: HEADER.size]).hex(' ')!r}); was it written "
                "with single-object encoding (no CATALOG_CDC_SCHEMA_REGISTRY_URL)?"
            )
        _, schema_id = HEADER.unpack_from(data)
        return int(schema_id), memoryview(data)[HEADER.size :]

    def writer_schema(self, schema_id: int) -> AvroSchema:
        """The full schema registered with ``schema_id`` (fetched once, then cached)."""
        return self._writer(schema_id).schema

    def _writer(self, schema_id: int) -> _Writer:
        entry = self._by_id.get(schema_id)
        if entry is not None:
            return entry
        try:
            fetched = self._client.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                raise SchemaNotFoundError(
                    f"schema id {schema_id} is unknown to the schema registry: the message "
                    "was written against another registry, or the schema was deleted"
                ) from exc
            raise RegistryError(f"cannot fetch schema id {schema_id}: {exc}") from exc
        except Exception as exc:
            raise RegistryError(
                f"cannot reach the schema registry for schema id {schema_id}: {exc}"
            ) from exc
        if fetched.schema_type not in (None, "AVRO"):
            raise DecodeError(f"schema id {schema_id} is {fetched.schema_type}, not AVRO")
        schema = json.loads(fetched.schema_str or "null")
        parsed = parse(schema)
        if is_envelope_schema(schema):
            entry = _Writer(schema, parsed, EnvelopeDecoder(parsed), None)
        else:
            entry = _Writer(schema, parsed, None, KeyDecoder(parsed))
        with self._lock:
            self._by_id[schema_id] = entry
        return entry

    def _reader(self, reader_schema: AvroSchema) -> tuple[Any, EnvelopeDecoder]:
        key = canonical_json(reader_schema)
        entry = self._readers.get(key)
        if entry is None:
            parsed = parse(reader_schema)
            entry = (parsed, EnvelopeDecoder(parsed))
            with self._lock:
                self._readers[key] = entry
        return entry

    @staticmethod
    def _read(schema_id: int, body: memoryview, writer: Any, reader: Any) -> Any:
        try:
            return schemaless_reader(io.BytesIO(body), writer, reader, return_named_type=True)
        except Exception as exc:
            raise DecodeError(f"cannot decode message with schema id {schema_id}: {exc}") from exc

    def decode_key(self, data: bytes) -> Row:
        """The key row of a Confluent-framed key message."""
        schema_id, body = self.split(data)
        writer = self._writer(schema_id)
        if writer.key_decoder is None:
            raise DecodeError(f"schema id {schema_id} is a change envelope, not a key")
        return writer.key_decoder.from_avro_record(self._read(schema_id, body, writer.parsed, None))

    def decode_value(
        self,
        data: bytes,
        reader_schema: AvroSchema | None = None,
        table_schema: TableSchema | None = None,
        *,
        before_of_deletes_only: bool = False,
    ) -> ChangeEvent:
        """The change event of a Confluent-framed value message (``key`` left ``None``).

        With ``reader_schema`` the record is resolved to it (Avro schema resolution);
        ``before_of_deletes_only``: see :meth:`EnvelopeDecoder.from_avro_record`.
        """
        schema_id, body = self.split(data)
        writer = self._writer(schema_id)
        decoder = writer.envelope_decoder
        if decoder is None:
            raise DecodeError(f"schema id {schema_id} is not a change-event envelope")
        reader = None
        if reader_schema is not None:
            reader, decoder = self._reader(reader_schema)
        record = self._read(schema_id, body, writer.parsed, reader)
        return decoder.from_avro_record(
            record, table_schema, before_of_deletes_only=before_of_deletes_only
        )

    def decode(self, key: bytes | None, value: bytes | None) -> ChangeEvent | None:
        """The event of a Kafka message; ``None`` for a tombstone (null value)."""
        if value is None:
            return None
        event = self.decode_value(value)
        if key is not None:
            event.key = self.decode_key(key)
        return event
