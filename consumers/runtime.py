"""The live consumer: a sink in its consumer group, batch by batch, offsets after the sink.

:class:`ConsumerRuntime` runs one :class:`~consumers.contract.Sink` (the contract and
what a flush may answer are in :mod:`consumers.contract`):

1. subscribes, in the consumer group ``{prefix}-{name}``, to the document topics the
   sink asks for (and the raw change topics of a
   :class:`~consumers.capabilities.RawInput` sink);
2. hands every polled batch to the :class:`~consumers.driver.SinkDriver` (the same code
   replay uses): decode (poison to the dead-letter topic), add, flush, retry with
   capped exponential backoff for as long as the target is down, dead-letter the
   refusals — those of a flush that then asks for a retry included;
3. commits the batch's offsets only after the flush succeeded and the dead letters
   were acknowledged by Kafka.

While the target is down the runtime does not sit in a sleep: its partitions are
paused and it keeps polling, so the group sees a live member through an outage of any
length (librdkafka leaves the group of a member that does not poll within
``max.poll.interval.ms``, five minutes by default).  A message a rebalance hands it
meanwhile is sought back and paused, never dropped; fetching resumes once the batch is
written.

Guarantee: at-least-once.  A crash before the commit redelivers the batch; sinks
write idempotently (external versions, upserts by id), so a redelivery changes
nothing that is already right.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from prometheus_client import start_http_server

from consumers.contract import Record, Sink, SinkError
from consumers.driver import Backoff, SinkDriver
from consumers.metrics import RuntimeMetrics
from pipeline.kafka import FetchHold, consumer_config, is_fatal, pause_while_idle
from pipeline.settings import metrics_address
from pipeline.topics import dlq_topic

log = logging.getLogger(__name__)

MAX_FAILED_COMMITS = 20
"""Commits in a row the group may refuse before the consumer stops (to be restarted)."""

__all__ = ["ConsumerRuntime", "RuntimeMetrics", "RuntimeSettings"]


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
    consumer_overrides: dict[str, Any] = field(default_factory=dict)
    """librdkafka settings for the group consumer (e.g. ``max.poll.interval.ms``)."""
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


class ConsumerRuntime:
    """Runs one :class:`~consumers.contract.Sink` until ``stop`` is set (see the module
    docstring)."""

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
        confirmation (benchmarks, dashboards).  ``sleep``: waits between retries instead
        of polling paused (tests of the backoff)."""
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
        self._target_down = False
        """Retrying a flush: partitions paused, polled only to stay in the group."""
        self._subscribed = False

    @property
    def group(self) -> str:
        return self.settings.group or f"{self.prefix}-{self.sink.name}"

    @property
    def dlq_topic(self) -> str:
        return dlq_topic(self.prefix, self.sink.name)

    def run(self, stop: threading.Event) -> None:
        self._stop = stop
        self.driver = SinkDriver(
            self.sink,
            bootstrap=self.bootstrap,
            topic_prefix=self.prefix,
            wait=self._wait,
            schema_registry_url=self.registry_url,
            backoff=Backoff(self.settings.backoff_initial, self.settings.backoff_max),
            metrics=self.metrics,
            stats=self.stats,
        )
        if not self.driver.open() or stop.is_set():
            return
        topics = self.driver.topics
        group_config: dict[str, Any] = dict(self.settings.consumer_overrides)
        if self.settings.instance_id:
            group_config.setdefault("group.instance.id", self.settings.instance_id)
            group_config.setdefault("session.timeout.ms", 10000)
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
        self._subscribe()
        log.info("event=consumer_started consumer=%s group=%s topics=%s", self.sink.name,
                 self.group, ",".join(topics))  # fmt: skip
        try:
            self._loop(stop)
        finally:
            self.consumer.close()
            self.driver.close()
            self.sink.close()
            log.info(
                "event=consumer_stopped consumer=%s %s",
                self.sink.name,
                " ".join(f"{k}={v}" for k, v in self.stats.items()),
            )

    def _subscribe(self) -> None:
        self.consumer.subscribe(self._topics, on_assign=self._assigned)
        self._subscribed = True

    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """A rebalance while the target is down: take the partitions, but paused."""
        consumer.assign(partitions)
        if self._target_down and partitions:
            consumer.pause(partitions)

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
            if self._target_down:
                self._target_down = False
                with contextlib.suppress(KafkaException):  # what a rebalance took is gone
                    self.consumer.resume(self.consumer.assignment())
            if hold is not None:
                with contextlib.suppress(KafkaException):
                    hold.release(self.settings.fetch_wait, stop.wait)
            self._busy_lag()

    def _late_dead_letters(self) -> None:
        """At the top of every turn: what an outbox sink gave up on since the last."""
        self.driver.late_dead_letters()

    def _wait(self, seconds: float) -> bool:
        """Wait before a retry; ``True``: stopping.  The partitions are paused and the
        consumer polls meanwhile, so it stays in its group however long the target is
        down; a message polled all the same (a partition a rebalance just gave it) is
        sought back to and paused."""
        if self._sleep is not None:
            self._sleep(seconds)
            return self._stop.is_set()
        if not self._subscribed:  # opening the sink: no group to stay in yet
            return self._stop.wait(seconds)
        if not self._target_down:
            self._target_down = True
            with contextlib.suppress(KafkaException):
                self.consumer.pause(self.consumer.assignment())
        deadline = time.monotonic() + seconds
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            msg = self.consumer.poll(min(left, 0.2))
            if msg is not None and msg.error() is None:
                tp = TopicPartition(msg.topic() or "", msg.partition() or 0)
                self.consumer.pause([tp])
                self.consumer.seek(TopicPartition(tp.topic, tp.partition, msg.offset() or 0))
        return True

    def _batch(self, msgs: list[Message]) -> None:
        started = time.perf_counter()
        good: list[Message] = []
        for msg in msgs:
            err = msg.error()
            if err is None:
                good.append(msg)
                continue
            if err.code() == KafkaError._PARTITION_EOF:
                continue
            if is_fatal(err):
                where = f"{msg.topic()}[{msg.partition()}]" if msg.topic() else "the consumer"
                raise SinkError(f"reading {where}: {err}; stopping, to be restarted")
            log.warning("event=consumer_error consumer=%s error=%s", self.sink.name, err)
        batch = self.driver.decode(good)
        written = self.driver.write(batch)
        if written is None:
            return  # stopping while the target is down: nothing is committed
        commits = [TopicPartition(t, p, n) for (t, p), n in batch.positions.items()]
        if commits:
            self._commit(commits)
        m, name = self.metrics, self.sink.name
        confirmed = written.confirmed
        deletes = sum(1 for r in confirmed if r.doc is None)
        m.records.labels(name, "document").inc(len(confirmed) - deletes)
        m.records.labels(name, "delete").inc(deletes)
        m.batch_seconds.labels(name).observe(time.perf_counter() - started)
        acked_at = time.time()
        latency = m.latency.labels(name)
        for r in confirmed:
            if r.source_ts_ms > 0:
                latency.observe(max(0.0, acked_at - r.source_ts_ms / 1000))
        if self._on_batch is not None:
            self._on_batch(confirmed, acked_at)
        self.stats["batches"] += 1
        self.stats["records"] += len(confirmed)
        if written.raws:
            self.stats["raw_records"] = self.stats.get("raw_records", 0) + written.raws

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
        self._subscribe()
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
