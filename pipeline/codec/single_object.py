"""Avro single-object encoding, and the change-event codec built on it.

A single-object encoded message is (Avro specification, "Single-object encoding")::

    C3 01 | 8-byte CRC-64-AVRO fingerprint of the writer schema's Parsing Canonical
            Form, little-endian | Avro binary body (no container, no schema)

The fingerprint identifies the writer schema; a :class:`~pipeline.codec.schema_store.
SchemaStore` maps it back to the full schema.  Guarantee: a schema is registered in the
store (durably, for the Kafka store) *before* the first message that names it is
returned, so every message written can be decoded by anyone reading the same store.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from fastavro import schemaless_reader, schemaless_writer

from pipeline.codec.avro_decode import EnvelopeDecoder, KeyDecoder
from pipeline.codec.avro_schema import AvroSchema, canonical_json, is_envelope_schema, parse
from pipeline.codec.errors import DecodeError
from pipeline.codec.raw import ConverterOf, RawTableEncoder
from pipeline.codec.raw_framed import FramedRawEncoder
from pipeline.codec.table_codec import TableCodec, compile_table, encode_error
from pipeline.events import ChangeEvent, Row, TableSchema
from pipeline.values import converter_for

if TYPE_CHECKING:
    from pipeline.codec.schema_store import SchemaStore

MAGIC: Final = b"\xc3\x01"
HEADER_SIZE: Final = 10


def split_header(data: bytes) -> tuple[bytes, memoryview]:
    """``(fingerprint, body)`` of a single-object message; :class:`DecodeError` if not one."""
    if len(data) < HEADER_SIZE or data[:2] != MAGIC:
        raise DecodeError(
            f"not an Avro single-object message (expected magic C3 01 and a 10-byte header, "
            f"got {bytes(data[:HEADER_SIZE]).hex(' ')!r}); was it written with the Confluent "
            "wire format (CATALOG_CDC_SCHEMA_REGISTRY_URL set)?"
        )
    return bytes(data[2:HEADER_SIZE]), memoryview(data)[HEADER_SIZE:]


class SingleObjectEncoding:
    """Encodes and decodes Avro single-object messages, resolving schemas in a store.

    Parsed schemas are cached per fingerprint (and per reader schema).  Thread-safe.
    """

    def __init__(self, store: SchemaStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._writers: dict[bytes, Any] = {}
        self._readers: dict[str, Any] = {}

    @property
    def store(self) -> SchemaStore:
        return self._store

    def register(self, schema: AvroSchema) -> bytes:
        """Register ``schema`` in the store (durably) and return its fingerprint."""
        return self._store.register(schema)

    def encode(self, fingerprint_bytes: bytes, parsed_schema: Any, datum: Any) -> bytes:
        """Header + body of ``datum`` written with ``parsed_schema``.

        ``fingerprint_bytes`` must come from :meth:`register` of the same schema.
        """
        out = io.BytesIO()
        out.write(MAGIC)
        out.write(fingerprint_bytes)
        schemaless_writer(out, parsed_schema, datum)
        return out.getvalue()

    def writer_schema(self, fp: bytes) -> Any:
        """The parsed writer schema of fingerprint ``fp`` (store lookup, then cached)."""
        parsed = self._writers.get(fp)
        if parsed is None:
            schema = self._store.lookup(fp)
            parsed = parse(schema)
            with self._lock:
                self._writers[fp] = parsed
        return parsed

    def reader_schema(self, schema: AvroSchema) -> Any:
        """``schema`` parsed, cached by its canonical JSON."""
        key = canonical_json(schema)
        parsed = self._readers.get(key)
        if parsed is None:
            parsed = parse(schema)
            with self._lock:
                self._readers[key] = parsed
        return parsed

    def decode(self, data: bytes, reader_schema: AvroSchema | None = None) -> tuple[Any, Any]:
        """``(datum, schema it was read with)`` of a single-object message.

        The writer schema comes from the store by fingerprint; with ``reader_schema``
        the datum is resolved to it (Avro schema resolution).  Named union branches
        come back as ``(name, value)`` tuples (fastavro ``return_named_type``).
        """
        fp, body = split_header(data)
        writer = self.writer_schema(fp)
        reader = None if reader_schema is None else self.reader_schema(reader_schema)
        try:
            datum = schemaless_reader(io.BytesIO(body), writer, reader, return_named_type=True)
        except Exception as exc:
            raise DecodeError(
                f"cannot decode single-object message with schema fingerprint {fp.hex()}: {exc}"
            ) from exc
        return datum, (reader if reader is not None else writer)


class SingleObjectCodec:
    """:class:`~pipeline.codec.EventCodec` with single-object encoding and a schema store.

    Keys and values are single-object messages.  Each table's schemas are derived and
    registered once per :class:`TableSchema` (first use), then reused.  Decoding needs
    only the store; ``reader_schema`` (for :meth:`decode_value`) resolves old data to a
    newer schema version.
    """

    def __init__(self, store: SchemaStore, topic_prefix: str) -> None:
        self._encoding = SingleObjectEncoding(store)
        self._topic_prefix = topic_prefix
        self._lock = threading.Lock()
        # id(TableSchema) -> (TableSchema, codec, key fingerprint, value fingerprint)
        self._tables: dict[int, tuple[TableSchema, TableCodec, bytes, bytes]] = {}
        self._envelopes: dict[int, EnvelopeDecoder] = {}
        self._keys: dict[int, KeyDecoder] = {}
        # id(TableSchema) -> (TableSchema, converter lookup, raw encoder)
        self._raw: dict[int, tuple[TableSchema, ConverterOf, FramedRawEncoder]] = {}

    @property
    def encoding(self) -> SingleObjectEncoding:
        return self._encoding

    def prepare(self) -> None:
        """Let the schema store connect now (``prepare()`` of a store that has one), so
        the first registration does not pay for it."""
        prepare = getattr(self._encoding.store, "prepare", None)
        if prepare is not None:
            prepare()

    def table(self, table_schema: TableSchema) -> tuple[TableCodec, bytes, bytes]:
        """Compiled codec and registered key/value fingerprints of ``table_schema``."""
        entry = self._tables.get(id(table_schema))
        if entry is None or entry[0] is not table_schema:
            codec = compile_table(table_schema, self._topic_prefix)
            key_fp = self._encoding.register(codec.key_schema)
            value_fp = self._encoding.register(codec.value_schema)
            entry = (table_schema, codec, key_fp, value_fp)
            with self._lock:
                self._tables[id(table_schema)] = entry
        return entry[1], entry[2], entry[3]

    def encode_key(self, topic: str, table_schema: TableSchema, key_row: Row) -> bytes:
        """Single-object message of the key record of ``key_row``."""
        codec, key_fp, _ = self.table(table_schema)
        out = bytearray(MAGIC)
        out += key_fp
        try:
            codec.write_key(out, key_row)
            return bytes(out)
        except (ValueError, TypeError, AttributeError, OverflowError) as exc:
            raise encode_error(table_schema, "key", exc) from exc

    def encode_value(self, topic: str, table_schema: TableSchema, event: ChangeEvent) -> bytes:
        """Single-object message of ``event``'s envelope."""
        codec, _, value_fp = self.table(table_schema)
        out = bytearray(MAGIC)
        out += value_fp
        try:
            codec.write_value(out, event)
            return bytes(out)
        except (ValueError, TypeError, AttributeError, OverflowError) as exc:
            raise encode_error(table_schema, f"{event.op!r} event", exc) from exc

    def raw_encoder(
        self, topic: str, table_schema: TableSchema, converter_of: ConverterOf = converter_for
    ) -> FramedRawEncoder:
        """The raw-tuple encoder of ``table_schema`` (:mod:`pipeline.codec.raw`), cached.

        Its ``value(...)`` / ``key(raw)`` return single-object messages that decode to
        exactly what :meth:`encode_value` / :meth:`encode_key` give for the rows the
        reader would convert from the same tuples with ``converter_of`` (pass the
        reader's ``RelationCache.converter``).  The schemas are registered (durably)
        before this returns, as on an ``encode_*`` first use.
        """
        entry = self._raw.get(id(table_schema))
        if entry is None or entry[0] is not table_schema or entry[1] != converter_of:
            codec, key_fp, value_fp = self.table(table_schema)
            encoder = FramedRawEncoder(
                RawTableEncoder(codec, converter_of), MAGIC + key_fp, MAGIC + value_fp
            )
            entry = (table_schema, converter_of, encoder)
            with self._lock:
                self._raw[id(table_schema)] = entry
        return entry[2]

    def _decoder_for(self, schema: Any, cache: dict[int, Any], factory: Any) -> Any:
        decoder = cache.get(id(schema))
        if decoder is None:
            decoder = factory(schema)
            with self._lock:
                cache[id(schema)] = decoder
        return decoder

    def decode_key(self, data: bytes) -> Row:
        """The key row of a key message."""
        record, schema = self._encoding.decode(data)
        decoder: KeyDecoder = self._decoder_for(schema, self._keys, KeyDecoder)
        return decoder.from_avro_record(record)

    def decode_value(
        self,
        data: bytes,
        reader_schema: AvroSchema | None = None,
        table_schema: TableSchema | None = None,
        *,
        before_of_deletes_only: bool = False,
    ) -> ChangeEvent:
        """The change event of a value message (``key`` is ``None``; see :meth:`decode`).

        ``before_of_deletes_only``: see :meth:`EnvelopeDecoder.from_avro_record`.
        """
        record, schema = self._encoding.decode(data, reader_schema)
        decoder: EnvelopeDecoder | None = self._envelopes.get(id(schema))
        if decoder is None:
            if not is_envelope_schema(schema):
                raise DecodeError(f"message schema {schema.get('name')!r} is not a change envelope")
            decoder = self._decoder_for(schema, self._envelopes, EnvelopeDecoder)
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


def schema_of(codec: SingleObjectCodec, data: bytes) -> Mapping[str, Any]:
    """The full writer schema of a single-object message (looked up in the codec's store)."""
    fp, _ = split_header(data)
    return dict(codec.encoding.store.lookup(fp))
