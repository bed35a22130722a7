"""The assembler end to end: PostgreSQL -> reader -> raw topics -> assembler -> documents."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest

from pipeline.assembler.state import GLOBAL_TABLES, OWNED_TABLES
from pipeline.demo.seed import seed_catalog
from pipeline.kafka import TopicSpec, ensure_topics
from tests.integration.assembler_support import (
    assembler_process,
    running_assembler,
    version_history,
    wait_in_sync,
)
from tests.integration.reader_support import running_reader
from tests.integration.test_registry import FakeRegistry, registry  # noqa: F401 - fixture

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_snapshot_and_edits_give_the_sql_documents(
    catalog_dsn: str, kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    seed_catalog(catalog_dsn, products=60, seed=3)
    metrics_port = _free_port()
    with (
        running_reader(catalog_dsn, kafka_bootstrap, topic_prefix),
        running_assembler(
            kafka_bootstrap, topic_prefix, tmp_path / "a.sqlite", metrics_port=metrics_port
        ) as assembler,
    ):
        wait_in_sync(catalog_dsn, kafka_bootstrap, topic_prefix)
        with psycopg.connect(catalog_dsn, autocommit=True) as conn:
            conn.execute("UPDATE products SET price = price + 1 WHERE id = 1")
            conn.execute("UPDATE product_variants SET quantity = quantity + 5 WHERE product_id = 2")
            conn.execute("UPDATE products SET deleted_at = now() WHERE id = 3")
            conn.execute("DELETE FROM products WHERE id = 4")
            conn.execute("UPDATE products SET active = false WHERE id = 5")
            conn.execute("UPDATE brands SET name = name || ' X' WHERE id = 1")
            conn.execute("UPDATE categories SET name = name || ' Y' WHERE parent_id IS NULL")
            conn.execute("UPDATE products SET description = repeat('long text ', 800) WHERE id = 6")
            conn.execute("UPDATE products SET price = 9.99 WHERE id = 6")
        wait_in_sync(catalog_dsn, kafka_bootstrap, topic_prefix)
        assert assembler.caught_up.wait(30), "the assembler never said it caught up"
        # Its /metrics
        if metrics_port:
            text = (
                urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10)
                .read()
                .decode()
            )
            documents = [
                float(line.split()[-1])
                for line in text.splitlines()
                if line.startswith(
                    'catalog_cdc_assembler_documents_total{kind="product",type="document"}'
                )
            ]
            assert documents and documents[0] >= 60, text[:2000]
            assert 'catalog_cdc_assembler_lag_messages{partition="0",topic="' in text
            assert 'catalog_cdc_assembler_events_total{table="products"}' in text
    history = version_history(kafka_bootstrap, topic_prefix, "product")
    for key, versions in history.items():
        assert versions == sorted(set(versions)), f"product {key}: versions {versions}"


def test_with_a_confluent_registry(
    catalog_dsn: str,
    kafka_bootstrap: str,
    topic_prefix: str,
    tmp_path: Path,
    registry: tuple[str, FakeRegistry],  # noqa: F811 - the fixture
) -> None:
    """With CATALOG_CDC_SCHEMA_REGISTRY_URL both the raw events and the documents use
    the Confluent wire format and registry (subjects {topic}-value)."""
    url, fake = registry
    seed_catalog(catalog_dsn, products=15, seed=4)
    with (
        running_reader(catalog_dsn, kafka_bootstrap, topic_prefix, registry_url=url),
        running_assembler(kafka_bootstrap, topic_prefix, tmp_path / "a.sqlite", registry_url=url),
    ):
        wait_in_sync(catalog_dsn, kafka_bootstrap, topic_prefix, registry_url=url)
        with psycopg.connect(catalog_dsn, autocommit=True) as conn:
            conn.execute("UPDATE brands SET name = name || ' R'")
        wait_in_sync(catalog_dsn, kafka_bootstrap, topic_prefix, registry_url=url)
    subjects = set(fake.subjects)
    assert f"{topic_prefix}.doc.products-value" in subjects, subjects
    assert f"{topic_prefix}.doc.categories-value" in subjects, subjects


def test_an_assembler_started_before_the_reader_emits_each_product_once(
    catalog_dsn: str, kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """`catalog-cdc run` starts the reader and the assembler at once, and the assembler
    often finds every raw topic still empty.  Its catch-up must wait for the snapshot
    and emit each product once at the end, not end on nothing (or on the part of the
    snapshot read so far) and then build every product again for each table of the
    snapshot (products, variants, images, ...): that doubled the demo's initial load
    and sent every consumer six documents per product.

    The snapshot is held up half way for longer than any quiet spell the catch-up
    could take for its end: a lock on product_categories stops it after products and
    variants (the reader's end-of-snapshot record is what the catch-up waits for)."""
    seed_catalog(catalog_dsn, products=400, seed=7)
    # The raw topics exist (the reader creates them first thing), empty.
    tables = (*GLOBAL_TABLES, *OWNED_TABLES)
    ensure_topics(kafka_bootstrap, [TopicSpec(f"{topic_prefix}.public.{t}", 6) for t in tables])
    held = threading.Event()

    def hold_up_the_snapshot() -> None:
        # Locked once the slot exists (its snapshot exported): a lock taken before would
        # hold up the slot's creation instead (an exclusive lock takes a transaction id).
        with psycopg.connect(catalog_dsn, autocommit=True) as watch:
            deadline = time.monotonic() + 60
            while (
                time.monotonic() < deadline
                and not watch.execute(
                    "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s",
                    (f"s_{topic_prefix}",),
                ).fetchone()
            ):
                time.sleep(0.005)
            with psycopg.connect(catalog_dsn) as conn:
                conn.execute("LOCK TABLE product_categories IN ACCESS EXCLUSIVE MODE")
                while (
                    time.monotonic() < deadline
                    and not watch.execute(
                        "SELECT 1 FROM pg_locks WHERE NOT granted "
                        "AND relation = 'product_categories'::regclass"
                    ).fetchone()
                ):
                    time.sleep(0.05)
                held.set()  # the snapshot waits for product_categories
                time.sleep(6.0)  # three catch-up windows with the inputs standing still

    with running_assembler(kafka_bootstrap, topic_prefix, tmp_path / "a.sqlite") as assembler:
        deadline = time.monotonic() + 60
        while not getattr(assembler, "owned", None) and time.monotonic() < deadline:
            time.sleep(0.1)  # started, its partitions assigned
        assert assembler.owned, "the assembler was not assigned its partitions"
        time.sleep(2.0)  # many catch-up windows over empty inputs
        assert assembler.catching_up, "a catch-up ended before any input held a message"
        holder = threading.Thread(target=hold_up_the_snapshot, daemon=True)
        holder.start()
        # Small chunks: the snapshot is still on products when the lock is taken.
        with running_reader(catalog_dsn, kafka_bootstrap, topic_prefix, snapshot_chunk_size=10):
            assert held.is_set(), "the snapshot was not held up half way"
            wait_in_sync(catalog_dsn, kafka_bootstrap, topic_prefix)
            assert not assembler.catching_up
        holder.join(60)
    history = version_history(kafka_bootstrap, topic_prefix, "product")
    assert len(history) >= 400
    again = {key: versions for key, versions in history.items() if len(versions) > 1}
    assert not again, (
        f"{len(again)} products emitted more than once, e.g. {list(again.items())[:3]}"
    )


def test_an_assembler_fenced_off_by_its_own_instance_id_exits_with_the_error(
    catalog_dsn: str, kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """librdkafka reports a fatal consumer error (here: a second member with the same
    ``group.instance.id``) as a message error with the code ``_FATAL`` and ``fatal()``
    false.  Taken for a passing broker error, it left the assembler polling a client
    that never fetched again: alive, emitting nothing, no error.  It must exit, so the
    supervisor restarts it."""
    seed_catalog(catalog_dsn, products=10, seed=3)
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    env = {"CATALOG_CDC_ASSEMBLER_INSTANCE_ID": f"{topic_prefix}-same"}
    with running_reader(catalog_dsn, kafka_bootstrap, topic_prefix):
        first = assembler_process(
            kafka_bootstrap, topic_prefix, tmp_path / "a.sqlite", first_log, **env
        )
        second = None
        try:
            deadline = time.monotonic() + 60
            while "event=partitions_assigned" not in first_log.read_text():
                assert first.poll() is None, first_log.read_text()[-3000:]
                assert time.monotonic() < deadline, "the first assembler got no partitions"
                time.sleep(0.2)
            second = assembler_process(
                kafka_bootstrap, topic_prefix, tmp_path / "b.sqlite", second_log, **env
            )
            code = first.wait(60)  # a hang here is the bug
            text = first_log.read_text()
            assert code != 0, text[-3000:]
            assert "Static consumer fenced" in text.splitlines()[-1], text[-3000:]
        finally:
            for proc in (first, second):
                if proc is not None and proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
