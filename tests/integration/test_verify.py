"""``catalog-cdc verify`` on the real stack: a sink in sync, drift injected by hand, repair.

PostgreSQL (~40 products) -> reader -> assembler -> the consumer, until the target
equals the database (checked here without the verifier); the pipeline is stopped.  Then
``verify`` says in sync (exit 0); one document deleted, one altered and one extra added
by hand make it say out of sync with exactly those three (exit 1, the differences name
the ids and the field); ``verify --repair`` fixes them through the consumer's own sink
and says in sync (exit 0).  For search (on each engine: Elasticsearch, OpenSearch) and
edge-kv (SQLite backend).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

from consumers.edge_kv.backends.sqlite import SqliteBackend
from consumers.edge_kv.layout import PULSE
from consumers.edge_kv.sink import EdgeKvSink
from consumers.edge_kv.verify import database_catalog
from consumers.runtime import ConsumerRuntime, RuntimeSettings
from consumers.search import mapping
from consumers.search.engine import SearchEngine, connect
from consumers.search.sink import SearchSink
from pipeline import cli
from pipeline.demo.seed import seed_catalog
from pipeline.documents.reference import expected_documents
from tests.integration.assembler_support import running_assembler, wait_in_sync
from tests.integration.reader_support import running_reader, wait_for
from tests.integration.test_consumer_runtime import running

pytestmark = pytest.mark.integration

PAGE_SIZE = 5


def _verify(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()
    status = cli.main(["verify", *args, "--json", "--limit", "50"])
    out = capsys.readouterr().out
    return status, json.loads(out)


def _counts(result: dict[str, Any], cls: str) -> dict[str, int]:
    counts: dict[str, int] = result["classes"][cls]
    return counts


def _by_status(result: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for d in result["differences"]:
        out.setdefault(d["status"], []).append(d)
    return out


def _runtime(sink: Any, bootstrap: str, prefix: str) -> ConsumerRuntime:
    return ConsumerRuntime(
        sink,
        bootstrap=bootstrap,
        topic_prefix=prefix,
        settings=RuntimeSettings(poll_timeout=0.2, backoff_initial=0.05),
    )


def test_verify_and_repair_search(
    catalog_dsn: str,
    search_url: str,
    search_engine: SearchEngine,
    kafka_bootstrap: str,
    topic_prefix: str,
    index_prefix: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.integration.search_support import delete_doc, get_doc, put_doc

    seed_catalog(catalog_dsn, products=40, seed=31)
    es, es_url = search_engine, search_url
    alias = mapping.alias(index_prefix)
    with psycopg.connect(catalog_dsn) as conn:
        products, _ = expected_documents(conn)

    def index_matches() -> bool:  # independent of the verifier: mget every id
        found = es.mget(alias, [str(i) for i in products])
        got = {int(i): hit.source for i, hit in found.items()}
        if got.keys() != products.keys():
            return False
        for pid, doc in products.items():
            want = mapping.body(doc)
            have = {k: v for k, v in got[pid].items() if k not in ("content_hash", "version")}
            want.pop("version")
            if have != want:
                return False
        return es.count(alias) == len(products)

    with (
        running_reader(catalog_dsn, kafka_bootstrap, topic_prefix),
        running_assembler(kafka_bootstrap, topic_prefix, tmp_path / "a.sqlite"),
        running(_runtime(SearchSink(connect(es_url), index_prefix), kafka_bootstrap, topic_prefix)),
    ):
        wait_in_sync(catalog_dsn, kafka_bootstrap, topic_prefix)
        wait_for(lambda: es.alias_exists(alias) and index_matches(), 60, "the index")

    args = ("search", "--dsn", catalog_dsn, "--option", f"url={es_url}")
    args += ("--option", f"index_prefix={index_prefix}")
    status, result = _verify(capsys, *args)
    assert status == 0, result
    assert result["status"] == "in sync"
    assert _counts(result, "product") == {
        "in sync": len(products), "out of sync": 0, "missing": 0, "extra": 0
    }  # fmt: skip

    # Drift by hand, straight in the engine (no external versions).
    [index] = es.alias_indices(alias)
    deleted, altered = sorted(products)[:2]
    delete_doc(es_url, index, str(deleted))
    found = get_doc(es_url, index, str(altered))
    assert found is not None
    source = found["_source"]
    put_doc(es_url, index, str(altered), {**source, "name": "Edited by hand"})
    extra = max(products) + 1000
    put_doc(es_url, index, str(extra), {**source, "id": extra})
    es.refresh(index)

    status, result = _verify(capsys, *args)
    assert status == 1, result
    assert result["status"] == "out of sync"
    assert _counts(result, "product") == {
        "in sync": len(products) - 2, "out of sync": 1, "missing": 1, "extra": 1
    }  # fmt: skip
    diffs = _by_status(result)
    assert [d["id"] for d in diffs["missing"]] == [deleted]
    assert [d["id"] for d in diffs["extra"]] == [extra]
    [changed] = diffs["out of sync"]
    assert changed["id"] == altered
    assert [f["field"] for f in changed["fields"]] == ["name"]
    assert changed["fields"][0]["sink"] == '"Edited by hand"'
    assert changed["fields"][0]["db"] == json.dumps(products[altered].name, ensure_ascii=False)

    # The hand delete leaves a tombstone for index.gc_deletes on a real engine: the repair
    # writes above the version the document topic carried (read with this topic prefix).
    monkeypatch.setenv("CATALOG_CDC_TOPIC_PREFIX", topic_prefix)
    status, result = _verify(capsys, *args, "--repair")
    assert status == 0, (result.get("repair"), result.get("after_repair"))
    assert result["repair"]["reemitted"] == 2 and result["repair"]["deleted"] == 1
    assert result["after_repair"]["status"] == "in sync"
    assert index_matches()  # checked without the verifier too
    assert get_doc(es_url, index, str(extra)) is None
    # The repaired documents carry a version above what was there (external versioning).
    repaired = get_doc(es_url, index, str(altered))
    assert repaired is not None and repaired["_version"] > 1


def test_verify_and_repair_edge_kv(
    catalog_dsn: str,
    kafka_bootstrap: str,
    topic_prefix: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    seed_catalog(catalog_dsn, products=40, seed=32)
    path, state = tmp_path / "kv.sqlite", tmp_path / "kv.state"
    backend = SqliteBackend(path)

    def want() -> dict[str, str]:
        with psycopg.connect(catalog_dsn) as conn:
            from consumers.edge_kv.layout import full_layout

            return full_layout(database_catalog(conn, PAGE_SIZE))

    def contents() -> dict[str, str]:
        out = {}
        for key in backend.list(""):
            value = backend.get(key)
            if key != PULSE and value is not None:
                out[key] = value
        return out

    sink = EdgeKvSink(SqliteBackend(path), state, page_size=PAGE_SIZE)
    with (
        running_reader(catalog_dsn, kafka_bootstrap, topic_prefix),
        running_assembler(kafka_bootstrap, topic_prefix, tmp_path / "a.sqlite"),
        running(_runtime(sink, kafka_bootstrap, topic_prefix)),
    ):
        wait_in_sync(catalog_dsn, kafka_bootstrap, topic_prefix)
        wait_for(lambda: contents() == want(), 60, "the KV store to equal the database's layout")

    args = ("edge-kv", "--dsn", catalog_dsn, "--option", "backend=sqlite")
    args += ("--option", f"path={path}", "--option", f"state={state}")
    args += ("--option", f"page_size={PAGE_SIZE}")
    status, result = _verify(capsys, *args)
    assert status == 0, result
    layout = want()
    assert sum(c["in sync"] for c in result["classes"].values()) == len(layout)

    # Drift by hand in the store: a product key deleted, a listing page altered, a stray key.
    product_key = sorted(k for k in layout if ":product:" in k)[0]
    page_key = sorted(k for k in layout if ":products:category:" in k)[0]
    page = json.loads(layout[page_key])
    page["products"] = page["products"][1:]
    store = product_key.split(":", 1)[0]
    stray = f"{store}:product:left-over-by-hand"
    pulse = backend.get(PULSE)
    backend.apply({page_key: json.dumps(page), stray: "{}"}, [product_key])

    status, result = _verify(capsys, *args)
    assert status == 1, result
    assert result["status"] == "out of sync"
    assert _counts(result, "product")["missing"] == 1
    assert _counts(result, "product")["extra"] == 1
    assert _counts(result, "listing page")["out of sync"] == 1
    totals = {
        s: sum(c[s] for c in result["classes"].values())
        for s in ("out of sync", "missing", "extra")
    }
    assert totals == {"out of sync": 1, "missing": 1, "extra": 1}
    diffs = _by_status(result)
    assert [d["id"] for d in diffs["missing"]] == [product_key]
    assert [d["id"] for d in diffs["extra"]] == [stray]
    [changed] = diffs["out of sync"]
    assert changed["id"] == page_key and [f["field"] for f in changed["fields"]] == ["products"]

    status, result = _verify(capsys, *args, "--repair")
    assert status == 0, result
    assert result["repair"]["key_writes"] == 2 and result["repair"]["key_deletes"] == 1
    assert result["repair"]["reemitted"] == 0  # the sink's own state was right
    assert contents() == want()
    assert backend.get(PULSE) not in (None, pulse)  # storefronts see the change

    def indexed_keys() -> set[str]:  # what the sink's state says the store holds
        again = EdgeKvSink(SqliteBackend(path), state, page_size=PAGE_SIZE)
        again.open()
        try:
            return set(again.index.entries)
        finally:
            again.close()

    assert indexed_keys() == set(layout)

    # The database moves on while the consumer is stopped: the sink's state is behind.
    # Repair re-emits the documents through the sink (step 1), no key needs step 2.
    with psycopg.connect(catalog_dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT id FROM products WHERE active AND deleted_at IS NULL ORDER BY id LIMIT 2"
        ).fetchall()
        (renamed,), (gone,) = rows
        conn.execute("UPDATE products SET name = 'Renamed while stopped' WHERE id = %s", (renamed,))
        conn.execute("UPDATE products SET deleted_at = now() WHERE id = %s", (gone,))
    status, result = _verify(capsys, *args)
    assert status == 1 and _counts(result, "product")["out of sync"] == 1, result
    assert _counts(result, "product")["extra"] == 1, result
    status, result = _verify(capsys, *args, "--repair")
    assert status == 0, result
    # the product, and the categories whose product_count changed
    assert result["repair"]["reemitted"] >= 1 and result["repair"]["deleted"] == 1, result
    assert result["repair"]["key_writes"] == 0 and result["repair"]["key_deletes"] == 0
    assert contents() == want()
    assert indexed_keys() == set(want())
