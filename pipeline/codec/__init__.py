"""Avro encoding of change events: schemas, single-object encoding, schema registry.

Two interchangeable :class:`EventCodec` implementations, chosen by configuration
(:func:`make_codec`):

* no schema registry configured -> :class:`~pipeline.codec.single_object.SingleObjectCodec`:
  Avro single-object encoding (``C3 01`` + CRC-64-AVRO fingerprint), schemas kept in a
  :class:`~pipeline.codec.schema_store.SchemaStore` (the compacted topic
  ``{prefix}._schemas`` in production);
* ``CATALOG_CDC_SCHEMA_REGISTRY_URL`` set -> :class:`~pipeline.codec.registry.
  ConfluentRegistryCodec`: Confluent wire format (``00`` + 4-byte schema id), subjects
  ``{topic}-key`` / ``{topic}-value``.

Both guarantee that a message's schema is durably registered before the message is
returned, and that decoding gives back exactly the event that was encoded (see
:mod:`pipeline.codec.avro_schema` for the type mapping and the unchanged-TOAST marker).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from pipeline.codec.avro_decode import EnvelopeDecoder, KeyDecoder
from pipeline.codec.avro_schema import key_schema, value_schema
from pipeline.codec.errors import (
    CodecError,
    DecodeError,
    EncodeError,
    RegistryError,
    SchemaConflictError,
    SchemaNotFoundError,
    SchemaStoreError,
)
from pipeline.codec.fingerprint import fingerprint
from pipeline.codec.schema_store import InMemorySchemaStore, KafkaSchemaStore, SchemaStore
from pipeline.codec.single_object import SingleObjectCodec
from pipeline.codec.table_codec import TableCodec, compile_table
from pipeline.events import ChangeEvent, Row, TableSchema

if TYPE_CHECKING:
    from pipeline.codec.avro_schema import AvroSchema
    from pipeline.codec.raw import ConverterOf
    from pipeline.codec.raw_framed import FramedRawEncoder


class EventCodec(Protocol):
    """Encodes change events (and their keys) to Kafka message bytes, and back.

    ``encode_*`` register the schema they need before returning (durably), so any
    decoder sharing the same schema store / registry can read what they return.
    """

    def encode_key(self, topic: str, table_schema: TableSchema, key_row: Row) -> bytes:
        """Bytes of the key record ``key_row`` of a ``table_schema`` row."""
        ...

    def encode_value(self, topic: str, table_schema: TableSchema, event: ChangeEvent) -> bytes:
        """Bytes of ``event``'s envelope."""
        ...

    def decode_key(self, data: bytes) -> Row:
        """The key row of key bytes."""
        ...

    def decode_value(
        self,
        data: bytes,
        reader_schema: AvroSchema | None = None,
        table_schema: TableSchema | None = None,
        *,
        before_of_deletes_only: bool = False,
    ) -> ChangeEvent:
        """The event of value bytes, optionally resolved to ``reader_schema``.

        ``before_of_deletes_only``: ``before`` stays ``None`` unless the event is a
        delete (for a reader that keeps row images itself).
        """
        ...

    def decode(self, key: bytes | None, value: bytes | None) -> ChangeEvent | None:
        """The event (with ``key``) of a Kafka message; ``None`` for a tombstone."""
        ...

    def raw_encoder(
        self, topic: str, table_schema: TableSchema, converter_of: ConverterOf = ...
    ) -> FramedRawEncoder:
        """The reader's hot path: encode straight from pgoutput's raw text tuples.

        Messages decode to exactly what ``encode_key``/``encode_value`` give for the
        rows ``converter_of`` converts (see :mod:`pipeline.codec.raw`).
        """
        ...


def make_codec(
    *,
    topic_prefix: str,
    schema_registry_url: str | None = None,
    kafka_bootstrap: str | None = None,
    schema_store: SchemaStore | None = None,
) -> EventCodec:
    """The codec the configuration asks for.

    With ``schema_registry_url`` the Confluent path; otherwise single-object encoding
    with ``schema_store``, or else a :class:`KafkaSchemaStore` on ``kafka_bootstrap``
    (topic ``{topic_prefix}._schemas``).
    """
    if schema_registry_url:
        from pipeline.codec.registry import ConfluentRegistryCodec  # needs the registry extra

        return ConfluentRegistryCodec.from_url(schema_registry_url, topic_prefix)
    if schema_store is None:
        if not kafka_bootstrap:
            raise SchemaStoreError(
                "no schema store: set CATALOG_CDC_SCHEMA_REGISTRY_URL, or give the Kafka "
                "bootstrap servers (CATALOG_CDC_KAFKA_BOOTSTRAP) for the {prefix}._schemas topic"
            )
        schema_store = KafkaSchemaStore(kafka_bootstrap, topic_prefix)
    return SingleObjectCodec(schema_store, topic_prefix)


__all__ = [
    "CodecError",
    "DecodeError",
    "EncodeError",
    "EnvelopeDecoder",
    "EventCodec",
    "InMemorySchemaStore",
    "KafkaSchemaStore",
    "KeyDecoder",
    "RegistryError",
    "SchemaConflictError",
    "SchemaNotFoundError",
    "SchemaStore",
    "SchemaStoreError",
    "SingleObjectCodec",
    "TableCodec",
    "compile_table",
    "fingerprint",
    "key_schema",
    "make_codec",
    "value_schema",
]
