"""Shared change-event model: what the reader emits and every later stage reads.

A change event is a Debezium-style envelope (``before``, ``after``, ``op``, ``ts_ms``,
``source``).  Row images are plain dicts ``{column name: value}`` whose values are
Python objects converted faithfully from PostgreSQL:

==================  =========================================================
PostgreSQL          Python
==================  =========================================================
int2/int4/int8      ``int``
numeric             ``decimal.Decimal`` (exact; ``NaN``/``Infinity`` included)
float4/float8       ``float``
text/varchar/...    ``str``
bool                ``bool``
timestamptz         ``datetime`` (aware, UTC)
timestamp           ``datetime`` (naive)
date                ``datetime.date``
json/jsonb          parsed JSON (``dict``/``list``/scalars)
uuid                ``uuid.UUID``
bytea               ``bytes``
arrays              ``list`` (nested for multi-dimensional arrays)
NULL                ``None``
unchanged TOAST     :data:`UNCHANGED_TOAST` (never ``None``)
==================  =========================================================

``UNCHANGED_TOAST`` marks a TOASTed value that an UPDATE did not touch: PostgreSQL
does not send it, so the event cannot carry it.  It is *not* NULL, and no stage may
ever write it downstream as NULL: the consumer of the event keeps the value it has.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Final, Literal

Op = Literal["c", "u", "d", "r", "t"]
SnapshotMarker = Literal["false", "true", "first", "last", "incremental"]


class _UnchangedToast(enum.Enum):
    """Singleton marker type for a TOASTed value an UPDATE left unchanged."""

    UNCHANGED_TOAST = "__unchanged_toast__"

    def __repr__(self) -> str:
        return "UNCHANGED_TOAST"

    def __bool__(self) -> bool:  # pragma: no cover - guard against accidental truthiness
        raise TypeError("UNCHANGED_TOAST has no truth value: compare with `is`")


UNCHANGED_TOAST: Final = _UnchangedToast.UNCHANGED_TOAST
"""The value of a column whose TOASTed datum was not sent because it did not change."""

UnchangedToast = _UnchangedToast
"""Type of :data:`UNCHANGED_TOAST`, for annotations."""

Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a published table, as the Relation message describes it."""

    name: str
    type_oid: int
    type_modifier: int = -1
    is_key: bool = False
    type_name: str | None = None
    """The PostgreSQL type name (``int8``, ``_text``, a user type's name...) when known."""


@dataclass(frozen=True, slots=True)
class TableSchema:
    """A published table's shape at one point of the WAL (one Relation message)."""

    relation_id: int
    schema: str
    table: str
    columns: tuple[Column, ...]
    replica_identity: str = "d"

    @property
    def key_columns(self) -> tuple[Column, ...]:
        return tuple(c for c in self.columns if c.is_key)

    @property
    def qualified_name(self) -> str:
        return f"{self.schema}.{self.table}"


@dataclass(frozen=True, slots=True)
class Source:
    """Where a change came from (Debezium's ``source`` block)."""

    db: str
    schema: str
    table: str
    lsn: int
    """Commit LSN of the change's transaction for streamed rows (LSN order is commit
    order); the consistent point for initial snapshot reads, the high watermark's
    commit LSN for re-snapshot reads."""
    tx_id: int | None
    ts_ms: int
    """Commit time of the transaction, milliseconds since the epoch."""
    snapshot: SnapshotMarker = "false"


@dataclass(slots=True)
class ChangeEvent:
    """One row change, in Debezium's envelope.

    ``key`` is the primary-key image (``None`` only for a truncate, which has no row).
    """

    op: Op
    source: Source
    ts_ms: int
    before: Row | None = None
    after: Row | None = None
    key: Row | None = None
    table_schema: TableSchema | None = field(default=None, compare=False, repr=False)
