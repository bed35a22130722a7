"""The search sink on each engine (Elasticsearch, OpenSearch: ``search_url`` in
tests/integration/conftest.py): versions, deletes, DLQ, e2e, an outage."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from consumers.runtime import ConsumerRuntime, RuntimeSettings
from consumers.search import mapping
from consumers.search.engine import LABELS, Hit, SearchEngine, connect
from consumers.search.query import search
from consumers.search.sink import SearchSink
from pipeline.demo.edits import run_edits
from pipeline.demo.seed import seed_catalog
from pipeline.documents.model import ProductDocument
from pipeline.documents.reading import latest_documents
from pipeline.documents.reference import expected_documents
from tests.integration.assembler_support import running_assembler, wait_in_sync
from tests.integration.reader_support import running_reader, wait_for
from tests.integration.test_consumer_runtime import _dlq, _produce, _product, running
from tests.unit.test_documents import product_data

pytestmark = pytest.mark.integration


def _runtime(url: str, bootstrap: str, prefix: str, index_prefix: str) -> ConsumerRuntime:
    return ConsumerRuntime(
        SearchSink(connect(url), index_prefix),
        bootstrap=bootstrap,
        topic_prefix=prefix,
        settings=RuntimeSettings(poll_timeout=0.2, backoff_initial=0.05),
    )


def _get(engine: SearchEngine, index_prefix: str, ids: list[int]) -> dict[int, Hit]:
    found = engine.mget(f"{index_prefix}-products", [str(i) for i in ids])
    return {int(i): hit for i, hit in found.items()}


def test_versions_deletes_and_redelivery(
    search_url: str,
    search_engine: SearchEngine,
    kafka_bootstrap: str,
    topic_prefix: str,
    index_prefix: str,
) -> None:
    es = search_engine
    _produce(
        kafka_bootstrap,
        topic_prefix,
        [(1, _product(1, 10, "v10")), (2, _product(2, 20)), (3, _product(3, 30))],
    )
    runtime = _runtime(search_url, kafka_bootstrap, topic_prefix, index_prefix)
    with running(runtime):
        assert runtime.caught_up.wait(60)
        # Older versions after newer ones, a delete, a newer version.
        _produce(
            kafka_bootstrap,
            topic_prefix,
            [(1, _product(1, 5, "older")), (2, None), (3, _product(3, 31, "newer"))],
        )
        wait_for(lambda: runtime.stats["records"] >= 6, 60, "the second batch")
        assert runtime.caught_up.wait(60)
    docs = _get(es, index_prefix, [1, 2, 3])
    assert docs[1].source["name"] == "v10" and docs[1].version == 10
    assert 2 not in docs
    assert docs[3].source["name"] == "newer" and docs[3].version == 31
    assert es.alias_indices(f"{index_prefix}-products")  # the alias -> a generation

    # Redelivering everything (another group, from the beginning) changes nothing.
    replay = ConsumerRuntime(
        SearchSink(connect(search_url), index_prefix),
        bootstrap=kafka_bootstrap,
        topic_prefix=topic_prefix,
        settings=RuntimeSettings(poll_timeout=0.2, group=f"{topic_prefix}-replay"),
    )
    with running(replay):
        assert replay.caught_up.wait(60)
    sink = replay.sink
    assert isinstance(sink, SearchSink)
    assert sink.stats["indexed"] == 0, sink.stats  # ids 1 and 3: 409
    # id 2's delete again: OpenSearch (like Elasticsearch) keeps the delete's version for
    # index.gc_deletes (60 s) and answers 409; the stand-in forgets it and answers 404.
    # Both are "nothing to do".
    assert sink.stats["noop"] + sink.stats["deleted"] == 3 and sink.stats["noop"] >= 2, sink.stats
    if es.engine == "opensearch":
        assert sink.stats["noop"] == 3, sink.stats
    assert _get(es, index_prefix, [1, 2, 3]).keys() == docs.keys()
    assert {i: d.version for i, d in _get(es, index_prefix, [1, 3]).items()} == {1: 10, 3: 31}


def test_index_follows_the_database(
    catalog_dsn: str,
    search_url: str,
    search_engine: SearchEngine,
    kafka_bootstrap: str,
    topic_prefix: str,
    index_prefix: str,
    tmp_path: Path,
) -> None:
    seed_catalog(catalog_dsn, products=40, seed=8)
    es = search_engine
    runtime = _runtime(search_url, kafka_bootstrap, topic_prefix, index_prefix)
    with (
        running_reader(catalog_dsn, kafka_bootstrap, topic_prefix),
        running_assembler(kafka_bootstrap, topic_prefix, tmp_path / "a.sqlite"),
        running(runtime),
    ):
        with psycopg.connect(catalog_dsn, autocommit=True) as conn:
            conn.execute(
                "UPDATE products SET name = 'Renamed one', active = true, brand_id = 1 WHERE id = 1"
            )
            conn.execute("UPDATE products SET deleted_at = now() WHERE id = 2")
            conn.execute("DELETE FROM products WHERE id = 3")
            conn.execute("UPDATE brands SET name = 'Brand X' WHERE id = 1")
        run_edits(catalog_dsn, rate=30, duration=4, seed=12)
        with psycopg.connect(catalog_dsn, autocommit=True) as conn:  # the edits may undo these
            conn.execute("UPDATE brands SET name = 'Brand X' WHERE id = 1")
            row = conn.execute("SELECT min(id) FROM products WHERE deleted_at IS NULL").fetchone()
            assert row is not None
            pid = int(row[0])
            conn.execute(
                "UPDATE products SET name = 'Renamed one', active = true, brand_id = 1 WHERE id = %s",
                (pid,),
            )
        wait_in_sync(catalog_dsn, kafka_bootstrap, topic_prefix)

        def index_matches() -> bool:
            # Content, not just ids: every field as the consumer would index the
            # database's document; every other id ever seen on the topic is absent.
            with psycopg.connect(catalog_dsn) as conn:
                products, _ = expected_documents(conn)
            seen = set(latest_documents(kafka_bootstrap, topic_prefix, "product"))
            docs = _get(es, index_prefix, sorted(seen | set(products)))
            if set(docs) != set(products):
                return False
            for i, p in products.items():
                got = {k: v for k, v in docs[i].source.items() if k != "content_hash"}
                want = mapping.body(p)
                got.pop("version"), want.pop("version")
                if got != want:
                    return False
            return True

        wait_for(index_matches, 60, "the index to equal the database")
        # A real query through `catalog-cdc search`'s function: words, facets, filters.
        es.refresh(f"{index_prefix}-products")
        found = search(es, index_prefix, "Renamed one")
        assert found["hits"] and found["hits"][0]["id"] == pid, found
        branded = search(es, index_prefix, "", brand="Brand X", size=100)
        assert branded["hits"] and all(h["brand"]["name"] == "Brand X" for h in branded["hits"])
        assert [b["key"] for b in branded["facets"]["brands"]] == ["Brand X"]
        with psycopg.connect(catalog_dsn) as conn:
            row = conn.execute(
                "SELECT count(*) FROM products WHERE deleted_at IS NULL AND active AND price <= 50"
            ).fetchone()
        assert row is not None and row[0] > 0
        cheap = search(es, index_prefix, "", price=(None, Decimal("50")), size=100)
        assert cheap["total"] == row[0], cheap["total"]
        assert all(h["price"] <= 50 for h in cheap["hits"])
        assert sum(b["count"] for b in search(es, index_prefix, "")["facets"]["prices"]) > 0
    sink = runtime.sink
    assert isinstance(sink, SearchSink)
    assert sink.stats["indexed"] >= 38 and sink.stats["deleted"] >= 2, sink.stats


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def own_elasticsearch(
    data_dir: Path,
) -> Iterator[tuple[str, Callable[[], None], Callable[[], None]]]:
    """A private Elasticsearch-API server (noida-db, ES only), so that stopping it does
    not stop the stack's Kafka: yields (url, stop, start)."""
    import noida_db

    exe = str(Path(noida_db.__file__).parent / "noida-db")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [exe, "start", "--only", "elasticsearch", "--host", "127.0.0.1",
            "--elasticsearch-port", str(port), "--data-dir", str(data_dir)]  # fmt: skip
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_for(lambda: _answers(url), 30, "the Elasticsearch-API server")

    def stop() -> None:
        proc = procs.pop()
        proc.terminate()
        proc.wait(30)

    start()
    try:
        yield url, stop, start
    finally:
        while procs:
            stop()


