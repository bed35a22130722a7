"""The messages of PostgreSQL's ``pgoutput`` protocol, as frozen dataclasses.

:mod:`pipeline.reader.pgoutput` decodes bytes into these (and re-exports them); the
reader's translation to change events reads them.  Field names follow PostgreSQL's
documentation of the logical replication message formats.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

from pipeline.values import RawTuple

__all__ = [
    "PG_EPOCH_OFFSET_US",
    "Begin",
    "Commit",
    "Delete",
    "Insert",
    "Message",
    "Origin",
    "PgOutputMessage",
    "Relation",
    "RelationColumn",
    "StreamAbort",
    "StreamCommit",
    "StreamStart",
    "StreamStop",
    "Truncate",
    "TupleKind",
    "Type",
    "Update",
    "format_lsn",
    "pg_timestamp_to_epoch_ms",
]

PG_EPOCH_OFFSET_US: Final = 946_684_800_000_000
"""Microseconds from the Unix epoch (1970-01-01) to PostgreSQL's (2000-01-01), UTC."""


def pg_timestamp_to_epoch_ms(pg_us: int) -> int:
    """Convert a pgoutput timestamp (µs since 2000-01-01 UTC) to ms since the Unix epoch.

    Rounds towards negative infinity (floor), so it is exact for any whole millisecond.
    """
    return (pg_us + PG_EPOCH_OFFSET_US) // 1000


def format_lsn(lsn: int) -> str:
    """Format an LSN the way PostgreSQL prints it (``16/B374D848``)."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


TupleKind: TypeAlias = Literal["K", "O"]
"""Old-tuple kind: ``'K'`` replica-identity key columns only, ``'O'`` the whole old row."""


@dataclass(frozen=True, slots=True)
class Begin:
    """Start of a (non-streamed) transaction."""

    final_lsn: int
    """LSN of the transaction's commit record."""
    commit_ts: int
    """Commit time, microseconds since 2000-01-01 UTC (see :attr:`commit_ts_ms`)."""
    xid: int

    @property
    def commit_ts_ms(self) -> int:
        """Commit time in milliseconds since the Unix epoch."""
        return pg_timestamp_to_epoch_ms(self.commit_ts)


@dataclass(frozen=True, slots=True)
class Commit:
    """End of a (non-streamed) transaction."""

    flags: int
    commit_lsn: int
    end_lsn: int
    """LSN just after the commit record: the position to acknowledge once durable."""
    commit_ts: int
    """Commit time, microseconds since 2000-01-01 UTC (see :attr:`commit_ts_ms`)."""

    @property
    def commit_ts_ms(self) -> int:
        """Commit time in milliseconds since the Unix epoch."""
        return pg_timestamp_to_epoch_ms(self.commit_ts)


@dataclass(frozen=True, slots=True)
class Origin:
    """Replication origin of the current transaction (it was replicated from elsewhere)."""

    commit_lsn: int
    name: str


@dataclass(frozen=True, slots=True)
class RelationColumn:
    """One column as a Relation message describes it."""

    flags: int
    name: str
    type_oid: int
    type_modifier: int

    @property
    def is_key(self) -> bool:
        """Whether the column is part of the replica identity (flag bit 1)."""
        return bool(self.flags & 1)


@dataclass(frozen=True, slots=True)
class Relation:
    """Shape of a published table; sent before its first change and after each change of it.

    ``namespace`` is as sent: the empty string stands for ``pg_catalog``.
    """

    relation_id: int
    namespace: str
    name: str
    replica_identity: str
    """``'d'`` default, ``'n'`` nothing, ``'f'`` full, ``'i'`` index."""
    columns: tuple[RelationColumn, ...]
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class Type:
    """A non-built-in data type used by a following Relation message.

    For a domain, ``type_oid`` is the domain's and ``namespace``/``name`` are those of its
    base type (that is what pgoutput sends); the empty namespace means ``pg_catalog``.
    """

    type_oid: int
    namespace: str
    name: str
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class Insert:
    """A new row."""

    relation_id: int
    new: RawTuple
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class Update:
    """A changed row.

    ``old`` is sent only when the replica identity changed (``'K'``: key columns, the
    others NULL) or with REPLICA IDENTITY FULL (``'O'``); ``old_kind`` says which.
    """

    relation_id: int
    old_kind: TupleKind | None
    old: RawTuple | None
    new: RawTuple
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class Delete:
    """A deleted row: its replica identity (``'K'``) or whole old row (``'O'``)."""

    relation_id: int
    old_kind: TupleKind
    old: RawTuple
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class Truncate:
    """TRUNCATE of one or more published tables."""

    relation_ids: tuple[int, ...]
    options: int
    """Bit 1: CASCADE, bit 2: RESTART IDENTITY."""
    xid: int | None = None

    @property
    def cascade(self) -> bool:
        return bool(self.options & 1)

    @property
    def restart_identity(self) -> bool:
        return bool(self.options & 2)


@dataclass(frozen=True, slots=True)
class Message:
    """A ``pg_logical_emit_message`` message (sent with the ``messages`` option only)."""

    transactional: bool
    lsn: int
    prefix: str
    content: bytes
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class StreamStart:
    """Start of a block of a streamed, still in-progress transaction (protocol v2)."""

    xid: int
    first_segment: bool


@dataclass(frozen=True, slots=True)
class StreamStop:
    """End of a stream block (protocol v2)."""


@dataclass(frozen=True, slots=True)
class StreamCommit:
    """Commit of a streamed transaction (protocol v2)."""

    xid: int
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_ts: int
    """Commit time, microseconds since 2000-01-01 UTC (see :attr:`commit_ts_ms`)."""

    @property
    def commit_ts_ms(self) -> int:
        """Commit time in milliseconds since the Unix epoch."""
        return pg_timestamp_to_epoch_ms(self.commit_ts)


@dataclass(frozen=True, slots=True)
class StreamAbort:
    """Abort of a streamed transaction or of one of its subtransactions (protocol v2).

    ``subxid == xid`` means the whole transaction aborted.
    """

    xid: int
    subxid: int


PgOutputMessage: TypeAlias = (
    Begin
    | Commit
    | Origin
    | Relation
    | Type
    | Insert
    | Update
    | Delete
    | Truncate
    | Message
    | StreamStart
    | StreamStop
    | StreamCommit
    | StreamAbort
)
"""Every message :func:`decode_message` returns."""
