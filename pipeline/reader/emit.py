"""The reader's emit path: encode a change, pick its partition, produce it (and a tombstone).

Two encoders feed one delivery (:meth:`EmitPath._deliver`):

* :meth:`EmitPath._emit_raw` -- raw tuples straight to Avro (the table's
  :class:`~pipeline.codec.raw_framed.FramedRawEncoder`): streamed changes and the
  initial snapshot;
* :meth:`EmitPath._emit` -- converted rows through the codec: re-snapshot chunk rows.

Both decode to the same event for the same row.  A row goes to the partition of its
partition column's value (``CATALOG_CDC_READER_PARTITION_COLUMNS``), else of its key
(:func:`~pipeline.kafka.partition_for`); a delete is followed by a tombstone (same
key, no value) on the same partition.  Every produced event is tracked in its
transaction (:class:`~pipeline.reader.acks.AckTracker`): nothing is confirmed before
Kafka acknowledged it.  A row that cannot be encoded stops the reader with an error
naming the table and key.
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from pipeline.codec.raw_framed import FramedRawEncoder
from pipeline.errors import CatalogCdcError
from pipeline.events import UNCHANGED_TOAST, ChangeEvent, Row, SnapshotMarker, Source, TableSchema
from pipeline.kafka import TopicSpec, ensure_topics, partition_for
from pipeline.reader import pgoutput as po
from pipeline.reader.acks import _Tx
from pipeline.reader.core import ReaderBase
from pipeline.reader.errors import ReaderError
from pipeline.reader.setup import split_table
from pipeline.reader.snapshot import TableShape
from pipeline.values import ValueConversionError


def now_ms() -> int:
    return int(time.time() * 1000)


def key_text(key: Row) -> str:
    """A key row as the text it is partitioned by (no partition column value)."""
    return json.dumps(key, sort_keys=True, default=str)


class EmitPath(ReaderBase):
    """Encoding and producing (see the module docstring)."""

    def _setup_topics(self, shapes: dict[str, TableShape]) -> None:
        specs = [
            TopicSpec(self.topic_for(*split_table(q)), self.settings.partitions) for q in shapes
        ]
        self._partitions.update(ensure_topics(self.bootstrap, specs))

    def _partition_count(self, topic: str) -> int:
        if topic not in self._partitions:
            self._partitions.update(
                ensure_topics(self.bootstrap, [TopicSpec(topic, self.settings.partitions)])
            )
        return self._partitions[topic]

    def _encoder(self, schema: TableSchema) -> FramedRawEncoder:
        return self._target(schema)[0]

    def _target(self, schema: TableSchema) -> tuple[FramedRawEncoder, str, str | None, int]:
        """(raw encoder, topic, partition column, partition count) of a schema version."""
        entry = self._targets.get(id(schema))
        if entry is None or entry[0] is not schema:
            topic = self.topic_for(schema.schema, schema.table)
            enc = self.codec.raw_encoder(topic, schema, self.cache.converter)
            pcol = self._partition_column.get((schema.schema, schema.table))
            entry = (schema, (enc, topic, pcol, self._partition_count(topic)))
            self._targets[id(schema)] = entry
        return entry[1]

    def _conversion_error(
        self, schema: TableSchema, raw: po.RawTuple, exc: Exception
    ) -> ReaderError:
        return ReaderError(
            f"cannot convert a row of {schema.qualified_name} key={raw_key(schema, raw)}: {exc}. "
            "The reader stops rather than skip it; nothing after it is confirmed, so a "
            "restart reads it again once the data or the reader is fixed"
        )

    def _emit_raw(
        self,
        tx: _Tx,
        schema: TableSchema,
        op: Any,
        before: po.RawTuple | None,
        before_kind: Any,
        after: po.RawTuple | None,
        lsn: int,
        xid: int | None,
        ts_ms: int,
        snapshot: SnapshotMarker,
    ) -> None:
        """The hot path: raw tuples -> Avro (no Python row in between) -> Kafka.

        Decodes to exactly the event :meth:`_emit` would produce from converted rows
        (pipeline.codec.raw's invariant).
        """
        enc, topic, pcol, partitions = self._target(schema)
        raw = after if after is not None else before
        kind: Literal["N", "O", "K"] = "N" if after is not None else (before_kind or "N")
        assert raw is not None
        source = Source(self._db, schema.schema, schema.table, lsn, xid, ts_ms, snapshot)
        try:
            value_bytes = enc.value(op, before, before_kind, after, source, now_ms())
            key_bytes = enc.key(raw)
            pvalue = enc.column_value(raw, pcol, kind) if pcol else None
            if pvalue is None or pvalue is UNCHANGED_TOAST:
                pvalue = key_text(enc.key_row(raw))
        except ValueConversionError as exc:
            raise self._conversion_error(schema, raw, exc) from exc
        except CatalogCdcError as exc:
            raise ReaderError(
                f"cannot encode a {op!r} event of {schema.qualified_name} "
                f"key={raw_key(schema, raw)}: {exc}; "
                "the reader stops rather than skip it (nothing after it is confirmed)"
            ) from exc
        self._deliver(tx, schema, op, topic, key_bytes, value_bytes, pvalue, partitions)

    def _emit(
        self,
        tx: _Tx,
        schema: TableSchema,
        op: Any,
        before: Row | None,
        after: Row | None,
        lsn: int,
        xid: int | None,
        ts_ms: int,
        snapshot: SnapshotMarker,
    ) -> None:
        """Encode one change event of converted rows (and a tombstone after a delete) and
        produce it."""
        row = after if after is not None else before
        assert row is not None
        rel_key = (schema.schema, schema.table)
        key = {c: row[c] for c in self._primary_keys.get(rel_key, ())} or {
            c.name: row.get(c.name) for c in schema.key_columns
        }
        topic = self.topic_for(schema.schema, schema.table)
        event = ChangeEvent(
            op=op,
            source=Source(self._db, schema.schema, schema.table, lsn, xid, ts_ms, snapshot),
            ts_ms=now_ms(),
            before=before,
            after=after,
            key=key,
            table_schema=schema,
        )
        try:
            key_bytes = self.codec.encode_key(topic, schema, key)
            value_bytes = self.codec.encode_value(topic, schema, event)
        except Exception as exc:
            raise ReaderError(
                f"cannot encode a {op!r} event of {schema.qualified_name} key={_show(key)}: {exc}; "
                "the reader stops rather than skip it (nothing after it is confirmed)"
            ) from exc
        pcol = self._partition_column.get(rel_key)
        pvalue = row.get(pcol) if pcol else None
        if pvalue is None or pvalue is UNCHANGED_TOAST:
            pvalue = key_text(key)
        self._deliver(
            tx, schema, op, topic, key_bytes, value_bytes, pvalue, self._partition_count(topic)
        )

    def _deliver(
        self,
        tx: _Tx,
        schema: TableSchema,
        op: Any,
        topic: str,
        key_bytes: bytes,
        value_bytes: bytes,
        pvalue: Any,
        partitions: int,
    ) -> None:
        """Produce an encoded event to ``pvalue``'s partition (its partition column's
        value, else :func:`key_text`), a tombstone after it for a delete; count it."""
        partition = partition_for(pvalue, partitions)
        self._produce(tx, topic, key_bytes, value_bytes, partition)
        if op == "d":
            self._produce(tx, topic, key_bytes, None, partition)
        self.metrics.count_event(schema.table, op)

    def _produce(
        self, tx: _Tx, topic: str, key: bytes, value: bytes | None, partition: int
    ) -> None:
        tx.pending += 1
        self.tracker.in_flight += 1
        callback = tx.callback
        if callback is None:
            callback = tx.callback = self.tracker.on_delivery(tx)
        produce = self.producer.produce
        while True:
            try:
                # All positional (topic, value, key, partition, on_delivery): keyword
                # parsing costs librdkafka's binding ~0.5 µs per call.
                produce(topic, value, key, partition, callback)
                return
            except BufferError:  # librdkafka's queue is full: wait for the broker
                self.queue_full_waits += 1
                self.producer.poll(0.05)


def _show(key: Row) -> str:
    return json.dumps(key, default=str, sort_keys=True)


def raw_key(schema: TableSchema, raw: po.RawTuple) -> str:
    """The key columns' text of a raw tuple, for error messages."""
    return _show(
        {
            c.name: (v.decode(errors="replace") if isinstance(v, bytes) else v)
            for c, v in zip(schema.columns, raw, strict=False)
            if c.is_key
        }
    )
