"""The edge KV consumer end to end on its three backends: SQLite, Redis, the KV REST API.

PostgreSQL -> reader -> assembler -> ``EdgeKvSink`` on each backend at once (three
consumer groups); after the edits every backend holds exactly the layout computed from
the database (``expected_documents`` + SQL for ``stores`` and ``cms_pages``).  Then:
no-op redeliveries leave ``pulse`` alone, a change moves it; a burst of 1,000 edits to
one product keeps the REST contract server free of same-second writes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import Producer

from consumers.edge_kv.backends.base import KvBackend
from consumers.edge_kv.backends.redis import RedisBackend
from consumers.edge_kv.backends.rest import RestBackend
from consumers.edge_kv.backends.sqlite import SqliteBackend
from consumers.edge_kv.layout import PULSE, Catalog, CmsRow, StoreRow, full_layout, product_value
from consumers.edge_kv.sink import EdgeKvSink
from consumers.runtime import ConsumerRuntime, RuntimeSettings
from pipeline.demo.edits import run_edits
from pipeline.demo.seed import seed_catalog
from pipeline.documents.reading import document_codec, latest_documents
from pipeline.documents.reference import expected_documents
from pipeline.documents.wire import doc_key, headers_of
from pipeline.kafka import TopicSpec, ensure_topics, producer_config
from pipeline.topics import doc_topic
from tests.contracts.kv_rest import Server
from tests.integration.assembler_support import running_assembler, wait_in_sync
from tests.integration.reader_support import running_reader, wait_for
from tests.integration.test_consumer_runtime import _dlq, _produce, _product, running

pytestmark = pytest.mark.integration

PAGE_SIZE = 5  # small pages: several per category with 40 products
KEY = "main:product:barista-coffee-machine-7"  # the url key of tests' _product()


def expected_layout(dsn: str, page_size: int = PAGE_SIZE) -> dict[str, str]:
    """The layout the database says the store must hold (without ``pulse``)."""
    with psycopg.connect(dsn) as conn:
        products, categories = expected_documents(conn)
        stores = conn.execute("SELECT id, code, name, currency, locale FROM stores").fetchall()
        pages = conn.execute(
            "SELECT id, store_id, identifier, title, content, active, updated_at FROM cms_pages"
        ).fetchall()
    catalog = Catalog(page_size)
    for c in categories.values():
        catalog.put("category", c.id, c)
    for p in products.values():
        catalog.put("product", p.id, p)
    for sid, code, name, currency, locale in stores:
        catalog.put("store", sid, StoreRow(sid, code, name, currency.strip(), locale))
    for pid, sid, ident, title, content, active, updated in pages:
        row = CmsRow(pid, sid, ident, title, content, active, updated.astimezone(UTC).isoformat())
        catalog.put("cms", pid, row)
    return full_layout(catalog)


def contents(backend: KvBackend) -> dict[str, str]:
    out = {}
    for key in backend.list(""):
        value = backend.get(key)
        assert value is not None
        out[key] = value
    return out


@contextmanager
def three_backends(
    tmp_path: Path, bootstrap: str, redis_url: str, prefix: str, kv: Server
) -> Iterator[dict[str, tuple[ConsumerRuntime, KvBackend]]]:
    """An edge-kv consumer on each backend (own group, own state), and a reader backend."""
    made: dict[str, tuple[KvBackend, KvBackend]] = {
        "sqlite": (SqliteBackend(tmp_path / "kv.sqlite"), SqliteBackend(tmp_path / "kv.sqlite")),
        "redis": (
            RedisBackend(redis_url, namespace=f"{prefix}:"),
            RedisBackend(redis_url, namespace=f"{prefix}:"),
        ),
        "rest": (
            RestBackend(kv.api_url, kv.account, kv.namespace, kv.token),
            RestBackend(kv.api_url, kv.account, kv.namespace, kv.token),
        ),
    }
    out: dict[str, tuple[ConsumerRuntime, KvBackend]] = {}
    with ExitStack() as stack:
        for name, (backend, reader) in made.items():
            sink = EdgeKvSink(backend, tmp_path / f"{name}.state", page_size=PAGE_SIZE)
            runtime = ConsumerRuntime(
                sink,
                bootstrap=bootstrap,
                topic_prefix=prefix,
                settings=RuntimeSettings(
                    poll_timeout=0.2, backoff_initial=0.05, group=f"{prefix}-edge-kv-{name}"
                ),
            )
            stack.enter_context(running(runtime))
            reader.open()
            stack.callback(reader.close)
            out[name] = (runtime, reader)
        yield out


def _pulses(backends: dict[str, tuple[ConsumerRuntime, KvBackend]]) -> dict[str, str | None]:
    return {name: b.get(PULSE) for name, (_, b) in backends.items()}


def _settled_pulses(
    backends: dict[str, tuple[ConsumerRuntime, KvBackend]],
) -> dict[str, str | None]:
    """The pulses once every sink is done with its last batch.  Equal content is not
    enough: the REST backend sends ``pulse`` last and may wait up to 1 s for it (the
    seed's one write per key per second), so a batch can be out but for its pulse.
    Settled = each store's pulse is its sink's confirmed one, unchanged over 1.5 s."""
    seen: dict[str, str | None] = {}

    def settled() -> bool:
        first = _pulses(backends)
        time.sleep(1.5)
        seen.update(_pulses(backends))
        confirmed = {name: getattr(r.sink, "pulse", None) for name, (r, _) in backends.items()}
        return first == seen == confirmed

    wait_for(settled, 30, "the pulses to settle")
    return seen


def test_every_backend_follows_the_database(
    catalog_dsn: str, kafka_bootstrap: str, topic_prefix: str, redis_url: str, tmp_path: Path
) -> None:
    seed_catalog(catalog_dsn, products=40, seed=21)
    with psycopg.connect(catalog_dsn) as conn:
        row = conn.execute(
            "SELECT p.id, s.code, p.url_key FROM products p JOIN stores s ON s.id = p.store_id "
            "WHERE p.active AND p.deleted_at IS NULL ORDER BY p.id LIMIT 1"
        ).fetchone()
    assert row is not None
    renamed_id, store, old_url_key = row
    old_key = f"{store}:product:{old_url_key}"
    with (
        Server() as kv,
        running_reader(catalog_dsn, kafka_bootstrap, topic_prefix),
        running_assembler(kafka_bootstrap, topic_prefix, tmp_path / "a.sqlite"),
        three_backends(tmp_path, kafka_bootstrap, redis_url, topic_prefix, kv) as backends,
    ):
        assert isinstance(kv, Server)
        wait_for(lambda: all(b.get(old_key) for _, b in backends.values()), 60, "the first product")
        with psycopg.connect(catalog_dsn, autocommit=True) as conn:
            conn.execute(
                "UPDATE products SET url_key = 'renamed-for-the-test' WHERE id = %s", (renamed_id,)
            )
            conn.execute("UPDATE stores SET name = 'Renamed store' WHERE code = %s", (store,))
            conn.execute(
                "UPDATE cms_pages SET active = false WHERE id = (SELECT min(id) FROM cms_pages)"
            )
        run_edits(catalog_dsn, rate=30, duration=4, seed=5)
        wait_in_sync(catalog_dsn, kafka_bootstrap, topic_prefix)

        def equal() -> bool:
            want = expected_layout(catalog_dsn)
            return all(
                {k: v for k, v in contents(b).items() if k != PULSE} == want
                for _, b in backends.values()
            )

        wait_for(equal, 60, "every backend to equal the database's layout")
        want = expected_layout(catalog_dsn)
        for part in (":config", ":categories", ":cms:", ":product:", ":products:category:"):
            assert sum(part in k for k in want) >= 1, part
        assert sum(":product:" in k for k in want) >= 25
        with psycopg.connect(catalog_dsn) as conn:
            products, _ = expected_documents(conn)
        for name, (_, b) in backends.items():
            got = contents(b)
            assert old_key not in got, name  # the rename left no stale key
            assert got.get(f"{store}:config") and "Renamed store" in got[f"{store}:config"]
            # a few facts checked without the layout code
            doc = products.get(renamed_id)
            if doc is not None and doc.active:
                key = f"{doc.store.code}:product:renamed-for-the-test"
                assert json.loads(got[key]) == json.loads(product_value(doc)), name
            pages = [k for k in got if ":products:category:" in k]
            assert pages and all(len(json.loads(got[k])["products"]) <= PAGE_SIZE for k in pages)
        assert kv.state()["violations"] == []

        # No-op redeliveries (the latest documents again, same versions): pulse stays.
        pulses = _settled_pulses(backends)
        assert all(pulses.values()), pulses
        latest = latest_documents(kafka_bootstrap, topic_prefix, "product")
        codec = document_codec(kafka_bootstrap, topic_prefix)
        producer = Producer(producer_config(kafka_bootstrap))
        for m in list(latest.values())[:20]:
            producer.produce(
                doc_topic(topic_prefix, "product"),
                key=doc_key(m.id),
                value=None if m.doc is None else codec.encode(m.doc),
                partition=m.partition,
                headers=headers_of("product", m.version, m.source_ts_ms),
            )
        assert producer.flush(30) == 0
        before = {n: r.stats["records"] for n, (r, _) in backends.items()}
        wait_for(
            lambda: all(r.stats["records"] >= before[n] + 20 for n, (r, _) in backends.items()),
            30,
            "the redeliveries",
        )
        assert _pulses(backends) == pulses
        # A real change moves every pulse.
        with psycopg.connect(catalog_dsn, autocommit=True) as conn:
            conn.execute("UPDATE products SET price = price + 1 WHERE id = %s", (renamed_id,))
        wait_for(
            lambda: all(p != pulses[n] for n, p in _pulses(backends).items()), 30, "new pulses"
        )
        wait_for(lambda: equal(), 30, "the price change")
        assert kv.state()["violations"] == []


def test_burst_to_one_product_on_rest(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """1,000 versions of one product at once, read in batches of 100 within a second:
    at most one write a second per key, the later batches held back (not skipped).
    (Produced in one go: produced round by round, on a loaded machine the rounds came
    more than a second apart and nothing had to be held back.)"""
    with Server() as kv:
        assert isinstance(kv, Server)
        backend = RestBackend(kv.api_url, kv.account, kv.namespace, kv.token)
        runtime = ConsumerRuntime(
            EdgeKvSink(backend, tmp_path / "rest.state"),
            bootstrap=kafka_bootstrap,
            topic_prefix=topic_prefix,
            settings=RuntimeSettings(poll_timeout=0.1, backoff_initial=0.05, batch_size=100),
        )
        # No reader or assembler here: the other topics the sink reads, empty.
        ensure_topics(
            kafka_bootstrap,
            [TopicSpec(f"{topic_prefix}.public.{t}", 1) for t in EdgeKvSink.raw_tables]
            + [TopicSpec(doc_topic(topic_prefix, "category"), 1)],
        )
        long_key = _product(2, 1).model_copy(update={"url_key": "x" * 600})
        _produce(kafka_bootstrap, topic_prefix, [(2, long_key)])
        with running(runtime):
            assert runtime.caught_up.wait(60), "the consumer did not start"  # past product 2
            items: list[tuple[int, Any]] = [
                (1, _product(1, v).model_copy(update={"price": Decimal(v).scaleb(-2)}))
                for v in range(1, 1001)
            ]
            _produce(kafka_bootstrap, topic_prefix, items)
            wait_for(
                lambda: json.loads(kv.state()["keys"].get(KEY, "{}")).get("price") == "10.00",
                30,
                "the last version",
            )
            assert runtime.caught_up.wait(30)
        state = kv.state()
        assert state["violations"] == [], state["violations"][:5]
        assert json.loads(state["keys"][KEY])["price"] == "10.00"
        assert state["writes"][KEY] < 30, state["writes"]
        assert state["writes"][PULSE] < 30, state["writes"]
        assert backend.stats["waits"] > 0  # hot keys were held back, not sent twice a second
        dead = _dlq(kafka_bootstrap, f"{topic_prefix}.dlq.edge-kv")
        reasons = [dict(m.headers())["error"].decode() for m in dead]
        assert any("product 2" in r and "url_key" in r for r in reasons), reasons
        assert not any(k.startswith("main:product:xxx") for k in state["keys"])


def test_rest_backend_rules_against_the_contract_server() -> None:
    """No stack needed: auth, transient retries that resend only what is unconfirmed,
    a hot key held back a second, list/get with cursors."""

    from consumers.contract import SinkError, TransientSinkError

    with Server(write_interval=1.0) as kv:
        assert isinstance(kv, Server)
        bad = RestBackend(kv.api_url, kv.account, kv.namespace, "wrong")
        with pytest.raises(SinkError, match="token"):
            bad.open()
        bad.close()
        b = RestBackend(kv.api_url, kv.account, kv.namespace, kv.token)
        b.open()
        b.apply({f"k:{i:04d}": str(i) for i in range(1500)} | {PULSE: "p1"}, ())
        assert b.list("k:") == [f"k:{i:04d}" for i in range(1500)]  # two pages of keys
        assert b.get("k:0007") == "7" and b.get("missing") is None
        kv.fail_next(503)
        with pytest.raises(TransientSinkError):
            b.apply({"a": "1"}, ["k:0001"])
        b.apply({"a": "1", PULSE: "p2"}, ["k:0001"])  # pulse may be < 1 s old: it waits
        state = kv.state()  # (no timing asserted: the server counts violations itself)
        assert state["violations"] == [] and state["keys"][PULSE] == "p2"
        assert "k:0001" not in state["keys"] and state["keys"]["a"] == "1"
        b.close()
