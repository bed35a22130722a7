"""``wait-reader`` and ``wait-groups`` of ``make demo`` (:mod:`pipeline.dashboard.demo`).

``wait-reader``: until the reader has confirmed the server's current WAL position;
prints the UTC time.  ``wait-groups``: then until the assembler's consumer group has
committed the ends of the raw topics and each consumer's group the ends of the document
topics (committed offsets: each stage commits only what its output or sink confirmed),
and the webhooks outbox is empty.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from pipeline.errors import CatalogCdcError
from pipeline.supervisor.config import load_config

if TYPE_CHECKING:
    from pipeline.settings import ConnectionSettings


def wait_reader(config_path: Path, timeout: float) -> int:
    """Until the reader has confirmed the server's current WAL position (read and had
    Kafka acknowledge everything committed so far); print the UTC time it did."""
    import time
    from datetime import UTC, datetime

    import psycopg

    from pipeline.dashboard.model import parse_metrics, total
    from pipeline.settings import load_connections

    config = load_config(config_path)
    port = config.reader.metrics_port
    if port is None:
        raise CatalogCdcError(f"{config_path}: [reader] has no metrics_port")
    with psycopg.connect(load_connections().require("postgres_dsn"), autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()
    target = int(row[0]) if row is not None else 0
    deadline = time.monotonic() + timeout
    confirmed = None
    while time.monotonic() < deadline:
        try:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=3).text
            confirmed = total(parse_metrics(text)[0], "catalog_cdc_reader_confirmed_lsn")
        except (httpx.HTTPError, ValueError):
            confirmed = None
        if confirmed is not None and confirmed >= target:
            print(datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z")
            return 0
        time.sleep(0.3)
    print(
        f"demo: the reader did not reach WAL position {target} within {timeout:g}s "
        f"(confirmed: {confirmed})",
        file=sys.stderr,
    )
    return 1


# -- wait-groups ----------------------------------------------------------------------


def consumer_topics(
    name: str,
    prefix: str,
    options: Mapping[str, str] | None = None,
    connections: ConnectionSettings | None = None,
) -> list[str]:
    """The topics consumer ``name`` reads, as the runtime subscribes them: the document
    topics of its sink's ``kinds``, and the raw topics of its ``raw_tables`` when the
    sink is a :class:`~consumers.capabilities.RawInput`.

    The sink is built through the registry (never opened) with ``options`` and
    ``connections`` (default: the environment, else the local stack, as the consumers
    see them), topic prefix ``prefix``.  A sink that cannot be built without the
    options its run gives it (``options`` not passed: the caller has none) is answered
    from what its class declares -- the ``Sink.from_context`` factory's class."""
    from consumers.capabilities import RawInput
    from consumers.registry import SinkContext, load
    from pipeline.settings import load_connections
    from pipeline.topics import doc_topic, raw_topic

    factory = load(name)
    conns = (connections or load_connections()).model_copy(update={"topic_prefix": prefix})
    try:
        sink = factory(SinkContext(conns, dict(options or {})))
    except CatalogCdcError:
        if options is not None:
            raise
        declared = getattr(factory, "__self__", None)  # the class of `Sink.from_context`
        if declared is None:
            raise
        kinds: Sequence[str] = declared.kinds
        raw: Sequence[str] = declared.raw_tables if isinstance(declared, RawInput) else ()
    else:
        try:
            kinds = tuple(sink.kinds)
            raw = tuple(sink.raw_tables) if isinstance(sink, RawInput) else ()
        finally:
            sink.close()
    return [doc_topic(prefix, k) for k in kinds] + [raw_topic(prefix, t) for t in raw]


def _group_of(args: Sequence[str], default: str) -> str:
    for i, arg in enumerate(args):
        if arg == "--group" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--group="):
            return arg.partition("=")[2]
    return default


def group_lag(
    admin: Any, probe: Any, group: str, partitions: Sequence[Any], only_committed: bool = False
) -> int:
    """Messages between ``group``'s committed offsets and the ends of ``partitions`` (a
    partition the group never committed counts from its low watermark).

    ``only_committed``: only the topics the group committed to count — the assembler
    reads the global tables (brands, categories, stores, CMS pages) without committing
    (their positions are in its state file), so they cannot be checked this way."""
    from confluent_kafka import ConsumerGroupTopicPartitions

    request = [ConsumerGroupTopicPartitions(group, list(partitions))]
    (future,) = admin.list_consumer_group_offsets(request, request_timeout=15).values()
    committed = future.result().topic_partitions
    used = {tp.topic for tp in committed if tp.offset >= 0}
    lag = 0
    for tp in committed:
        if only_committed and tp.topic not in used:
            continue
        low, high = probe.get_watermark_offsets(tp, timeout=15)
        lag += max(0, high - max(low, tp.offset if tp.offset >= 0 else low))
    return lag


