"""Reading the document topics back: the latest message per key, to the end.

Used by ``catalog-cdc documents``, by ``verify``-style checks and by the tests.  Reads
every partition from the beginning without a consumer group (nothing is committed).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from pipeline.codec import KafkaSchemaStore
from pipeline.documents.wire import DocumentCodec, DocumentMessage
from pipeline.errors import CatalogCdcError
from pipeline.kafka import consumer_config
from pipeline.topics import doc_topic

__all__ = [
    "DocumentTopicError",
    "document_codec",
    "iter_documents",
    "latest_documents",
    "latest_versions",
]


class DocumentTopicError(CatalogCdcError):
    """A document topic cannot be read."""


def document_codec(
    bootstrap: str, prefix: str, schema_registry_url: str | None = None
) -> DocumentCodec:
    if schema_registry_url:
        from pipeline.codec.registry import ConfluentRegistryCodec

        return DocumentCodec(
            registry=ConfluentRegistryCodec.from_url(schema_registry_url, prefix),
            topic_prefix=prefix,
        )
    return DocumentCodec(store=KafkaSchemaStore(bootstrap, prefix), topic_prefix=prefix)


def _iter_messages(
    bootstrap: str, topic: str, timeout: float, partitions: set[int] | None = None
) -> Iterator[Message]:
    """Every message of ``topic`` (or of its ``partitions``) to the end, in topic order."""
    consumer = Consumer(consumer_config(bootstrap, f"catalog-cdc-documents-{uuid.uuid4().hex[:8]}"))
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            raise DocumentTopicError(
                f"topic {topic!r} does not exist (is `catalog-cdc assembler` running?)"
            )
        high: dict[int, int] = {}
        pos: dict[int, int] = {}
        for p in sorted(meta.partitions):
            if partitions is not None and p not in partitions:
                continue
            low, high[p] = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            pos[p] = low
        assigned = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in high if high[p] > pos[p]]
        if not assigned:
            return
        consumer.assign(assigned)
        deadline = time.monotonic() + timeout
        while True:
            # Read every partition to its high watermark, then on while messages keep
            # coming for a moment (a broker may report the last batch's start as it).
            behind = any(pos[p] < high[p] for p in pos)
            msg = consumer.poll(1.0 if behind else 0.2)
            if msg is None:
                if not behind:
                    break
                if time.monotonic() > deadline:
                    raise DocumentTopicError(f"timed out reading {topic}: at {pos}, end {high}")
                continue
            if msg.error():
                raise DocumentTopicError(f"reading {topic}[{msg.partition()}]: {msg.error()}")
            pos[msg.partition() or 0] = (msg.offset() or 0) + 1
            yield msg
    finally:
        consumer.close()


def iter_documents(
    bootstrap: str,
    prefix: str,
    kind: str,
    *,
    schema_registry_url: str | None = None,
    codec: DocumentCodec | None = None,
    timeout: float = 60.0,
) -> Iterator[DocumentMessage]:
    """Every message of the ``kind`` document topic to its end (per key in topic order)."""
    codec = codec or document_codec(bootstrap, prefix, schema_registry_url)
    for msg in _iter_messages(bootstrap, doc_topic(prefix, kind), timeout):
        yield codec.decode_message(
            kind, msg.key(), msg.value(), msg.headers(), msg.partition() or 0, msg.offset() or 0
        )


def latest_versions(
    bootstrap: str,
    prefix: str,
    kind: str,
    partitions: set[int] | None = None,
    timeout: float = 120.0,
) -> dict[int, tuple[int, str | None]]:
    """``{id: (version, digest)}`` of the last message per key, from the headers alone.

    Cheap (nothing is decoded): what an assembler taking partitions over reads to go
    on from the versions and content hashes the previous owner emitted.
    """
    latest: dict[int, tuple[int, str | None]] = {}
    for msg in _iter_messages(bootstrap, doc_topic(prefix, kind), timeout, partitions):
        headers = dict(msg.headers() or [])
        raw_version = headers.get("version")
        key = msg.key()
        if raw_version is None or key is None:
            raise DocumentTopicError(
                f"{msg.topic()}[{msg.partition()}]@{msg.offset()}: no key or version header"
            )
        digest = headers.get("digest")
        if isinstance(digest, bytes):
            digest = digest.decode()
        latest[int(key)] = (int(raw_version), digest)
    return latest


def latest_documents(
    bootstrap: str,
    prefix: str,
    kind: str,
    *,
    schema_registry_url: str | None = None,
    codec: DocumentCodec | None = None,
) -> dict[int, DocumentMessage]:
    """The last message of every key (what compaction keeps); tombstones included."""
    latest: dict[int, DocumentMessage] = {}
    for m in iter_documents(
        bootstrap, prefix, kind, schema_registry_url=schema_registry_url, codec=codec
    ):
        latest[m.id] = m
    return latest
