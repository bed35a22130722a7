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
"""

from __future__ import annotations

import dataclasses
import json
import logging
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

import psycopg
from confluent_kafka import Producer
from psycopg import sql

from pipeline.codec import EventCodec, make_codec
from pipeline.codec.raw_framed import FramedRawEncoder
from pipeline.errors import CatalogCdcError
from pipeline.events import UNCHANGED_TOAST, ChangeEvent, Row, SnapshotMarker, Source, TableSchema
from pipeline.kafka import TopicSpec, ensure_topics, partition_for, producer_config
from pipeline.reader import pgoutput as po
from pipeline.reader.acks import AckTracker, _Tx
from pipeline.reader.errors import ReaderError
from pipeline.reader.incremental import IncrementalSnapshot
from pipeline.reader.metrics import ReaderMetrics
from pipeline.reader.relations import RelationCache
from pipeline.reader.replication import ReplicationConnection, XLogData, lsn_to_int, lsn_to_str
from pipeline.reader.settings import HEARTBEAT_PREFIX, ReaderSettings
from pipeline.reader.snapshot import (
    TableShape,
    describe_table,
    iter_chunks,
    prepare_snapshot_session,
)
from pipeline.reader.state import ReaderStateStore
from pipeline.settings import metrics_address
from pipeline.topics import raw_topic
from pipeline.values import ValueConversionError

log = logging.getLogger(__name__)


_U32 = struct.Struct(">I").unpack_from
_PROMPT_STATUS_S = 0.1
"""Least seconds between two status updates sent because the confirmed LSN advanced."""


def _split(qualified: str) -> tuple[str, str]:
    schema, _, table = qualified.rpartition(".")
    return (schema or "public"), table


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclasses.dataclass(slots=True)
class _Hot:
    """What the streaming hot path needs of one relation id's newest schema.

    Made on the relation's first change and dropped on every Relation or Type message
    (so it never outlives the schema it was made from).
    """

    schema: TableSchema
    enc: FramedRawEncoder
    topic: str
    partitions: int
    pcol: str | None
    """The partition column (None: partition by the key)."""
    pindex: int
    """Its position in a tuple (-1: none, or not a column of this version)."""
    pkey: bool
    """Whether it is a key column (present in ``'K'`` old tuples)."""
    signal: bool
    parse: Callable[[bytes], po.RawTuple | None]
    """The Insert tuple parser of the relation's width (:func:`~pipeline.reader.pgoutput.
    insert_parser`)."""
    plast: object = dataclasses.field(default_factory=object)
    """The partition column's last text (bytes; at first an object equal to nothing),
    and the partition it gave (converters are deterministic: the same text gives the
    same value, so the same partition)."""
    ppart: int = 0
    inserts: int = 0
    """Insert events produced and not yet counted in the metrics (see ``_count_hot``)."""


class Reader:
    """One reader: one database, one slot, one publication."""

    def __init__(
        self,
        *,
        dsn: str,
        bootstrap: str,
        topic_prefix: str,
        settings: ReaderSettings,
        schema_registry_url: str | None = None,
        codec: EventCodec | None = None,
    ) -> None:
        self.dsn = dsn
        self.bootstrap = bootstrap
        self.prefix = topic_prefix
        self.settings = settings
        self.codec = codec or make_codec(
            topic_prefix=topic_prefix,
            schema_registry_url=schema_registry_url,
            kafka_bootstrap=bootstrap,
        )
        self.metrics = ReaderMetrics()
        self.tracker = AckTracker()
        self.cache = RelationCache()
        self.signal_schema, self.signal_name = _split(settings.signal_table)
        self._partitions: dict[str, int] = {}
        self._primary_keys: dict[tuple[str, str], tuple[str, ...]] = {}
        self._targets: dict[
            int, tuple[TableSchema, tuple[FramedRawEncoder, str, str | None, int]]
        ] = {}
        self._hot: dict[int, _Hot] = {}
        self._parsers: dict[int, Callable[[bytes], po.RawTuple | None]] = {}
        self._partition_column = {
            _split(table): column for table, column in settings.partition_columns.items()
        }
        self.captured: set[str] = set()
        """Schema-qualified names of the tables whose changes become events."""
        self._tx: _Tx | None = None
        self._tx_xid: int | None = None
        self._tx_lsn = 0
        """The commit LSN of the transaction being read: every event of it carries this
        ``source.lsn``, so LSN order is commit order (a change record's own LSN is not:
        a transaction that wrote a row before a re-snapshot chunk read it, and committed
        after, has a lower one than the chunk row it is newer than)."""
        self._tx_ts_ms = 0
        self._ts_ms = 0
        """The events' ``ts_ms`` on the streaming hot path (refreshed every few ms)."""
        self.queue_full_waits = 0
        """How often produce() found the producer's queue full and waited (backpressure)."""
        self._db = ""
        self._last_heartbeat = 0.0
        self._producer: Producer | None = None
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        self.incremental: IncrementalSnapshot | None = None

    # ------------------------------------------------------------------ set-up

    def topic_for(self, schema: str, table: str) -> str:
        return raw_topic(self.prefix, table, schema)

    @property
    def producer(self) -> Producer:
        assert self._producer is not None
        return self._producer

    @property
    def conn(self) -> psycopg.Connection[tuple[Any, ...]]:
        assert self._conn is not None
        return self._conn

    def _setup_database(self) -> dict[str, TableShape]:
        """Signal table, publication, replica identities; returns the captured tables."""
        conn = self.conn
        sig = sql.Identifier(self.signal_schema, self.signal_name)
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (id text PRIMARY KEY, type text NOT NULL, "
                "data jsonb, created_at timestamptz NOT NULL DEFAULT now())"
            ).format(sig)
        )
        shapes: dict[str, TableShape] = {}
        for qualified in self.settings.tables:
            schema, table = _split(qualified)
            shape = describe_table(conn, schema, table)
            pcol = self.settings.partition_columns.get(f"{schema}.{table}")
            names = {c.name for c in shape.relation.columns}
            if pcol and pcol not in names:
                raise ReaderError(
                    f"partition column {pcol!r} of {schema}.{table} does not exist "
                    "(CATALOG_CDC_READER_PARTITION_COLUMNS)"
                )
            keys = {shape.relation.columns[i].name for i in shape.key_positions}
            if pcol and pcol not in keys and shape.relation.replica_identity != "f":
                # A delete only carries the replica identity: to route it to the
                # partition column's partition, the old row must be logged whole.
                log.info(
                    "event=replica_identity_full table=%s.%s reason=partition_column", schema, table
                )
                conn.execute(
                    sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(
                        sql.Identifier(schema, table)
                    )
                )
                shape = describe_table(conn, schema, table)
            shapes[f"{schema}.{table}"] = shape
            self.captured.add(f"{schema}.{table}")
            self._primary_keys[(schema, table)] = tuple(
                shape.relation.columns[i].name for i in shape.key_positions
            )
        tables = [sql.Identifier(*_split(q)) for q in shapes] + [sig]
        pub = sql.Identifier(self.settings.publication)
        exists = conn.execute(
            "SELECT 1 FROM pg_publication WHERE pubname = %s", (self.settings.publication,)
        ).fetchone()
        if not exists:
            conn.execute(
                sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(
                    pub, sql.SQL(", ").join(tables)
                )
            )
            log.info(
                "event=publication_created publication=%s tables=%d",
                self.settings.publication,
                len(tables),
            )
        else:
            have = {
                (str(r[0]), str(r[1]))
                for r in conn.execute(
                    "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s",
                    (self.settings.publication,),
                )
            }
            for q in [*shapes, f"{self.signal_schema}.{self.signal_name}"]:
                if _split(q) not in have:
                    conn.execute(
                        sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
                            pub, sql.Identifier(*_split(q))
                        )
                    )
                    log.info("event=publication_table_added table=%s", q)
        return shapes

    def _setup_topics(self, shapes: dict[str, TableShape]) -> None:
        specs = [TopicSpec(self.topic_for(*_split(q)), self.settings.partitions) for q in shapes]
        self._partitions.update(ensure_topics(self.bootstrap, specs))

    def _partition_count(self, topic: str) -> int:
        if topic not in self._partitions:
            self._partitions.update(
                ensure_topics(self.bootstrap, [TopicSpec(topic, self.settings.partitions)])
            )
        return self._partitions[topic]

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

    def _run(self, stop: threading.Event, shapes: dict[str, TableShape]) -> None:
        """Slot and snapshot, then streaming.  What only streaming needs (the topics, for a
        slot that exists) is set up after START_REPLICATION, while the walsender decodes
        its first transaction: a restart streams sooner."""
        repl = ReplicationConnection(self.dsn, status_interval=self.settings.status_interval)
        try:
            _, _, _, self._db = repl.identify_system()
            state_key = f"{self._db}/{self.settings.slot}"
            slot = self._find_slot()
            if slot is not None and (slot[2] != self._db or slot[3] != "pgoutput"):
                raise ReaderError(
                    f"replication slot {self.settings.slot!r} already exists for database "
                    f"{slot[2]!r} (plugin {slot[3]}): slot names are cluster-wide; pick another "
                    "with CATALOG_CDC_READER_SLOT or --slot"
                )
            if slot is not None and slot[1] is not None:
                slot = self._wait_slot_free(slot[1])
            # The reader's state says whether an existing slot's snapshot finished: read it
            # only where that matters (a slot exists and snapshots are on).
            state_store: ReaderStateStore | None = None
            state: dict[str, Any] = {}
            if slot is not None and self.settings.snapshot_mode == "initial":
                state_store = ReaderStateStore(self.bootstrap, self.prefix)
                state = state_store.load(state_key) or {}
            if (
                slot is not None
                and not state.get("snapshot_done")
                and self.settings.snapshot_mode == "initial"
            ):
                log.warning(
                    "event=snapshot_incomplete slot=%s action=drop_and_redo", self.settings.slot
                )
                self.conn.execute("SELECT pg_drop_replication_slot(%s)", (self.settings.slot,))
                slot = None
            start_lsn = 0
            topics_ready = False
            if slot is None:
                # Topics before the slot: the snapshot (if any) produces to them, and an
                # exported snapshot must be imported before anything else happens.
                self._setup_topics(shapes)
                topics_ready = True
                if self.settings.snapshot_mode == "initial":
                    # Acknowledged before the snapshot's first event: an assembler that
                    # catches up waits for the "done" record (and a stale one from an
                    # earlier slot no longer says done).
                    if state_store is None:
                        state_store = ReaderStateStore(self.bootstrap, self.prefix)
                    state_store.save(state_key, {"snapshot_done": False})
                created = repl.create_slot(
                    self.settings.slot, export_snapshot=self.settings.snapshot_mode == "initial"
                )
                log.info(
                    "event=slot_created slot=%s consistent_point=%s snapshot=%s",
                    created.name, lsn_to_str(created.consistent_point), created.snapshot_name,
                )  # fmt: skip
                if self.settings.snapshot_mode == "initial" and created.snapshot_name:
                    self._initial_snapshot(
                        shapes, created.snapshot_name, created.consistent_point, stop
                    )
                    if stop.is_set():
                        return
                if state_store is None:
                    state_store = ReaderStateStore(self.bootstrap, self.prefix)
                state_store.save(
                    state_key,
                    {
                        "snapshot_done": True,
                        "consistent_point": lsn_to_str(created.consistent_point),
                    },
                )
                start_lsn = created.consistent_point
            else:
                log.info("event=resume slot=%s confirmed_flush=%s", self.settings.slot, slot[0])
                start_lsn = lsn_to_int(str(slot[0])) if slot[0] else 0
            repl.start(self.settings.slot, self.settings.publication, start_lsn=start_lsn)
            repl.confirm(start_lsn)
            if not topics_ready:
                self._setup_topics(shapes)
            self.incremental = IncrementalSnapshot(self, self.conn)
            self._stream(repl, stop)
        finally:
            repl.close()

    def _find_slot(self) -> tuple[Any, ...] | None:
        return self.conn.execute(
            "SELECT confirmed_flush_lsn::text, active_pid, database, plugin "
            "FROM pg_replication_slots WHERE slot_name = %s",
            (self.settings.slot,),
        ).fetchone()

    def _wait_slot_free(self, pid: int, timeout: float = 30.0) -> tuple[Any, ...] | None:
        """A crashed reader's walsender may hold the slot for a moment: wait, then fail."""
        log.warning("event=slot_busy slot=%s pid=%s action=wait", self.settings.slot, pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(0.5)
            slot = self._find_slot()
            if slot is None or slot[1] is None:
                return slot
        raise ReaderError(
            f"replication slot {self.settings.slot!r} is still in use by backend pid {pid} "
            f"after {timeout:.0f}s: is another reader running? One reader per slot."
        )

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
            ts_ms = _now_ms()
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

    # ------------------------------------------------------------------ streaming

    def _stream(self, repl: ReplicationConnection, stop: threading.Event) -> None:
        handlers: dict[type, Callable[[Any, XLogData], None]] = {
            po.Begin: self._on_begin,
            po.Commit: self._on_commit,
            po.Relation: self._on_relation,
            po.Type: self._on_type,
            po.Insert: self._on_insert,
            po.Update: self._on_update,
            po.Delete: self._on_delete,
            po.Truncate: self._on_truncate,
            po.Message: self._on_message,
            po.Origin: lambda m, x: None,
        }
        decode = po.decode_message
        read = repl.read_raw
        insert = self._insert
        producer = self.producer
        tracker = self.tracker
        while not stop.is_set():
            burst = 0
            # Waiting on the socket: briefly while acknowledgements are due (they are
            # handled between bursts) or a confirmation is still to be sent, longer
            # when nothing is pending.
            pending = tracker.in_flight or repl.flushed_lsn > repl.reported_lsn
            idle_wait = 0.01 if pending else 0.2
            self._ts_ms = _now_ms()
            while burst < 2000:
                got = read(0.0 if burst else idle_wait)
                if got is None:
                    break
                lsn, payload = got
                if payload[0] == 0x49:  # 'I': the hot path, no message object
                    insert(payload, lsn)
                else:
                    msg = decode(payload)
                    handler = handlers.get(type(msg))
                    if handler is None:
                        raise ReaderError(
                            f"unexpected pgoutput message {type(msg).__name__} (protocol v1)"
                        )
                    handler(msg, XLogData(lsn, lsn, 0, payload))
                burst += 1
                if burst & 0xFF == 0:
                    self._ts_ms = _now_ms()
            producer.poll(0)
            self._count_hot()
            self.metrics.flush_counts()
            self._confirm(repl)
            self._maybe_heartbeat()
            assert self.incremental is not None
            self.incremental.step()
        # Drain: wait for every produced event, confirm, tell the server.
        self._count_hot()
        self.metrics.flush_counts()
        log.info("event=draining in_flight=%d", self.tracker.in_flight)
        self.producer.flush(60)
        self._confirm(repl)
        repl.send_status(force=True)
        log.info(
            "event=stopped confirmed=%s queue_full_waits=%d",
            lsn_to_str(repl.flushed_lsn), self.queue_full_waits,
        )  # fmt: skip

    def _check_failed(self) -> None:
        if self.tracker.failed:
            raise ReaderError(
                f"Kafka delivery failed ({self.tracker.failed}); stopping without confirming: "
                "a restart resumes from the slot's last confirmed position"
            )

    def _confirm(self, repl: ReplicationConnection) -> None:
        self._check_failed()
        if self._tx is None and self.tracker.in_flight == 0:
            self.tracker.idle(repl.received_lsn)
        lsn = self.tracker.confirmable
        if self.incremental is not None and self.incremental.confirm_ceiling is not None:
            lsn = min(lsn, self.incremental.confirm_ceiling)
        if lsn > repl.flushed_lsn:
            repl.confirm(lsn)
            self.metrics.confirmed_lsn.set(lsn)
        if repl.flushed_lsn > repl.reported_lsn:
            # Tell the server soon (at most 10 times a second), not only every
            # status_interval: the slot's WAL is released and its lag reads true sooner.
            repl.maybe_send_status(_PROMPT_STATUS_S)
        self.metrics.in_flight.set(self.tracker.in_flight)

    def _maybe_heartbeat(self) -> None:
        interval = self.settings.heartbeat_interval
        if not interval or time.monotonic() - self._last_heartbeat < interval:
            return
        self._last_heartbeat = time.monotonic()
        row = self.conn.execute(
            "SELECT pg_logical_emit_message(true, %s, now()::text)::text, "
            "pg_current_wal_lsn()::text",
            (HEARTBEAT_PREFIX,),
        ).fetchone()
        if row is not None:
            self.metrics.server_wal_lsn.set(lsn_to_int(str(row[1])))

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
        schema = self.cache.apply_relation(self._keyed_relation(rel))
        log.info("event=relation table=%s columns=%d", schema.qualified_name, len(schema.columns))
        return schema

    def _keyed_relation(self, rel: po.Relation) -> po.Relation:
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

    def _conversion_error(
        self, schema: TableSchema, raw: po.RawTuple, exc: Exception
    ) -> ReaderError:
        return ReaderError(
            f"cannot convert a row of {schema.qualified_name} key={_raw_key(schema, raw)}: {exc}. "
            "The reader stops rather than skip it; nothing after it is confirmed, so a "
            "restart reads it again once the data or the reader is fixed"
        )

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

    def _hot_entry(self, relation_id: int) -> _Hot:
        schema = self.cache.schema(relation_id)
        enc, topic, pcol, partitions = self._target(schema)
        names = [c.name for c in schema.columns]
        pindex = names.index(pcol) if pcol in names else -1
        entry = _Hot(
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
                f"key={_raw_key(schema, new)}: {exc}; "
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

    def _partition(self, entry: _Hot, raw: po.RawTuple, kind: Literal["N", "O", "K"]) -> int:
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
        return partition_for(
            json.dumps(enc.key_row(raw), sort_keys=True, default=str), entry.partitions
        )

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
                ts_ms=_now_ms(),
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

    # ------------------------------------------------------------------ producing

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
            value_bytes = enc.value(op, before, before_kind, after, source, _now_ms())
            key_bytes = enc.key(raw)
            pvalue = enc.column_value(raw, pcol, kind) if pcol else None
            if pvalue is None or pvalue is UNCHANGED_TOAST:
                pvalue = json.dumps(enc.key_row(raw), sort_keys=True, default=str)
        except ValueConversionError as exc:
            raise self._conversion_error(schema, raw, exc) from exc
        except CatalogCdcError as exc:
            raise ReaderError(
                f"cannot encode a {op!r} event of {schema.qualified_name} "
                f"key={_raw_key(schema, raw)}: {exc}; "
                "the reader stops rather than skip it (nothing after it is confirmed)"
            ) from exc
        partition = partition_for(pvalue, partitions)
        self._produce(tx, topic, key_bytes, value_bytes, partition)
        if op == "d":
            self._produce(tx, topic, key_bytes, None, partition)
        self.metrics.count_event(schema.table, op)

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
        """Encode one change event (and a tombstone after a delete) and produce it."""
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
            ts_ms=_now_ms(),
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
        pcol = self._partition_column.get((schema.schema, schema.table))
        pvalue = row.get(pcol) if pcol else None
        if pcol is None or pvalue is None or pvalue is UNCHANGED_TOAST:
            pvalue = json.dumps(key, sort_keys=True, default=str)
        partition = partition_for(pvalue, self._partition_count(topic))
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


def _raw_key(schema: TableSchema, raw: po.RawTuple) -> str:
    """The key columns' text of a raw tuple, for error messages."""
    return _show(
        {
            c.name: (v.decode(errors="replace") if isinstance(v, bytes) else v)
            for c, v in zip(schema.columns, raw, strict=False)
            if c.is_key
        }
    )