def _answers(url: str) -> bool:
    try:
        engine = connect(url, "elasticsearch", timeout=2)
        try:
            return bool(engine.info())
        finally:
            engine.close()
    except Exception:  # noqa: BLE001 - not up yet
        return False


def test_elasticsearch_down_for_a_while_loses_nothing(
    kafka_bootstrap: str, topic_prefix: str, index_prefix: str, tmp_path: Path
) -> None:
    """On the Elasticsearch-API stand-in (a private one, so that stopping it leaves the
    stack's broker up); OpenSearch's outages are the fault suite's (docs/faults.md)."""
    with own_elasticsearch(tmp_path / "es") as (url, stop_es, start_es):
        runtime = ConsumerRuntime(
            SearchSink(connect(url, "elasticsearch", timeout=5), index_prefix),
            bootstrap=kafka_bootstrap,
            topic_prefix=topic_prefix,
            settings=RuntimeSettings(poll_timeout=0.2, backoff_initial=0.2, backoff_max=2.0),
        )
        _produce(kafka_bootstrap, topic_prefix, [(i, _product(i, i)) for i in range(1, 21)])
        with running(runtime):
            assert runtime.caught_up.wait(60)
            stop_es()
            _produce(
                kafka_bootstrap,
                topic_prefix,
                [(i, _product(i, 100 + i, "while down")) for i in range(1, 41)],
            )
            time.sleep(30)  # down for 30 s: the runtime retries, commits nothing
            assert runtime.stats["retries"] > 0
            start_es()
            wait_for(lambda: runtime.caught_up.is_set(), 90, "the consumer to catch up")
        docs = _get(connect(url, "elasticsearch"), index_prefix, list(range(1, 41)))
        assert sorted(docs) == list(range(1, 41))
        assert all(d.source["name"] == "while down" for d in docs.values())
        assert all(d.version == 100 + i for i, d in docs.items())


