"""Errors of the Avro codec, the schema stores and the schema-registry path.

Every message names what failed (table, fingerprint, schema id, topic) and what a
person can do about it.
"""

from __future__ import annotations

from pipeline.errors import CatalogCdcError


class CodecError(CatalogCdcError):
    """Base of every encoding/decoding error."""


class EncodeError(CodecError):
    """A change event (or key) does not fit the Avro schema derived for its table."""


class DecodeError(CodecError):
    """Bytes could not be decoded: wrong framing, unknown schema, corrupt body."""


class SchemaStoreError(CodecError):
    """The schema store could not register or read schemas."""


class SchemaNotFoundError(SchemaStoreError, DecodeError):
    """No schema is known for a fingerprint / schema id, even after re-reading the store."""


class SchemaConflictError(SchemaStoreError):
    """Two different schemas share one Parsing Canonical Form fingerprint.

    Single-object encoding identifies a schema by the fingerprint of its Parsing
    Canonical Form, which drops logical types and custom attributes: a column changed
    from ``text`` to ``jsonb`` (both Avro ``string``) cannot be told apart that way.
    """


class RegistryError(CodecError):
    """The Confluent Schema Registry refused a request or could not be reached."""
