"""``catalog-cdc assembler``: raw change topics in, document topics out.

Inputs
    * the product-owned raw topics (``products``, ``product_variants``,
      ``product_images``, ``technical_data``, ``product_categories``), through the
      consumer group ``settings.group`` (range assignment: partition *n* of every one of
      them goes to the same instance, and they are co-partitioned by product id);
    * the global raw topics (``stores``, ``brands``, ``categories``) and the counts topic
      ``{prefix}._assembler.counts``, read in full by every instance (assigned, no group).

Outputs
    ``{prefix}.doc.products`` and ``{prefix}.doc.categories`` (compacted, key = id, see
    :mod:`pipeline.documents.wire`), ``{prefix}._assembler.counts`` (compacted, the
    product count of each category per partition, which lets the owner of a category
    sum the counts of every partition), ``{prefix}.dlq.assembler`` (a document that
    fails validation, with the error and its rows).

Guarantee (at-least-once, converging): a batch is applied to the SQLite state in one
transaction that also records the input offsets; that transaction commits only after
every message the batch produced has been acknowledged by Kafka (idempotent producer,
``acks=all``), and the group offsets are committed after it.  Input positions come from
the state file (the group's committed offsets are kept in step for lag tools), so a
``kill -9`` at any moment re-reads exactly the batch that was not durable, and produces
its documents again (same content, same versions).  A partition taken over from
another instance resumes from this instance's own state for it (re-reading from the
beginning if it never had it); documents of partitions the instance does not own are
never emitted.
"""

from __future__ import annotations

import collections
import heapq
import json
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from pipeline.assembler.assemble import Batch, Emission, KeyedCount, Output, key_from_row
from pipeline.assembler.metrics import AssemblerMetrics
from pipeline.assembler.settings import AssemblerSettings
from pipeline.assembler.state import GLOBAL_TABLES, OWNED_TABLES, AssemblerState
from pipeline.codec import EventCodec, KafkaSchemaStore, make_codec
from pipeline.documents.reading import latest_versions
from pipeline.documents.wire import DocumentCodec, doc_key, headers_of
from pipeline.errors import CatalogCdcError
from pipeline.events import ChangeEvent
from pipeline.kafka import (
    FetchHold,
    TopicSpec,
    consumer_config,
    ensure_topics,
    is_fatal,
    partition_for,
    pause_while_idle,
    producer_config,
    watermarks,
)
from pipeline.reader.state import ReaderStateStore
from pipeline.topics import assembler_counts_topic, dlq_topic, doc_topic, raw_topic

log = logging.getLogger(__name__)

_MAX_EXTENSIONS = 100
"""How often a catch-up moves its targets to the new ends of still-growing inputs."""

__all__ = ["Assembler", "AssemblerError"]

COMPACT = {"cleanup.policy": "compact"}


class AssemblerError(CatalogCdcError):
    """The assembler cannot go on (the message says what and what to do)."""


@dataclass
class _Input:
    """One consumed message, decoded."""

    lsn: int
    seq: int
    table: str
    part: int
    event: ChangeEvent | KeyedCount


