"""The consumer runtime every sink shares: poll, batch, write, retry, dead-letter, commit.

A sink is a small protocol (:class:`Sink`): ``add`` a batch of document records
(documents and deletes), ``flush`` them durably.  :class:`ConsumerRuntime` does the
rest, the same way for every consumer:

1. reads the document topics the sink asks for (``{prefix}.doc.products``,
   ``{prefix}.doc.categories``) in the consumer group ``{prefix}-{name}``;
2. decodes each message into a :class:`~pipeline.documents.wire.DocumentMessage`; a
   message that cannot be decoded is a *poison* record;
3. hands the batch to the sink and flushes it.  A
   :class:`TransientSinkError` (timeouts, 429, 5xx, connection errors) retries the
   flush with capped exponential backoff (honouring ``retry_after``) for as long as it
   takes: nothing is ever skipped.  Records the sink rejects for good (a mapping error,
   a field rule) come back as :class:`Rejected` and go, with the reason and the
   original message, to ``{prefix}.dlq.{name}``;
4. commits the batch's offsets only after the flush succeeded and the dead letters
   were acknowledged by Kafka.

A sink may also read *raw* change topics (``{prefix}.public.{table}``, the reader's
Debezium-style events) for tables that are not part of any document (``stores``,
``cms_pages``...): it names them in an optional ``raw_tables`` attribute and takes them
in ``add_raw(records)`` (:class:`RawRecord`, a decoded
:class:`~pipeline.events.ChangeEvent` with its table and position).  They follow the same
rules: handed over before ``flush``, committed only after it, a raw message that cannot
be decoded is poison, a :class:`Rejected` raw record goes to the dead-letter topic.

Guarantee: at-least-once.  A crash before the commit redelivers the batch; sinks
write idempotently (external versions, upserts by id), so a redelivery changes
nothing that is already right.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from pipeline.codec import EventCodec, make_codec
from pipeline.documents.reading import document_codec
from pipeline.documents.wire import DocumentCodec, DocumentMessage, doc_key, headers_of
from pipeline.errors import CatalogCdcError
from pipeline.events import ChangeEvent
from pipeline.kafka import (
    FetchHold,
    TopicSpec,
    consumer_config,
    ensure_topics,
    is_fatal,
    pause_while_idle,
    producer_config,
)
from pipeline.settings import metrics_address
from pipeline.topics import doc_topic

log = logging.getLogger(__name__)

MAX_FAILED_COMMITS = 20
"""Commits in a row the group may refuse before the consumer stops (to be restarted)."""

__all__ = [
    "ConsumerRuntime",
    "RawRecord",
    "Record",
    "Rejected",
    "RuntimeSettings",
    "Sink",
    "SinkError",
    "TransientSinkError",
]

Record = DocumentMessage
"""One document-topic message: ``kind``, ``id``, ``doc`` (``None``: a delete),
``version``, ``source_ts_ms``, ``partition``, ``offset``."""


class SinkError(CatalogCdcError):
    """A sink cannot go on."""


class TransientSinkError(SinkError):
    """The target is unavailable for now (timeout, 429, 5xx, connection refused).

    The runtime retries the flush; ``retry_after`` (seconds) is honoured when given.
    """

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class RawRecord:
    """One raw change-topic message (``{prefix}.public.{table}``) for a sink with
    ``raw_tables``: ``kind`` is the table name, ``id`` the primary key as text (one
    column: its value; several: ``col=value,...``)."""

    kind: str
    id: str
    event: ChangeEvent
    partition: int
    offset: int


@dataclass(frozen=True)
class Rejected:
    """A record the target refused for good, and why (it goes to the dead-letter topic)."""

    record: Record | RawRecord
    reason: str


class Sink(Protocol):
    """What a consumer implements.  ``name`` names its group and dead-letter topic."""

    name: str
    kinds: Sequence[str]
    """Which document topics to read: ``"product"`` and/or ``"category"``."""

    def open(self) -> None:
        """Connect; raise :class:`TransientSinkError` while the target is unreachable."""
        ...

    def add(self, records: Sequence[Record]) -> None:
        """Take a batch (per partition in offset order; per key in version order)."""
        ...

    def flush(self) -> list[Rejected]:
        """Write everything added durably and return the records refused for good.

        Raise :class:`TransientSinkError` to be called again later (keep the records).
        """
        ...

    def close(self) -> None: ...

    # Optional: ``raw_tables: Sequence[str]`` (tables whose raw change topics to read
    # too) with ``add_raw(records: Sequence[RawRecord]) -> None``: see the module
    # docstring.  ``flush`` then also covers the raw records added.
    #
    # Optional: ``dead_letters() -> list[Rejected]``.  A sink that delivers after its
    # batch was committed (an outbox, e.g. consumers/webhooks) returns there the records
    # it gave up on since the last call; the runtime polls it every loop, puts them on
    # the dead-letter topic and calls again only after Kafka acknowledged them (so the
    # sink may treat the next call as the acknowledgement of the previous one).


@dataclass(frozen=True)
class RuntimeSettings:
    batch_size: int = 500
    poll_timeout: float = 0.05
    idle_pause: float = 0.15
    """Seconds to stop fetching after an empty poll (:func:`pipeline.kafka.pause_while_idle`)."""
    fetch_wait: float = 0.05
    """At the live edge (a poll that took fewer than ``batch_size``), no fetching while the
    batch is written and until this many seconds after the poll (:class:`pipeline.kafka.
    FetchHold`; 0 = fetch all the time).  noida-db answers every fetch at once, so the
    fetchers otherwise fetched a handful of records again and again beside the sink's
    write, and the broker (which is also the local Elasticsearch) spun with them."""
    backoff_initial: float = 0.2
    backoff_max: float = 30.0
    metrics_port: int | None = None
    group: str | None = None
    instance_id: str | None = None
    """Static group membership (``group.instance.id``): a restarted consumer with the same
    id takes its partitions back at once instead of waiting for the dead member to time
    out (on noida-db a dead dynamic member is never dropped).  Two live consumers must
    not share one.  ``catalog-cdc consume`` sets ``{host}-{group}`` by default."""
    idle_check: float = 5.0
    """Seconds between the idle consumer's checks of where it stands (its lag gauge, and
    the stall watch below), also once it has caught up."""
    stall_timeout: float = 60.0
    """Seconds a consumer may stand still while Kafka holds more for it before it leaves
    the group and joins again with a new Kafka client (``event=consumer_stalled``); a
    second stall in a row stops it (exit 1: ``catalog-cdc run`` restarts it).  Standing
    still: no message arrives while a partition it owns has messages past its fetch
    position, or, owning none, while its group's committed offsets stay behind the end
    and do not move.  ``0``: never."""


@dataclass
class _StallWatch:
    since: float | None = None
    """When the idle consumer was first seen behind with nothing arriving."""
    committed: dict[tuple[str, int], int] | None = None
    """The group's committed offsets at the last check (a consumer owning no partition)."""
    rejoined: bool = False
    """A rejoin happened and no message has arrived since."""
    looked: float = 0.0
    """When the last look for a stall was (``time.monotonic()``)."""

    def moved(self) -> None:
        self.since, self.rejoined = None, False


