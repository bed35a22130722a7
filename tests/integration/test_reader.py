"""The reader against the stack: snapshot, streaming, types, TOAST, schema change, tail."""

from __future__ import annotations

import random
import signal
import string
import time
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from pipeline.demo.seed import seed_catalog
from pipeline.events import UNCHANGED_TOAST
from tests.integration.reader_support import (
    TABLE_KEYS,
    assert_topic_matches_table,
    end_offsets,
    read_events,
    reader_process,
    running_reader,
    tail_json,
    wait_for,
)

pytestmark = pytest.mark.integration


def _events_after(bootstrap: str, prefix: str, table: str, n: int) -> list[dict]:
    topic = f"{prefix}.public.{table}"
    wait_for(lambda: end_offsets(bootstrap, topic) >= n, 30, f"{n} messages on {topic}")
    return tail_json(bootstrap, prefix, topic, idle=1.0)


def test_snapshot_then_stream_all_tables(
    catalog_dsn: str, kafka_bootstrap: str, topic_prefix: str
) -> None:
    seed_catalog(catalog_dsn, products=60, seed=7)
    with running_reader(catalog_dsn, kafka_bootstrap, topic_prefix) as reader:
        wait_for(lambda: reader.incremental is not None, 60, "streaming to start")
        with psycopg.connect(catalog_dsn) as conn:
            conn.execute("UPDATE products SET price = price + 1 WHERE id <= 5")
            conn.execute("UPDATE product_variants SET quantity = quantity + 3 WHERE product_id = 2")
            conn.execute("DELETE FROM product_images WHERE product_id = 3")
            conn.execute("DELETE FROM product_categories WHERE product_id = 4")
            conn.execute("UPDATE categories SET name = name || ' (new)' WHERE id = 1")
            conn.execute("UPDATE brands SET name = 'Renamed Brand' WHERE id = 1")
            conn.execute("UPDATE stores SET name = 'Main Store' WHERE id = 1")
            conn.execute("INSERT INTO cms_pages (store_id, identifier, title, content, active) "
                         "VALUES (1, 'about-new', 'About', 'x', true)")  # fmt: skip
            conn.execute("DELETE FROM products WHERE id = 6")  # cascades to its rows
        with psycopg.connect(catalog_dsn) as conn:
            lsn = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert lsn is not None
        wait_for(
            lambda: reader.tracker.confirmable > 0 and reader.tracker.in_flight == 0, 30, "acks"
        )
        time.sleep(1.5)
    for table, key in TABLE_KEYS.items():
        assert_topic_matches_table(kafka_bootstrap, topic_prefix, catalog_dsn, table, key)


def test_delete_is_followed_by_tombstone_on_same_partition(
    catalog_dsn: str, kafka_bootstrap: str, topic_prefix: str
) -> None:
    seed_catalog(catalog_dsn, products=10, seed=1)
    with running_reader(catalog_dsn, kafka_bootstrap, topic_prefix) as reader:
        wait_for(lambda: reader.incremental is not None, 60, "streaming")
        with psycopg.connect(catalog_dsn) as conn:
            vid, pid = conn.execute(
                "SELECT id, product_id FROM product_variants ORDER BY id LIMIT 1"
            ).fetchone() or (0, 0)
            conn.execute("DELETE FROM product_variants WHERE id = %s", (vid,))
        wait_for(lambda: reader.tracker.in_flight == 0 and reader._tx is None, 30, "acks")
        time.sleep(1)
    events = read_events(kafka_bootstrap, topic_prefix, f"{topic_prefix}.public.product_variants")
    mine = [(k, e, p, o) for k, e, p, o in events if k == {"id": vid}]
    ops = [e.op if e else None for _, e, _, _ in mine]
    assert ops == ["r", "d", None], ops
    assert len({p for _, _, p, _ in mine}) == 1, "delete/tombstone left the key's partition"
    delete = mine[1][1]
    assert delete is not None and delete.before is not None
    assert delete.before["product_id"] == pid  # whole old row (routes by product)
    # All rows of one product share a partition, across product-owned tables.
    parts = {
        p for k, e, p, _ in events if e and (e.after or e.before or {}).get("product_id") == pid
    }
    assert len(parts) == 1


