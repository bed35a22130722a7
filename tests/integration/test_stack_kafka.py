"""The stack's Apache Kafka 4.4 (pipeline/stack/kafka.py), checked with confluent-kafka.

Each module-scoped fixture starts its own cluster in a temporary directory (one node;
three nodes for the leader-failure test), so nothing here needs ``stack up``.  Skipped
when Java is missing, or when the jars are not cached yet and Maven is missing.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from pipeline.errors import StackError
from pipeline.kafka import TopicSpec, ensure_topics
from pipeline.stack import kafka as stack_kafka
from pipeline.stack.kafka import KafkaCluster
from pipeline.stack.maven import cached_classpath
from pipeline.stack.state import StackState


def _why_skip() -> str | None:
    if shutil.which("java") is None:
        return "no `java` on PATH: Apache Kafka needs Java 17 (apt-get install openjdk-17-jdk)"
    if cached_classpath(stack_kafka.POM, "kafka") is None and shutil.which("mvn") is None:
        return "Kafka's jars are not cached and there is no `mvn` to fetch them"
    return None


pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(_why_skip() is not None, reason=_why_skip() or ""),
]


@dataclass
class Running:
    cluster: KafkaCluster
    state: StackState
    bootstrap: str


def _start(tmp: Path, nodes: int) -> Iterator[Running]:
    cluster = KafkaCluster(tmp, nodes)
    state = StackState()
    try:
        bootstrap = cluster.up(state, timeout=120)
        yield Running(cluster, state, bootstrap)
    finally:
        cluster.down(state)


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    yield from _start(tmp_path_factory.mktemp("kafka1"), 1)


@pytest.fixture(scope="module")
def trio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    yield from _start(tmp_path_factory.mktemp("kafka3"), 3)


def _topic(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _create(bootstrap: str, topic: str, partitions: int, **config: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    new = NewTopic(topic, num_partitions=partitions, replication_factor=-1, config=config)
    admin.create_topics([new])[topic].result(30)


def _produce(
    bootstrap: str, topic: str, items: list[tuple[bytes, bytes | None]], **extra: object
) -> list[tuple[int, int]]:
    """Produce with acks=all (idempotent); the (partition, offset) of each delivery."""
    delivered: list[tuple[int, int]] = []
    errors: list[KafkaError] = []

    def report(err: KafkaError | None, msg: object) -> None:
        if err is not None:
            errors.append(err)
        else:
            delivered.append((msg.partition(), msg.offset()))  # type: ignore[attr-defined]

    producer = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all", **extra}
    )
    for key, value in items:
        producer.produce(topic, key=key, value=value, on_delivery=report)
        producer.poll(0)
    assert producer.flush(60) == 0
    assert not errors, errors[:3]
    return delivered


def _consume_all(
    bootstrap: str, topic: str, expected: int, group: str | None = None, **extra: object
) -> list[tuple[bytes | None, bytes | None]]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group or _topic("g"),
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            **extra,
        }
    )
    consumer.subscribe([topic])
    out: list[tuple[bytes | None, bytes | None]] = []
    deadline = time.monotonic() + 60
    try:
        while len(out) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 1.0):
                assert msg.error() is None, msg.error()
                out.append((msg.key(), msg.value()))
        if group and out:
            consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    return out


def _read_assigned(
    bootstrap: str, topic: str, partitions: int, expected: int
) -> list[tuple[bytes | None, bytes | None]]:
    """Read every partition from offset 0 by assignment (no group coordinator)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": _topic("g")})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out: list[tuple[bytes | None, bytes | None]] = []
    deadline = time.monotonic() + 60
    try:
        while len(out) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 1.0):
                assert msg.error() is None, msg.error()
                out.append((msg.key(), msg.value()))
    finally:
        consumer.close()
    return out


def test_topics_compacted_config_and_the_pipeline_s_ensure_topics(single: Running) -> None:
    compacted, plain = _topic("compact"), _topic("plain")
    counts = ensure_topics(
        single.bootstrap,
        [TopicSpec(compacted, 3, {"cleanup.policy": "compact"}), TopicSpec(plain, 4)],
    )
    assert counts == {compacted: 3, plain: 4}
    admin = AdminClient({"bootstrap.servers": single.bootstrap})
    resource = ConfigResource("topic", compacted)
    configs = admin.describe_configs([resource])[resource].result(30)
    assert configs["cleanup.policy"].value == "compact"
    assert configs["min.insync.replicas"].value == "1"
    meta = admin.list_topics(plain, timeout=10).topics[plain]
    assert all(len(p.replicas) == 1 for p in meta.partitions.values())


def test_idempotent_producer_and_transactions(single: Running) -> None:
    topic = _topic("tx")
    _create(single.bootstrap, topic, 2)
    plain = _produce(single.bootstrap, topic, [(b"k%d" % i, b"v%d" % i) for i in range(500)])
    assert len(plain) == 500 and len(set(plain)) == 500

    producer = Producer({"bootstrap.servers": single.bootstrap, "transactional.id": _topic("tid")})
    producer.init_transactions(30)
    producer.begin_transaction()
    for i in range(10):
        producer.produce(topic, key=b"committed", value=b"c%d" % i)
    producer.commit_transaction(30)
    producer.begin_transaction()
    for i in range(10):
        producer.produce(topic, key=b"aborted", value=b"a%d" % i)
    producer.abort_transaction(30)
    producer.begin_transaction()
    producer.produce(topic, key=b"committed", value=b"last")
    producer.commit_transaction(30)

    seen = _consume_all(single.bootstrap, topic, 511, **{"isolation.level": "read_committed"})
    keys = [k for k, _ in seen]
    assert len(seen) == 511
    assert keys.count(b"committed") == 11 and b"aborted" not in keys