def assembler_catching_up(port: int, host: str = "127.0.0.1") -> bool:
    """The assembler's ``catalog_cdc_assembler_catching_up`` gauge is not 0, or its
    metrics do not answer (it is starting or restarting): not done yet."""
    import urllib.request

    from pipeline.dashboard.model import parse_metrics, total

    try:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as resp:
            samples, _ = parse_metrics(resp.read().decode("utf-8", "replace"))
    except (OSError, ValueError):
        return True
    return total(samples, "catalog_cdc_assembler_catching_up") != 0


def wait_groups(config_path: Path, timeout: float) -> int:
    """Until the assembler's group has committed the ends of the raw topics, then every
    consumer's group the ends of the document topics as they were then: every change
    the reader had produced is in every sink (each commits only after its sink
    confirmed). Call it after ``wait-reader``."""
    import time

    from confluent_kafka import Consumer, TopicPartition
    from confluent_kafka.admin import AdminClient

    from pipeline.settings import load_connections
    from pipeline.topics import is_raw_topic

    config = load_config(config_path)
    conns = load_connections()
    prefix = conns.topic_prefix
    admin = AdminClient({"bootstrap.servers": conns.require("kafka_bootstrap")})
    deadline = time.monotonic() + timeout
    stages: list[tuple[str, str, list[str] | None]] = [
        ("assembler", _group_of(config.assembler.args, f"{prefix}-assembler"), None)
    ]
    stages += [
        (name, _group_of(c.args, f"{prefix}-{name}"), consumer_topics(name, prefix))
        for name, c in config.consumers.items()
        if c.enabled
    ]
    probe = Consumer(
        {"bootstrap.servers": conns.require("kafka_bootstrap"), "group.id": "catalog-cdc-probe"}
    )
    try:
        topics = probe.list_topics(timeout=15).topics
        for name, group, wanted in stages:
            # The assembler's input is the raw topics; each consumer must reach the ends
            # its topics have once the assembler is done.
            partitions = [
                TopicPartition(t, p)
                for t, meta in sorted(topics.items())
                if (is_raw_topic(prefix, t) if wanted is None else t in wanted)
                for p in meta.partitions
            ]
            only = wanted is None
            if name == "assembler" and config.assembler.metrics_port is not None:
                # A fresh assembler commits its inputs while it catches up and emits the
                # documents only at the end: until then the consumers look caught up.
                while assembler_catching_up(config.assembler.metrics_port):
                    if time.monotonic() > deadline:
                        print(f"demo: the assembler is still catching up after {timeout:g}s",
                              file=sys.stderr)  # fmt: skip
                        return 1
                    time.sleep(0.5)
            while (lag := group_lag(admin, probe, group, partitions, only)) > 0:
                if time.monotonic() > deadline:
                    print(
                        f"demo: {name} (group {group}) is still {lag} messages behind after "
                        f"{timeout:g}s",
                        file=sys.stderr,
                    )
                    return 1
                time.sleep(0.5)
    finally:
        probe.close()
    # The webhooks consumer commits once an event is in its durable outbox; delivering
    # it comes after: wait for its outbox to empty as well.
    webhooks = config.consumers.get("webhooks")
    state = None if webhooks is None or not webhooks.enabled else webhooks.options.get("state")
    if isinstance(state, str):
        while (pending := outbox_pending(Path(state))) > 0:
            if time.monotonic() > deadline:
                print(
                    f"demo: webhooks still has {pending} events to deliver after {timeout:g}s",
                    file=sys.stderr,
                )
                return 1
            time.sleep(0.5)
    return 0


def outbox_pending(path: Path) -> int:
    """Events in the webhooks outbox ``path`` still to deliver (0 when there is none)."""
    import sqlite3

    if not path.exists():
        return 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        row = db.execute("SELECT count(*) FROM outbox").fetchone()
    except sqlite3.OperationalError:
        return 0  # not created yet
    finally:
        db.close()
    return int(row[0]) if row else 0
