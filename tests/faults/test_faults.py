"""Fault injection under load: the whole pipeline as real processes, on private services.

Reader, assembler and three consumers (search, edge-kv on SQLite, webhooks to an
in-process receiver) run as ``catalog-cdc`` subprocesses, watched like the supervisor
does (a service that exits is started again).  ``run_edits`` keeps editing the catalog
while faults are injected.  After recovery every sink must equal the database: search
and edge-kv through ``pipeline.verify``, the webhooks receiver's last event per product
against ``expected_documents`` — zero missing, zero wrong; duplicates are harmless.

PostgreSQL, the broker and Elasticsearch are private to this module (started here, in
temporary directories, on free ports): these scenarios stop and freeze them, which must
not disturb tests running on the shared stack.  See docs/faults.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition

from pipeline.demo.catalog import load_schema
from pipeline.demo.seed import seed_catalog
from pipeline.kafka import TopicSpec, consumer_config, ensure_topics, producer_config
from tests.contracts.webhooks import Server
from tests.faults.support import (
    NoidaProcess,
    Pipeline,
    PrivatePostgres,
    Targets,
    edits_in_background,
    pipeline_for,
    service_env,
    slot_confirmed,
    targeted_edits,
    wait_converged,
    wait_until,
    wal_position,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]

PRODUCTS = 60


@dataclass
class PrivateStack:
    postgres: PrivatePostgres
    broker: NoidaProcess
    elasticsearch: NoidaProcess


@pytest.fixture(scope="module")
def private_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateStack]:
    root = tmp_path_factory.mktemp("faults-stack")
    stack = PrivateStack(
        PrivatePostgres(root / "postgres"),
        NoidaProcess("kafka", root / "kafka"),
        NoidaProcess("elasticsearch", root / "elasticsearch"),
    )
    try:
        stack.postgres.start()
        stack.broker.start()
        stack.elasticsearch.start()
        yield stack
    finally:
        stack.broker.stop()
        stack.elasticsearch.stop()
        stack.postgres.close()


@dataclass
class Scenario:
    targets: Targets
    pipeline: Pipeline
    stack: PrivateStack
    workdir: Path

    def streaming(self, timeout: float = 90) -> None:
        reader = self.pipeline.services["reader"]
        wait_until(lambda: "replication_started" in reader.log_text(), timeout, "the reader")

    def drained(self, timeout: float = 120) -> float:
        """Until the reader confirmed the database's current WAL position."""
        target = wal_position(self.targets.dsn)
        slot = f"s_{self.targets.prefix}"
        return wait_until(
            lambda: slot_confirmed(self.targets.dsn, slot, target), timeout, "the reader's slot"
        )


@pytest.fixture
def scenario(private_stack: PrivateStack, tmp_path: Path) -> Iterator[Scenario]:
    name = f"f_{uuid.uuid4().hex[:10]}"
    dsn = private_stack.postgres.create_database(name)
    with psycopg.connect(dsn) as conn:
        load_schema(conn)
    seed_catalog(dsn, products=PRODUCTS, seed=7)
    prefix = name.replace("_", "")
    empty_stack = tmp_path / "no-stack"
    empty_stack.mkdir()
    with Server() as receiver:
        assert isinstance(receiver, Server)
        kv = tmp_path / "kv.sqlite"
        targets = Targets(
            dsn=dsn,
            bootstrap=private_stack.broker.address,
            es_url=private_stack.elasticsearch.address,
            prefix=prefix,
            index_prefix=prefix,
            kv_options={"backend": "sqlite", "path": str(kv), "page_size": "5"},
            webhooks=receiver,
        )
        env = service_env(
            os.environ,
            dsn=dsn,
            bootstrap=targets.bootstrap,
            es_url=targets.es_url,
            prefix=prefix,
            stack_dir=empty_stack,
        )
        pipeline = pipeline_for(targets, tmp_path, env)
        pipeline.start()
        try:
            yield Scenario(targets, pipeline, private_stack, tmp_path)
        finally:
            statuses = pipeline.stop()
            print(json.dumps({"services": pipeline.summary(), "stopped": statuses}))
            # Shown by pytest only when the test failed: what each service said last.
            for service in pipeline.services.values():
                tail = service.log_text().splitlines()[-25:]
                print(f"----- {service.name}: last {len(tail)} log lines -----", *tail, sep="\n")


