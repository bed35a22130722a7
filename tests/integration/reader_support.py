"""Helpers for reader tests: run a reader, read its topics back, compare with tables."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from pipeline.codec import make_codec
from pipeline.events import UNCHANGED_TOAST, ChangeEvent
from pipeline.kafka import consumer_config
from pipeline.reader.service import Reader
from pipeline.reader.settings import ReaderSettings
from pipeline.reader.tail import tail

CLI = str(Path(sys.executable).parent / "catalog-cdc")

# The demo catalog's tables and their primary keys.
TABLE_KEYS = {
    "stores": ("id",),
    "brands": ("id",),
    "categories": ("id",),
    "products": ("id",),
    "product_variants": ("id",),
    "product_categories": ("product_id", "category_id"),
    "product_images": ("id",),
    "technical_data": ("id",),
    "cms_pages": ("id",),
}


@contextmanager
def running_reader(
    dsn: str, bootstrap: str, prefix: str, registry_url: str | None = None, **settings: Any
) -> Iterator[Reader]:
    """A reader in a thread, yielded once it streams; stopped (drained) on exit.

    An error in the reader is re-raised in the test.
    """
    settings.setdefault("heartbeat_interval", 1.0)
    settings.setdefault("slot", f"s_{prefix}")
    settings.setdefault("status_interval", 0.2)
    reader = Reader(
        dsn=dsn,
        bootstrap=bootstrap,
        topic_prefix=prefix,
        settings=ReaderSettings(**settings),
        schema_registry_url=registry_url,
    )
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            reader.run(stop)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            errors.append(exc)

    thread = threading.Thread(target=run, name="reader", daemon=True)
    thread.start()
    deadline = time.monotonic() + 90
    while reader.incremental is None:  # i.e. not streaming yet
        if errors:
            raise errors[0]
        assert thread.is_alive(), "reader thread ended before streaming"
        assert time.monotonic() < deadline, "reader did not start streaming within 90 s"
        time.sleep(0.1)
    try:
        yield reader
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive(), "reader did not stop within 60 s"
    if errors:
        raise errors[0]


def reader_process(
    dsn: str, bootstrap: str, prefix: str, log: Path, **env: str
) -> subprocess.Popen[bytes]:
    """`catalog-cdc reader` as a subprocess (for kill -9 and SIGTERM tests)."""
    full_env = {
        **os.environ,
        "CATALOG_CDC_POSTGRES_DSN": dsn,
        "CATALOG_CDC_KAFKA_BOOTSTRAP": bootstrap,
        "CATALOG_CDC_TOPIC_PREFIX": prefix,
        "CATALOG_CDC_READER_HEARTBEAT_INTERVAL": "1",
        "CATALOG_CDC_READER_STATUS_INTERVAL": "0.2",
        "CATALOG_CDC_READER_SLOT": f"s_{prefix}",
        **env,
    }
    with open(log, "ab") as fh:
        return subprocess.Popen([CLI, "reader"], env=full_env, stdout=fh, stderr=subprocess.STDOUT)


def tail_json(bootstrap: str, prefix: str, topic: str, idle: float = 2.0) -> list[dict[str, Any]]:
    """Every message of ``topic`` as `catalog-cdc tail` prints it."""
    out = io.StringIO()
    tail(
        bootstrap=bootstrap,
        topic=topic,
        topic_prefix=prefix,
        from_beginning=True,
        idle_timeout=idle,
        out=out,
    )
    return [json.loads(line) for line in out.getvalue().splitlines()]


def read_events(
    bootstrap: str, prefix: str, topic: str, registry_url: str | None = None
) -> list[tuple[dict[str, Any] | None, ChangeEvent | None, int, int]]:
    """(key row, event or None for a tombstone, partition, offset) of every message, to the end."""
    codec = make_codec(
        topic_prefix=prefix, kafka_bootstrap=bootstrap, schema_registry_url=registry_url
    )
    consumer = Consumer(consumer_config(bootstrap, "test-reader-support"))
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        out = []
        for p in sorted(meta.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high <= low:
                continue
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING)])
            pos = low
            # Read to the high watermark, then on until the partition stays quiet: Tansu
            # reports the last *batch's* first offset + 1 as its high watermark.
            while True:
                msg = consumer.poll(5 if pos < high else 1.0)
                if msg is None and pos >= high:
                    break
                assert msg is not None, f"timed out reading {topic}[{p}] at {pos}/{high}"
                assert not msg.error(), msg.error()
                pos = (msg.offset() or 0) + 1
                key = msg.key()
                key_row = codec.decode_key(key) if key else None
                value = msg.value()
                event = codec.decode(key or None, value) if value is not None else None
                out.append((key_row, event, p, msg.offset() or 0))
        return out
    finally:
        consumer.close()


def end_offsets(bootstrap: str, topic: str) -> int:
    consumer = Consumer(consumer_config(bootstrap, "test-reader-support"))
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or not meta.partitions:
            return 0
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in meta.partitions
        )
    finally:
        consumer.close()


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def key_of(row: dict[str, Any]) -> str:
    return json.dumps(row, sort_keys=True, default=str)


def final_state(
    events: list[tuple[dict[str, Any] | None, ChangeEvent | None, int, int]],
) -> dict[str, dict[str, Any] | None]:
    """Per key, the row the topic ends with (None when deleted); truncates clear all.

    Messages are taken in LSN order (per key they are in commit order inside one
    partition; across partitions only the LSN orders them).
    """
    ordered = sorted(
        (e for e in events if e[1] is not None),
        key=lambda e: (e[1].source.lsn if e[1] else 0, e[3]),
    )
    state: dict[str, dict[str, Any] | None] = {}
    for key_row, event, _, _ in ordered:
        assert event is not None
        if event.op == "t":
            state = {k: None for k in state}
            continue
        assert key_row is not None
        k = key_of(key_row)
        if event.op == "d" or event.after is None:
            state[k] = None
            continue
        prev = state.get(k) or {}
        # An unchanged TOASTed value keeps what the key had (never becomes NULL).
        state[k] = {c: prev.get(c) if v is UNCHANGED_TOAST else v for c, v in event.after.items()}
    return state


def table_state(dsn: str, table: str, key: tuple[str, ...] = ("id",)) -> dict[str, dict[str, Any]]:
    """Every row of ``table`` keyed like :func:`final_state`."""
    with psycopg.connect(dsn) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        cur = conn.execute(f"SELECT * FROM {table}")
        names = [d.name for d in cur.description or ()]
        rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    return {key_of({k: r[k] for k in key}): r for r in rows}


def assert_topic_matches_table(
    bootstrap: str,
    prefix: str,
    dsn: str,
    table: str,
    key: tuple[str, ...] = ("id",),
    registry_url: str | None = None,
) -> None:
    events = read_events(bootstrap, prefix, f"{prefix}.public.{table}", registry_url)
    live = {k: v for k, v in final_state(events).items() if v is not None}
    expected = table_state(dsn, table, key)
    missing = sorted(set(expected) - set(live))[:5]
    extra = sorted(set(live) - set(expected))[:5]
    assert not missing and not extra, f"{table}: missing {missing} extra {extra}"
    # A column added after a row's last event reads as NULL (its Avro default).
    wrong = [k for k in expected if {c: live[k].get(c) for c in expected[k]} != expected[k]]
    assert not wrong, (
        f"{table}: {len(wrong)} rows differ, e.g. {wrong[0]}: "
        f"topic={live[wrong[0]]} table={expected[wrong[0]]}"
    )
