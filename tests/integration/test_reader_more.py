"""Reader: both brokers, the Confluent registry path, ad-hoc incremental re-snapshots."""

from __future__ import annotations

import threading
import time
from collections import Counter

import psycopg
import pytest
from psycopg.types.json import Jsonb

from pipeline.demo.edits import run_edits
from pipeline.demo.seed import seed_catalog
from pipeline.reader.incremental import Seen
from tests.integration.reader_support import (
    assert_topic_matches_table,
    read_events,
    running_reader,
    wait_for,
)
from tests.integration.test_registry import FakeRegistry, registry  # noqa: F401 - fixture

pytestmark = pytest.mark.integration


def _caught_up(dsn: str, slot: str) -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT confirmed_flush_lsn >= pg_current_wal_lsn() FROM pg_replication_slots "
            "WHERE slot_name = %s",
            (slot,),
        ).fetchone()
    return bool(row and row[0])


@pytest.mark.broker_matrix
def test_reader_on_each_broker(catalog_dsn: str, broker_bootstrap: str, topic_prefix: str) -> None:
    seed_catalog(catalog_dsn, products=20, seed=21)
    with running_reader(catalog_dsn, broker_bootstrap, topic_prefix, partitions=3) as reader:
        with psycopg.connect(catalog_dsn) as conn:
            conn.execute("UPDATE products SET price = price * 2 WHERE id % 3 = 0")
            conn.execute("DELETE FROM product_variants WHERE product_id = 4")
            lsn = conn.execute("SELECT pg_current_wal_lsn()").fetchone()
        assert lsn is not None
        wait_for(lambda: _caught_up(catalog_dsn, reader.settings.slot), 60, "catch-up")
    for table in ("products", "product_variants"):
        assert_topic_matches_table(broker_bootstrap, topic_prefix, catalog_dsn, table)


def test_a_row_moved_to_another_partition_leaves_the_old_one(
    catalog_dsn: str, kafka_bootstrap: str, topic_prefix: str
) -> None:
    """A variant given to a product of another partition: a delete on the old partition
    (with its tombstone), a create on the new one, so a consumer of either sees it."""
    from pipeline.kafka import partition_for

    seed_catalog(catalog_dsn, products=20, seed=23)
    with psycopg.connect(catalog_dsn, autocommit=True) as conn:
        vid, old_pid = conn.execute(
            "SELECT id, product_id FROM product_variants ORDER BY id LIMIT 1"
        ).fetchone()  # type: ignore[misc]
        new_pid = next(
            p
            for (p,) in conn.execute("SELECT id FROM products ORDER BY id").fetchall()
            if partition_for(p, 6) != partition_for(old_pid, 6)
        )
    with running_reader(catalog_dsn, kafka_bootstrap, topic_prefix) as reader:
        with psycopg.connect(catalog_dsn, autocommit=True) as conn:
            conn.execute(
                "UPDATE product_variants SET product_id = %s, quantity = 7 WHERE id = %s",
                (new_pid, vid),
            )
            conn.execute("UPDATE product_variants SET quantity = 8 WHERE id = %s", (vid,))
        wait_for(lambda: _caught_up(catalog_dsn, reader.settings.slot), 60, "catch-up")
    topic = f"{topic_prefix}.public.product_variants"
    streamed = [
        (ev.op if ev else "tombstone", part)
        for key, ev, part, _ in read_events(kafka_bootstrap, topic_prefix, topic)
        if key == {"id": vid} and (ev is None or ev.source.snapshot == "false")
    ]
    old_part, new_part = partition_for(old_pid, 6), partition_for(new_pid, 6)
    assert sorted(streamed) == sorted(
        [("d", old_part), ("tombstone", old_part), ("c", new_part), ("u", new_part)]
    ), streamed
    assert_topic_matches_table(kafka_bootstrap, topic_prefix, catalog_dsn, "product_variants")