def _check_receiver(receiver: Server) -> dict[str, int]:
    state = receiver.state()
    ids = [e["id"] for e in state["events"]]
    # Every accepted delivery once; repeats (a 2xx lost in a crash) are deduplicated by id.
    assert len(ids) == len(set(ids))
    assert set(state["duplicates"]) <= set(ids)
    assert not [r for r in state["refused"] if r["status"] == 401], state["refused"][:3]
    return {"events": len(ids), "duplicates": len(state["duplicates"]),
            "out_of_order": len(state["out_of_order"])}  # fmt: skip


class _Killer:
    """kill -9 of a seeded random choice of ``names`` every 2-6 s, in a thread."""

    def __init__(self, scenario: Scenario, names: list[str], seed: int) -> None:
        self.scenario, self.names, self.rng = scenario, names, random.Random(seed)
        self.done: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="killer", daemon=True)
        self._started = time.monotonic()

    def _run(self) -> None:
        # Each name once first (shuffled), then random ones.
        plan = self.rng.sample(self.names, len(self.names))
        while not self._stop.wait(self.rng.uniform(2.0, 6.0)):
            name = plan.pop(0) if plan else self.rng.choice(self.names)
            self.scenario.pipeline.kill9(name)
            self.done.append((round(time.monotonic() - self._started, 1), name))

    def __enter__(self) -> _Killer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


@pytest.mark.timeout(420)
def test_kill9_reader_and_assembler_with_broker_elasticsearch_and_postgres_faults(
    scenario: Scenario,
) -> None:
    """Under 20 edits/s for 70 s, with kill -9 of the reader or the assembler (seeded
    random choice) every 2-6 s throughout: Elasticsearch stopped for 8 s; PostgreSQL
    restarted twice (fast shutdown: every connection cut, the reader's walsender too);
    the broker frozen (SIGSTOP) for 20 s, then SIGCONT; the broker restarted (the
    services held still across the restart itself: noida-db's lost batch).
    Then a brand rename, a category move, a url-key change and a hard delete.  Every
    sink must end equal to the database."""
    stack = scenario.stack
    timeline: list[tuple[float, str]] = []
    scenario.streaming()
    started = time.monotonic()

    def mark(what: str) -> None:
        timeline.append((round(time.monotonic() - started, 1), what))

    with (
        edits_in_background(scenario.targets.dsn, rate=20, duration=70, seed=4) as stats,
        _Killer(scenario, ["reader", "assembler"], seed=20260911) as killer,
    ):
        time.sleep(5)
        mark("elasticsearch stop")
        stack.elasticsearch.stop()
        time.sleep(8)
        stack.elasticsearch.start()
        mark("elasticsearch back")
        time.sleep(5)
        mark("postgres restart")
        stack.postgres.restart()
        mark("postgres back")
        time.sleep(8)
        mark("postgres restart")
        stack.postgres.restart()
        mark("postgres back")
        time.sleep(4)
        mark("broker SIGSTOP")
        stack.broker.freeze()
        time.sleep(20)
        stack.broker.thaw()
        mark("broker SIGCONT")
        time.sleep(4)
        # Last: a broker restart also clears a group member left over by a consumer that
        # crashed during the freeze (bugs 1 and 2 in docs/faults.md).  The services are
        # held still (SIGSTOP) across it: noida-db acknowledges the last batch it
        # receives before a shutdown and then loses it (bug 4 in docs/faults.md, and
        # test_broker_keeps_acknowledged_messages_across_a_restart), which no client of
        # a broker can make up for.  The edits go on meanwhile.
        mark("broker restart")
        with scenario.pipeline.paused():
            time.sleep(1.5)
            stack.broker.restart()
        mark("broker back")
    targeted_edits(scenario.targets.dsn, "infra")
    drained = scenario.drained()
    converged = wait_converged(scenario.targets, 150)
    receiver = _check_receiver(scenario.targets.webhooks)
    summary = scenario.pipeline.summary()
    print(json.dumps({"timeline": timeline, "kills": killer.done,
                      "edits": [vars(s) for s in stats], "drained_s": drained,
                      "converged_s": converged, "receiver": receiver, "services": summary,
                      "elapsed_s": time.monotonic() - started}, default=str))  # fmt: skip
    assert summary["reader"]["kills"] >= 1 and summary["assembler"]["kills"] >= 1, killer.done
    assert sum(s.committed for s in stats) > 300, stats
    assert receiver["out_of_order"] == 0, scenario.targets.webhooks.state()["out_of_order"][:3]


