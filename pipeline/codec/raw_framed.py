"""A raw encoder with a codec's message headers: Kafka key and value bytes from raw tuples.

:class:`FramedRawEncoder` wraps a :class:`~pipeline.codec.raw.RawTableEncoder` (Avro
bodies) with the key and value headers of the codec that registered the table's
schemas (single-object fingerprint, or Confluent magic byte and schema id).
"""

from __future__ import annotations

from typing import Any, Literal

from pipeline.codec.raw import OldKind, RawTableEncoder
from pipeline.events import Op, Row, SnapshotMarker, Source, TableSchema
from pipeline.values import RawTuple

__all__ = ["FramedRawEncoder"]


class FramedRawEncoder:
    """A :class:`RawTableEncoder` with a codec's message headers: Kafka key/value bytes.

    Made by ``SingleObjectCodec.raw_encoder`` / ``ConfluentRegistryCodec.raw_encoder``
    once the table's schemas are registered; :meth:`value` / :meth:`key` return exactly
    what ``encode_value`` / ``encode_key`` would for the converted rows (same header,
    body decoding to the same event/key).  Thread-safe.
    """

    __slots__ = ("_key_header", "_value_header", "table")

    def __init__(self, table: RawTableEncoder, key_header: bytes, value_header: bytes) -> None:
        self.table = table
        self._key_header = key_header
        self._value_header = value_header

    @property
    def table_schema(self) -> TableSchema:
        return self.table.table_schema

    def value(
        self,
        op: Op,
        before: RawTuple | None,
        before_kind: OldKind | None,
        after: RawTuple | None,
        source: Source,
        ts_ms: int,
    ) -> bytes:
        """Header + envelope body (see :meth:`RawTableEncoder.write_value`)."""
        out = bytearray(self._value_header)
        self.table.write_value(out, op, before, before_kind, after, source, ts_ms)
        return bytes(out)

    def event(
        self,
        op: Op,
        before: RawTuple | None,
        before_kind: OldKind | None,
        after: RawTuple | None,
        db: str,
        lsn: int,
        tx_id: int | None,
        commit_ts_ms: int,
        snapshot: SnapshotMarker,
        ts_ms: int,
    ) -> bytes:
        """Header + envelope body (see :meth:`RawTableEncoder.write_event`)."""
        out = bytearray(self._value_header)
        table = self.table
        schema = table.table_schema
        table._write(
            out, op, before, before_kind, after, db, schema.schema, schema.table, lsn, tx_id,
            commit_ts_ms, snapshot, ts_ms, None,
        )  # fmt: skip
        return bytes(out)

    def insert_event(
        self,
        payload: bytes,
        db: str,
        lsn: int,
        tx_id: int | None,
        commit_ts_ms: int,
        snapshot: SnapshotMarker,
        ts_ms: int,
    ) -> tuple[bytes, RawTuple] | None:
        """Value bytes and new tuple of an Insert payload (see
        :meth:`RawTableEncoder.insert_event`), or ``None``."""
        return self.table.insert_event(
            payload, self._value_header, db, lsn, tx_id, commit_ts_ms, snapshot, ts_ms
        )

    def key(self, raw: RawTuple) -> bytes:
        """Header + key body (see :meth:`RawTableEncoder.key`)."""
        return self._key_header + self.table.key(raw)

    def key_row(self, raw: RawTuple) -> Row:
        """The key columns of ``raw`` as Python values."""
        return self.table.key_row(raw)

    def fill_toast(self, after: RawTuple, before: RawTuple, before_kind: OldKind) -> RawTuple:
        """See :meth:`RawTableEncoder.fill_toast`."""
        return self.table.fill_toast(after, before, before_kind)

    def column_value(self, raw: RawTuple, name: str, kind: Literal["N", "O", "K"] = "N") -> Any:
        """One column's Python value (see :meth:`RawTableEncoder.column_value`)."""
        return self.table.column_value(raw, name, kind)
