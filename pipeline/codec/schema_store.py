"""Schema stores for single-object encoding: fingerprint -> full Avro schema.

A message names its writer schema only by the 8-byte CRC-64-AVRO fingerprint of the
schema's Parsing Canonical Form; a store maps that fingerprint to the *full* schema
(logical types, defaults and attributes included, which decoding needs).

* :class:`InMemorySchemaStore` - a dict, for unit tests and single-process tools.
* :class:`KafkaSchemaStore` - a compacted topic ``{prefix}._schemas``: key = fingerprint
  (16 hex digits, the header bytes in order), value = the schema's canonical JSON
  (:func:`~pipeline.codec.avro_schema.canonical_json`).

Guarantees of :class:`KafkaSchemaStore`: :meth:`~KafkaSchemaStore.register` returns
only after the broker acknowledged the record (idempotent producer, ``acks=all``), so
a schema is durable before the first message that uses it is produced; registering a
known fingerprint writes nothing.  :meth:`~KafkaSchemaStore.lookup` of an unknown
fingerprint re-reads the topic up to its current end (no consumer group) before giving
up with :class:`~pipeline.codec.errors.SchemaNotFoundError`.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Mapping
from typing import Any, Protocol

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from fastavro.schema import SchemaParseException

from pipeline.codec.avro_schema import AvroSchema, canonical_json
from pipeline.codec.errors import SchemaConflictError, SchemaNotFoundError, SchemaStoreError
from pipeline.codec.fingerprint import fingerprint
from pipeline.kafka import await_leaders
from pipeline.topics import schemas_topic

log = logging.getLogger(__name__)


class SchemaStore(Protocol):
    """Where single-object writer schemas are kept, by fingerprint."""

    def register(self, schema: AvroSchema) -> bytes:
        """Store ``schema`` (durably) and return its 8-byte fingerprint; idempotent."""
        ...

    def lookup(self, fingerprint: bytes) -> AvroSchema:
        """The full schema of ``fingerprint``; :class:`SchemaNotFoundError` if unknown."""
        ...


class _Catalog:
    """Fingerprint -> (canonical JSON, schema) with conflict detection.  Not locked."""

    def __init__(self) -> None:
        self.schemas: dict[bytes, tuple[str, AvroSchema]] = {}

    def check(self, fp: bytes, text: str) -> bool:
        """Whether ``fp`` is known with this exact schema; raise if known differently."""
        known = self.schemas.get(fp)
        if known is None:
            return False
        if known[0] != text:
            raise SchemaConflictError(
                f"schema fingerprint {fp.hex()} is already registered for a different schema "
                "with the same Parsing Canonical Form (e.g. a column changed between text "
                "and json, or timestamp and timestamptz). Single-object encoding cannot tell "
                "them apart: use the Confluent Schema Registry "
                "(CATALOG_CDC_SCHEMA_REGISTRY_URL), or a new topic prefix."
                f"\nregistered: {known[0][:300]}\nnew:        {text[:300]}"
            )
        return True

    def add(self, fp: bytes, text: str) -> None:
        self.schemas[fp] = (text, json.loads(text))


class InMemorySchemaStore:
    """A :class:`SchemaStore` in a dict: nothing survives the process.  Thread-safe."""

    def __init__(self) -> None:
        self._catalog = _Catalog()
        self._lock = threading.Lock()

    def register(self, schema: AvroSchema) -> bytes:
        fp = fingerprint(schema)
        text = canonical_json(schema)
        with self._lock:
            if not self._catalog.check(fp, text):
                self._catalog.add(fp, text)
        return fp

    def lookup(self, fingerprint: bytes) -> AvroSchema:
        known = self._catalog.schemas.get(fingerprint)
        if known is None:
            raise SchemaNotFoundError(
                f"no schema with fingerprint {fingerprint.hex()} in the in-memory schema store"
            )
        return known[1]

    def __len__(self) -> int:
        return len(self._catalog.schemas)


class KafkaSchemaStore:
    """A :class:`SchemaStore` in the compacted topic ``{prefix}._schemas`` (1 partition).

    The topic is created on first use if missing (``cleanup.policy=compact``).  Lookups
    are served from memory; an unknown fingerprint triggers one read of the topic from
    where this instance stopped to its current end.  Call :meth:`close` (or use as a
    context manager) to release the Kafka clients.  Thread-safe.
    """

    def __init__(
        self,
        bootstrap: str,
        prefix: str,
        *,
        timeout: float = 30.0,
        replication_factor: int = -1,
        client_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.topic = schemas_topic(prefix)
        self._bootstrap = bootstrap
        self._timeout = timeout
        self._replication_factor = replication_factor
        self._client_config = dict(client_config or {})
        self._catalog = _Catalog()
        self._lock = threading.RLock()
        self._producer: Producer | None = None
        self._consumer: Consumer | None = None
        self._next_offset = OFFSET_BEGINNING
        self._topic_ready = False
        self._consumer_knows_topic = False

    # -- public API ------------------------------------------------------------------

    def register(self, schema: AvroSchema) -> bytes:
        """Produce the schema (unless known) and wait for the broker's acknowledgement."""
        fp = fingerprint(schema)
        text = canonical_json(schema)
        with self._lock:
            if self._catalog.check(fp, text):
                return fp
            self._catch_up()  # another instance may have registered it already
            if self._catalog.check(fp, text):
                return fp
            self._produce(fp, text)
            self._catalog.add(fp, text)
            log.info("event=schema_registered fingerprint=%s topic=%s", fp.hex(), self.topic)
        return fp

    def lookup(self, fingerprint: bytes) -> AvroSchema:
        """The schema of ``fingerprint``, re-reading the topic once if it is not cached."""
        known = self._catalog.schemas.get(fingerprint)
        if known is None:
            with self._lock:
                self._catch_up()
                known = self._catalog.schemas.get(fingerprint)
        if known is None:
            raise SchemaNotFoundError(
                f"no schema with fingerprint {fingerprint.hex()} in topic {self.topic!r} "
                f"at {self._bootstrap}: the message was written with another schema store "
                "(topic prefix) or the schema record was deleted"
            )
        return known[1]

    def close(self) -> None:
        """Flush and release the Kafka clients."""
        with self._lock:
            if self._producer is not None:
                self._producer.flush(self._timeout)
                self._producer = None
            if self._consumer is not None:
                self._consumer.close()
                self._consumer = None
                self._consumer_knows_topic = False

    def __enter__(self) -> KafkaSchemaStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- Kafka ------------------------------------------------------------------------

    def _config(self, **extra: Any) -> dict[str, Any]:
        return {"bootstrap.servers": self._bootstrap, **self._client_config, **extra}

    def _ensure_topic(self) -> None:
        if self._topic_ready:
            return
        admin = AdminClient(self._config())
        try:
            metadata = admin.list_topics(timeout=self._timeout)
            if self.topic not in metadata.topics:
                new = NewTopic(
                    self.topic,
                    num_partitions=1,
                    replication_factor=self._replication_factor,
                    config={"cleanup.policy": "compact"},
                )
                future = admin.create_topics([new], operation_timeout=self._timeout)[self.topic]
                try:
                    future.result(timeout=self._timeout)
                    log.info("event=schema_topic_created topic=%s", self.topic)
                except KafkaException as exc:
                    if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                        raise
        except KafkaException as exc:
            raise SchemaStoreError(
                f"cannot create or inspect schema topic {self.topic!r} at {self._bootstrap}: "
                f"{exc}. Is the broker reachable, and may this client create topics?"
            ) from exc
        self._topic_ready = True

    def prepare(self) -> None:
        """Create the schema topic and the producer now, not on the first registration.

        An idempotent producer first obtains a producer id from the broker (about half a
        second here); started early, that overlaps with the caller's own start-up instead
        of delaying the first message that needs a new schema.  Optional: registration
        does the same when it has not been done.
        """
        with self._lock:
            self._ensure_topic()
            self._producer_ready().poll(0)

    def _producer_ready(self) -> Producer:
        if self._producer is None:
            self._producer = Producer(
                self._config(**{"enable.idempotence": True, "acks": "all", "linger.ms": 0})
            )
        return self._producer

    def _produce(self, fp: bytes, text: str) -> None:
        self._ensure_topic()
        producer = self._producer_ready()
        outcome: list[KafkaError | None] = []

        def on_delivery(err: KafkaError | None, _msg: Any) -> None:
            outcome.append(err)

        try:
            producer.produce(
                self.topic, key=fp.hex().encode(), value=text.encode(), on_delivery=on_delivery
            )
        except (KafkaException, BufferError) as exc:
            raise SchemaStoreError(
                f"cannot produce schema {fp.hex()} to {self.topic!r}: {exc}"
            ) from exc
        remaining = producer.flush(self._timeout)
        if remaining or not outcome:
            raise SchemaStoreError(
                f"schema {fp.hex()} was not acknowledged by {self.topic!r} within "
                f"{self._timeout}s; nothing using it was written. Check the broker."
            )
        if outcome[0] is not None:
            raise SchemaStoreError(
                f"broker refused schema {fp.hex()} on {self.topic!r}: {outcome[0].str()}"
            )

    def _catch_up(self) -> None:
        """Read the topic from where this instance stopped to its current end."""
        self._ensure_topic()
        partition = TopicPartition(self.topic, 0)
        try:
            if self._consumer is None:
                self._consumer = Consumer(
                    self._config(
                        **{
                            # required by the client; never joined (assign only), never committed
                            "group.id": f"catalog-cdc-schema-store-{uuid.uuid4().hex}",
                            "enable.auto.commit": False,
                            "enable.partition.eof": True,
                            "auto.offset.reset": "earliest",
                        }
                    )
                )
            consumer = self._consumer
            if not self._consumer_knows_topic:
                await_leaders(consumer, [self.topic], self._timeout)
                self._consumer_knows_topic = True
            low, high = consumer.get_watermark_offsets(partition, timeout=self._timeout)
            start = low if self._next_offset == OFFSET_BEGINNING else max(self._next_offset, low)
            if start >= high:
                return
            consumer.assign([TopicPartition(self.topic, 0, start)])
            try:
                while True:
                    msg = consumer.poll(self._timeout)
                    if msg is None:
                        raise SchemaStoreError(
                            f"timed out reading schema topic {self.topic!r} "
                            f"(at offset {self._next_offset}, end {high})"
                        )
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            if (msg.offset() or 0) >= high:
                                break
                            continue
                        raise SchemaStoreError(f"error reading schema topic {self.topic!r}: {err}")
                    offset = msg.offset() or 0
                    self._next_offset = offset + 1
                    self._apply(msg.key(), msg.value(), offset)
                    if self._next_offset >= high:
                        break
            finally:
                consumer.unassign()
        except KafkaException as exc:
            raise SchemaStoreError(
                f"cannot read schema topic {self.topic!r} at {self._bootstrap}: {exc}"
            ) from exc

    def _apply(self, key: bytes | None, value: bytes | None, offset: int) -> None:
        if key is None or value is None:
            return  # tombstones and keyless records carry no schema
        try:
            fp = bytes.fromhex(key.decode())
            text = value.decode()
            actual = fingerprint(json.loads(text))
        except (ValueError, UnicodeDecodeError, SchemaParseException) as exc:
            log.warning(
                "event=schema_record_skipped topic=%s offset=%d reason=%r", self.topic, offset, exc
            )
            return
        if actual != fp:
            log.warning(
                "event=schema_record_skipped topic=%s offset=%d reason=fingerprint_mismatch "
                "key=%s actual=%s",
                self.topic,
                offset,
                fp.hex(),
                actual.hex(),
            )
            return
        if fp not in self._catalog.schemas:
            self._catalog.add(fp, text)