def test_reader_with_confluent_registry(
    catalog_dsn: str,
    kafka_bootstrap: str,
    topic_prefix: str,
    registry: tuple[str, FakeRegistry],  # noqa: F811 - the fixture
) -> None:
    url, state = registry
    seed_catalog(catalog_dsn, products=10, seed=22)
    with running_reader(catalog_dsn, kafka_bootstrap, topic_prefix, registry_url=url) as reader:
        with psycopg.connect(catalog_dsn, autocommit=True) as conn:
            conn.execute("UPDATE products SET name = name || ' v2' WHERE id <= 3")
            conn.execute("ALTER TABLE products ADD COLUMN badge text")
            conn.execute("UPDATE products SET badge = 'new' WHERE id = 1")
        wait_for(lambda: _caught_up(catalog_dsn, reader.settings.slot), 60, "catch-up")
    subject = f"{topic_prefix}.public.products-value"
    assert len(state.subjects[subject]) == 2, "the added column must make a new schema version"
    events = read_events(kafka_bootstrap, topic_prefix, f"{topic_prefix}.public.products", url)
    raw_first = [e for _, e, _, _ in events if e is not None]
    assert raw_first and all(e.source.db for e in raw_first)
    assert_topic_matches_table(
        kafka_bootstrap, topic_prefix, catalog_dsn, "products", registry_url=url
    )


def test_incremental_resnapshot_while_streaming(
    catalog_dsn: str, kafka_bootstrap: str, topic_prefix: str
) -> None:
    seed_catalog(catalog_dsn, products=400, seed=23)
    stop = threading.Event()
    with running_reader(
        catalog_dsn, kafka_bootstrap, topic_prefix, snapshot_mode="never", snapshot_chunk_size=50
    ) as reader:
        edits = threading.Thread(
            target=lambda: run_edits(catalog_dsn, rate=60, duration=10, seed=9, stop=stop),
            daemon=True,
        )
        edits.start()
        time.sleep(1)
        with psycopg.connect(catalog_dsn) as conn:
            conn.execute(
                "INSERT INTO catalog_cdc_signal (id, type, data) VALUES (%s, 'execute-snapshot', %s)",
                ("resnap-1", Jsonb({"tables": ["public.products", "product_variants"]})),
            )
        # Started: a window is open, or chunks were already read (a fast reader can run
        # the whole re-snapshot between two looks).
        wait_for(
            lambda: (
                reader.incremental is not None
                and (
                    reader.incremental.confirm_ceiling is not None
                    or reader.metrics.snapshot_rows._value.get() > 0
                )
            ),
            30,
            "re-snapshot to start",
        )
        wait_for(
            lambda: reader.incremental is not None and reader.incremental.confirm_ceiling is None,
            120,
            "re-snapshot to finish",
        )
        edits.join(30)
        wait_for(lambda: _caught_up(catalog_dsn, reader.settings.slot), 60, "catch-up")
        stop.set()
    # snapshot_mode=never: the only 'r' events are the re-snapshot's.
    events = read_events(kafka_bootstrap, topic_prefix, f"{topic_prefix}.public.products")
    ops = Counter(e.source.snapshot for _, e, _, _ in events if e is not None and e.op == "r")
    assert set(ops) == {"incremental"}
    assert ops["incremental"] >= 300
    with psycopg.connect(catalog_dsn) as conn:
        left = conn.execute("SELECT count(*) FROM catalog_cdc_signal").fetchone()
    assert left == (0,), "signal and watermark rows are cleaned up"
    for table in ("products", "product_variants"):
        assert_topic_matches_table(kafka_bootstrap, topic_prefix, catalog_dsn, table)