def test_types_toast_nulls_and_rollback_through_tail(
    catalog_dsn: str, kafka_bootstrap: str, topic_prefix: str
) -> None:
    with psycopg.connect(catalog_dsn) as conn:
        conn.execute(
            "INSERT INTO stores (id, code, name, currency, locale) VALUES (1, 'main', 'Main', 'EUR', 'en_US')"
        )
        conn.execute("INSERT INTO brands (id, name) VALUES (1, 'Acme')")  # fmt: skip
    with running_reader(catalog_dsn, kafka_bootstrap, topic_prefix) as reader:
        wait_for(lambda: reader.incremental is not None, 60, "streaming")
        # ~9 kB of incompressible text: stored out of line (TOASTed), not compressed inline.
        rnd = random.Random(1)
        long_text = "".join(rnd.choice(string.ascii_letters + " ") for _ in range(9000))
        with psycopg.connect(catalog_dsn) as conn:
            conn.execute(
                "INSERT INTO products (id, store_id, reference, name, description, price, list_price, "
                "active, url_key, weight, ean13, brand_id, tags, external_id) VALUES "
                "(100, 1, 'REF-100', 'Espresso Machine', %s, 1234567890.12, NULL, true, 'espresso', "
                "1.250, '', NULL, ARRAY['a', 'b \"quoted\"', NULL], '6c1a1bd4-7a9e-4a5e-9b59-4a0c6a6e9c11')",
                (long_text,),
            )
            conn.execute(
                "INSERT INTO product_variants (id, product_id, sku, price, quantity, attributes) VALUES "
                '(1000, 100, \'SKU-1000\', 0.01, 5, \'{"size": "M", "n": 1.5, "tags": [1, 2]}\')'
            )
            # Price-only update: the TOASTed description is not sent (unchanged).
            conn.execute("UPDATE products SET price = 99.99 WHERE id = 100")
            conn.commit()
        with psycopg.connect(catalog_dsn, autocommit=True) as conn:
            try:
                with conn.transaction():
                    conn.execute("UPDATE products SET name = 'Rolled back' WHERE id = 100")
                    raise RuntimeError("roll back")
            except RuntimeError:
                pass
            conn.execute("UPDATE products SET weight = NULL WHERE id = 100")
        events = _events_after(kafka_bootstrap, topic_prefix, "products", 3)
    products = [e for e in events if e.get("key") == {"id": 100} and not e.get("tombstone")]
    assert [e["op"] for e in products] == ["c", "u", "u"], [e["op"] for e in products]
    created, price_update, null_update = products
    after = created["after"]
    assert after["description"] == long_text
    assert after["price"] == "1234567890.12"  # numeric, exact
    assert after["list_price"] is None
    assert after["weight"] == "1.250"
    assert after["tags"] == ["a", 'b "quoted"', None]
    assert after["external_id"] == "6c1a1bd4-7a9e-4a5e-9b59-4a0c6a6e9c11"
    assert after["active"] is True
    assert price_update["after"]["price"] == "99.99"
    assert price_update["after"]["description"] == {"$unchanged_toast": True}  # not null
    assert null_update["after"]["weight"] is None
    assert all(e["after"]["name"] != "Rolled back" for e in products)
    assert created["source"]["table"] == "products" and created["source"]["snapshot"] == "false"
    assert created["source"]["tx_id"] and created["source"]["lsn"] > 0
    variants = _events_after(kafka_bootstrap, topic_prefix, "product_variants", 1)
    attributes = variants[0]["after"]["attributes"]
    assert attributes["size"] == "M" and attributes["tags"] == [1, 2]
    assert str(attributes["n"]) == "1.5"
    assert variants[0]["after"]["price"] == "0.01"


def test_unchanged_toast_is_distinct_from_null_in_decoded_events(
    catalog_dsn: str, kafka_bootstrap: str, topic_prefix: str
) -> None:
    seed_catalog(catalog_dsn, products=5, seed=3)
    with psycopg.connect(catalog_dsn) as conn:
        rnd = random.Random(2)
        text = "".join(rnd.choice(string.ascii_letters) for _ in range(9000))
        conn.execute("UPDATE products SET description = %s WHERE id = 1", (text,))
    with running_reader(catalog_dsn, kafka_bootstrap, topic_prefix) as reader:
        wait_for(lambda: reader.incremental is not None, 60, "streaming")
        with psycopg.connect(catalog_dsn) as conn:
            conn.execute("UPDATE products SET price = 1.23 WHERE id = 1")
            conn.execute("UPDATE products SET description = NULL WHERE id = 2")
        wait_for(lambda: reader.tracker.in_flight == 0 and reader._tx is None, 30, "acks")
        time.sleep(1)
    events = read_events(kafka_bootstrap, topic_prefix, f"{topic_prefix}.public.products")
    upd = {k["id"]: e for k, e, _, _ in events if e is not None and e.op == "u" and k}
    assert upd[1].after is not None and upd[1].after["description"] is UNCHANGED_TOAST
    assert upd[1].after["price"] == Decimal("1.23")
    assert upd[2].after is not None and upd[2].after["description"] is None