class Assembler:
    """The assembler service; :meth:`run` until ``stop`` is set."""

    def __init__(
        self,
        *,
        bootstrap: str,
        topic_prefix: str,
        settings: AssemblerSettings,
        schema_registry_url: str | None = None,
        schema: str = "public",
    ) -> None:
        self.bootstrap = bootstrap
        self.prefix = topic_prefix
        self.settings = settings
        self.registry_url = schema_registry_url
        self.schema = schema
        self.state_path = settings.state_path_for(topic_prefix)
        self.owned: set[int] = set()
        self.partitions = 0
        self.stats = {
            "batches": 0,
            "events": 0,
            "products": 0,
            "categories": 0,
            "tombstones": 0,
            "late": 0,
        }
        self.late: collections.deque[tuple[str, int]] = collections.deque(maxlen=1000)
        """The last documents emitted at ``version + 1`` (late cross-topic arrivals)."""
        self._assigned: list[TopicPartition] = []
        self._positions: dict[tuple[str, int], int] = {}
        self._delivery_errors: list[str] = []
        self._recheck = False
        self._held: set[int] = set()
        """The partitions of the previous assignment (to tell the gained ones)."""
        self._to_sync: set[int] = set()
        """Gained partitions whose emitted versions are still to be read back."""
        self._quiet: dict[int, dict[tuple[str, int], int]] = {}
        """Gained partitions catching up, with the input ends they must reach."""
        self.metrics = AssemblerMetrics()
        self.caught_up = threading.Event()
        """Set once every input was read to its end and nothing was pending."""

    # -- topics ---------------------------------------------------------------------------

    def raw_topic(self, table: str) -> str:
        return raw_topic(self.prefix, table, self.schema)

    @property
    def counts_topic(self) -> str:
        return assembler_counts_topic(self.prefix)

    @property
    def dlq_topic(self) -> str:
        return dlq_topic(self.prefix, "assembler")

    def _table_of(self, topic: str) -> str:
        if topic == self.counts_topic:
            return "_counts"
        return topic.rsplit(".", 1)[1]

    def _wait_for_raw_topics(self, stop: threading.Event) -> dict[str, int]:
        """Partition count of every raw topic, waiting (and saying so) until they exist."""
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        wanted = [self.raw_topic(t) for t in (*GLOBAL_TABLES, *OWNED_TABLES)]
        said = 0.0
        while not stop.is_set():
            try:
                topics = admin.list_topics(timeout=10).topics
            except Exception as exc:  # noqa: BLE001 - a broker not up yet: wait, say so
                topics = {}
                log.warning("event=kafka_unavailable bootstrap=%s error=%s", self.bootstrap, exc)
            missing = [t for t in wanted if t not in topics or not topics[t].partitions]
            if not missing:
                return {t: len(topics[t].partitions) for t in wanted}
            if time.monotonic() - said > 10:
                log.info(
                    "event=waiting_for_raw_topics missing=%s hint=%s",
                    ",".join(missing),
                    "start `catalog-cdc reader` (it creates them)",
                )
                said = time.monotonic()
            stop.wait(1.0)
        return {}

    # -- run ------------------------------------------------------------------------------

    def run(self, stop: threading.Event, *, rebuild: bool = False) -> None:
        """Consume and assemble until ``stop`` is set; ``rebuild`` starts from scratch."""
        if rebuild:
            self.wipe_state()
        counts = self._wait_for_raw_topics(stop)
        if stop.is_set():
            return
        owned_counts = {counts[self.raw_topic(t)] for t in OWNED_TABLES}
        if len(owned_counts) != 1:
            raise AssemblerError(
                "the product-owned raw topics have different partition counts "
                f"({ {t: counts[self.raw_topic(t)] for t in OWNED_TABLES} }): they must be "
                "co-partitioned by product id; recreate them with the same count"
            )
        self.partitions = owned_counts.pop()
        outputs = ensure_topics(
            self.bootstrap,
            [
                TopicSpec(doc_topic(self.prefix, "product"), self.settings.doc_partitions, COMPACT),
                TopicSpec(
                    doc_topic(self.prefix, "category"), self.settings.doc_partitions, COMPACT
                ),
                TopicSpec(self.counts_topic, self.settings.doc_partitions, COMPACT),
                TopicSpec(self.dlq_topic, 1),
            ],
        )
        # ensure_topics gives the partition count of every topic, existing ones included.
        self.doc_partitions = {
            k: outputs[doc_topic(self.prefix, k)] for k in ("product", "category")
        }
        self.counts_partitions = outputs[self.counts_topic]
        self._input_partitions = {**counts, self.counts_topic: self.counts_partitions}
        state = AssemblerState(self.state_path)
        known = state.meta("partitions")
        if known is not None and int(known) != self.partitions:
            state.close()
            raise AssemblerError(
                f"the state {self.state_path} was built for {known} partitions of the raw "
                f"topics, which now have {self.partitions}: run `catalog-cdc assembler --rebuild`"
            )
        fresh = not state.offsets()
        with state.transaction():
            state.set_meta("partitions", str(self.partitions))
            state.set_meta("topic_prefix", self.prefix)
            if fresh:
                state.set_meta("catch_up", "1")
        self.state = state
        self._positions = state.offsets()
        # A new (or rebuilt) state first catches up with the topics without emitting,
        # then emits every document once: no replay of intermediate states.
        self.catching_up = state.meta("catch_up") == "1"
        self.metrics.catching_up.set(1 if self.catching_up else 0)
        if self.settings.metrics_port is not None:
            self.metrics.serve(self.settings.metrics_port)
        self._targets: dict[tuple[str, int], int] = {}
        # Each input's end when the targets were last taken, and when: the growth a
        # catch-up measures before it emits (_inputs_settled).
        self._base: dict[tuple[str, int], int] = {}
        self._window_start = time.monotonic()
        self._waiting_logged = False
        self._extensions = 0
        # What the reader says of its snapshot (the `{prefix}._reader` records), read
        # while catching up: None = no reader record, False = a snapshot is running,
        # True = done (then the targets are taken once more, after it: _after_snapshot).
        self._reader_state: ReaderStateStore | None = None
        self._snapshot_done: bool | None = None
        self._snapshot_checked = 0.0
        self._snapshot_logged = False
        self._after_snapshot = False
        self.codec: EventCodec = make_codec(
            topic_prefix=self.prefix,
            schema_registry_url=self.registry_url,
            kafka_bootstrap=self.bootstrap,
        )
        self.doc_codec = self._doc_codec()
        # Documents are produced one by one while a batch is built, and every batch
        # ends with flush(), which sends at once whatever lingers (librdkafka >= 1.8):
        # a long linger then sends each batch's documents in a few large requests
        # instead of a request every 5 ms while it is built (measured: the broker's CPU
        # went from 0.56 to 0.67 cores at 2,000 edits/s with the default).
        self.producer = Producer(producer_config(self.bootstrap, **{"linger.ms": 1000}))
        group_config: dict[str, Any] = {
            "partition.assignment.strategy": "range",
            "session.timeout.ms": 10000,
            # Prefetch little: while the assembler works through a backlog, librdkafka
            # would otherwise fetch on at the broker's end (64 MB by default), and on
            # noida-db, which answers every fetch at once, that fetcher spun at 0.2-0.3
            # cores beside the build and made the broker spin with it.  With 256 kB
            # queued it backs off (10 ms at a time) until the queue is nearly drained,
            # then one fetch takes everything that arrived (noida-db ignores the fetch
            # size limits).  5,000 edits/s: backlog drain 23-34 s -> 2-6 s (bench).
            "queued.max.messages.kbytes": 256,
            "fetch.queue.backoff.ms": 10,
        }
        instance_id = self.settings.instance_id_for(self.state_path)
        if instance_id:
            # Static membership: a restarted instance (same state file) takes its old
            # place at once, without waiting for a dead member to time out.
            group_config["group.instance.id"] = instance_id
        self.group = Consumer(
            consumer_config(self.bootstrap, self.settings.group_for(self.prefix), **group_config)
        )
        self.globals = Consumer(consumer_config(self.bootstrap, f"{self.prefix}-assembler-global"))
        self._admin = AdminClient({"bootstrap.servers": self.bootstrap})
        """Watermark queries, on a connection of their own (:func:`pipeline.kafka.watermarks`)."""
        try:
            self._assign_globals()
            self.group.subscribe(
                [self.raw_topic(t) for t in OWNED_TABLES],
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_revoke,
            )
            log.info(
                "event=assembler_started prefix=%s group=%s state=%s partitions=%d rebuild=%s",
                self.prefix,
                self.settings.group_for(self.prefix),
                self.state_path,
                self.partitions,
                rebuild,
            )
            self._loop(stop)
        finally:
            self.group.close()
            self.globals.close()
            self.producer.flush(30)
            state.close()
            log.info(
                "event=assembler_stopped %s", " ".join(f"{k}={v}" for k, v in self.stats.items())
            )

    def wipe_state(self) -> None:
        """Delete the state file (and its WAL files): the next run reads from the beginning."""
        for suffix in ("", "-wal", "-shm"):
            path = Path(str(self.state_path) + suffix)
            if path.exists():
                path.unlink()
        log.info("event=state_wiped path=%s", self.state_path)

    def _doc_codec(self) -> DocumentCodec:
        if self.registry_url:
            from pipeline.codec.registry import ConfluentRegistryCodec

            return DocumentCodec(
                registry=ConfluentRegistryCodec.from_url(self.registry_url, self.prefix),
                topic_prefix=self.prefix,
            )
        return DocumentCodec(
            store=KafkaSchemaStore(self.bootstrap, self.prefix), topic_prefix=self.prefix
        )

    # -- assignment -----------------------------------------------------------------------

    def _assign_globals(self) -> None:
        topics = [self.raw_topic(t) for t in GLOBAL_TABLES] + [self.counts_topic]
        tps = []
        for topic in topics:
            for p in range(self._input_partitions[topic]):
                self._target(self.globals, topic, p)
                tps.append(
                    TopicPartition(topic, p, self._positions.get((topic, p), OFFSET_BEGINNING))
                )
        self.globals.assign(tps)

    def _target(self, consumer: Consumer, topic: str, part: int) -> None:
        """While catching up: remember where ``topic[part]`` ends now."""
        if self.catching_up and (topic, part) not in self._targets:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, part), timeout=10)
            start = max(low, self._positions.get((topic, part), 0))
            if high > start:
                self._targets[(topic, part)] = high
            self._base.setdefault((topic, part), max(high, start))
            self._window_start = time.monotonic()

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            tp.offset = self._positions.get((tp.topic, tp.partition), OFFSET_BEGINNING)
            self._target(consumer, tp.topic, tp.partition)
        consumer.assign(partitions)
        self._assigned = list(partitions)
        by_topic: dict[str, set[int]] = {}
        for tp in partitions:
            by_topic.setdefault(tp.topic, set()).add(tp.partition)
        sets = [by_topic.get(self.raw_topic(t), set()) for t in OWNED_TABLES]
        owned = set.intersection(*sets) if sets else set()
        if any(s != owned for s in sets):
            log.warning(
                "event=uneven_assignment detail=%s hint=%s",
                {t: sorted(by_topic.get(self.raw_topic(t), set())) for t in OWNED_TABLES},
                "every member must use partition.assignment.strategy=range",
            )
        self.owned = owned
        if not self.catching_up:  # (a catch-up reads the versions back at its end)
            self._to_sync |= owned - self._held
        self._to_sync &= owned
        self._quiet = {p: ends for p, ends in self._quiet.items() if p in owned}
        self._held = set(owned)
        self.metrics.owned.set(len(owned))
        self._recheck = True
        self.caught_up.clear()
        log.info("event=partitions_assigned owned=%s", sorted(owned))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Batches are processed to the end (state durable, offsets committed) before the
        # next poll, and callbacks run inside poll: nothing of ours is in flight here.
        self.owned = set()
        self.metrics.owned.set(0)
        self._assigned = []
        consumer.unassign()
        log.info("event=partitions_revoked count=%d", len(partitions))

    # -- the loop -------------------------------------------------------------------------

    def _loop(self, stop: threading.Event) -> None:
        idle_since = time.monotonic()
        last_report = time.monotonic()
        while not stop.is_set():
            # Global tables first: a brand or category change then reaches the products
            # of the same poll before the product changes that follow it.
            msgs = self.globals.consume(self.settings.batch_size, 0.01)
            polled = self.group.consume(self.settings.batch_size, self.settings.poll_timeout)
            # No fetching while the batch is built, and for fetch_wait after the poll
            # (FetchHold), by a consumer whose poll emptied its queue: at the live edge
            # (the group's, or the global tables' that hardly ever change) the next
            # fetch then takes what arrived meanwhile at once.
            hold = None
            if (msgs or polled) and self.settings.fetch_wait > 0:
                edge = [] if msgs else [self.globals]
                if len(polled) < self.settings.batch_size:
                    edge.append(self.group)
                hold = FetchHold(edge) if edge else None
            msgs += polled
            if self._delivery_errors:
                raise AssemblerError(f"Kafka refused documents: {self._delivery_errors[:3]}")
            if self._to_sync:
                self._take_over()
            inputs = self._decode(msgs)
            if inputs or msgs or (self._recheck and self.owned and not self.catching_up):
                self.caught_up.clear()
                self._process(inputs, msgs)
                idle_since = time.monotonic()
            if hold is not None:
                hold.release(self.settings.fetch_wait, stop.wait)
            if self._quiet:
                self._end_takeovers()
            if (
                self.catching_up
                and self.owned
                and self._reached_targets()
                and self._inputs_settled()
            ):
                self._emit_all()
            elif (
                not msgs
                and not self.catching_up
                and not self._quiet
                and not self.caught_up.is_set()
                and time.monotonic() - idle_since > 0.5
                and self._owned_caught_up()
            ):
                self.caught_up.set()
                log.info(
                    "event=caught_up owned=%s %s",
                    sorted(self.owned),
                    " ".join(f"{k}={v}" for k, v in self.stats.items()),
                )
            if not msgs:
                pause_while_idle([self.group, self.globals], self.settings.idle_pause, stop.wait)
            if time.monotonic() - last_report > 10:
                self._owned_caught_up()  # refreshes the lag gauges
                log.info(
                    "event=assembler_progress owned=%s %s",
                    sorted(self.owned),
                    " ".join(f"{k}={v}" for k, v in self.stats.items()),
                )
                last_report = time.monotonic()

    def _reached_targets(self) -> bool:
        return all(self._positions.get(tp, 0) >= end for tp, end in self._targets.items())

    def _inputs_settled(self) -> bool:
        """At the targets of a catch-up: is there nothing more to wait for?

        The reader says when its snapshot ends (:meth:`_reader_snapshot`): while one is
        running the catch-up reads on without emitting, and once it has ended the targets
        are taken once more, at the inputs' ends then, so every document is emitted once,
        after the whole snapshot.  Emitting earlier would emit every product again for
        each table that reaches it (product, then variants, images, ...), and every
        consumer would get each product several times: the demo's initial load took
        twice as long.

        With no reader record at all (raw events from elsewhere), it falls back to the
        inputs' growth: ``True`` when, all inputs together, at most ``catch_up_slack``
        messages arrived in the ``catch_up_window`` seconds (at least) since the targets
        were taken (the rest is then read live); otherwise the new ends become the
        targets, at most ``_MAX_EXTENSIONS`` times, so a catch-up ends under any load.
        And while no input holds a single message and nothing was read, there is nothing
        to catch up with yet: it waits for the first messages.
        """
        now = time.monotonic()
        done = self._reader_snapshot(now)
        if done is False:
            return False
        if done:
            if not self._after_snapshot:
                self._after_snapshot = True
                now_ends = self._input_ends().items()
                self._targets.update({k: high for k, (start, high, _) in now_ends if high > start})
                log.info("event=catch_up_snapshot_ended hint=%s", "reading to the inputs' ends")
                return self._reached_targets()
            return True
        if self._extensions >= _MAX_EXTENSIONS:
            return True
        if now - self._window_start < self.settings.catch_up_window:
            return False
        grown = readable = 0
        ends: dict[tuple[str, int], int] = {}
        new: dict[tuple[str, int], int] = {}
        for key, (start, high, low) in self._input_ends().items():
            grown += max(0, high - max(low, self._base.get(key, low)))
            readable += max(0, high - low)
            ends[key] = high
            if high > start:
                new[key] = high
        if readable == 0 and not self._positions:
            self._window_start = now
            if not self._waiting_logged:
                self._waiting_logged = True
                log.info(
                    "event=catch_up_waiting hint=%s",
                    "no input holds a message yet (the reader has not produced any): "
                    "emitting once it has",
                )
            return False
        self._base.update(ends)
        self._window_start = now
        if grown <= self.settings.catch_up_slack:
            return True
        self._extensions += 1
        self._targets.update(new)
        log.info(
            "event=catch_up_extended messages=%d extension=%d hint=%s",
            grown,
            self._extensions,
            "the inputs are still growing fast (a snapshot?): reading on before emitting",
        )
        return False

    def _reader_snapshot(self, now: float) -> bool | None:
        """Whether the reader's snapshot has ended: ``True`` once every reader record of
        this topic prefix says so, ``False`` while one says it is running, ``None`` with
        no record (raw events not written by a reader).  Read every 0.5 s at most; a
        "done" is kept for the rest of the catch-up."""
        if self._snapshot_done or now - self._snapshot_checked < 0.5:
            return self._snapshot_done
        self._snapshot_checked = now
        if self._reader_state is None:
            self._reader_state = ReaderStateStore(self.bootstrap, self.prefix)
        records = self._reader_state.load_all()
        if records:
            running = sorted(k for k, r in records.items() if not r.get("snapshot_done"))
            self._snapshot_done = not running
            if running and not self._snapshot_logged:
                self._snapshot_logged = True
                log.info(
                    "event=catch_up_waiting snapshots_running=%s hint=%s",
                    ",".join(running),
                    "the reader's snapshot is still running: emitting once it has ended",
                )
        return self._snapshot_done

    def _input_ends(self) -> dict[tuple[str, int], tuple[int, int, int]]:
        """Every assigned input's (position to read from, high, low watermark), asked
        of the broker now."""
        out: dict[tuple[str, int], tuple[int, int, int]] = {}
        for key, (low, high) in self._watermarks([*self._assigned, *self.globals.assignment()]):
            out[key] = (max(low, self._positions.get(key, 0)), high, low)
        return out

    def _watermarks(
        self, partitions: list[TopicPartition]
    ) -> Iterable[tuple[tuple[str, int], tuple[int, int]]]:
        """``((topic, partition), (low, high))`` of ``partitions``, in one round trip per
        broker on a connection of their own (:func:`pipeline.kafka.watermarks`)."""
        return watermarks(self._admin, partitions).items()

    # -- taking partitions over ---------------------------------------------------------

    def _sync_versions(self, parts: set[int]) -> int:
        """Read back the versions and content hashes last emitted for the documents of
        ``parts`` (by another instance, or by this one before a crash or a rebuild) and
        keep, per document, the newer of those and the state's own.

        Whoever emitted last, the next version of a document is then above it, and a
        document whose content has not changed is not emitted again.
        """
        started = time.monotonic()
        raised = behind = 0
        for kind in ("product", "category"):
            same = self.doc_partitions[kind] == self.partitions
            found = latest_versions(self.bootstrap, self.prefix, kind, set(parts) if same else None)
            with self.state.transaction():
                for doc_id, (version, digest) in found.items():
                    if partition_for(doc_id, self.partitions) not in parts:
                        continue
                    known = self.state.doc(kind, doc_id)
                    if known is None or version > known[0]:
                        own_hash = None if known is None else known[1]
                        self.state.set_doc(kind, doc_id, version, digest or own_hash)
                        raised += 1
                    elif version < known[0]:
                        # The topic's last message is older than what the state says
                        # was emitted and acknowledged: the broker lost it.  Take the
                        # topic's content hash, so the document is compared with what
                        # the consumers really got and emitted again.
                        self.state.set_doc(kind, doc_id, known[0], digest)
                        behind += 1
        if behind:
            log.warning(
                "event=document_topic_behind documents=%d hint=%s",
                behind,
                "the document topic lacks documents this assembler emitted and Kafka "
                "acknowledged (a broker that lost acknowledged writes?); they are emitted again",
            )
        log.info(
            "event=versions_read_back partitions=%s raised=%d behind=%d seconds=%.1f",
            sorted(parts),
            raised,
            behind,
            time.monotonic() - started,
        )
        return raised

    def _take_over(self) -> None:
        """Gained partitions: read back what was emitted for them, then catch up with
        their inputs quietly; each changed document is emitted once at the end
        (:meth:`_end_takeovers`), never an older state of it."""
        parts = self._to_sync & self.owned
        self._to_sync.clear()
        if not parts:
            return
        self._sync_versions(parts)
        for p in parts:
            ends: dict[tuple[str, int], int] = {}
            for table in OWNED_TABLES:
                tp = (self.raw_topic(table), p)
                low, high = self.group.get_watermark_offsets(TopicPartition(*tp), timeout=10)
                if high > max(low, self._positions.get(tp, 0)):
                    ends[tp] = high
            self._quiet[p] = ends
        log.info("event=takeover_started partitions=%s", sorted(parts))

    def _end_takeovers(self) -> None:
        done = {
            p
            for p, ends in self._quiet.items()
            if all(self._positions.get(tp, 0) >= end for tp, end in ends.items())
        }
        if not done:
            return
        for p in done:
            del self._quiet[p]
        before = self.stats["products"] + self.stats["categories"] + self.stats["tombstones"]
        products = self.state.product_ids(done)
        chunk = max(1, self.settings.batch_size)
        for i in range(0, max(1, len(products)), chunk):
            with self.state.transaction():
                batch = Batch(self.state, self.owned, self.partitions, quiet=self._quiet)
                batch.touch_all(
                    products[i : i + chunk], self.state.link_pairs(done) if i == 0 else (), i == 0
                )
                self._write(batch.finish(sink=self._write_emission))
                self._flush()
        emitted = self.stats["products"] + self.stats["categories"] + self.stats["tombstones"]
        log.info(
            "event=takeover_done partitions=%s products=%d emitted=%d",
            sorted(done),
            len(products),
            emitted - before,
        )

    def _emit_all(self) -> None:
        """End of a catch-up: emit every document of the owned partitions once (an
        unchanged one at the version last emitted for it, so none goes back)."""
        started = time.monotonic()
        # The lag gauges say "read to the end" while every document is built (seconds
        # to minutes), not what they said the last time they were refreshed.
        self._owned_caught_up()
        self._sync_versions(self.owned)
        self._to_sync.clear()
        products = self.state.product_ids(self.owned)
        pairs = self.state.link_pairs(self.owned)
        log.info(
            "event=catch_up_reached products=%d owned=%s; emitting every document",
            len(products),
            sorted(self.owned),
        )
        chunk = max(1, self.settings.batch_size)
        for i in range(0, max(1, len(products)), chunk):
            with self.state.transaction():
                batch = Batch(self.state, self.owned, self.partitions, force=True)
                batch.touch_all(products[i : i + chunk], pairs if i == 0 else (), i == 0)
                out = batch.finish(sink=self._write_emission)
                self._write(out)
                self._flush()
        with self.state.transaction():
            self.state.set_meta("catch_up", "0")
            self.catching_up = False
            self.metrics.catching_up.set(0)
            self._note_fanout(0)
        self.catching_up = False
        self._targets.clear()
        log.info(
            "event=catch_up_done products=%d seconds=%.1f %s",
            len(products),
            time.monotonic() - started,
            " ".join(f"{k}={v}" for k, v in self.stats.items()),
        )

    def _note_fanout(self, batch_lsn: int) -> None:
        """Record that the owned partitions have every global change up to now."""
        seen = max(int(self.state.meta("global_lsn") or 0), batch_lsn)
        self.state.set_meta("global_lsn", str(seen))
        if not self.catching_up:
            for p in self.owned:
                self.state.set_meta(f"fanout:{p}", str(seen))

    def _owned_caught_up(self) -> bool:
        """Every assigned input (group and global) read to its high watermark.

        Updates the lag gauges on the way.
        """
        if not self._assigned:
            return False
        behind = False
        for (topic, part), (start, high, _) in self._input_ends().items():
            lag = max(0, high - start)
            self.metrics.lag.labels(topic, str(part)).set(lag)
            behind = behind or lag > 0
        return not behind

    def _decode(self, msgs: list[Message]) -> list[_Input]:
        """Decode and merge: per topic-partition in offset order, across them by LSN."""
        streams: dict[tuple[str, int], list[_Input]] = {}
        seq = 0
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                if is_fatal(err):
                    where = f"{msg.topic()}[{msg.partition()}]" if msg.topic() else "the consumer"
                    raise AssemblerError(f"reading {where}: {err}; stopping, to be restarted")
                # librdkafka reports broker outages and the like this way and recovers
                # by itself: say so and go on (nothing is skipped, nothing committed).
                log.warning(
                    "event=consumer_error topic=%s partition=%s error=%s",
                    msg.topic(),
                    msg.partition(),
                    err,
                )
                continue
            topic, part, value = msg.topic() or "", msg.partition() or 0, msg.value()
            seq += 1
            if value is None:
                continue  # the tombstone after a delete: the delete event did the work
            table = self._table_of(topic)
            item: ChangeEvent | KeyedCount
            try:
                if table == "_counts":
                    item = KeyedCount.from_json(value)
                    lsn = item.lsn
                else:
                    decoded = self.codec.decode_value(value, before_of_deletes_only=True)
                    decoded.key = key_from_row(table, decoded)
                    raw_key = msg.key()
                    if decoded.key is None and raw_key:
                        decoded.key = self.codec.decode_key(raw_key)
                    item, lsn = decoded, decoded.source.lsn
            except CatalogCdcError as exc:
                raise AssemblerError(
                    f"cannot decode {topic}[{part}] offset {msg.offset()}: {exc}; the assembler "
                    "stops rather than skip it (its offset is not committed)"
                ) from exc
            streams.setdefault((topic, part), []).append(_Input(lsn, seq, table, part, item))
        return list(heapq.merge(*streams.values(), key=lambda i: (i.lsn, i.seq)))

    def _process(self, inputs: list[_Input], msgs: list[Message]) -> None:
        started = time.perf_counter()
        state = self.state
        with state.transaction():
            batch = Batch(state, self.owned, self.partitions, quiet=self._quiet)
            if self._recheck and self.owned and not self.catching_up:
                batch.recheck_categories()
                batch.recheck_partitions(
                    {p: int(state.meta(f"fanout:{p}") or 0) for p in self.owned}
                )
                self._recheck = False
            for item in inputs:
                if isinstance(item.event, KeyedCount):
                    batch.apply_count(item.event)
                else:
                    batch.apply(item.table, item.part, item.event)
            out = batch.finish(emit=not self.catching_up, sink=self._write_emission)
            self._write(out)
            self._note_fanout(batch.global_lsn)
            positions: dict[tuple[str, int], int] = {}
            for msg in msgs:
                if msg.error() is None:
                    key = (msg.topic() or "", msg.partition() or 0)
                    positions[key] = max(positions.get(key, 0), (msg.offset() or 0) + 1)
            state.set_offsets(positions)
            # Everything produced must be acknowledged before the state (and the
            # offsets in it) becomes durable.
            self._flush()
        self._positions.update(positions)
        commits = [
            TopicPartition(t, p, n)
            for (t, p), n in positions.items()
            if self._table_of(t) in OWNED_TABLES
        ]
        if commits:
            try:
                self.group.commit(offsets=commits, asynchronous=False)
            except Exception as exc:  # noqa: BLE001 - the state file holds the positions
                log.warning("event=group_commit_failed error=%s", exc)
        self.stats["batches"] += 1
        self.stats["events"] += len(inputs)
        self.stats["late"] += len(batch.late)
        self.late.extend(batch.late)
        m = self.metrics
        for item in inputs:
            m.events.labels(item.table).inc()
        m.late.inc(len(batch.late))
        m.batch_seconds.observe(time.perf_counter() - started)
        for kind, doc_id, reason in out.deferred[:5]:
            log.info("event=document_deferred kind=%s id=%s reason=%s", kind, doc_id, reason)

    def _write_emission(self, e: Emission) -> None:
        """Encode and produce one document (or tombstone) as soon as it is built."""
        value = None if e.doc is None else self.doc_codec.encode(e.doc)
        self._produce(
            doc_topic(self.prefix, e.kind),
            doc_key(e.id),
            value,
            partition_for(e.id, self.doc_partitions[e.kind]),
            headers_of(e.kind, e.version, e.source_ts_ms, e.digest or None),
        )
        if e.doc is None:
            self.stats["tombstones"] += 1
        else:
            self.stats["products" if e.kind == "product" else "categories"] += 1
        self.metrics.documents.labels(e.kind, "tombstone" if e.doc is None else "document").inc()

    def _write(self, out: Output) -> None:
        """Produce what :meth:`Batch.finish` returned (documents already went through
        :meth:`_write_emission`, unless it held them in ``out.emissions``)."""
        for e in out.emissions:
            self._write_emission(e)
        for c in out.counts:
            key = f"{c.category_id}:{c.part}"
            self._produce(
                self.counts_topic,
                key.encode(),
                c.to_json(),
                partition_for(key, self.counts_partitions),
            )
        for d in out.dead_letters:
            self.metrics.dead_letters.inc()
            log.error("event=document_invalid kind=%s id=%s error=%s", d.kind, d.id, d.error)
            body = json.dumps(
                {"kind": d.kind, "id": d.id, "error": d.error, "rows": d.rows}, default=str
            )
            self._produce(self.dlq_topic, doc_key(d.id), body.encode(), 0)

    def _produce(
        self,
        topic: str,
        key: bytes,
        value: bytes | None,
        partition: int,
        headers: list[tuple[str, str | bytes | None]] | None = None,
    ) -> None:
        while True:
            try:
                self.producer.produce(
                    topic,
                    value=value,
                    key=key,
                    partition=partition,
                    headers=headers,
                    on_delivery=self._delivered,
                )
                return
            except BufferError:
                self.producer.poll(0.05)

    def _delivered(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self._delivery_errors.append(str(err))

    def _flush(self) -> None:
        while self.producer.flush(5.0) > 0:
            log.warning("event=producer_flush_waiting in_queue=%d", len(self.producer))
        if self._delivery_errors:
            raise AssemblerError(
                f"Kafka refused {len(self._delivery_errors)} document messages "
                f"(first: {self._delivery_errors[0]}); nothing of this batch is committed"
            )
