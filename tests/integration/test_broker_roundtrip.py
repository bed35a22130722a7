"""Produce/consume round trip with a consumer-group commit and resume, on both brokers."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

pytestmark = [pytest.mark.integration, pytest.mark.broker_matrix]

PARTITIONS = 3
MESSAGES = 300


def _create_topic(bootstrap: str, topic: str, partitions: int, config: dict[str, str]) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(topic, num_partitions=partitions, replication_factor=1, config=config)]
    )
    futures[topic].result(timeout=15)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        meta = admin.list_topics(topic, timeout=5)
        if topic in meta.topics and len(meta.topics[topic].partitions) == partitions:
            return
        time.sleep(0.1)
    raise AssertionError(f"topic {topic} did not appear with {partitions} partitions")


def _consumer(bootstrap: str, group: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 10000,
        }
    )


def _poll_n(
    consumer: Consumer, n: int, timeout: float = 30.0
) -> list[tuple[int, int, bytes, bytes | None]]:
    got: list[tuple[int, int, bytes, bytes | None]] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if msg.error():
            raise KafkaException(msg.error())
        got.append((msg.partition(), msg.offset(), msg.key(), msg.value()))
    return got


def test_produce_consume_commit_resume(broker_bootstrap: str, topic_prefix: str) -> None:
    topic = f"{topic_prefix}.roundtrip"
    _create_topic(broker_bootstrap, topic, PARTITIONS, {"cleanup.policy": "compact"})

    producer = Producer(
        {"bootstrap.servers": broker_bootstrap, "enable.idempotence": True, "acks": "all"}
    )
    delivered: list[tuple[int, int]] = []
    errors: list[str] = []

    def on_delivery(err: object, msg: object) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            delivered.append((msg.partition(), msg.offset()))  # type: ignore[attr-defined]

    sent = {}
    for i in range(MESSAGES):
        key = f"product-{i % 50}".encode()
        value = None if i % 97 == 96 else f"v{i}".encode()  # a few tombstones
        sent[i] = (key, value)
        producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
    assert producer.flush(30) == 0
    assert errors == []
    assert len(delivered) == MESSAGES

    group = f"g-{uuid.uuid4().hex[:8]}"
    first = _consumer(broker_bootstrap, group)
    first.subscribe([topic])
    half = _poll_n(first, MESSAGES // 2)
    assert len(half) == MESSAGES // 2
    # Commit exactly what was processed: next offset per partition.
    positions: dict[int, int] = {}
    for partition, offset, _, _ in half:
        positions[partition] = max(positions.get(partition, -1), offset + 1)
    first.commit(
        offsets=[TopicPartition(topic, p, o) for p, o in positions.items()], asynchronous=False
    )
    committed = first.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
    for tp in committed:
        assert tp.offset == positions.get(tp.partition, tp.offset)
    first.close()

    second = _consumer(broker_bootstrap, group)
    second.subscribe([topic])
    rest = _poll_n(second, MESSAGES - len(half))
    second.close()

    seen = {(p, o) for p, o, _, _ in half} | {(p, o) for p, o, _, _ in rest}
    assert len(half) + len(rest) == MESSAGES, "resume re-read or lost messages"
    assert seen == set(delivered), "consumed offsets differ from delivered offsets"
    # Per-key order within the partition is kept and tombstones come through as None.
    by_key: dict[bytes, list[tuple[int, bytes | None]]] = {}
    for _, offset, key, value in sorted(half + rest, key=lambda r: (r[0], r[1])):
        by_key.setdefault(key, []).append((offset, value))
    expected: dict[bytes, list[bytes | None]] = {}
    for i in range(MESSAGES):
        expected.setdefault(sent[i][0], []).append(sent[i][1])
    assert {k: [v for _, v in vs] for k, vs in by_key.items()} == expected


def test_a_fetch_hold_stops_fetching_and_release_resumes_at_the_position(
    broker_bootstrap: str, topic_prefix: str
) -> None:
    """pipeline.kafka.FetchHold: while held, a consumer at the live edge fetches nothing
    (what is produced meanwhile waits on the broker); released, it gets exactly those
    messages, none lost or twice, and not before ``not_before`` seconds."""
    from pipeline.kafka import FetchHold

    topic = f"{topic_prefix}.hold"
    _create_topic(broker_bootstrap, topic, PARTITIONS, {})
    producer = Producer({"bootstrap.servers": broker_bootstrap})

    def produce(start: int, n: int) -> None:
        for i in range(start, start + n):
            producer.produce(topic, str(i).encode(), key=str(i).encode())
        assert producer.flush(15) == 0

    consumer = _consumer(broker_bootstrap, f"{topic_prefix}-hold")
    consumer.subscribe([topic])
    try:
        produce(0, 30)
        seen: list[int] = []
        deadline = time.monotonic() + 30
        while len(seen) < 30 and time.monotonic() < deadline:
            seen += [int(m.value()) for m in consumer.consume(100, 0.5) if m.error() is None]
        assert sorted(seen) == list(range(30))
        hold = FetchHold([consumer])
        produce(30, 30)
        held = [m for m in consumer.consume(100, 1.5) if m.error() is None]
        assert held == [], f"fetched {len(held)} messages while held"
        started = time.monotonic()
        hold.release(0.4 + (time.monotonic() - hold.since), time.sleep)
        assert time.monotonic() - started >= 0.35, "released before not_before"
        after: list[int] = []
        deadline = time.monotonic() + 30
        while len(after) < 30 and time.monotonic() < deadline:
            after += [int(m.value()) for m in consumer.consume(100, 0.5) if m.error() is None]
        assert sorted(after) == list(range(30, 60)), after
        assert [int(m.value()) for m in consumer.consume(100, 0.5)] == []
    finally:
        consumer.close()
