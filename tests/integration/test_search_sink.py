"""The search sink on the stack's Elasticsearch-API server: versions, deletes, DLQ, e2e."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from elasticsearch import Elasticsearch

from consumers.runtime import ConsumerRuntime, RuntimeSettings
from consumers.search.query import search
from consumers.search.sink import SearchSink
from pipeline.assembler.reference import expected_documents
from pipeline.demo.seed import seed_catalog
from tests.integration.assembler_support import running_assembler, wait_in_sync
from tests.integration.reader_support import running_reader, wait_for
from tests.integration.test_consumer_runtime import _produce, _product, running

pytestmark = pytest.mark.integration


def _runtime(es_url: str, bootstrap: str, prefix: str, index_prefix: str) -> ConsumerRuntime:
    return ConsumerRuntime(
        SearchSink(Elasticsearch(es_url), index_prefix),
        bootstrap=bootstrap,
        topic_prefix=prefix,
        settings=RuntimeSettings(poll_timeout=0.2, backoff_initial=0.05),
    )


def _get(es: Elasticsearch, index_prefix: str, ids: list[int]) -> dict[int, Any]:
    found = es.mget(index=f"{index_prefix}-products", ids=[str(i) for i in ids])
    return {int(d["_id"]): d for d in found["docs"] if d.get("found")}


def test_versions_deletes_and_redelivery(
    es_url: str, kafka_bootstrap: str, topic_prefix: str, index_prefix: str
) -> None:
    es = Elasticsearch(es_url)
    _produce(
        kafka_bootstrap,
        topic_prefix,
        [(1, _product(1, 10, "v10")), (2, _product(2, 20)), (3, _product(3, 30))],
    )
    runtime = _runtime(es_url, kafka_bootstrap, topic_prefix, index_prefix)
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
    assert docs[1]["_source"]["name"] == "v10" and docs[1]["_version"] == 10
    assert 2 not in docs
    assert docs[3]["_source"]["name"] == "newer" and docs[3]["_version"] == 31
    assert es.indices.get_alias(name=f"{index_prefix}-products")  # the alias -> a generation


def test_index_follows_the_database(
    catalog_dsn: str,
    es_url: str,
    kafka_bootstrap: str,
    topic_prefix: str,
    index_prefix: str,
    tmp_path: Path,
) -> None:
    seed_catalog(catalog_dsn, products=40, seed=8)
    es = Elasticsearch(es_url)
    runtime = _runtime(es_url, kafka_bootstrap, topic_prefix, index_prefix)
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
        wait_in_sync(catalog_dsn, kafka_bootstrap, topic_prefix)

        def index_matches() -> bool:
            with psycopg.connect(catalog_dsn) as conn:
                products, _ = expected_documents(conn)
            docs = _get(es, index_prefix, list(range(1, 60)))
            if set(docs) != set(products):
                return False
            return all(
                docs[i]["_source"]["name"] == p.name
                and (docs[i]["_source"]["brand"] or {}).get("name")
                == (p.brand.name if p.brand else None)
                and docs[i]["_source"]["price"] == str(p.price)
                for i, p in products.items()
            )

        wait_for(index_matches, 60, "the index to equal the database")
        # A real query through `catalog-cdc search`'s function: words, facets, filters.
        es.indices.refresh(index=f"{index_prefix}-products")
        found = search(es, index_prefix, "Renamed one")
        assert found["hits"] and found["hits"][0]["id"] == 1, found
        branded = search(es, index_prefix, "", brand="Brand X", size=100)
        assert branded["hits"] and all(h["brand"]["name"] == "Brand X" for h in branded["hits"])
        assert [b["key"] for b in branded["facets"]["brands"]] == ["Brand X"]
        cheap = search(es, index_prefix, "", price=(None, Decimal("20")), size=100)
        assert all(Decimal(h["price"]) <= 20 for h in cheap["hits"])
    sink = runtime.sink
    assert isinstance(sink, SearchSink)
    assert sink.stats["indexed"] >= 38 and sink.stats["deleted"] >= 2