@pytest.mark.timeout(300)
def test_kill9_of_each_consumer_under_load(scenario: Scenario) -> None:
    """kill -9 of each consumer (search, edge-kv, webhooks) once, at seeded random
    moments, while 25 edits/s run for 15 s; each is started again 1 s later.  Every sink
    must then equal the database within 60 s."""
    rng = random.Random(20260912)
    consumers = ["search", "edge-kv", "webhooks"]
    scenario.streaming()
    with edits_in_background(scenario.targets.dsn, rate=25, duration=15, seed=3) as stats:
        for name in rng.sample(consumers, len(consumers)):
            time.sleep(rng.uniform(1.0, 4.0))
            scenario.pipeline.kill9(name)
    targeted_edits(scenario.targets.dsn, "k9")
    scenario.drained()
    summary = scenario.pipeline.summary()
    assert all(summary[n]["kills"] == 1 for n in consumers), summary
    assert sum(s.committed for s in stats) > 100, stats
    wait_converged(scenario.targets, 60)
    receiver = _check_receiver(scenario.targets.webhooks)
    assert receiver["out_of_order"] == 0, scenario.targets.webhooks.state()["out_of_order"][:3]


@pytest.mark.xfail(
    strict=True,
    reason=(
        "noida-db loses the batch it acknowledged last before a shutdown (SIGTERM or "
        "SIGINT); measured 2026-12-02: 50 of 22,500 acknowledged messages gone after a "
        "restart under load, none after 1 s idle. When this passes, noida-db is fixed: "
        "drop the pause around the broker restart above (docs/faults.md, bug 4)"
    ),
)
@pytest.mark.timeout(120)
def test_broker_keeps_acknowledged_messages_across_a_restart(
    private_stack: PrivateStack,
) -> None:
    """Every message the broker acknowledged (idempotent producer, acks=all) is still
    there after a restart in the middle of producing."""
    broker = private_stack.broker
    topic = f"durability-{uuid.uuid4().hex[:8]}"
    ensure_topics(broker.address, [TopicSpec(topic, 1)])
    acked: list[int] = []

    def delivered(err: object, msg: object) -> None:
        if err is None:
            acked.append(int(msg.key()))  # type: ignore[attr-defined]

    producer = Producer(producer_config(broker.address))
    stop = threading.Event()
    fatal: list[str] = []

    def produce() -> None:
        i = 0
        try:
            while not stop.is_set():
                with contextlib.suppress(BufferError):
                    producer.produce(topic, key=str(i).encode(), value=b"x" * 200,
                                     on_delivery=delivered)  # fmt: skip
                    i += 1
                producer.poll(0 if i % 50 else 0.005)
            producer.flush(30)
        except KafkaException as exc:
            # librdkafka's idempotent producer tells the loss: a fatal "sequence
            # desynchronization with broker" once the broker forgot what it acknowledged.
            fatal.append(str(exc))

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    time.sleep(2)
    broker.restart()
    time.sleep(2)
    stop.set()
    thread.join(60)
    assert len(acked) > 1000
    consumer = Consumer(consumer_config(broker.address, f"g-{topic}"))
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        seen: set[int] = set()
        while batch := consumer.consume(10_000, 3):
            seen.update(int(m.key() or b"-1") for m in batch if m.error() is None)
    finally:
        consumer.close()
    missing = sorted(set(acked) - seen)
    assert not missing, (
        f"{len(missing)} of {len(acked)} acknowledged messages lost: {missing[:5]}; "
        f"the producer said: {fatal[:1]}"
    )