@dataclass
class _Poison:
    message: Message
    reason: str


@dataclass
class RuntimeMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.records = Counter(
            "catalog_cdc_consumer_records", "Records written", ["consumer", "type"], registry=r
        )
        self.retries = Counter(
            "catalog_cdc_consumer_retries", "Flushes retried", ["consumer"], registry=r
        )
        self.dead_letters = Counter(
            "catalog_cdc_consumer_dead_letters", "Records dead-lettered", ["consumer"], registry=r
        )
        self.batch_seconds = Histogram(
            "catalog_cdc_consumer_batch_seconds", "Seconds per batch", ["consumer"], registry=r
        )
        self.latency = Histogram(
            "catalog_cdc_consumer_commit_to_ack_seconds",
            "From the source commit (PostgreSQL) to the sink's acknowledgement, per record",
            ["consumer"],
            buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60, 300),
            registry=r,
        )
        self.lag = Gauge(
            "catalog_cdc_consumer_lag_messages",
            "Messages behind the end of a partition (refreshed after a batch, at most once a "
            "second, and when idle)",
            ["consumer", "topic", "partition"],
            registry=r,
        )


def raw_record(codec: EventCodec, msg: Message, table: str) -> RawRecord | None:
    """Decode one raw change message of ``table`` (``None`` for a tombstone: the delete
    event before it did the work).  Raises :class:`CatalogCdcError` when undecodable."""
    if msg.value() is None:
        return None
    event = codec.decode(msg.key() or None, msg.value())
    if event is None:
        return None
    key = event.key or {}
    ident = (
        str(next(iter(key.values())))
        if len(key) == 1
        else ",".join(f"{k}={v}" for k, v in key.items())
    )
    return RawRecord(table, ident, event, msg.partition() or 0, msg.offset() or 0)


