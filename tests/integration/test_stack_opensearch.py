"""The stack's OpenSearch 2.19 node (pipeline/stack/opensearch.py), checked for real.

A module-scoped node of its own in a temporary directory (the jars from the shared
Maven cache, fetched on first use), then what the search consumer relies on, through
opensearch-py: the index template and explicit mapping of consumers/search/mapping.py,
bulk with external versioning, alias swaps, the query of consumers/search/query.py,
delete-then-older-version, speed on 10k documents, RSS; what elasticsearch-py says to
it; one-line start-up failures; SIGTERM and kill -9 with a restart on the same data.

The figures are printed (``pytest -s``) and recorded as test properties.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from opensearchpy import OpenSearch, helpers
from opensearchpy.exceptions import ConflictError, NotFoundError, RequestError

from consumers.search import mapping
from pipeline.documents.model import (
    BrandRef,
    CategoryRef,
    ProductDocument,
    StoreRef,
    Variant,
)
from pipeline.errors import StackError
from pipeline.stack.maven import cache_root
from pipeline.stack.opensearch import (
    OPENSEARCH_VERSION,
    POM,
    OpenSearchService,
)
from pipeline.stack.state import ServiceState

pytestmark = pytest.mark.integration

PLUGINS = {
    "org.opensearch.transport.Netty4Plugin",
    "org.opensearch.index.mapper.MapperExtrasPlugin",
    "org.opensearch.analysis.common.CommonAnalysisPlugin",
    "org.opensearch.painless.PainlessPlugin",
    "org.opensearch.index.reindex.ReindexPlugin",
    "org.opensearch.join.ParentJoinPlugin",
}
Record = Callable[[str, object], None]


@dataclass
class Node:
    svc: OpenSearchService
    state: ServiceState
    start_seconds: float

    @property
    def url(self) -> str:
        return self.svc.url(self.state)

    def client(self) -> OpenSearch:
        return OpenSearch(self.url, timeout=60)


def _jars_cached(root: Path | None = None) -> bool:
    """Some OpenSearch classpath already fetched (pipeline/stack/maven.py's layout)."""
    return any(((root or cache_root()) / "classpaths").glob("opensearch-*/lib"))


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def _figure(record: Record, name: str, value: object) -> None:
    record(name, value)
    print(f"figure {name}={value}")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    if not shutil.which("java") and not os.environ.get("JAVA_HOME"):
        pytest.skip("no Java (java on PATH or JAVA_HOME): the OpenSearch node needs Java 17")
    if not shutil.which("mvn") and not _jars_cached():
        pytest.skip("no Maven (mvn) and no cached OpenSearch jars: cannot fetch the node")
    svc = OpenSearchService(tmp_path_factory.mktemp("opensearch-stack"))
    state = ServiceState()
    started = time.monotonic()
    svc.start(state)
    try:
        svc.wait_ready(state)
        yield Node(svc, state, time.monotonic() - started)
    finally:
        svc.stop(state)


@pytest.fixture
def client(node: Node) -> Iterator[OpenSearch]:
    with node.client() as c:
        yield c


def product(
    pid: int,
    name: str,
    *,
    brand: str,
    category: tuple[str, ...],
    price: str,
    skus: dict[str, str],
    active: bool = True,
) -> ProductDocument:
    variants = tuple(
        Variant(sku=sku, price=Decimal(p), quantity=pid % 5, attributes={"size": "M"})
        for sku, p in skus.items()
    )
    return ProductDocument(
        id=pid,
        store=StoreRef(id=1, code="main"),
        reference=f"REF-{pid}",
        name=name,
        description=f"{name}: a product for the OpenSearch checks",
        url_key=f"p-{pid}",
        price=Decimal(price),
        list_price=Decimal(price) + 10,
        active=active,
        brand=BrandRef(id=len(brand), name=brand),
        categories=(
            CategoryRef(
                id=len(category), name=category[-1], url_key="c", path=category, position=0
            ),
        ),
        variants=variants,
        total_quantity=sum(v.quantity for v in variants),
        images=(),
        technical_data=(),
        ean13="",
        weight=None,
        tags=("new",),
        updated_at=datetime(2026, 1, 1, tzinfo=UTC),
        version=pid,
        source_ts_ms=0,
    )


CATALOG = [
    product(1, "Red running shoe", brand="Acme", category=("Shoes", "Running"), price="19.99",
            skus={"RS-1": "19.99", "RS-2": "24.50"}),
    product(2, "Blue trail shoe", brand="Acme", category=("Shoes", "Trail"), price="89.00",
            skus={"TS-1": "89.00"}),
    product(3, "Wool hiking sock", brand="Peak", category=("Socks",), price="12.00",
            skus={"WS-1": "12.00", "WS-2": "14.00"}),
    product(4, "Old red sandal", brand="Peak", category=("Shoes",), price="640.00",
            skus={"OS-1": "640.00"}, active=False),
]  # fmt: skip


def _with_index(client: OpenSearch, prefix: str) -> str:
    """The project's template, one generation behind the alias, CATALOG indexed."""
    client.indices.put_index_template(name=mapping.alias(prefix), body=mapping.template(prefix))
    index = mapping.generation(prefix, 1)
    client.indices.create(index=index)
    client.indices.put_alias(index=index, name=mapping.alias(prefix))
    actions = [
        {"_index": index, "_id": str(d.id), "_source": mapping.body(d), "version": d.version,
         "version_type": "external"}
        for d in CATALOG
    ]  # fmt: skip
    helpers.bulk(client, actions, refresh=True)
    return index


# ------------------------------------------------------------------------------ the node


def test_node_reports_opensearch_with_its_plugins(
    node: Node, client: OpenSearch, record_property: Record
) -> None:
    info = client.info()
    assert info["version"]["distribution"] == "opensearch"
    assert info["version"]["number"] == OPENSEARCH_VERSION
    plugins = {row["component"] for row in client.cat.plugins(format="json")}
    assert plugins == PLUGINS
    assert client.cluster.health()["status"] == "green"
    _figure(record_property, "start_to_answer_s", round(node.start_seconds, 1))
    _figure(record_property, "idle_rss_mb", round(_rss_mb(node.state.pid or 0)))


def test_elasticsearch_py_refuses_it(node: Node) -> None:
    from elasticsearch import Elasticsearch, UnsupportedProductError

    with Elasticsearch(node.url, request_timeout=5) as es, pytest.raises(UnsupportedProductError):
        es.info()


# ------------------------------------------------------------------- mapping and writes


def test_template_and_explicit_mapping_of_the_search_consumer(client: OpenSearch) -> None:
    index = _with_index(client, "os-map")
    props = client.indices.get_mapping(index=index)[index]["mappings"]["properties"]
    assert props["price"] == {"type": "scaled_float", "scaling_factor": 100.0}
    assert props["name"] == {"type": "text", "fields": {"keyword": {"type": "keyword"}}}
    assert props["variants"]["type"] == "nested"
    assert (
        client.indices.get_settings(index=index)[index]["settings"]["index"]["number_of_replicas"]
        == "0"
    )
    assert client.count(index=mapping.alias("os-map"))["count"] == len(CATALOG)
    # scaled_float keeps cents: 19.99 is stored as 1999 hundredths, searched exactly.
    hits = client.search(index=index, body={"query": {"term": {"price": 19.99}}})["hits"]["hits"]
    assert [h["_id"] for h in hits] == ["1"]
    # dynamic: strict refuses a field the mapping does not name.
    with pytest.raises(RequestError) as refused:
        client.index(index=index, id="99", body={"id": 99, "colour": "red"})
    assert refused.value.error == "strict_dynamic_mapping_exception"


def test_bulk_with_external_versions_reports_the_stale_one(client: OpenSearch) -> None:
    index = "os-versions"
    client.indices.create(index=index, body={"settings": mapping.SETTINGS})

    def doc(i: int, version: int) -> dict[str, Any]:
        return {"_index": index, "_id": str(i), "_source": {"n": version}, "version": version,
                "version_type": "external"}  # fmt: skip

    assert helpers.bulk(client, [doc(1, 5), doc(2, 5)]) == (2, [])
    ok, errors = helpers.bulk(client, [doc(1, 4), doc(2, 6), doc(3, 1)], raise_on_error=False)
    assert ok == 2
    assert [
        (e["index"]["_id"], e["index"]["status"], e["index"]["error"]["type"]) for e in errors
    ] == [("1", 409, "version_conflict_engine_exception")]
    same, errors = helpers.bulk(client, [doc(2, 6)], raise_on_error=False)  # equal: stale too
    assert (same, errors[0]["index"]["status"]) == (0, 409)
    got = client.mget(index=index, body={"ids": ["1", "2", "3"]})["docs"]
    assert [(d["_version"], d["_source"]["n"]) for d in got] == [(5, 5), (6, 6), (1, 1)]


def test_delete_then_an_older_external_version_is_refused(client: OpenSearch) -> None:
    """Unlike the stand-in (noida-db): index.gc_deletes (60 s) keeps the delete's version."""
    index = "os-gc-deletes"
    client.indices.create(index=index, body={"settings": mapping.SETTINGS})
    client.index(index=index, id="1", body={"n": 5}, version=5, version_type="external")
    client.delete(index=index, id="1", version=6, version_type="external")
    with pytest.raises(ConflictError):
        client.index(index=index, id="1", body={"n": 3}, version=3, version_type="external")
    with pytest.raises(ConflictError):
        client.delete(index=index, id="1", version=6, version_type="external")
    client.index(index=index, id="1", body={"n": 7}, version=7, version_type="external")
    assert client.get(index=index, id="1")["_version"] == 7


def test_alias_swap_is_atomic(client: OpenSearch) -> None:
    old, new, alias = "os-alias-1", "os-alias-2", "os-alias"
    for index in (old, new):
        client.indices.create(index=index, body={"settings": mapping.SETTINGS})
    client.indices.put_alias(index=old, name=alias)
    # One request: a failing action (no such index) leaves the alias where it was.
    with pytest.raises(NotFoundError):
        client.indices.update_aliases(body={"actions": [
            {"remove": {"index": old, "alias": alias}},
            {"add": {"index": "os-alias-missing", "alias": alias}},
        ]})  # fmt: skip
    assert set(client.indices.get_alias(name=alias)) == {old}
    client.indices.update_aliases(body={"actions": [
        {"remove": {"index": old, "alias": alias}},
        {"add": {"index": new, "alias": alias}},
    ]})  # fmt: skip
    assert set(client.indices.get_alias(name=alias)) == {new}


# ----------------------------------------------------------------------------- queries


FACETS: dict[str, Any] = {
    "brands": {"terms": {"field": "brand.name.keyword", "size": 10}},
    "categories": {"terms": {"field": "categories.name", "size": 10}},
    "prices": {"range": {"field": "price", "ranges": [
        {"to": 25}, {"from": 25, "to": 100}, {"from": 100, "to": 500}, {"from": 500},
    ]}},
}  # fmt: skip


def catalog_search(
    client: OpenSearch,
    prefix: str,
    text: str,
    *,
    brand: str | None = None,
    category: str | None = None,
    price: tuple[float | None, float | None] | None = None,
) -> dict[str, Any]:
    """The request consumers/search/query.py sends (as of 3e65a5c: multi_match, terms on
    reference and skus, term/range filters, terms and range facets), written out here so
    that this check does not follow the sink's client abstraction as it changes."""
    must: list[dict[str, Any]] = []
    if text:
        must.append({"bool": {"should": [
            {"multi_match": {"query": text, "fields": ["name^3", "brand.name^2", "description"]}},
            {"term": {"reference": text}},
            {"term": {"skus": text}},
        ]}})  # fmt: skip
    filters: list[dict[str, Any]] = [{"term": {"active": True}}]
    if brand:
        filters.append({"term": {"brand.name.keyword": brand}})
    if category:
        filters.append({"term": {"categories.name": category}})
    if price is not None:
        bounds = {k: v for k, v in zip(("gte", "lte"), price, strict=True) if v is not None}
        filters.append({"range": {"price": bounds}})
    body = {
        "query": {"bool": {"must": must or [{"match_all": {}}], "filter": filters}},
        "size": 10,
        "aggs": FACETS,
    }
    response = client.search(
        index=mapping.alias(prefix),
        body=body,
        _source_excludes=["description", "images", "technical_data"],
    )
    return {
        "total": response["hits"]["total"]["value"],
        "hits": [{"id": int(h["_id"]), **h["_source"]} for h in response["hits"]["hits"]],
        "facets": {
            name: [{"key": b["key"], "count": b["doc_count"]} for b in agg["buckets"]]
            for name, agg in response["aggregations"].items()
        },
    }


def test_the_catalog_query_with_its_facets(client: OpenSearch) -> None:
    _with_index(client, "os-query")
    result = catalog_search(client, "os-query", "shoe")
    assert {h["id"] for h in result["hits"]} == {1, 2}  # 4 is inactive
    assert "description" not in result["hits"][0]
    everything = catalog_search(client, "os-query", "")
    assert everything["total"] == 3
    assert everything["facets"]["brands"] == [
        {"key": "Acme", "count": 2},
        {"key": "Peak", "count": 1},
    ]
    assert {b["key"]: b["count"] for b in everything["facets"]["categories"]} == {
        "Running": 1, "Trail": 1, "Socks": 1,
    }  # fmt: skip
    assert [b["count"] for b in everything["facets"]["prices"]] == [2, 1, 0, 0]
    cheap_acme = catalog_search(client, "os-query", "", brand="Acme", price=(None, 50))
    assert [h["id"] for h in cheap_acme["hits"]] == [1]
    assert catalog_search(client, "os-query", "RS-2")["hits"][0]["id"] == 1  # term on skus
    assert catalog_search(client, "os-query", "", category="Socks")["total"] == 1


def test_nested_variant_queries(client: OpenSearch) -> None:
    """query.py itself queries no nested field; the mapping's nested variants work."""
    index = _with_index(client, "os-nested")
    nested = {"nested": {"path": "variants", "query": {"bool": {"filter": [
        {"term": {"variants.sku": "RS-2"}},
        {"range": {"variants.price": {"gte": 24, "lte": 25}}},
    ]}}, "inner_hits": {}}}  # fmt: skip
    hits = client.search(index=index, body={"query": nested})["hits"]["hits"]
    assert [h["_id"] for h in hits] == ["1"]
    assert [i["_source"]["sku"] for i in hits[0]["inner_hits"]["variants"]["hits"]["hits"]] == [
        "RS-2"
    ]
    # Across variants, not inside one: no variant is both RS-1 and 24.50.
    mixed = {"nested": {"path": "variants", "query": {"bool": {"filter": [
        {"term": {"variants.sku": "RS-1"}}, {"term": {"variants.price": 24.5}},
    ]}}}}  # fmt: skip
    assert client.count(index=index, body={"query": mixed})["count"] == 0
    aggs = {
        "v": {
            "nested": {"path": "variants"},
            "aggs": {"n": {"value_count": {"field": "variants.sku"}}},
        }
    }
    response = client.search(index=index, body={"size": 0, "aggs": aggs})
    assert response["aggregations"]["v"]["n"]["value"] == 6


# ------------------------------------------------------------------------------- speed


def test_10k_documents_write_count_and_search_speed(
    node: Node, client: OpenSearch, record_property: Record
) -> None:
    prefix = "os-speed"
    client.indices.put_index_template(name=mapping.alias(prefix), body=mapping.template(prefix))
    index = mapping.generation(prefix, 1)
    client.indices.create(index=index)
    client.indices.put_alias(index=index, name=mapping.alias(prefix))
    base = [mapping.body(d) for d in CATALOG]

    def actions(version: int) -> Iterator[dict[str, Any]]:
        for i in range(10_000):
            source = {**base[i % len(base)], "id": i, "version": version, "total_quantity": i}
            yield {"_index": index, "_id": str(i), "_source": source, "version": version,
                   "version_type": "external"}  # fmt: skip

    started = time.monotonic()
    assert helpers.bulk(client, actions(1), chunk_size=500) == (10_000, [])
    new_rate = 10_000 / (time.monotonic() - started)
    started = time.monotonic()
    assert helpers.bulk(client, actions(2), chunk_size=500) == (10_000, [])
    overwrite_rate = 10_000 / (time.monotonic() - started)
    client.indices.refresh(index=index)

    def timed(call: Callable[[], Any]) -> float:
        samples = []
        for _ in range(10):
            t = time.monotonic()
            call()
            samples.append(time.monotonic() - t)
        return statistics.median(samples)

    count_s = timed(lambda: client.count(index=mapping.alias(prefix)))
    search_s = timed(lambda: catalog_search(client, prefix, "shoe"))
    assert client.count(index=mapping.alias(prefix))["count"] == 10_000
    assert catalog_search(client, prefix, "")["total"] == 7_500  # one in four is inactive
    _figure(record_property, "bulk_new_docs_per_s", round(new_rate))
    _figure(record_property, "bulk_overwrite_docs_per_s", round(overwrite_rate))
    _figure(record_property, "count_10k_median_ms", round(count_s * 1000, 1))
    _figure(record_property, "search_with_facets_10k_median_ms", round(search_s * 1000, 1))
    _figure(record_property, "rss_after_10k_mb", round(_rss_mb(node.state.pid or 0)))
    assert count_s < 0.5 and search_s < 0.5
    assert overwrite_rate > 300  # the stand-in: 120-250 docs/s (2 busy cores here: ~800-2,500)


# --------------------------------------------------------------------- start-up failures


def _one_line(exc: pytest.ExceptionInfo[StackError]) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    assert message.startswith("opensearch"), message
    return message


def test_no_java_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(StackError) as exc:
        OpenSearchService(tmp_path).start(ServiceState())
    assert "opensearch: Java (`java`) is not installed" in _one_line(exc)


def test_a_pinned_port_that_is_taken_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        svc = OpenSearchService(tmp_path, ports={"http": port})
        with pytest.raises(StackError) as exc:
            svc.start(ServiceState())
    message = _one_line(exc)
    assert f"http port {port} on 127.0.0.1 is taken" in message
    assert str(svc.log_file) in message


def test_maven_that_cannot_resolve_is_one_line(tmp_path: Path) -> None:
    if not shutil.which("mvn"):
        pytest.skip("no Maven (mvn)")
    pom = tmp_path / "opensearch" / "pom.xml"
    pom.parent.mkdir()
    pom.write_text(
        POM.read_text().replace("<opensearch.version>2.19.6<", "<opensearch.version>0.0.404<")
    )
    svc = OpenSearchService(tmp_path / "stack", pom=pom, cache_dir=tmp_path / "cache")
    with pytest.raises(StackError) as exc:
        svc.start(ServiceState())
    message = _one_line(exc)
    assert message.startswith("opensearch: Maven could not resolve the jars")
    assert "0.0.404" in message and "copy-dependencies" in message and ".mvn.log" in message
    assert not _jars_cached(tmp_path / "cache")


def test_a_jvm_that_exits_is_one_line(tmp_path: Path) -> None:
    svc = OpenSearchService(tmp_path, heap_min="1k", heap_max="1k")
    state = ServiceState()
    svc.start(state)
    with pytest.raises(StackError) as exc:
        svc.wait_ready(state, timeout=30)
    message = _one_line(exc)
    assert "exited during start-up (exit 1)" in message
    assert "-Xmx1k" in message and str(svc.log_file) in message


def test_a_second_node_on_the_same_data_is_one_line(node: Node) -> None:
    """The launcher's own reason (OpenSearch's node lock) ends up in the message."""
    svc = OpenSearchService(node.svc.stack_dir)
    state = ServiceState()
    svc.start(state)
    try:
        with pytest.raises(StackError) as exc:
            svc.wait_ready(state, timeout=60)
    finally:
        svc.stop(state)
    message = _one_line(exc)
    assert "exited during start-up (exit 1): failed to start:" in message
    assert "failed to obtain node locks" in message
    assert node.svc.is_running(node.state)


# ---------------------------------------------------------------------------- restarts


def test_sigterm_and_kill9_keep_documents_and_aliases(node: Node, record_property: Record) -> None:
    """Runs last in the module: it restarts the module's node twice."""
    svc, state = node.svc, node.state
    with node.client() as c:
        client_index = _with_index(c, "os-restart")
    log_size = svc.log_file.stat().st_size

    started = time.monotonic()
    svc.stop(state)
    stop_s = time.monotonic() - started
    assert "opensearch launcher: stopped" in svc.log_file.read_text()[log_size:]

    def restart() -> float:
        started = time.monotonic()
        svc.start(state)
        svc.wait_ready(state)
        return time.monotonic() - started

    sigterm_restart_s = restart()
    with node.client() as c:
        c.cluster.health(wait_for_status="green")  # every index recovered
        assert c.count(index=mapping.alias("os-restart"))["count"] == len(CATALOG)
        # Acknowledged, not refreshed, then kill -9: the translog has it.
        c.index(index=client_index, id="77", body=mapping.body(CATALOG[0]), version=77,
                version_type="external")  # fmt: skip
    assert state.pid
    os.killpg(state.pid, signal.SIGKILL)
    os.waitpid(state.pid, 0)
    kill9_restart_s = restart()
    with node.client() as c:
        c.cluster.health(wait_for_status="green")  # every index recovered
        assert set(c.indices.get_alias(name=mapping.alias("os-restart"))) == {client_index}
        assert c.get(index=client_index, id="77")["_version"] == 77
        assert c.count(index=mapping.alias("os-restart"))["count"] == len(CATALOG) + 1
        if c.indices.exists(index=mapping.alias("os-speed")):  # the speed test ran
            assert c.count(index=mapping.alias("os-speed"))["count"] == 10_000
    _figure(record_property, "sigterm_stop_s", round(stop_s, 1))
    _figure(record_property, "restart_after_sigterm_s", round(sigterm_restart_s, 1))
    _figure(record_property, "restart_after_kill9_s", round(kill9_restart_s, 1))
    assert stop_s < 10
