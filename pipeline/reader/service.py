"""`catalog-cdc reader`: PostgreSQL logical replication -> Kafka change events.

Guarantees
----------
- **No loss.** The slot's flush position is confirmed only up to the end of the
  newest transaction whose every event, and every event before it, Kafka has
  acknowledged (idempotent producer, ``acks=all``, no delivery timeout).  After a
  crash streaming resumes from the slot: some events may be produced twice, none is
  lost.
- **Order.** Events are produced in commit order; a row's events always go to the
  same partition (the partition column's value, by default the product id for
  product-owned tables), so per key they stay in commit order.
- **Consistent snapshot.** A new slot is created with an exported snapshot; every
  table is read under that snapshot in key-ordered chunks (``op='r'``), and streaming
  starts at the slot's consistent point: no change is missed or applied twice.  A
  crash during the snapshot drops the slot and redoes it.
- **Never skips.** A row that cannot be decoded or encoded stops the reader with an
  error naming the table, key and column.

Structure
---------
:class:`Reader` is the last of the layers :mod:`pipeline.reader.core` describes: it
adds the set-up in the database (:mod:`pipeline.reader.setup`), the slot/snapshot state
machine (:mod:`pipeline.reader.slot`) and the initial snapshot to the stream loop
(:mod:`pipeline.reader.stream`), the pgoutput translation
(:mod:`pipeline.reader.translate`) and the emit path (:mod:`pipeline.reader.emit`).
"""

from __future__ import annotations

import logging
import threading
import time

import psycopg
from confluent_kafka import Producer
from psycopg import sql

from pipeline.kafka import producer_config
from pipeline.reader.emit import now_ms
from pipeline.reader.errors import ReaderError
from pipeline.reader.incremental import IncrementalSnapshot
from pipeline.reader.replication import ReplicationConnection, lsn_to_str
from pipeline.reader.setup import setup_database
from pipeline.reader.slot import open_slot
from pipeline.reader.snapshot import TableShape, iter_chunks, prepare_snapshot_session
from pipeline.reader.state import ReaderStateStore
from pipeline.reader.stream import Streaming
from pipeline.settings import metrics_address

__all__ = ["Reader"]

log = logging.getLogger(__name__)


class Reader(Streaming):
    """One reader: one database, one slot, one publication."""

    # ------------------------------------------------------------------ running

    def run(self, stop: threading.Event) -> None:
        """Snapshot if needed, then stream until ``stop`` is set (then drain and confirm)."""
        self._conn = psycopg.connect(self.dsn, autocommit=True)
        prepare_snapshot_session(self.conn)
        self._producer = Producer(producer_config(self.bootstrap))
        if self.settings.metrics_port is not None:
            self.metrics.serve(self.settings.metrics_port, metrics_address())
        try:
            # Schema store connections first: they come up while the database is set up.
            prepare = getattr(self.codec, "prepare", None)
            if prepare is not None:
                prepare()
            shapes = self._setup_database()
            self._run(stop, shapes)
        finally:
            if self._producer is not None:
                self._producer.flush(30)
            self.conn.close()

    def _setup_database(self) -> dict[str, TableShape]:
        """Signal table, publication, replica identities; returns the captured tables."""
        found = setup_database(self.conn, self.settings, (self.signal_schema, self.signal_name))
        self.captured.update(found.shapes)
        self._primary_keys.update(found.primary_keys)
        return found.shapes

    def _run(self, stop: threading.Event, shapes: dict[str, TableShape]) -> None:
        """Slot and snapshot (:func:`~pipeline.reader.slot.open_slot`), then streaming."""
        repl = ReplicationConnection(self.dsn, status_interval=self.settings.status_interval)
        try:
            _, _, _, self._db = repl.identify_system()
            start_lsn = open_slot(
                repl,
                self.conn,
                self.settings,
                self._db,
                state_store=lambda: ReaderStateStore(self.bootstrap, self.prefix),
                setup_topics=lambda: self._setup_topics(shapes),
                snapshot=lambda name, lsn: self._initial_snapshot(shapes, name, lsn, stop),
                stop=stop,
            )
            if start_lsn is None:  # stopped during the snapshot
                return
            self.incremental = IncrementalSnapshot(
                self,
                self.conn,
                chunk_size=self.settings.snapshot_chunk_size,
                signal_table=(self.signal_schema, self.signal_name),
            )
            self._stream(repl, stop)
        finally:
            repl.close()

    # ------------------------------------------------------------------ snapshot

    def _initial_snapshot(
        self, shapes: dict[str, TableShape], snapshot_name: str, lsn: int, stop: threading.Event
    ) -> None:
        started = time.monotonic()
        total = 0
        with psycopg.connect(self.dsn) as snap:
            prepare_snapshot_session(snap)
            snap.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            snap.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot_name)))
            names = list(shapes)
            self.metrics.snapshot_tables_total.set(len(names))
            tx = self.tracker.begin()
            ts_ms = now_ms()
            for index, qualified in enumerate(names):
                shape = shapes[qualified]
                schema = self._apply_relation(shape.relation, shape.types)
                count = 0
                for chunk in iter_chunks(snap, shape, self.settings.snapshot_chunk_size):
                    if stop.is_set():
                        log.warning("event=snapshot_interrupted table=%s", qualified)
                        return
                    for raw in chunk:
                        self._emit_raw(tx, schema, "r", None, None, raw, lsn, None, ts_ms, "true")
                    count += len(chunk)
                    self.metrics.snapshot_rows.inc(len(chunk))
                    self.metrics.flush_counts()
                    self.producer.poll(0)
                    self._check_failed()
                total += count
                self.metrics.snapshot_tables_done.set(index + 1)
                log.info("event=snapshot_table table=%s rows=%d", qualified, count)
            snap.rollback()
        self.tracker.commit(lsn)
        remaining = self.producer.flush(300)
        self._check_failed()
        if remaining:
            raise ReaderError(f"{remaining} snapshot events still unacknowledged after 300s")
        log.info(
            "event=snapshot_done rows=%d seconds=%.1f consistent_point=%s",
            total, time.monotonic() - started, lsn_to_str(lsn),
        )  # fmt: skip