def test_a_transaction_open_across_a_resnapshot_chunk_is_newer_than_the_chunk(
    catalog_dsn: str, kafka_bootstrap: str, topic_prefix: str
) -> None:
    """A transaction updates a row before a re-snapshot chunk reads it and commits after
    the chunk's high watermark: the chunk (which read the old value) is emitted first,
    the update after it.  Every event's LSN is its transaction's commit LSN, so the
    update's is the higher too, and whoever orders by LSN (the assembler drops an event
    older than the row it holds) keeps the update.  With the change record's own LSN
    the update (written before the watermark) looked older than the chunk row."""
    seed_catalog(catalog_dsn, products=10, seed=25)
    with psycopg.connect(catalog_dsn) as conn:
        row = conn.execute(
            "SELECT id, quantity FROM product_variants ORDER BY id LIMIT 1"
        ).fetchone()
    assert row is not None
    vid, qty = int(row[0]), int(row[1])
    with running_reader(
        catalog_dsn, kafka_bootstrap, topic_prefix, snapshot_mode="never", snapshot_chunk_size=1000
    ) as reader:
        with psycopg.connect(catalog_dsn) as open_tx, psycopg.connect(catalog_dsn) as signal:
            open_tx.execute(
                "UPDATE product_variants SET quantity = %s WHERE id = %s", (qty + 1000, vid)
            )  # not committed yet: the chunk reads the old value
            signal.execute(
                "INSERT INTO catalog_cdc_signal (id, type, data) VALUES (%s, 'execute-snapshot', %s)",
                ("resnap-open-tx", Jsonb({"tables": ["product_variants"]})),
            )
            signal.commit()
            wait_for(
                lambda: (
                    reader.metrics.snapshot_rows._value.get() > 0
                    and reader.incremental is not None
                    and reader.incremental.confirm_ceiling is None
                ),
                60,
                "re-snapshot to finish",
            )
            open_tx.commit()
        wait_for(lambda: _caught_up(catalog_dsn, reader.settings.slot), 60, "catch-up")
    events = read_events(kafka_bootstrap, topic_prefix, f"{topic_prefix}.public.product_variants")
    mine = [(e.op, e.source.lsn, (e.after or {}).get("quantity")) for k, e, _, _ in events
            if e is not None and k is not None and k.get("id") == vid]  # fmt: skip
    assert [(op, q) for op, _, q in mine] == [("r", qty), ("u", qty + 1000)], mine
    assert mine[0][1] < mine[1][1], f"the update's LSN is not above the chunk row's: {mine}"
    assert_topic_matches_table(kafka_bootstrap, topic_prefix, catalog_dsn, "product_variants")


def test_a_chunk_snapshot_tells_the_transactions_it_did_not_see(catalog_dsn: str) -> None:
    """``Seen`` from the real ``pg_current_snapshot()`` of a repeatable-read read (as the
    re-snapshot takes it): a transaction running then is not seen, even once it has
    committed; one committed before is."""
    with (
        psycopg.connect(catalog_dsn) as before,
        psycopg.connect(catalog_dsn) as running,
        psycopg.connect(catalog_dsn, autocommit=True) as reading,
    ):
        done = before.execute("SELECT txid_current()").fetchone()
        before.commit()
        busy = running.execute("SELECT txid_current()").fetchone()
        with reading.transaction():
            reading.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            text = reading.execute("SELECT pg_current_snapshot()::text").fetchone()
        running.commit()
    assert done is not None and busy is not None and text is not None
    seen = Seen.parse(str(text[0]))
    assert seen.saw(int(done[0]) % 2**32)
    assert not seen.saw(int(busy[0]) % 2**32)


def test_metrics_endpoint(catalog_dsn: str, kafka_bootstrap: str, topic_prefix: str) -> None:
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    seed_catalog(catalog_dsn, products=5, seed=24)
    with running_reader(catalog_dsn, kafka_bootstrap, topic_prefix, metrics_port=port) as reader:
        with psycopg.connect(catalog_dsn) as conn:
            conn.execute("UPDATE products SET price = price + 1")
        wait_for(lambda: _caught_up(catalog_dsn, reader.settings.slot), 60, "catch-up")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    lines = {
        line.split(" ")[0]: line.split(" ")[-1]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert float(lines['catalog_cdc_reader_events_total{op="u",table="products"}']) == 5
    assert float(lines['catalog_cdc_reader_events_total{op="r",table="products"}']) == 5
    assert float(lines["catalog_cdc_reader_confirmed_lsn"]) > 0
    assert float(lines["catalog_cdc_reader_snapshot_tables_done"]) == 9
    assert "catalog_cdc_reader_lag_bytes" in lines and "catalog_cdc_reader_lag_seconds" in lines
