"""The assembler converges on what SQL says: random edits, rebuild, kill -9, two instances.

Every check compares the document topics (latest message per key) with the documents
a SQL join over the tables gives (pipeline.documents.reference), after quiescence.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pipeline.demo.edits import run_edits
from pipeline.demo.seed import seed_catalog
from pipeline.documents.reading import iter_documents, latest_documents
from pipeline.documents.reference import comparable
from tests.integration.assembler_support import (
    assembler_process,
    differences,
    running_assembler,
    wait_in_sync,
    wait_started,
)
from tests.integration.reader_support import running_reader

pytestmark = pytest.mark.integration


# --------------------------------------------------------------------------- random edits


def _one(conn: psycopg.Connection[Any], query: str, *params: Any) -> Any:
    row = conn.execute(query, params).fetchone()
    return None if row is None else row[0]


def _random_edit(conn: psycopg.Connection[Any], rng: random.Random, uniq: list[int]) -> str:
    """One random edit (the caller's transaction); returns its name."""
    pid = _one(conn, "SELECT id FROM products ORDER BY random() LIMIT 1")
    cid = _one(conn, "SELECT id FROM categories ORDER BY random() LIMIT 1")
    kind = rng.choice(
        [
            "price", "stock", "variant_add", "variant_del", "link_add", "link_del",
            "brand_rename", "brand_swap", "cat_rename", "cat_move", "soft_delete",
            "undelete", "hard_delete", "image_add", "tech_reorder", "new_product",
            "description", "active", "cat_url", "store_code",
        ]
    )  # fmt: skip
    uniq[0] += 1
    n = uniq[0]
    if kind == "price" and pid:
        conn.execute(
            "UPDATE products SET price = %s WHERE id = %s",
            (Decimal(rng.randint(1, 99999)) / 100, pid),
        )
    elif kind == "stock" and pid:
        conn.execute(
            "UPDATE product_variants SET quantity = %s WHERE product_id = %s",
            (rng.randint(0, 50), pid),
        )
    elif kind == "variant_add" and pid:
        conn.execute(
            "INSERT INTO product_variants (product_id, sku, price, quantity, attributes) "
            "VALUES (%s, %s, 1.50, %s, %s::jsonb)",
            (pid, f"PT-{n}", rng.randint(0, 9), '{"size": "M", "w": 1.25}'),
        )
    elif kind == "variant_del" and pid:
        conn.execute(
            "DELETE FROM product_variants WHERE id = (SELECT min(id) FROM product_variants WHERE product_id = %s)",
            (pid,),
        )
    elif kind == "link_add" and pid and cid:
        conn.execute(
            "INSERT INTO product_categories (product_id, category_id, position) VALUES (%s, %s, %s) "
            "ON CONFLICT DO NOTHING",
            (pid, cid, rng.randint(0, 5)),
        )
    elif kind == "link_del" and pid:
        conn.execute(
            "DELETE FROM product_categories WHERE product_id = %s AND category_id = (SELECT min(category_id) FROM product_categories WHERE product_id = %s)",
            (pid, pid),
        )
    elif kind == "brand_rename":
        conn.execute(
            "UPDATE brands SET name = %s WHERE id = (SELECT id FROM brands ORDER BY random() LIMIT 1)",
            (f"Brand {n}",),
        )
    elif kind == "brand_swap" and pid:
        conn.execute(
            "UPDATE products SET brand_id = (SELECT id FROM brands ORDER BY random() LIMIT 1) WHERE id = %s",
            (pid,),
        )
    elif kind == "cat_rename" and cid:
        conn.execute("UPDATE categories SET name = %s WHERE id = %s", (f"Cat {n}", cid))
    elif kind == "cat_move" and cid:
        # May be refused (a cycle) or move a category under a parent in its store.
        conn.execute(
            "UPDATE categories SET parent_id = (SELECT c.id FROM categories c, categories me "
            "WHERE me.id = %s AND c.store_id = me.store_id AND c.id <> me.id ORDER BY random() LIMIT 1) "
            "WHERE id = %s",
            (cid, cid),
        )
    elif kind == "soft_delete" and pid:
        conn.execute("UPDATE products SET deleted_at = now() WHERE id = %s", (pid,))
    elif kind == "undelete":
        conn.execute(
            "UPDATE products SET deleted_at = NULL WHERE id = (SELECT id FROM products WHERE deleted_at IS NOT NULL ORDER BY random() LIMIT 1)"
        )
    elif kind == "hard_delete" and pid:
        conn.execute("DELETE FROM products WHERE id = %s", (pid,))
    elif kind == "image_add" and pid:
        conn.execute(
            "INSERT INTO product_images (product_id, file_name, url, position, size_bytes) VALUES (%s, %s, %s, %s, 100)",
            (pid, f"img{n}.jpg", f"https://cdn.example/img{n}.jpg", rng.randint(0, 3)),
        )
    elif kind == "tech_reorder" and pid:
        conn.execute(
            "UPDATE technical_data SET print_order = (random() * 10)::int WHERE product_id = %s",
            (pid,),
        )
    elif kind == "new_product":
        new = _one(
            conn,
            "INSERT INTO products (store_id, reference, name, price, url_key, brand_id) "
            "SELECT 1, %s, %s, 10.00, %s, (SELECT min(id) FROM brands) RETURNING id",
            f"NEW-{n}",
            f"New product {n}",
            f"new-product-{n}",
        )
        conn.execute(
            "INSERT INTO product_variants (product_id, sku, price, quantity) VALUES (%s, %s, 10.00, 3)",
            (new, f"NEW-{n}-1"),
        )
        if cid:
            conn.execute(
                "INSERT INTO product_categories (product_id, category_id, position) "
                "SELECT %s, id, 0 FROM categories WHERE store_id = 1 ORDER BY random() LIMIT 1",
                (new,),
            )
    elif kind == "description" and pid:
        text = "x" * rng.choice([10, 5000]) if rng.random() < 0.5 else None
        conn.execute("UPDATE products SET description = %s WHERE id = %s", (text, pid))
    elif kind == "active" and pid:
        conn.execute("UPDATE products SET active = NOT active WHERE id = %s", (pid,))
    elif kind == "cat_url" and cid:
        conn.execute("UPDATE categories SET url_key = %s WHERE id = %s", (f"cat-{n}", cid))
    elif kind == "store_code":
        conn.execute("UPDATE stores SET code = %s WHERE id = 1", (f"shop{n}",))
    return kind


def _random_transactions(
    dsn: str, rng: random.Random, count: int, uniq: list[int]
) -> dict[str, int]:
    done: dict[str, int] = {}
    with psycopg.connect(dsn) as conn:
        for _ in range(count):
            kinds = []
            try:
                with conn.transaction():
                    for _ in range(rng.randint(1, 4)):
                        kinds.append(_random_edit(conn, rng, uniq))
                    if rng.random() < 0.1:
                        raise _Rollback
            except (_Rollback, psycopg.errors.CheckViolation, psycopg.errors.UniqueViolation):
                continue
            for k in kinds:
                done[k] = done.get(k, 0) + 1
    return done


class _Rollback(Exception):
    pass


def test_random_edit_sequences_converge(
    catalog_dsn: str, kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """Property test: 12 seeded random workloads, each followed by a full comparison."""
    seed_catalog(catalog_dsn, products=40, seed=5)
    uniq = [0]
    seen: dict[str, int] = {}
    with (
        running_reader(catalog_dsn, kafka_bootstrap, topic_prefix),
        running_assembler(kafka_bootstrap, topic_prefix, tmp_path / "a.sqlite"),
    ):
        wait_in_sync(catalog_dsn, kafka_bootstrap, topic_prefix)
        for case in range(12):
            rng = random.Random(1000 + case)
            for k, v in _random_transactions(catalog_dsn, rng, rng.randint(5, 25), uniq).items():
                seen[k] = seen.get(k, 0) + v
            wait_in_sync(catalog_dsn, kafka_bootstrap, topic_prefix, timeout=60)
    # The workloads did exercise every kind of edit.
    assert len(seen) >= 18, seen


# --------------------------------------------------------------------------- versions


def _check_history(bootstrap: str, prefix: str, kind: str) -> int:
    """Versions never go back per key; an equal version is an identical duplicate."""
    last: dict[int, tuple[int, Any]] = {}
    messages = 0
    for m in iter_documents(bootstrap, prefix, kind):
        messages += 1
        content = None if m.doc is None else comparable(m.doc)
        if m.id in last:
            version, previous = last[m.id]
            assert m.version >= version, f"{kind} {m.id}: version {m.version} after {version}"
            if m.version == version:
                assert content == previous, f"{kind} {m.id}: two contents with version {version}"
        last[m.id] = (m.version, content)
    return messages


def test_rebuild_gives_the_incremental_documents(
    catalog_dsn: str, kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    seed_catalog(catalog_dsn, products=80, seed=9)
    state = tmp_path / "a.sqlite"
    with running_reader(catalog_dsn, kafka_bootstrap, topic_prefix):
        with running_assembler(kafka_bootstrap, topic_prefix, state) as first:
            run_edits(catalog_dsn, rate=40, duration=6, seed=4)
            wait_in_sync(catalog_dsn, kafka_bootstrap, topic_prefix)
        late = set(first.late)
        incremental = {
            k: latest_documents(kafka_bootstrap, topic_prefix, k) for k in ("product", "category")
        }
        before = _check_history(kafka_bootstrap, topic_prefix, "product")
        with running_assembler(kafka_bootstrap, topic_prefix, state, rebuild=True) as rebuilt:
            assert rebuilt.caught_up.wait(120), "the rebuild did not catch up"
        wait_in_sync(catalog_dsn, kafka_bootstrap, topic_prefix)
    # The rebuild caught up silently, then emitted each document once.
    after = sum(1 for _ in iter_documents(kafka_bootstrap, topic_prefix, "product"))
    assert after - before == len(incremental["product"]), (before, after)
    for kind, docs in incremental.items():
        again = latest_documents(kafka_bootstrap, topic_prefix, kind)
        assert again.keys() == docs.keys()
        for key, m in docs.items():
            r = again[key]
            assert (r.doc is None) == (m.doc is None), f"{kind} {key}"
            if m.doc is not None and r.doc is not None:
                assert comparable(r.doc) == comparable(m.doc), f"{kind} {key} differs after rebuild"
            # Versions are the same LSNs, unless the incremental run had to step past a
            # late cross-topic arrival (it says which documents).
            if (kind, key) not in late:
                assert r.version == m.version, f"{kind} {key}: version {r.version} != {m.version}"


# --------------------------------------------------------------------------- crashes


def test_kill_9_under_load_converges(
    catalog_dsn: str, kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    seed_catalog(catalog_dsn, products=150, seed=21)
    state, log = tmp_path / "a.sqlite", tmp_path / "assembler.log"
    rng = random.Random(7)
    stop = threading.Event()
    with running_reader(catalog_dsn, kafka_bootstrap, topic_prefix):
        edits = threading.Thread(
            target=run_edits,
            args=(catalog_dsn,),
            kwargs={"rate": 40, "duration": 16, "seed": 8, "stop": stop},
            daemon=True,
        )
        edits.start()
        kills = 0
        try:
            while edits.is_alive():
                proc = assembler_process(kafka_bootstrap, topic_prefix, state, log)
                time.sleep(rng.uniform(1.0, 3.0))
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                kills += 1
        finally:
            stop.set()
            edits.join(60)
        started = log.read_text().count("event=assembler_started")
        proc = assembler_process(kafka_bootstrap, topic_prefix, state, log)
        try:
            # The killed instances may have emitted everything already: without this
            # wait the SIGTERM below can come before the handlers are in place.
            wait_started(proc, log, started)
            wait_in_sync(catalog_dsn, kafka_bootstrap, topic_prefix, timeout=120)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0, log.read_text()[-3000:]
    assert kills >= 4
    _check_history(kafka_bootstrap, topic_prefix, "product")
    _check_history(kafka_bootstrap, topic_prefix, "category")


def test_a_document_the_broker_lost_is_emitted_again_on_restart(
    catalog_dsn: str, kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """The document topic's last message for a product is older than what the state
    says was emitted and acknowledged - what a broker that loses acknowledged writes
    leaves (noida-db does, on a restart: docs/faults.md).  A restarted assembler reads
    the versions back, sees the topic behind, and emits the document again."""
    from confluent_kafka import Producer

    from pipeline.documents.reading import _iter_messages
    from pipeline.kafka import producer_config
    from pipeline.topics import doc_topic

    seed_catalog(catalog_dsn, products=30, seed=5)
    state = tmp_path / "a.sqlite"
    topic = doc_topic(topic_prefix, "product")
    with running_reader(catalog_dsn, kafka_bootstrap, topic_prefix):
        with running_assembler(kafka_bootstrap, topic_prefix, state):
            wait_in_sync(catalog_dsn, kafka_bootstrap, topic_prefix)
            with psycopg.connect(catalog_dsn, autocommit=True) as conn:
                pid = _one(conn, "SELECT min(id) FROM products WHERE deleted_at IS NULL")
                conn.execute("UPDATE products SET name = name || ' II' WHERE id = %s", (pid,))
            wait_in_sync(catalog_dsn, kafka_bootstrap, topic_prefix)
        # Stopped.  Put the product's previous document back on top, as if the broker
        # had lost the last one.
        mine = [m for m in _iter_messages(kafka_bootstrap, topic, 60) if int(m.key() or 0) == pid]
        assert len(mine) >= 2, mine
        old = mine[-2]
        producer = Producer(producer_config(kafka_bootstrap))
        producer.produce(topic, key=old.key(), value=old.value(), partition=old.partition(),
                         headers=old.headers())  # fmt: skip
        assert producer.flush(30) == 0
        assert any(f"product {pid}" in d for d in differences(catalog_dsn, kafka_bootstrap,
                                                                topic_prefix)), "precondition"  # fmt: skip
        with running_assembler(kafka_bootstrap, topic_prefix, state):
            wait_in_sync(catalog_dsn, kafka_bootstrap, topic_prefix)


# --------------------------------------------------------------------------- scale-out


def test_two_instances_in_one_group_and_a_rebalance(
    catalog_dsn: str, kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    seed_catalog(catalog_dsn, products=120, seed=13)
    with (
        running_reader(catalog_dsn, kafka_bootstrap, topic_prefix),
        running_assembler(kafka_bootstrap, topic_prefix, tmp_path / "a.sqlite") as a,
    ):
        if True:  # b's lifetime is shorter than a's
            # b leaves the group when it stops: a dynamic member (a static one is only
            # dropped after session.timeout.ms on Kafka, and not at all on noida-db).
            with running_assembler(
                kafka_bootstrap, topic_prefix, tmp_path / "b.sqlite", static_membership=False
            ) as b:
                deadline = time.monotonic() + 60
                while not (a.owned and b.owned) or a.owned & b.owned:
                    assert time.monotonic() < deadline, (a.owned, b.owned)
                    time.sleep(0.2)
                assert a.owned | b.owned == set(range(a.partitions))
                run_edits(catalog_dsn, rate=40, duration=5, seed=2)
                wait_in_sync(catalog_dsn, kafka_bootstrap, topic_prefix)
                assert a.stats["products"] > 0 and b.stats["products"] > 0
            # b left the group: a takes every partition over and stays right.
            deadline = time.monotonic() + 60
            while a.owned != set(range(a.partitions)):
                assert time.monotonic() < deadline, a.owned
                time.sleep(0.2)
            run_edits(catalog_dsn, rate=40, duration=5, seed=3)
            with psycopg.connect(catalog_dsn, autocommit=True) as conn:
                conn.execute("UPDATE brands SET name = name || ' (new)'")
                conn.execute("UPDATE categories SET name = name || ' *' WHERE parent_id IS NULL")
            wait_in_sync(catalog_dsn, kafka_bootstrap, topic_prefix)
    _check_history(kafka_bootstrap, topic_prefix, "product")
