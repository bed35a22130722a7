"""Kafka messages of the document topics: keys, Avro values, version headers.

A document message on ``{prefix}.doc.products`` / ``{prefix}.doc.categories`` is:

* **key**: the document id as ASCII decimal (``b"1234"``), so compaction keeps one
  message per product or category and any client can read the key without a schema;
* **value**: the document in Avro (schemas ``schemas/avro/*.avsc``), in single-object
  encoding (``C3 01`` + fingerprint, schema kept in ``{prefix}._schemas``) or, with a
  schema registry configured, the Confluent wire format (subject ``{topic}-value``);
  ``None`` (a tombstone) when the product or category no longer exists;
* **headers**: ``version`` (the document version, ASCII decimal), ``source_ts_ms``
  and ``kind`` (``product`` / ``category``).  A tombstone carries them too, so a
  sink can delete with the version (external versioning) without a body.
"""

from __future__ import annotations

import io
import json
import struct
from typing import Any, Final, cast

from fastavro import schemaless_reader, schemaless_writer

from pipeline.codec.errors import DecodeError
from pipeline.codec.fingerprint import fingerprint
from pipeline.codec.schema_store import SchemaStore
from pipeline.codec.single_object import MAGIC, SingleObjectEncoding, split_header
from pipeline.documents.model import (
    CategoryDocument,
    D,
    Document,
    ProductDocument,
    avro_schema,
    avro_schema_json,
    from_avro,
    to_avro,
)
from pipeline.topics import doc_topic

__all__ = ["DocumentCodec", "DocumentMessage", "doc_key", "headers_of"]

KINDS: Final[dict[str, type[ProductDocument] | type[CategoryDocument]]] = {
    "product": ProductDocument,
    "category": CategoryDocument,
}
_CONFLUENT: Final = struct.Struct(">bI")


def doc_key(doc_id: int) -> bytes:
    return str(doc_id).encode()


def kind_of(doc: Document) -> str:
    return "product" if isinstance(doc, ProductDocument) else "category"


def headers_of(
    kind: str, version: int, source_ts_ms: int, digest: str | None = None
) -> list[tuple[str, str | bytes | None]]:
    """The headers of a document message (tombstones too).

    ``digest`` is the assembler's content hash of the document: an instance that takes
    a partition over reads ``version`` and ``digest`` back from the topic to go on
    exactly where the previous owner stopped.
    """
    headers: list[tuple[str, str | bytes | None]] = [
        ("kind", kind.encode()),
        ("version", str(version).encode()),
        ("source_ts_ms", str(source_ts_ms).encode()),
    ]
    if digest is not None:
        headers.append(("digest", digest.encode()))
    return headers


class DocumentMessage:
    """One decoded document-topic message (``doc`` is ``None`` for a tombstone)."""

    __slots__ = ("doc", "id", "kind", "offset", "partition", "source_ts_ms", "version")

    def __init__(
        self,
        kind: str,
        doc_id: int,
        doc: Document | None,
        version: int,
        source_ts_ms: int,
        partition: int = -1,
        offset: int = -1,
    ) -> None:
        self.kind = kind
        self.id = doc_id
        self.doc = doc
        self.version = version
        self.source_ts_ms = source_ts_ms
        self.partition = partition
        self.offset = offset


class DocumentCodec:
    """Encodes documents to message values and back.

    Single-object encoding with ``store``, or the Confluent format with ``registry``
    (a :class:`~pipeline.codec.registry.ConfluentRegistryCodec`, whose client and
    schema cache it shares).  The schema is registered (durably) before the first
    value that uses it is returned.
    """

    def __init__(
        self, *, store: SchemaStore | None = None, registry: Any = None, topic_prefix: str
    ) -> None:
        if (store is None) == (registry is None):
            raise ValueError("give exactly one of store= and registry=")
        self._prefix = topic_prefix
        self._store = None if store is None else SingleObjectEncoding(store)
        self._registry = registry
        self._fingerprints: dict[type[Any], bytes] = {}  # registered by encode()
        self._current: dict[type[Any], bytes] = {}  # of the current schemas, for decode()
        self._ids: dict[type[Any], int] = {}
        self._writers: dict[int, Any] = {}

    def encode(self, doc: Document) -> bytes:
        cls = type(doc)
        record = to_avro(doc)
        parsed = avro_schema(cls)
        out = io.BytesIO()
        if self._store is not None:
            fp = self._fingerprints.get(cls)
            if fp is None:
                fp = self._fingerprints[cls] = self._store.register(avro_schema_json(cls))
            out.write(MAGIC)
            out.write(fp)
        else:
            schema_id = self._ids.get(cls)
            if schema_id is None:
                subject = f"{doc_topic(self._prefix, kind_of(doc))}-value"
                schema_id = self._registry.register(subject, json.dumps(avro_schema_json(cls)))
                self._ids[cls] = schema_id
            out.write(_CONFLUENT.pack(0, schema_id))
        schemaless_writer(out, parsed, record)
        return out.getvalue()

    def decode(self, data: bytes, cls: type[D]) -> D:
        """The document of value bytes ``data`` (resolved to the current schema)."""
        reader: Any = avro_schema(cls)
        if self._store is not None:
            fp, body = split_header(data)
            writer = self._store.writer_schema(fp)
            current = self._current.get(cls)
            if current is None:
                current = self._current[cls] = fingerprint(avro_schema_json(cls))
            if fp == current:
                reader = None  # written with the current schema: nothing to resolve
            what = f"schema fingerprint {fp.hex()}"
        else:
            schema_id, body = self._registry.split(data)
            writer = self._registry_writer(schema_id)
            what = f"schema id {schema_id}"
        try:
            record = schemaless_reader(io.BytesIO(body), writer, reader)
        except Exception as exc:
            raise DecodeError(f"cannot decode a {cls.__name__} with {what}: {exc}") from exc
        return from_avro(cast(dict[str, Any], record), cls)

    def _registry_writer(self, schema_id: int) -> Any:
        """The parsed writer schema of a registry id (fetched once)."""
        parsed = self._writers.get(schema_id)
        if parsed is None:
            from fastavro import parse_schema

            try:
                fetched = self._registry.client.get_schema(schema_id)
            except Exception as exc:
                raise DecodeError(
                    f"cannot fetch document schema id {schema_id} from the registry: {exc}"
                ) from exc
            parsed = self._writers[schema_id] = parse_schema(json.loads(fetched.schema_str))
        return parsed

    def decode_message(
        self,
        kind: str,
        key: bytes | None,
        value: bytes | None,
        headers: Any,
        partition: int = -1,
        offset: int = -1,
    ) -> DocumentMessage:
        if not key:
            raise DecodeError(f"a {kind} document message without a key (offset {offset})")
        pairs = headers.items() if isinstance(headers, dict) else (headers or ())
        head = {k: v for k, v in pairs if v is not None}
        doc: Document | None = None
        if value is not None:
            doc = self.decode(value, KINDS[kind])  # type: ignore[type-var]
        version = int(head.get("version", b"0")) if doc is None else doc.version
        ts = int(head.get("source_ts_ms", b"0")) if doc is None else doc.source_ts_ms
        return DocumentMessage(kind, int(key), doc, version, ts, partition, offset)
