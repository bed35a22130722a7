"""pgoutput messages to change events: the reader's translation layer.

Begin/Commit delimit a transaction (every event of it carries its commit LSN as
``source.lsn``); Relation and Type messages update the schema cache; Insert, Update,
Delete and Truncate become ``c``/``u``/``d``/``t`` events, encoded from the raw tuples
(:mod:`pipeline.reader.emit`).  An UPDATE that changes the primary key, or moves the
row to another partition, becomes a delete of the old key and a create of the new row.
Rows of the signal table are not events: they drive re-snapshots
(:mod:`pipeline.reader.incremental`, to which this layer is the
:class:`~pipeline.reader.incremental.SnapshotHost`).

Inserts take a hot path (:meth:`Translation._insert`): a generated tuple parser, the
raw encoder's one-pass ``insert_event``, a partition memo and one delivery callback per
transaction, producing exactly the messages of the general path.
"""

from __future__ import annotations

import dataclasses
import logging
import struct
from collections.abc import Callable, Collection, Set
from typing import Any, Literal

from pipeline.errors import CatalogCdcError
from pipeline.events import UNCHANGED_TOAST, ChangeEvent, Row, Source, TableSchema
from pipeline.kafka import partition_for
from pipeline.reader import pgoutput as po
from pipeline.reader.core import HotEntry
from pipeline.reader.emit import EmitPath, key_text, now_ms, raw_key
from pipeline.reader.errors import ReaderError
from pipeline.reader.replication import XLogData
from pipeline.reader.settings import HEARTBEAT_PREFIX
from pipeline.values import ValueConversionError

log = logging.getLogger("pipeline.reader.service")
"""The reader's log lines keep the logger name they had before service.py was split."""

_U32 = struct.Struct(">I").unpack_from