def test_a_refused_document_is_dead_lettered_and_the_rest_indexed(
    search_url: str,
    search_engine: SearchEngine,
    kafka_bootstrap: str,
    topic_prefix: str,
    index_prefix: str,
) -> None:
    # Two variants at the integer maximum: a valid document whose total_quantity is
    # beyond the mapping's integer range, which the engine refuses (400).
    big = 2**31 - 1
    variants = [
        {"sku": f"BIG-{i}", "price": Decimal("1.00"), "quantity": big, "attributes": {}}
        for i in range(2)
    ]
    huge = ProductDocument.model_validate(
        product_data(id=7, version=3, source_ts_ms=3, variants=variants, total_quantity=2 * big)
    )
    _produce(kafka_bootstrap, topic_prefix, [(6, _product(6, 2)), (7, huge), (8, _product(8, 4))])
    runtime = _runtime(search_url, kafka_bootstrap, topic_prefix, index_prefix)
    with running(runtime):
        assert runtime.caught_up.wait(60)
    docs = _get(search_engine, index_prefix, [6, 7, 8])
    assert sorted(docs) == [6, 8]
    dead = _dlq(kafka_bootstrap, f"{topic_prefix}.dlq.search")
    assert [m.key() for m in dead] == [b"7"]
    label = LABELS[search_engine.engine]
    assert f"{label} refused it (400)" in dict(dead[0].headers())["error"].decode()
