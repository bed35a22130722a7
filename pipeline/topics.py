"""Every Kafka topic name the pipeline uses, in one place.

All topics of one pipeline share a prefix (``CATALOG_CDC_TOPIC_PREFIX``):

=====================================  ==============================================
``{prefix}.{schema}.{table}``          raw change events of one table (the reader)
``{prefix}.doc.products``              product documents, compacted (the assembler)
``{prefix}.doc.categories``            category documents, compacted (the assembler)
``{prefix}.dlq.{consumer}``            dead letters of one consumer (or ``assembler``)
``{prefix}._reader``                   the reader's own records (snapshot progress)
``{prefix}._assembler.counts``         the assembler's per-partition document counts
``{prefix}._schemas``                  Avro schemas, when no schema registry is set
=====================================  ==============================================

Nothing else builds a topic name with an f-string: a stage that needs one calls a
function here, and a stage that must tell what a topic holds asks :func:`doc_kind`.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "DEFAULT_SCHEMA",
    "DOC_KINDS",
    "assembler_counts_topic",
    "dlq_topic",
    "doc_kind",
    "doc_topic",
    "is_raw_topic",
    "qualified",
    "raw_topic",
    "reader_topic",
    "schemas_topic",
]

DEFAULT_SCHEMA: Final = "public"
"""The schema of a table named without one (PostgreSQL's default search path)."""

_DOC_SUFFIX: Final[dict[str, str]] = {"product": "products", "category": "categories"}
DOC_KINDS: Final = tuple(_DOC_SUFFIX)
"""The document kinds, each with a topic of its own."""


def qualified(table: str) -> tuple[str, str]:
    """``"schema.table"`` (or a bare ``"table"``, in :data:`DEFAULT_SCHEMA`) as
    ``(schema, table)``."""
    schema, dot, name = table.rpartition(".")
    return (schema if dot else DEFAULT_SCHEMA), name


def raw_topic(prefix: str, table: str, schema: str | None = None) -> str:
    """``{prefix}.{schema}.{table}``: the reader's change events of one table.

    ``table`` may be schema-qualified (``"shop.items"``); else ``schema`` (default
    :data:`DEFAULT_SCHEMA`) is used."""
    if schema is None:
        schema, table = qualified(table)
    return f"{prefix}.{schema}.{table}"


def is_raw_topic(prefix: str, topic: str) -> bool:
    """Whether ``topic`` is one of this prefix's raw change topics (not a document,
    dead-letter or internal topic)."""
    head, dot, rest = topic.partition(".")
    if head != prefix or not dot:
        return False
    schema, dot, table = rest.partition(".")
    return bool(dot and table) and schema not in ("doc", "dlq") and not schema.startswith("_")


def doc_topic(prefix: str, kind: str) -> str:
    """``{prefix}.doc.products`` or ``{prefix}.doc.categories``."""
    try:
        return f"{prefix}.doc.{_DOC_SUFFIX[kind]}"
    except KeyError:
        raise ValueError(f"no document kind {kind!r} (known: {', '.join(DOC_KINDS)})") from None


def doc_kind(prefix: str, topic: str) -> str | None:
    """The document kind a topic of this prefix holds (``None``: not a document topic)."""
    for kind, suffix in _DOC_SUFFIX.items():
        if topic == f"{prefix}.doc.{suffix}":
            return kind
    return None


def dlq_topic(prefix: str, consumer: str) -> str:
    """``{prefix}.dlq.{consumer}``: what one consumer (or the assembler) dead-lettered."""
    return f"{prefix}.dlq.{consumer}"


def reader_topic(prefix: str) -> str:
    """``{prefix}._reader``: the reader's own records (snapshot start and end)."""
    return f"{prefix}._reader"


def assembler_counts_topic(prefix: str) -> str:
    """``{prefix}._assembler.counts``: the assembler's document counts per partition."""
    return f"{prefix}._assembler.counts"


def schemas_topic(prefix: str) -> str:
    """``{prefix}._schemas``: the Avro schemas when no schema registry is configured."""
    return f"{prefix}._schemas"