class Translation(EmitPath):
    """pgoutput messages -> events (see the module docstring)."""

    # ------------------------------------------------------------- SnapshotHost

    @property
    def captured_tables(self) -> Set[str]:
        return self.captured

    @property
    def transaction_xid(self) -> int | None:
        return self._tx_xid

    def primary_key(self, schema: TableSchema) -> tuple[str, ...]:
        return self._primary_keys.get((schema.schema, schema.table), ())

    def emit_snapshot_rows(self, schema: TableSchema, rows: Collection[Row]) -> None:
        """Re-snapshot rows as ``op='r'`` events of the transaction being read, at its
        commit LSN (``snapshot='incremental'``), then counted as snapshot rows."""
        tx = self._tx
        assert tx is not None
        lsn = self._tx_lsn
        for row in rows:
            self._emit(tx, schema, "r", None, row, lsn, None, now_ms(), "incremental")
        self.metrics.snapshot_rows.inc(len(rows))

    # ------------------------------------------------------------------ messages

    def _on_begin(self, msg: po.Begin, x: XLogData) -> None:
        self._tx = self.tracker.begin()
        self._tx_xid = msg.xid
        self._tx_lsn = msg.final_lsn
        self._tx_ts_ms = msg.commit_ts_ms

    def _on_commit(self, msg: po.Commit, x: XLogData) -> None:
        self.tracker.commit(msg.end_lsn)
        self._tx = None
        self.metrics.transactions.inc()
        self.metrics.last_commit_ts.set(msg.commit_ts_ms / 1000.0)

    def _on_relation(self, msg: po.Relation, x: XLogData) -> None:
        self._apply_relation(msg, ())

    def _on_type(self, msg: po.Type, x: XLogData) -> None:
        self._drop_hot()
        self.cache.apply_type(msg)

    def _apply_relation(self, rel: po.Relation, types: tuple[po.Type, ...]) -> TableSchema:
        """Apply a Relation (and its types) to the stream's cache, keyed by primary key."""
        self._drop_hot()
        for t in types:
            self.cache.apply_type(t)
        schema = self.cache.apply_relation(self.keyed_relation(rel))
        log.info("event=relation table=%s columns=%d", schema.qualified_name, len(schema.columns))
        return schema

    def keyed_relation(self, rel: po.Relation) -> po.Relation:
        """``rel`` with key flags on the primary-key columns (not the replica identity).

        Events are keyed by primary key even where the reader logs whole old rows
        (REPLICA IDENTITY FULL) to route deletes by their partition column.
        """
        ns = rel.namespace or "pg_catalog"
        pk = self._primary_keys.get((ns, rel.name))
        if pk is None:
            pk = tuple(
                str(r[0])
                for r in self.conn.execute(
                    "SELECT a.attname FROM pg_index i JOIN pg_attribute a "
                    "ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
                    "WHERE i.indrelid = %s AND i.indisprimary",
                    (rel.relation_id,),
                )
            )
            self._primary_keys[(ns, rel.name)] = pk
        if not pk:
            return rel
        return dataclasses.replace(
            rel,
            columns=tuple(
                dataclasses.replace(c, flags=1 if c.name in pk else 0) for c in rel.columns
            ),
        )

    def _is_signal(self, schema: TableSchema) -> bool:
        return schema.schema == self.signal_schema and schema.table == self.signal_name

    def _row(self, relation_id: int, raw: po.RawTuple, kind: Any = "N") -> Row:
        """Convert a whole tuple (signal rows); a failure names table, key and column."""
        try:
            return self.cache.row(relation_id, raw, kind=kind)
        except ValueConversionError as exc:
            raise self._conversion_error(self.cache.schema(relation_id), raw, exc) from exc

    def _count_hot(self) -> None:
        """Move the hot path's insert counts to the metrics."""
        for entry in self._hot.values():
            if entry.inserts:
                self.metrics.count_event(entry.schema.table, "c", entry.inserts)
                entry.inserts = 0

    def _drop_hot(self) -> None:
        """Forget the hot path's per-relation cache (a Relation or Type message came)."""
        self._count_hot()
        self._hot.clear()

    def _hot_entry(self, relation_id: int) -> HotEntry:
        schema = self.cache.schema(relation_id)
        enc, topic, pcol, partitions = self._target(schema)
        names = [c.name for c in schema.columns]
        pindex = names.index(pcol) if pcol in names else -1
        entry = HotEntry(
            schema=schema,
            enc=enc,
            topic=topic,
            partitions=partitions,
            pcol=pcol,
            pindex=pindex,
            pkey=pindex >= 0 and schema.columns[pindex].is_key,
            signal=self._is_signal(schema),
            parse=self._insert_parser(len(schema.columns)),
        )
        self._hot[relation_id] = entry
        return entry

    def _insert_parser(self, ncols: int) -> Callable[[bytes], po.RawTuple | None]:
        parser = self._parsers.get(ncols)
        if parser is None:
            parser = self._parsers[ncols] = po.insert_parser(ncols)
        return parser

    def _insert(self, payload: bytes, lsn: int) -> None:
        """A streamed Insert (the hot path): the event ``_on_insert`` would produce."""
        relation_id = _U32(payload, 1)[0] if len(payload) >= 5 else -1
        entry = self._hot.get(relation_id)
        tx = self._tx
        inc = self.incremental
        fused = None
        if (
            entry is not None
            and tx is not None
            and not entry.signal
            and (inc is None or inc.chunk is None)
        ):
            # Parse and encode in one pass; None: the general way below decides.
            fused = entry.enc.insert_event(
                payload, self._db, self._tx_lsn, self._tx_xid, self._tx_ts_ms, "false", self._ts_ms
            )
        value_bytes: bytes | None
        if fused is not None:
            assert entry is not None and tx is not None  # as tested above
            value_bytes, new = fused
        else:
            if entry is None:
                relation_id, new = po.decode_insert(payload)  # a malformed one fails here
                entry = self._hot_entry(relation_id)
            else:
                parsed = entry.parse(payload)
                new = po.decode_insert(payload)[1] if parsed is None else parsed
            if entry.signal or tx is None:
                self._on_insert(po.Insert(relation_id, new), XLogData(lsn, lsn, 0, b""))
                return
            if inc is not None and inc.chunk is not None and inc.watching(entry.schema):
                inc.on_change(entry.schema, None, entry.enc.key_row(new))
            value_bytes = None
        schema = entry.schema
        enc = entry.enc
        try:
            if value_bytes is None:
                value_bytes = enc.event(
                    "c", None, None, new, self._db, self._tx_lsn, self._tx_xid,
                    self._tx_ts_ms, "false", self._ts_ms,
                )  # fmt: skip
            key_bytes = enc.key(new)
            pindex = entry.pindex
            if pindex >= 0 and new[pindex] == entry.plast:  # plast: a text seen before
                partition = entry.ppart
            else:
                partition = self._partition(entry, new, "N")
        except ValueConversionError as exc:
            raise self._conversion_error(schema, new, exc) from exc
        except CatalogCdcError as exc:
            raise ReaderError(
                f"cannot encode a 'c' event of {schema.qualified_name} "
                f"key={raw_key(schema, new)}: {exc}; "
                "the reader stops rather than skip it (nothing after it is confirmed)"
            ) from exc
        # _produce(), inlined
        tx.pending += 1
        self.tracker.in_flight += 1
        callback = tx.callback
        if callback is None:
            callback = tx.callback = self.tracker.on_delivery(tx)
        try:
            self.producer.produce(entry.topic, value_bytes, key_bytes, partition, callback)
        except BufferError:
            tx.pending -= 1
            self.tracker.in_flight -= 1
            self._produce(tx, entry.topic, key_bytes, value_bytes, partition)
        entry.inserts += 1

    def _partition(self, entry: HotEntry, raw: po.RawTuple, kind: Literal["N", "O", "K"]) -> int:
        """The partition of a row: its partition column's, else its key's (see
        :func:`~pipeline.kafka.partition_for`); the last text's partition is reused."""
        enc = entry.enc
        pcol = entry.pcol
        v: object = None
        if pcol is not None:
            if entry.pindex >= 0 and (kind != "K" or entry.pkey):
                v = raw[entry.pindex]
                if v.__class__ is bytes and v == entry.plast:
                    return entry.ppart
            pvalue = enc.column_value(raw, pcol, kind)
            if pvalue is not None and pvalue is not UNCHANGED_TOAST:
                partition = partition_for(pvalue, entry.partitions)
                if v.__class__ is bytes:
                    entry.plast, entry.ppart = v, partition
                return partition
        return partition_for(key_text(enc.key_row(raw)), entry.partitions)

    def _on_insert(self, msg: po.Insert, x: XLogData) -> None:
        schema = self.cache.schema(msg.relation_id)
        if self._is_signal(schema):
            assert self.incremental is not None
            self.incremental.on_signal(self._row(msg.relation_id, msg.new), x.data_start)
            return
        self._change(schema, "c", None, None, msg.new)

    def _on_update(self, msg: po.Update, x: XLogData) -> None:
        schema = self.cache.schema(msg.relation_id)
        if self._is_signal(schema):
            return
        new, old, kind = msg.new, msg.old, msg.old_kind
        if old is not None and kind is not None:
            enc = self._encoder(schema)
            try:
                key_changed = enc.key_row(old) != enc.key_row(new)
            except ValueConversionError as exc:
                raise self._conversion_error(schema, new, exc) from exc
            if key_changed or (kind == "O" and self._moves_partition(schema, enc, old, new)):
                # The primary key changed, or the row moves to another partition (a
                # variant given to another product): the old key is deleted on its
                # partition, the new row created on its own. Consumers of the old
                # partition (an assembler instance) then see the row leave.
                self._change(schema, "d", old, kind, None)
                self._change(schema, "c", None, None, enc.fill_toast(new, old, kind))
                return
            if kind == "O":
                new = enc.fill_toast(new, old, kind)
        self._change(schema, "u", old, kind, new)

    def _moves_partition(
        self, schema: TableSchema, enc: Any, old: po.RawTuple, new: po.RawTuple
    ) -> bool:
        """Whether an UPDATE changed the row's partition column (whole old row known)."""
        pcol = self._partition_column.get((schema.schema, schema.table))
        if pcol is None:
            return False
        try:
            before = enc.column_value(old, pcol, "O")
            after = enc.column_value(new, pcol, "N")
        except ValueConversionError as exc:
            raise self._conversion_error(schema, new, exc) from exc
        if after is UNCHANGED_TOAST:
            return False
        return bool(before != after)

    def _on_delete(self, msg: po.Delete, x: XLogData) -> None:
        schema = self.cache.schema(msg.relation_id)
        if self._is_signal(schema):
            return
        self._change(schema, "d", msg.old, msg.old_kind, None)

    def _on_truncate(self, msg: po.Truncate, x: XLogData) -> None:
        assert self._tx is not None
        for rel_id in msg.relation_ids:
            schema = self.cache.schema(rel_id)
            if self._is_signal(schema):
                continue
            topic = self.topic_for(schema.schema, schema.table)
            event = ChangeEvent(
                op="t",
                source=Source(
                    self._db,
                    schema.schema,
                    schema.table,
                    self._tx_lsn,
                    self._tx_xid,
                    self._tx_ts_ms,
                    "false",
                ),
                ts_ms=now_ms(),
                table_schema=schema,
            )
            value = self.codec.encode_value(topic, schema, event)
            # A truncate has no row: it goes to every partition (so each partition's
            # readers see it in order) with an empty key.
            for partition in range(self._partition_count(topic)):
                self._produce(self._tx, topic, b"", value, partition)
            self.metrics.count_event(schema.table, "t")

    def _on_message(self, msg: po.Message, x: XLogData) -> None:
        if msg.prefix != HEARTBEAT_PREFIX:
            log.debug("event=logical_message prefix=%s bytes=%d", msg.prefix, len(msg.content))

    def _change(
        self,
        schema: TableSchema,
        op: Any,
        before: po.RawTuple | None,
        before_kind: Any,
        after: po.RawTuple | None,
    ) -> None:
        """A streamed row change: encode straight from the raw tuples and produce it
        (``source.lsn``: its transaction's commit LSN)."""
        assert self._tx is not None
        inc = self.incremental
        if inc is not None and inc.watching(schema):
            enc = self._encoder(schema)
            inc.on_change(
                schema,
                enc.key_row(before) if before is not None else None,
                enc.key_row(after) if after is not None else None,
            )
        self._emit_raw(
            self._tx,
            schema,
            op,
            before,
            before_kind,
            after,
            self._tx_lsn,
            self._tx_xid,
            self._tx_ts_ms,
            "false",
        )