class ConsumerRuntime:
    """Runs one :class:`Sink` until ``stop`` is set (see the module docstring)."""

    def __init__(
        self,
        sink: Sink,
        *,
        bootstrap: str,
        topic_prefix: str,
        settings: RuntimeSettings | None = None,
        schema_registry_url: str | None = None,
        sleep: Callable[[float], None] | None = None,
        on_batch: Callable[[Sequence[Record], float], None] | None = None,
    ) -> None:
        """``on_batch(records, acked_at)``: called after every committed batch with the
        records the sink confirmed and the wall-clock time (``time.time()``) of the
        confirmation (benchmarks, dashboards)."""
        self.sink = sink
        self.bootstrap = bootstrap
        self.prefix = topic_prefix
        self.settings = settings or RuntimeSettings()
        self.registry_url = schema_registry_url
        self.metrics = RuntimeMetrics()
        self.stats = {"batches": 0, "records": 0, "retries": 0, "dead_letters": 0}
        self._failed_commits = 0
        self._lag_updated = 0.0
        self._checked = 0.0
        self._stall = _StallWatch()
        self._ends: dict[TopicPartition, tuple[int, int]] = {}
        """The partitions' watermarks at the last idle check (:meth:`_at_end`)."""
        self.caught_up = threading.Event()
        self._sleep = sleep
        self._on_batch = on_batch
        self._delivery_errors: list[str] = []
        self._raw_topics: dict[str, str] = {}
        """Raw change topics the sink reads (``raw_tables``) -> their table."""

    @property
    def group(self) -> str:
        return self.settings.group or f"{self.prefix}-{self.sink.name}"

    @property
    def dlq_topic(self) -> str:
        return f"{self.prefix}.dlq.{self.sink.name}"

    def run(self, stop: threading.Event) -> None:
        self._stop = stop
        self._retrying("connect to the sink's target", self.sink.open)
        if stop.is_set():
            return
        topics = [doc_topic(self.prefix, k) for k in self.sink.kinds]
        raw_tables: Sequence[str] = getattr(self.sink, "raw_tables", ())
        self._raw_topics = {self._raw_topic(t): t for t in raw_tables}
        topics += list(self._raw_topics)
        ensure_topics(self.bootstrap, [TopicSpec(self.dlq_topic, 1)])
        self.codec: DocumentCodec = document_codec(self.bootstrap, self.prefix, self.registry_url)
        if self._raw_topics:
            self.raw_codec: EventCodec = make_codec(
                topic_prefix=self.prefix,
                schema_registry_url=self.registry_url,
                kafka_bootstrap=self.bootstrap,
            )
        self.producer = Producer(producer_config(self.bootstrap))
        group_config: dict[str, Any] = {}
        if self.settings.instance_id:
            group_config = {
                "group.instance.id": self.settings.instance_id,
                "session.timeout.ms": 10000,
            }
        self._consumer_config = consumer_config(self.bootstrap, self.group, **group_config)
        self.consumer = Consumer(self._consumer_config)
        if self.settings.metrics_port is not None:
            start_http_server(
                self.settings.metrics_port, addr=metrics_address(), registry=self.metrics.registry
            )
        self._wait_for_topics(topics, stop)
        if stop.is_set():
            return
        self._topics = topics
        self.consumer.subscribe(topics)
        log.info("event=consumer_started consumer=%s group=%s topics=%s", self.sink.name,
                 self.group, ",".join(topics))  # fmt: skip
        try:
            self._loop(stop)
        finally:
            self.consumer.close()
            self.producer.flush(30)
            self.sink.close()
            log.info(
                "event=consumer_stopped consumer=%s %s",
                self.sink.name,
                " ".join(f"{k}={v}" for k, v in self.stats.items()),
            )

    def _raw_topic(self, table: str) -> str:
        return f"{self.prefix}.public.{table}"

    def _wait_for_topics(self, topics: list[str], stop: threading.Event) -> None:
        """Until the document (and raw) topics exist (the assembler and reader create
        them), saying so."""
        said = 0.0
        while not stop.is_set():
            meta = self.consumer.list_topics(timeout=10).topics
            missing = [t for t in topics if t not in meta or not meta[t].partitions]
            if not missing:
                return
            if time.monotonic() - said > 10:
                log.info(
                    "event=waiting_for_document_topics consumer=%s missing=%s hint=%s",
                    self.sink.name,
                    ",".join(missing),
                    "start `catalog-cdc assembler` (and `catalog-cdc reader`: they create them)",
                )
                said = time.monotonic()
            stop.wait(0.5)

    # -- the loop -------------------------------------------------------------------------

    def _loop(self, stop: threading.Event) -> None:
        idle_since = time.monotonic()
        while not stop.is_set():
            self._late_dead_letters()
            msgs = self.consumer.consume(self.settings.batch_size, self.settings.poll_timeout)
            if not msgs:
                pause_while_idle([self.consumer], self.settings.idle_pause, stop.wait)
                now = time.monotonic()
                if now - idle_since > 0.5 and (
                    not self.caught_up.is_set() or now - self._checked >= self.settings.idle_check
                ):
                    self._idle_check(now)
                continue
            self.caught_up.clear()
            self._stall.moved()
            idle_since = time.monotonic()
            hold = None
            if self.settings.fetch_wait > 0 and len(msgs) < self.settings.batch_size:
                hold = FetchHold([self.consumer])
            self._batch(msgs)
            if hold is not None:
                hold.release(self.settings.fetch_wait, stop.wait)
            self._busy_lag()

    def _batch(self, msgs: list[Message]) -> None:
        started = time.perf_counter()
        records: list[Record] = []
        raw_records: list[RawRecord] = []
        poison: list[_Poison] = []
        positions: dict[tuple[str, int], int] = {}
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                if is_fatal(err):
                    where = f"{msg.topic()}[{msg.partition()}]" if msg.topic() else "the consumer"
                    raise SinkError(f"reading {where}: {err}; stopping, to be restarted")
                log.warning("event=consumer_error consumer=%s error=%s", self.sink.name, err)
                continue
            topic, part = msg.topic() or "", msg.partition() or 0
            positions[(topic, part)] = (msg.offset() or 0) + 1
            if topic in self._raw_topics:
                self._decode_raw(msg, self._raw_topics[topic], raw_records, poison)
                continue
            kind = "product" if topic.endswith(".doc.products") else "category"
            try:
                records.append(
                    self.codec.decode_message(
                        kind, msg.key(), msg.value(), msg.headers(), part, msg.offset() or 0
                    )
                )
            except CatalogCdcError as exc:
                poison.append(_Poison(msg, f"cannot decode: {exc}"))
        rejected: list[Rejected] = []
        if raw_records:
            add_raw: Callable[[Sequence[RawRecord]], None] = getattr(self.sink, "add_raw")  # noqa: B009
            add_raw(raw_records)
        if records or raw_records:
            if records:
                self.sink.add(records)
            flushed: list[Rejected] | None = self._retrying("flush a batch", self.sink.flush)
            if flushed is None:
                return  # stopping while the target is down: nothing is committed
            rejected = flushed
        by_key = {(r.kind, r.id, r.partition, r.offset): r for r in records}
        raw = {(m.topic(), m.partition(), m.offset()): m for m in msgs if m.error() is None}
        for rej in rejected:
            r = rej.record
            if isinstance(r, RawRecord):
                original = raw.get((self._raw_topic(r.kind), r.partition, r.offset))
                self._dead_letter(original, rej.reason, None)
                continue
            original = raw.get((doc_topic(self.prefix, r.kind), r.partition, r.offset))
            self._dead_letter(original, rej.reason, r)
            by_key.pop((r.kind, r.id, r.partition, r.offset), None)
        for p in poison:
            self._dead_letter(p.message, p.reason, None)
        self._flush_producer()
        commits = [TopicPartition(t, p, n) for (t, p), n in positions.items()]
        if commits:
            self._commit(commits)
        m, name = self.metrics, self.sink.name
        deletes = sum(1 for r in by_key.values() if r.doc is None)
        m.records.labels(name, "document").inc(len(by_key) - deletes)
        m.records.labels(name, "delete").inc(deletes)
        m.dead_letters.labels(name).inc(len(rejected) + len(poison))
        m.batch_seconds.labels(name).observe(time.perf_counter() - started)
        acked_at = time.time()
        latency = m.latency.labels(name)
        for r in by_key.values():
            if r.source_ts_ms > 0:
                latency.observe(max(0.0, acked_at - r.source_ts_ms / 1000))
        if self._on_batch is not None:
            self._on_batch(list(by_key.values()), acked_at)
        self.stats["batches"] += 1
        self.stats["records"] += len(by_key)
        if raw_records:
            self.stats["raw_records"] = self.stats.get("raw_records", 0) + len(raw_records)
        self.stats["dead_letters"] += len(rejected) + len(poison)

    def _decode_raw(
        self, msg: Message, table: str, out: list[RawRecord], poison: list[_Poison]
    ) -> None:
        """A raw change message as a :class:`RawRecord` (a tombstone is skipped: the
        delete event before it did the work; undecodable: poison)."""
        try:
            record = raw_record(self.raw_codec, msg, table)
        except CatalogCdcError as exc:
            poison.append(_Poison(msg, f"cannot decode: {exc}"))
            return
        if record is not None:
            out.append(record)

    def _late_dead_letters(self) -> None:
        """Dead letters the sink found after their batch was committed (optional hook)."""
        drain: Callable[[], list[Rejected]] | None = getattr(self.sink, "dead_letters", None)
        if drain is None:
            return
        late = drain()
        if not late:
            return
        for rej in late:
            self._dead_letter(
                None, rej.reason, None if isinstance(rej.record, RawRecord) else rej.record
            )
        self._flush_producer()
        self.metrics.dead_letters.labels(self.sink.name).inc(len(late))
        self.stats["dead_letters"] += len(late)

    def _retrying(self, what: str, call: Callable[[], Any]) -> Any:
        """``call()`` until it does not raise :class:`TransientSinkError` (or stop)."""
        delay = self.settings.backoff_initial
        attempt = 0
        while True:
            try:
                return call()
            except TransientSinkError as exc:
                attempt += 1
                self.stats["retries"] += 1
                self.metrics.retries.labels(self.sink.name).inc()
                wait = exc.retry_after if exc.retry_after is not None else delay
                wait = min(self.settings.backoff_max, wait) * random.uniform(0.8, 1.2)
                log.warning(
                    "event=sink_unavailable consumer=%s action=%r attempt=%d retry_in=%.1fs "
                    "error=%s",
                    self.sink.name,
                    what,
                    attempt,
                    wait,
                    exc,
                )
                delay = min(self.settings.backoff_max, delay * 2)
                if self._sleep is not None:
                    self._sleep(wait)
                elif self._stop.wait(wait):
                    return None

    def _dead_letter(self, msg: Message | None, reason: str, record: Record | None) -> None:
        log.error(
            "event=dead_letter consumer=%s topic=%s partition=%s offset=%s reason=%s",
            self.sink.name,
            None if msg is None else msg.topic(),
            None if msg is None else msg.partition(),
            None if msg is None else msg.offset(),
            reason,
        )
        headers: list[tuple[str, str | bytes | None]] = [
            ("error", reason.encode()),
            ("consumer", self.sink.name.encode()),
        ]
        if msg is not None:
            headers += [
                ("original.topic", (msg.topic() or "").encode()),
                ("original.partition", str(msg.partition()).encode()),
                ("original.offset", str(msg.offset()).encode()),
            ]
            original = msg.headers() or []
            headers += list(original.items() if isinstance(original, dict) else original)
        key = None if msg is None else msg.key()
        value = None if msg is None else msg.value()
        if msg is None and record is not None:  # a late dead letter: rebuild the message
            key = doc_key(record.id)
            headers += [
                ("original.topic", doc_topic(self.prefix, record.kind).encode()),
                ("original.partition", str(record.partition).encode()),
                ("original.offset", str(record.offset).encode()),
                *headers_of(record.kind, record.version, record.source_ts_ms),
            ]
            if record.doc is not None:
                value = self.codec.encode(record.doc)
        if value is None and record is not None:
            value = json.dumps({"kind": record.kind, "id": record.id, "delete": True}).encode()
        self.producer.produce(
            self.dlq_topic, key=key, value=value, headers=headers, on_delivery=self._delivered
        )

    def _delivered(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self._delivery_errors.append(str(err))

    def _flush_producer(self) -> None:
        while self.producer.flush(5.0) > 0:
            log.warning("event=dlq_flush_waiting consumer=%s", self.sink.name)
        if self._delivery_errors:
            raise SinkError(
                f"Kafka refused dead letters ({self._delivery_errors[0]}); "
                "the batch is not committed"
            )

    def _commit(self, offsets: list[TopicPartition]) -> None:
        """Commit what was flushed.  A commit the group refuses (a rebalance under way, a
        session that expired while the broker stalled) is a warning, not a crash: the
        batch is in the sink, and whoever gets the partitions next starts from the last
        committed offset, writing it again (harmless: writes are versioned).  A fatal
        error stops the consumer."""
        try:
            results = self.consumer.commit(offsets=offsets, asynchronous=False) or []
        except KafkaException as exc:
            if exc.args and isinstance(exc.args[0], KafkaError) and is_fatal(exc.args[0]):
                raise SinkError(f"committing offsets: {exc.args[0]}") from exc
            log.warning("event=commit_failed consumer=%s error=%s redelivery=expected",
                        self.sink.name, exc)  # fmt: skip
            self._commit_failed()
            return
        # The request can succeed while single partitions fail (their error is set).
        failed = [tp for tp in results if tp.error is not None]
        if failed:
            log.warning("event=commit_failed consumer=%s partitions=%s error=%s "
                        "redelivery=expected", self.sink.name,
                        ",".join(f"{tp.topic}[{tp.partition}]" for tp in failed),
                        failed[0].error)  # fmt: skip
            self._commit_failed()
        else:
            self._failed_commits = 0

    def _commit_failed(self) -> None:
        self.stats["commit_failures"] = self.stats.get("commit_failures", 0) + 1
        self._failed_commits += 1
        if self._failed_commits >= MAX_FAILED_COMMITS:
            raise SinkError(
                f"{self._failed_commits} commits in a row refused by the group; stopping so "
                "that a restart joins it afresh"
            )

    def _busy_lag(self) -> None:
        """Refresh the lag gauges while busy, at most once a second, from the high
        watermarks the fetches brought (no broker round trip); idle, :meth:`_at_end`
        asks the broker.  Without it a consumer working through a backlog showed the
        lag of its last idle moment (often 0) on the dashboard."""
        now = time.monotonic()
        if now - self._lag_updated < 1.0:
            return
        self._lag_updated = now
        try:
            positions = self.consumer.position(self.consumer.assignment())
        except KafkaException:
            return  # the next batch or the idle check tries again
        for tp in positions:
            marks = self.consumer.get_watermark_offsets(tp, cached=True)
            if marks is None or tp.offset < 0 or marks[1] < 0:
                continue  # nothing fetched (or consumed) there yet: no figure to give
            self._set_lag(tp, marks, tp.offset)

    def _set_lag(self, tp: TopicPartition, marks: tuple[int, int], position: int) -> int:
        """Set the lag gauge of ``tp`` from its watermarks and a position (< 0: none)."""
        low, high = marks
        lag = max(0, high - max(low, position if position >= 0 else low))
        self.metrics.lag.labels(self.sink.name, tp.topic, str(tp.partition)).set(lag)
        return lag

    def _idle_check(self, now: float) -> None:
        """Idle: caught up yet?  (And, while behind, standing still for too long?  That
        is looked at every ``idle_check`` seconds, from the watermarks just fetched.)"""
        self._checked = now
        if self._at_end():
            self._stall.moved()
            if not self.caught_up.is_set():
                self.caught_up.set()
                log.info("event=caught_up consumer=%s", self.sink.name)
            return
        self.caught_up.clear()
        timeout = self.settings.stall_timeout
        if timeout <= 0 or now - self._stall.looked < self.settings.idle_check:
            return
        self._stall.looked = now
        behind = self._stalled_where()
        if behind is None:
            self._stall.since = None  # the broker did not answer, or the group moved
            return
        if self._stall.since is None:
            self._stall.since = now
        elif now - self._stall.since >= timeout:
            self._rejoin(behind, now - self._stall.since)

    def _stalled_where(self) -> str | None:
        """Where Kafka holds more for this consumer than it gets: its partitions with
        messages past the fetch position; owning none, the group's partitions whose
        committed offset is behind the end and has not moved since the last check.
        ``None``: nothing of the kind (or the broker did not answer)."""
        try:
            assignment = self.consumer.assignment()
            if assignment:
                behind = []
                for tp in self.consumer.position(assignment):
                    marks = self._ends.get(tp)
                    if tp.offset < 0 or marks is None:
                        continue  # not fetched yet: the committed offset says (lag gauge)
                    high = marks[1]
                    if tp.offset < high:
                        behind.append(f"{tp.topic}[{tp.partition}]@{tp.offset}<{high}")
                return ",".join(behind) or None
            meta = self.consumer.list_topics(timeout=5).topics
            everything = [
                TopicPartition(t, p) for t in self._topics if t in meta for p in meta[t].partitions
            ]
            committed = {
                (tp.topic, tp.partition): tp.offset
                for tp in self.consumer.committed(everything, timeout=10)
            }
            waiting = []
            for tp in everything:
                low, high = self.consumer.get_watermark_offsets(tp, cached=False, timeout=5)
                at = committed.get((tp.topic, tp.partition), -1)
                if max(low, at) < high:
                    waiting.append(f"{tp.topic}[{tp.partition}]@{at}<{high}")
        except KafkaException:
            return None
        if not waiting or self._stall.committed != committed:
            self._stall.committed = committed
            return None  # another member is working through it (or nothing to do)
        return "unassigned:" + ",".join(waiting)

    def _rejoin(self, behind: str, seconds: float) -> None:
        """Leave the group and join it again with a new Kafka client; a second stall in a
        row on partitions it owns stops the consumer (its supervisor starts a new
        process).  Owning none, it only rejoins: with more members than partitions, a
        spare member rejoins each ``stall_timeout`` while the owner is stuck (e.g.
        retrying a target that is down), harmlessly."""
        self.stats["stalls"] = self.stats.get("stalls", 0) + 1
        spare = behind.startswith("unassigned:")  # a new process would not own more
        if self._stall.rejoined and not spare:
            raise SinkError(
                f"stalled again for {seconds:.0f} s after a rejoin (behind: {behind}); "
                "stopping so that a new process takes over"
            )
        log.warning(
            "event=consumer_stalled consumer=%s seconds=%.0f behind=%s action=rejoin",
            self.sink.name, seconds, behind,
        )  # fmt: skip
        self.consumer.close()
        self.consumer = Consumer(self._consumer_config)
        self.consumer.subscribe(self._topics)
        self._stall = _StallWatch(rejoined=not spare)

    def _at_end(self) -> bool:
        assignment = self.consumer.assignment()
        if not assignment:
            return False
        try:
            committed = {
                (tp.topic, tp.partition): tp.offset
                for tp in self.consumer.committed(assignment, timeout=10)
            }
            ends = {
                tp: self.consumer.get_watermark_offsets(tp, cached=False, timeout=5)
                for tp in assignment
            }
            self._ends = ends
        except KafkaException as exc:  # the broker is slow or away: not at the end (yet)
            log.warning("event=lag_check_failed consumer=%s error=%s", self.sink.name, exc)
            self._ends = {}  # no ends known: the stall watch does not judge on old ones
            return False
        behind = False
        for tp in assignment:
            lag = self._set_lag(tp, ends[tp], committed.get((tp.topic, tp.partition), -1))
            behind = behind or lag > 0
        return not behind
