"""The shared consumer runtime against real Kafka, with test sinks.

Retries without skipping, dead letters with the reason and the original message,
commit only after flush, and the JSONL example consumer end to end.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from consumers.contract import Record, Rejected, TransientSinkError
from consumers.jsonl import JsonlSink
from consumers.runtime import ConsumerRuntime, RuntimeSettings
from pipeline.documents.model import ProductDocument
from pipeline.documents.reading import document_codec
from pipeline.documents.wire import doc_key, headers_of
from pipeline.kafka import TopicSpec, consumer_config, ensure_topics, producer_config
from pipeline.topics import doc_topic
from tests.unit.test_documents import product_data

pytestmark = pytest.mark.integration


class MemorySink:
    """Keeps the latest record per id; can fail transiently or reject ids on purpose."""

    name = "memory"
    kinds = ("product",)

    def __init__(self, fail_flushes: int = 0, reject: frozenset[int] = frozenset()) -> None:
        self.fail_flushes = fail_flushes
        self.reject = reject
        self.pending: list[Record] = []
        self.store: dict[int, Record] = {}
        self.flushes = 0
        self.opened = 0

    def open(self) -> None:
        self.opened += 1
        if self.opened < 2:
            raise TransientSinkError("target not up yet", retry_after=0.05)

    def add(self, records: Sequence[Record]) -> None:
        self.pending.extend(records)

    def flush(self) -> list[Rejected]:
        self.flushes += 1
        if self.fail_flushes > 0:
            self.fail_flushes -= 1
            raise TransientSinkError("503 from the target", retry_after=0.05)
        rejected = [Rejected(r, f"id {r.id} refused") for r in self.pending if r.id in self.reject]
        for r in self.pending:
            if r.id not in self.reject:
                self.store[r.id] = r
        self.pending = []
        return rejected

    def close(self) -> None:
        pass


def _product(pid: int, version: int, name: str = "A product") -> ProductDocument:
    return ProductDocument.model_validate(
        product_data(id=pid, name=name, version=version, source_ts_ms=version)
    )


def _produce(bootstrap: str, prefix: str, items: list[tuple[int, Any]]) -> None:
    """(id, document | None | raw bytes) onto {prefix}.doc.products."""
    codec = document_codec(bootstrap, prefix)
    topic = doc_topic(prefix, "product")
    ensure_topics(bootstrap, [TopicSpec(topic, 2, {"cleanup.policy": "compact"})])
    producer = Producer(producer_config(bootstrap))
    for pid, item in items:
        if isinstance(item, bytes):
            value, version = item, 0
        elif item is None:
            value, version = None, 99
        else:
            value, version = codec.encode(item), item.version
        producer.produce(
            topic,
            key=doc_key(pid),
            value=value,
            partition=pid % 2,
            headers=headers_of("product", version, version),
        )
    assert producer.flush(30) == 0


@contextmanager
def running(runtime: ConsumerRuntime) -> Iterator[ConsumerRuntime]:
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            runtime.run(stop)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield runtime
    finally:
        stop.set()
        thread.join(60)
    if errors:
        raise errors[0]


def _dlq(bootstrap: str, topic: str) -> list[Any]:
    consumer = Consumer(consumer_config(bootstrap, "test-dlq"))
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        out = []
        while (msg := consumer.poll(2.0)) is not None:
            assert not msg.error(), msg.error()
            out.append(msg)
        return out
    finally:
        consumer.close()


def test_retry_dead_letter_and_commit(kafka_bootstrap: str, topic_prefix: str) -> None:
    items: list[tuple[int, Any]] = [(i, _product(i, 10 + i)) for i in range(1, 7)]
    items.insert(3, (50, b"\x00not avro"))  # poison: cannot be decoded
    items.append((2, None))  # a delete of product 2
    _produce(kafka_bootstrap, topic_prefix, items)
    sink = MemorySink(fail_flushes=3, reject=frozenset({5}))
    runtime = ConsumerRuntime(
        sink,
        bootstrap=kafka_bootstrap,
        topic_prefix=topic_prefix,
        settings=RuntimeSettings(batch_size=100, poll_timeout=0.2, backoff_initial=0.01),
    )
    with running(runtime):
        assert runtime.caught_up.wait(60), runtime.stats
    assert sink.opened == 2  # waited for the target, did not crash
    assert runtime.stats["retries"] >= 4  # 1 open + 3 flushes
    assert sorted(sink.store) == [1, 2, 3, 4, 6]  # nothing skipped but the refused one
    assert sink.store[2].doc is None and sink.store[2].version == 99
    assert sink.store[6].doc is not None and sink.store[6].doc.version == 16
    dead = _dlq(kafka_bootstrap, f"{topic_prefix}.dlq.memory")
    reasons = sorted(dict(m.headers())["error"].decode() for m in dead)
    assert len(reasons) == 2, reasons
    assert reasons[0].startswith("cannot decode") and reasons[1] == "id 5 refused"
    refused = next(m for m in dead if m.key() == b"5")
    assert dict(refused.headers())["original.topic"] == f"{topic_prefix}.doc.products".encode()
    assert refused.value() is not None  # the original message, as it was

    # Everything was committed after the flush: a new runtime of the group reads nothing.
    again = MemorySink()
    rerun = ConsumerRuntime(
        again,
        bootstrap=kafka_bootstrap,
        topic_prefix=topic_prefix,
        settings=RuntimeSettings(poll_timeout=0.2, backoff_initial=0.01),
    )
    with running(rerun):
        assert rerun.caught_up.wait(60)
    assert again.store == {}


def test_nothing_is_committed_while_the_target_is_down(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    _produce(kafka_bootstrap, topic_prefix, [(i, _product(i, i)) for i in range(1, 4)])
    down = MemorySink(fail_flushes=10**9)
    runtime = ConsumerRuntime(
        down,
        bootstrap=kafka_bootstrap,
        topic_prefix=topic_prefix,
        settings=RuntimeSettings(poll_timeout=0.2, backoff_initial=0.01, backoff_max=0.05),
    )
    with running(runtime):
        deadline = time.monotonic() + 30
        while runtime.stats["retries"] < 5:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert down.store == {}
    # The next run of the group gets the whole batch again.
    up = MemorySink()
    rerun = ConsumerRuntime(
        up,
        bootstrap=kafka_bootstrap,
        topic_prefix=topic_prefix,
        settings=RuntimeSettings(poll_timeout=0.2, backoff_initial=0.01),
    )
    with running(rerun):
        assert rerun.caught_up.wait(60)
    assert sorted(up.store) == [1, 2, 3]


def test_jsonl_consumer(kafka_bootstrap: str, topic_prefix: str, tmp_path: Path) -> None:
    _produce(
        kafka_bootstrap,
        topic_prefix,
        [(1, _product(1, 5)), (2, _product(2, 6)), (1, _product(1, 7, "Renamed")), (2, None)],
    )
    path = tmp_path / "out.jsonl"
    sink = JsonlSink(path, kinds=("product",))
    runtime = ConsumerRuntime(
        sink,
        bootstrap=kafka_bootstrap,
        topic_prefix=topic_prefix,
        settings=RuntimeSettings(poll_timeout=0.2),
    )
    with running(runtime):
        assert runtime.caught_up.wait(60)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    latest = {}
    for line in lines:
        latest[line["id"]] = line
    assert latest[1]["version"] == 7 and latest[1]["document"]["name"] == "Renamed"
    assert latest[2].get("deleted") is True


def test_consume_command_catches_up_and_exits(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """`catalog-cdc consume jsonl --exit-when-idle`: found through its entry point, it
    writes every record, then exits 0 by itself."""
    import os
    import subprocess

    from tests.integration.reader_support import CLI

    _produce(kafka_bootstrap, topic_prefix, [(i, _product(i, i)) for i in range(1, 6)])
    out = tmp_path / "docs.jsonl"
    env = {
        **os.environ,
        "CATALOG_CDC_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "CATALOG_CDC_TOPIC_PREFIX": topic_prefix,
    }
    done = subprocess.run(
        [CLI, "consume", "jsonl", "--option", f"path={out}", "--option", "kinds=product",
         "--exit-when-idle", "1"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(json.loads(line)["id"] for line in out.read_text().splitlines()) == [
        1,
        2,
        3,
        4,
        5,
    ]
    assert "event=caught_up consumer=jsonl" in done.stderr


def test_a_refused_commit_is_a_warning_until_it_keeps_happening(
    kafka_bootstrap: str, topic_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The broker refuses a commit (here: an unknown topic, as real a refusal as a
    rebalance's): the batch is in the sink already, so the consumer warns and goes on
    (the next owner of the partition writes it again); only many refusals in a row stop
    it, so that a restart joins the group afresh."""
    from consumers import runtime as rt

    runtime = ConsumerRuntime(MemorySink(), bootstrap=kafka_bootstrap, topic_prefix=topic_prefix)
    runtime.consumer = Consumer(consumer_config(kafka_bootstrap, f"{topic_prefix}-commits"))
    try:
        gone = [TopicPartition(f"{topic_prefix}.no-such-topic", 0, 5)]
        with caplog.at_level("WARNING", logger="consumers.runtime"):
            runtime._commit(gone)
        assert runtime.stats["commit_failures"] == 1
        assert "event=commit_failed consumer=memory" in caplog.text
        for _ in range(rt.MAX_FAILED_COMMITS - 2):
            runtime._commit(gone)
        with pytest.raises(rt.SinkError, match="commits in a row refused"):
            runtime._commit(gone)
    finally:
        runtime.consumer.close()