def test_truncate_and_added_column_while_streaming(
    catalog_dsn: str, kafka_bootstrap: str, topic_prefix: str
) -> None:
    seed_catalog(catalog_dsn, products=5, seed=3)
    with running_reader(catalog_dsn, kafka_bootstrap, topic_prefix) as reader:
        wait_for(lambda: reader.incremental is not None, 60, "streaming")
        with psycopg.connect(catalog_dsn, autocommit=True) as conn:
            conn.execute("ALTER TABLE brands ADD COLUMN country text")
            conn.execute("INSERT INTO brands (id, name, country) VALUES (9001, 'Newco', 'IT')")
            conn.execute("UPDATE brands SET country = 'FR' WHERE id = 1")
            conn.execute("TRUNCATE cms_pages")
        wait_for(lambda: reader.tracker.in_flight == 0 and reader._tx is None, 30, "acks")
        time.sleep(1)
    brands = read_events(kafka_bootstrap, topic_prefix, f"{topic_prefix}.public.brands")
    newco = [e for k, e, _, _ in brands if k == {"id": 9001} and e]
    assert newco and newco[0].after is not None and newco[0].after["country"] == "IT"
    old_snapshot = [e for k, e, _, _ in brands if k == {"id": 1} and e and e.op == "r"]
    assert old_snapshot and old_snapshot[0].after is not None
    assert "country" not in old_snapshot[0].after  # older schema version still decodes
    pages = read_events(kafka_bootstrap, topic_prefix, f"{topic_prefix}.public.cms_pages")
    truncates = [(k, p) for k, e, p, _ in pages if e and e.op == "t"]
    assert len(truncates) == reader.settings.partitions  # one per partition, empty key
    assert all(k is None for k, _ in truncates)


def test_sigterm_drains_confirms_and_exits_zero(
    catalog_dsn: str, kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    seed_catalog(catalog_dsn, products=20, seed=5)
    log = tmp_path / "reader.log"
    proc = reader_process(catalog_dsn, kafka_bootstrap, topic_prefix, log)
    try:
        wait_for(lambda: "replication_started" in log.read_text(), 60, "streaming")
        with psycopg.connect(catalog_dsn) as conn:
            conn.execute("UPDATE products SET price = price + 1")
            lsn = conn.execute("SELECT pg_current_wal_lsn()").fetchone()
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    with psycopg.connect(catalog_dsn) as conn:
        confirmed = conn.execute(
            "SELECT confirmed_flush_lsn >= %s FROM pg_replication_slots WHERE slot_name = %s",
            (lsn[0] if lsn else None, f"s_{topic_prefix}"),
        ).fetchone()
    assert confirmed == (True,), log.read_text()[-2000:]
    assert "event=stopped" in log.read_text()


def test_unconvertible_value_stops_reader_naming_table_and_column(
    catalog_dsn: str, kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    seed_catalog(catalog_dsn, products=3, seed=5)
    log = tmp_path / "reader.log"
    proc = reader_process(catalog_dsn, kafka_bootstrap, topic_prefix, log)
    try:
        wait_for(lambda: "replication_started" in log.read_text(), 60, "streaming")
        with psycopg.connect(catalog_dsn) as conn:
            # Year 10000: valid in PostgreSQL, beyond Python's datetime.
            conn.execute("UPDATE products SET created_at = '10000-01-01 00:00:00+00' WHERE id = 2")
        rc = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert rc != 0, text[-2000:]
    assert "products" in text and "created_at" in text and "10000-01-01" in text, text[-2000:]
    assert '"id":"2"' in text.replace(" ", "") or "id=2" in text, text[-2000:]
    # Nothing after the bad row is confirmed: restarting reads it again (and stops again).
    with psycopg.connect(catalog_dsn) as conn:
        row = conn.execute(
            "SELECT confirmed_flush_lsn < pg_current_wal_lsn() FROM pg_replication_slots "
            "WHERE slot_name = %s",
            (f"s_{topic_prefix}",),
        ).fetchone()
    assert row == (True,)


def test_idle_database_slot_still_advances(
    catalog_dsn: str, kafka_bootstrap: str, topic_prefix: str
) -> None:
    """Heartbeats move the slot while the catalog is idle (no WAL pile-up)."""
    seed_catalog(catalog_dsn, products=3, seed=5)
    seen: list[str] = []
    with running_reader(
        catalog_dsn, kafka_bootstrap, topic_prefix, heartbeat_interval=2.0
    ) as reader:
        wait_for(lambda: reader.incremental is not None, 60, "streaming")
        with psycopg.connect(catalog_dsn, autocommit=True) as conn:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                row = conn.execute(
                    "SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
                    "WHERE slot_name = %s",
                    (f"s_{topic_prefix}",),
                ).fetchone()
                assert row is not None
                if not seen or seen[-1] != row[0]:
                    seen.append(str(row[0]))
                time.sleep(5)
    assert len(seen) >= 6, f"confirmed_flush_lsn advanced only through {seen} in 60 s of idleness"