def test_group_commits_tombstones_and_offsets_for_times(single: Running) -> None:
    topic, group = _topic("grp"), _topic("g")
    _create(single.bootstrap, topic, 1)
    t0 = int(time.time() * 1000) - 60_000
    producer = Producer({"bootstrap.servers": single.bootstrap, "acks": "all"})
    for i in range(100):
        value = None if i % 10 == 9 else b"v%d" % i
        producer.produce(topic, key=b"k%d" % (i % 10), value=value, timestamp=t0 + i * 100)
    assert producer.flush(30) == 0

    first = _consume_all(single.bootstrap, topic, 100, group=group)
    assert len(first) == 100
    assert sum(1 for _, v in first if v is None) == 10, "tombstones arrive as null values"

    consumer = Consumer({"bootstrap.servers": single.bootstrap, "group.id": group})
    try:
        committed = consumer.committed([TopicPartition(topic, 0)], timeout=10)
        assert committed[0].offset == 100
        wanted = [TopicPartition(topic, 0, t0 + 50 * 100)]
        assert consumer.offsets_for_times(wanted, timeout=10)[0].offset == 50
        consumer.assign([TopicPartition(topic, 0, 95)])
        msgs = []
        deadline = time.monotonic() + 10
        while len(msgs) < 5 and time.monotonic() < deadline:
            msgs += consumer.consume(10, 0.5)
        assert [m.offset() for m in msgs] == [95, 96, 97, 98, 99]
        assert msgs[-1].value() is None
    finally:
        consumer.close()
    producer.produce(topic, key=b"k-new", value=b"new")
    assert producer.flush(30) == 0
    more = _consume_all(single.bootstrap, topic, 1, group=group)
    assert more == [(b"k-new", b"new")], "the group resumes at its committed offset"


def test_acknowledged_messages_survive_kill_9_and_restart(single: Running) -> None:
    topic, group = _topic("durable"), _topic("g")
    _create(single.bootstrap, topic, 3)
    items = [(b"k%d" % i, b"v%d" % i) for i in range(5000)]
    delivered = _produce(single.bootstrap, topic, items, **{"linger.ms": 5})
    assert len(delivered) == 5000
    assert len(_consume_all(single.bootstrap, topic, 1000, group=group)) >= 1000

    single.cluster.kill(single.state, 1)  # kill -9, no flush
    started = time.monotonic()
    single.cluster.start_nodes(single.state, [single.cluster.node(1)])
    single.cluster.wait_ready(single.state, 120)
    assert time.monotonic() - started < 60

    after = _read_assigned(single.bootstrap, topic, 3, 5000)
    assert sorted(after) == sorted(items), "every acknowledged message is back"
    consumer = Consumer({"bootstrap.servers": single.bootstrap, "group.id": group})
    try:
        committed = consumer.committed([TopicPartition(topic, p) for p in range(3)], timeout=30)
        assert sum(max(tp.offset, 0) for tp in committed) >= 1000, "commits survive too"
    finally:
        consumer.close()


def test_a_jvm_that_exits_during_start_up_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = KafkaCluster(tmp_path, 1)
    meta = cluster.node(1).log_dirs / "meta.properties"
    meta.parent.mkdir(parents=True)
    meta.write_text("version=1\ncluster.id=not-this-cluster\nnode.id=7\n")  # wrong node id
    state = StackState()
    try:
        with pytest.raises(StackError) as err:
            cluster.up(state, timeout=60)
    finally:
        cluster.down(state)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("kafka exited during start-up (")
    assert "kafka.Kafka" in message and message.endswith(f"log {tmp_path / 'kafka.log'}")

    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(StackError, match=r"^kafka: Java \(`java`\) is not installed"):
        KafkaCluster(tmp_path / "nojava", 1).up(StackState())


def test_three_nodes_a_killed_leader_loses_nothing_acknowledged(trio: Running) -> None:
    topic = _topic("rf3")
    _create(trio.bootstrap, topic, 3)
    admin = AdminClient({"bootstrap.servers": trio.bootstrap})
    resource = ConfigResource("topic", topic)
    assert (
        admin.describe_configs([resource])[resource].result(30)["min.insync.replicas"].value == "2"
    )
    partitions = admin.list_topics(topic, timeout=10).topics[topic].partitions
    assert all(len(p.replicas) == 3 and len(p.isrs) == 3 for p in partitions.values())
    leader = partitions[0].leader

    before = [(b"b%d" % i, b"x") for i in range(2000)]
    _produce(trio.bootstrap, topic, before)
    trio.cluster.kill(trio.state, leader)  # kill -9 of partition 0's leader, no restart
    killed_at = time.monotonic()
    survivors = ",".join(
        f"127.0.0.1:{trio.state.services[n.name].ports['kafka']}"
        for n in trio.cluster.members
        if n.node_id != leader
    )
    after = [(b"a%d" % i, b"y") for i in range(2000)]
    _produce(survivors, topic, after)  # acks=all with 2 of 3 in sync: keeps working
    failover = time.monotonic() - killed_at

    admin = AdminClient({"bootstrap.servers": survivors})
    new_leader = admin.list_topics(topic, timeout=10).topics[topic].partitions[0].leader
    assert new_leader not in (leader, -1)
    seen = _read_assigned(survivors, topic, 3, 4000)
    assert sorted(seen) == sorted(before + after), f"lost or duplicated (failover {failover:.1f}s)"