class SlowSink(MemorySink):
    """A sink that takes its time over each flush (a busy target)."""

    def open(self) -> None:
        self.opened += 1

    def flush(self) -> list[Rejected]:
        time.sleep(0.25)
        return super().flush()


def _lag(runtime: ConsumerRuntime) -> float:
    total = 0.0
    for metric in runtime.metrics.registry.collect():
        if metric.name == "catalog_cdc_consumer_lag_messages":
            total += sum(s.value for s in metric.samples)
    return total


def test_the_lag_gauge_moves_while_the_consumer_is_busy(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    """A consumer working through a backlog shows how far behind it is (the dashboard
    reads this gauge), not the 0 of its last idle moment."""
    _produce(kafka_bootstrap, topic_prefix, [(i, _product(i, 10 + i)) for i in range(1, 301)])
    runtime = ConsumerRuntime(
        SlowSink(),
        bootstrap=kafka_bootstrap,
        topic_prefix=topic_prefix,
        settings=RuntimeSettings(batch_size=20, poll_timeout=0.2),
    )
    seen: list[float] = []
    with running(runtime):
        deadline = time.monotonic() + 90
        while not runtime.caught_up.is_set() and time.monotonic() < deadline:
            seen.append(_lag(runtime))
            time.sleep(0.2)
        assert runtime.caught_up.is_set(), runtime.stats
    busy = [v for v in seen if v > 0]
    assert busy, f"the lag stayed 0 while {runtime.stats['records']} records were worked through"
    assert max(busy) > 100  # 300 records, 20 a batch of 0.25 s: far behind at first
    assert busy[-1] < max(busy)  # and it came down as the backlog was worked off
    assert _lag(runtime) == 0  # caught up: the broker's answer


class _WedgeableRuntime(ConsumerRuntime):
    """A runtime that does ``wedge(consumer)`` to its own Kafka client, from its own
    thread, once asked.  From the test's thread it cannot: confluent-kafka 2.16
    serializes calls on a client, and a call made while ``consume()`` runs waits for a
    gap that a runtime polling without an idle pause leaves by luck only (measured:
    2 s to more than 300 s)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.wedge: Callable[[Consumer], None] | None = None
        self.wedged = threading.Event()

    def _late_dead_letters(self) -> None:  # at the top of each turn of the loop
        if self.wedge is not None and not self.wedged.is_set():
            self.wedge(self.consumer)
            self.wedged.set()
        super()._late_dead_letters()

    def wedge_now(self, wedge: Callable[[Consumer], None]) -> None:
        self.wedge = wedge
        assert self.wedged.wait(30), "the runtime's loop did not come round"


def _stall_runtime(bootstrap: str, prefix: str) -> _WedgeableRuntime:
    return _WedgeableRuntime(
        MemorySink(),
        bootstrap=bootstrap,
        topic_prefix=prefix,
        # no idle pause: the test's own pause below must not be undone by the runtime's
        settings=RuntimeSettings(idle_pause=0, idle_check=0.3, stall_timeout=2.0),
    )


def _wait_for(runtime: ConsumerRuntime, ids: set[int], seconds: float = 60) -> None:
    """Until the sink holds ``ids``."""
    sink = runtime.sink
    assert isinstance(sink, MemorySink)
    deadline = time.monotonic() + seconds
    while not ids <= set(sink.store) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ids <= set(sink.store), f"missing {sorted(ids - set(sink.store))}: {runtime.stats}"


def test_a_consumer_whose_fetcher_stands_still_rejoins_the_group(
    kafka_bootstrap: str, topic_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Kafka holds messages for the consumer, and its client does not fetch them (here:
    its partitions paused behind its back, as a fetcher wedged by a broker stall looks):
    after ``stall_timeout`` it says so and joins again with a new client, which gets
    them.  Idle and caught up, it never does."""
    _produce(kafka_bootstrap, topic_prefix, [(i, _product(i, 10 + i)) for i in range(1, 6)])
    runtime = _stall_runtime(kafka_bootstrap, topic_prefix)
    with caplog.at_level("INFO", logger="consumers.runtime"), running(runtime):
        _wait_for(runtime, set(range(1, 6)))
        assert runtime.caught_up.wait(30)
        time.sleep(3.0)  # idle, at the end, longer than stall_timeout: no rejoin
        assert "stalls" not in runtime.stats
        runtime.wedge_now(lambda consumer: consumer.pause(consumer.assignment()))
        _produce(kafka_bootstrap, topic_prefix, [(i, _product(i, 10 + i)) for i in range(6, 11)])
        _wait_for(runtime, set(range(1, 11)))
        assert runtime.caught_up.wait(30)
    assert runtime.stats["stalls"] == 1
    assert "event=consumer_stalled consumer=memory" in caplog.text
    assert "action=rejoin" in caplog.text


def test_a_consumer_left_without_partitions_while_its_group_is_behind_rejoins(
    kafka_bootstrap: str, topic_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The consumer owns nothing (here: unassigned behind its back; on noida-db, a dead
    member that keeps the partitions) while its group's committed offsets stay behind
    the end: it joins again and gets the partitions."""
    _produce(kafka_bootstrap, topic_prefix, [(i, _product(i, 10 + i)) for i in range(1, 4)])
    runtime = _stall_runtime(kafka_bootstrap, topic_prefix)
    with caplog.at_level("INFO", logger="consumers.runtime"), running(runtime):
        _wait_for(runtime, {1, 2, 3})
        assert runtime.caught_up.wait(30)
        runtime.wedge_now(lambda consumer: consumer.unassign())
        _produce(kafka_bootstrap, topic_prefix, [(i, _product(i, 10 + i)) for i in range(4, 8)])
        _wait_for(runtime, set(range(1, 8)))
    assert runtime.stats["stalls"] == 1
    assert "behind=unassigned:" in caplog.text


class CountingSink(MemorySink):
    """MemorySink that also keeps every record it was given, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.opened = 1  # no failed open
        self.seen: list[tuple[int, int]] = []

    def add(self, records: Sequence[Record]) -> None:
        super().add(records)
        self.seen.extend((r.id, r.version) for r in records)


def test_records_arriving_while_fetching_is_held_are_all_delivered_once(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    # Every poll here takes fewer records than a batch (the live edge), so the runtime
    # pauses fetching while the batch is flushed and for fetch_wait after the poll
    # (FetchHold); what arrives meanwhile must come with the next fetch, none skipped,
    # none twice.
    _produce(kafka_bootstrap, topic_prefix, [(1, _product(1, 1))])
    sink = CountingSink()
    runtime = ConsumerRuntime(
        sink,
        bootstrap=kafka_bootstrap,
        topic_prefix=topic_prefix,
        settings=RuntimeSettings(batch_size=1000, poll_timeout=0.05, fetch_wait=0.3),
    )
    with running(runtime):
        assert runtime.caught_up.wait(60), runtime.stats
        for burst in range(8):
            _produce(
                kafka_bootstrap,
                topic_prefix,
                [(pid, _product(pid, 10 * burst + pid)) for pid in range(1, 6)],
            )
            time.sleep(0.1)
        deadline = time.monotonic() + 60
        while len(sink.seen) < 41 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # anything delivered twice would come now
    assert sorted(sink.seen) == sorted(
        [(1, 1)] + [(pid, 10 * b + pid) for b in range(8) for pid in range(1, 6)]
    )
    assert {pid: r.version for pid, r in sink.store.items()} == {
        pid: 70 + pid for pid in range(1, 6)
    }
    assert runtime.stats["batches"] >= 2, runtime.stats  # held between polls, not one batch


class OutageSink(MemorySink):
    """A target that is down (every flush a 503) until ``down`` is cleared."""

    def __init__(self) -> None:
        super().__init__()
        self.opened = 1  # up at open
        self.down = threading.Event()
        self.down.set()

    def flush(self) -> list[Rejected]:
        if self.down.is_set():
            self.flushes += 1
            raise TransientSinkError("503 from the target")
        return super().flush()


def _committed(bootstrap: str, group: str, topic: str, partitions: int) -> list[int]:
    consumer = Consumer(consumer_config(bootstrap, group))
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        return [tp.offset for tp in consumer.committed(tps, timeout=10)]
    finally:
        consumer.close()


def test_an_outage_longer_than_max_poll_interval_keeps_the_member_in_its_group(
    kafka_bootstrap: str, topic_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Fault: the target is down for 10 s, with ``max.poll.interval.ms`` at 6 s.  A
    consumer that waited out the outage in a sleep would be evicted by librdkafka
    (``MAX_POLL_EXCEEDED``) and its commit after the outage refused; the runtime polls
    with its partitions paused instead, so it stays in the group, nothing is lost and
    the batch is committed at once when the target comes back."""
    _produce(kafka_bootstrap, topic_prefix, [(i, _product(i, i)) for i in range(1, 5)])
    sink = OutageSink()
    runtime = ConsumerRuntime(
        sink,
        bootstrap=kafka_bootstrap,
        topic_prefix=topic_prefix,
        settings=RuntimeSettings(
            poll_timeout=0.2,
            backoff_initial=0.5,
            backoff_max=1.0,
            consumer_overrides={"max.poll.interval.ms": 6000, "session.timeout.ms": 6000},
        ),
    )
    with caplog.at_level("WARNING"), running(runtime):
        deadline = time.monotonic() + 30
        while sink.flushes < 1:
            assert time.monotonic() < deadline, "the runtime never tried to flush"
            time.sleep(0.05)
        time.sleep(10.0)  # longer than max.poll.interval.ms
        assert sink.store == {}
        retries_during_outage = runtime.stats["retries"]
        sink.down.clear()
        deadline = time.monotonic() + 30
        while len(sink.store) < 4:
            assert time.monotonic() < deadline, f"not written after the outage: {runtime.stats}"
            time.sleep(0.05)
        topic = doc_topic(topic_prefix, "product")
        while sum(_committed(kafka_bootstrap, runtime.group, topic, 2)) < 4:
            assert time.monotonic() < deadline, "the batch was not committed after the outage"
            time.sleep(0.2)
    assert retries_during_outage >= 5
    assert sorted(sink.store) == [1, 2, 3, 4]
    assert "commit_failures" not in runtime.stats, runtime.stats
    assert "stalls" not in runtime.stats, runtime.stats
    evicted = [r.getMessage() for r in caplog.records if "MAX_POLL" in r.getMessage().upper()]
    assert not evicted, evicted
