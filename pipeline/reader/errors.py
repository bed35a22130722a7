"""Errors raised by the replication reader.

All derive from :class:`ReaderError` (itself a :class:`~pipeline.errors.CatalogCdcError`).
Each one means the reader cannot go on *safely*: it must stop without acknowledging the
LSN of the message that failed, so that nothing is skipped; the message says what failed
and where.

The errors of a tuple's values, which the codec's raw encoder raises as well
(:class:`~pipeline.values.ValueConversionError`,
:class:`~pipeline.values.SchemaMismatchError`), live with the values in
:mod:`pipeline.values`, the contract the reader and the codec share.
"""

from __future__ import annotations

from pipeline.errors import CatalogCdcError


class ReaderError(CatalogCdcError):
    """Base of the errors of the replication reader (decoding, schemas, values)."""


class PgOutputDecodeError(ReaderError):
    """A pgoutput message is malformed: truncated, unknown type, trailing bytes...

    The message names the pgoutput message type and the byte offset (from the start of
    the pgoutput message, i.e. after the 25-byte XLogData header) where decoding failed.
    """

    def __init__(self, message_type: str, offset: int, detail: str) -> None:
        self.message_type = message_type
        self.offset = offset
        self.detail = detail
        super().__init__(
            f"cannot decode pgoutput {message_type} message at byte offset {offset}: {detail}"
            " (is the slot read with the protocol version and options this reader expects?)"
        )


class UnknownRelationError(ReaderError):
    """A row refers to a relation id for which no Relation message has been applied."""
