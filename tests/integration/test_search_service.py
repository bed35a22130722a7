"""The search service consumer on the stack, against the Update API contract server.

(a) documents put straight on the document topics: schema first, items and categories
indexed, deletes, 503s retried with nothing lost, a locally invalid document
dead-lettered and never sent, a server-side rejection opening the breaker after one
malformed request, the key blocked after five (the server alone); (b) the full-import
protocol; (c) PostgreSQL edits -> reader -> assembler -> consumer -> the service's index
equals the database's documents through the mapping.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from confluent_kafka import Producer

from consumers.contract import SinkError
from consumers.registry import SinkContext
from consumers.runtime import ConsumerRuntime, RuntimeSettings
from consumers.search_service import rules
from consumers.search_service.client import UpdateApi, status
from consumers.search_service.mapping import Links, category_item, product_item
from consumers.search_service.sink import SearchServiceSink, reset_breaker
from pipeline.demo.edits import run_edits
from pipeline.demo.seed import seed_catalog
from pipeline.documents.model import CategoryDocument, ProductDocument
from pipeline.documents.reading import document_codec
from pipeline.documents.reference import expected_documents
from pipeline.documents.wire import DocumentMessage, doc_key, headers_of
from pipeline.errors import ConfigurationError
from pipeline.kafka import TopicSpec, ensure_topics, producer_config
from pipeline.settings import ConnectionSettings
from pipeline.topics import doc_topic
from tests.contracts.search_service import Server
from tests.integration.assembler_support import running_assembler, wait_in_sync
from tests.integration.reader_support import running_reader, wait_for
from tests.integration.test_consumer_runtime import _dlq, _produce, _product, running
from tests.unit.test_documents import category_data, product_data

pytestmark = pytest.mark.integration

KEY = "demo-private-key"
LINKS = Links()


@pytest.fixture
def server() -> Iterator[Server]:
    with Server(private_key=KEY) as s:
        yield s  # type: ignore[misc]


def _category(
    cid: int, version: int, name: str, parent: tuple[int, str] | None = None
) -> CategoryDocument:
    path = [name] if parent is None else [parent[1], name]
    return CategoryDocument.model_validate(
        category_data(
            id=cid, version=version, name=name, url_key=name.lower(), path=path,
            parent_id=None if parent is None else parent[0],
        )
    )  # fmt: skip


def _produce_categories(bootstrap: str, prefix: str, items: list[tuple[int, Any]]) -> None:
    """(id, CategoryDocument | (None, version)) onto {prefix}.doc.categories."""
    codec = document_codec(bootstrap, prefix)
    topic = doc_topic(prefix, "category")
    ensure_topics(bootstrap, [TopicSpec(topic, 1, {"cleanup.policy": "compact"})])
    producer = Producer(producer_config(bootstrap))
    for cid, item in items:
        value, version = (
            (None, item[1]) if isinstance(item, tuple) else (codec.encode(item), item.version)
        )
        producer.produce(
            topic, key=doc_key(cid), value=value, headers=headers_of("category", version, version)
        )
    assert producer.flush(30) == 0


def _runtime(server: Server, bootstrap: str, prefix: str, state: Path) -> ConsumerRuntime:
    """The consumer as `catalog-cdc consume search-service` builds it (from_context)."""
    context = SinkContext(
        ConnectionSettings(kafka_bootstrap=bootstrap, topic_prefix=prefix),
        {"url": server.url, "private_key": KEY, "state": str(state), "timeout": "5"},
    )
    return ConsumerRuntime(
        SearchServiceSink.from_context(context),
        bootstrap=bootstrap,
        topic_prefix=prefix,
        settings=RuntimeSettings(poll_timeout=0.2, backoff_initial=0.05, backoff_max=1.0),
    )


def _requests(server: Server, endpoint: str | None = None) -> list[dict[str, Any]]:
    return [r for r in server.state()["requests"] if endpoint in (None, r["endpoint"])]


# --------------------------------------------------------------------------- (a)


def test_documents_reach_the_service(
    server: Server, kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    kitchen = _category(4, 10, "Kitchen")
    cats = [
        (4, kitchen),
        (9, _category(9, 11, "Coffee", (4, "Kitchen"))),
        (5, _category(5, 12, "Sale")),
    ]
    _produce_categories(kafka_bootstrap, topic_prefix, cats)
    _produce(kafka_bootstrap, topic_prefix, [(i, _product(i, 10 + i)) for i in range(1, 7)])
    runtime = _runtime(server, kafka_bootstrap, topic_prefix, tmp_path / "ss.sqlite")
    with running(runtime):
        assert runtime.caught_up.wait(60), runtime.stats
        # First run: a full import; its first data request is the schema alone.
        first = _requests(server)
        assert first[0]["endpoint"] == "state/update" and first[0]["full_import"] == "start"
        assert first[1]["endpoint"] == "items/update" and first[1]["schema"]
        assert "items" not in first[1] and "categories" not in first[1]
        assert first[-1]["full_import"] == "done"
        assert sorted(server.state()["items"]) == [str(i) for i in range(1, 7)]
        assert sorted(server.state()["categories"]) == ["4", "5", "9"]
        # Then the consumer, reading the topics from the start, sends nothing again.
        assert len(_requests(server)) == len(first)

        big = 2**31 - 1
        variants = [
            {"sku": f"BIG-{i}", "price": Decimal("1.00"), "quantity": big, "attributes": {}}
            for i in range(2)
        ]
        huge = ProductDocument.model_validate(
            product_data(
                id=7, version=30, source_ts_ms=30, variants=variants, total_quantity=2 * big
            )
        )
        server.fail_next(2, 503)
        _produce(
            kafka_bootstrap,
            topic_prefix,
            [(2, None), (7, huge), (8, _product(8, 31)), (1, _product(1, 40, "renamed"))],
        )
        _produce_categories(kafka_bootstrap, topic_prefix, [(5, (None, 50))])
        wait_for(
            lambda: "8" in server.state()["items"] and "5" not in server.state()["categories"],
            60,
            "the second batch at the service",
        )
        assert runtime.caught_up.wait(60)
    state = server.state()
    assert sorted(state["items"], key=int) == ["1", "3", "4", "5", "6", "8"]
    assert state["items"]["1"]["title"] == "renamed"
    assert state["items"]["8"] == product_item(_product(8, 31), LINKS)
    assert state["categories"]["9"] == category_item(
        _category(9, 11, "Coffee", (4, "Kitchen")), LINKS
    )
    assert sorted(state["categories"]) == ["4", "9"]
    assert runtime.stats["retries"] >= 2  # the two 503s (CLOSED;), retried
    assert [r["status"] for r in state["requests"] if r["status"] != 200] == [503, 503]
    # Product 7 breaks the int rule: dead-lettered with the id and the field, never sent.
    assert all(7 not in r.get("items", []) for r in state["requests"])
    dead = _dlq(kafka_bootstrap, f"{topic_prefix}.dlq.search-service")
    assert [m.key() for m in dead] == [b"7"]
    error = dict(dead[0].headers())["error"].decode()
    assert "product 7" in error and "quantity: 4294967294 is outside int" in error, error
    assert state["malformed"]["total"] == 0 and state["status"] == "normal"


def test_a_server_side_rejection_opens_the_breaker(
    server: Server, kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    _produce(kafka_bootstrap, topic_prefix, [(i, _product(i, 10 + i)) for i in range(1, 4)])
    _produce_categories(kafka_bootstrap, topic_prefix, [(4, _category(4, 10, "Kitchen"))])
    state_file = tmp_path / "ss.sqlite"
    runtime = _runtime(server, kafka_bootstrap, topic_prefix, state_file)
    with pytest.raises(SinkError) as info, running(runtime):
        assert runtime.caught_up.wait(60)
        server.refuse_next(1, "data could not be processed")
        _produce(kafka_bootstrap, topic_prefix, [(4, _product(4, 20))])
        wait_for(lambda: server.state()["malformed"]["total"] == 1, 30, "the rejection")
    message = str(info.value)
    for part in ("circuit breaker", "data could not be processed", "items/update with 1 items (ids 4)",
                 "five malformed requests within an hour", "reset-breaker --state"):  # fmt: skip
        assert part in message, message
    state = server.state()
    assert state["malformed"] == {
        "last_hour": 1,
        "total": 1,
        "last_error": state["malformed"]["last_error"],
    }
    assert not state["blocked"]
    sent = len(state["requests"])

    # A restart does not send it again: the breaker is in the state file.
    again = _runtime(server, kafka_bootstrap, topic_prefix, state_file)
    with pytest.raises(SinkError, match="circuit breaker is open"), running(again):
        pass  # open() refuses at once
    assert len(server.state()["requests"]) == sent

    # Reset by hand: the uncommitted batch goes out, and the consumer goes on.
    assert reset_breaker(state_file) is not None
    resumed = _runtime(server, kafka_bootstrap, topic_prefix, state_file)
    with running(resumed):
        wait_for(lambda: "4" in server.state()["items"], 60, "product 4 after the reset")
    assert server.state()["malformed"]["total"] == 1


def test_the_key_is_blocked_after_five_malformed_requests(server: Server) -> None:
    def post(path: str, **form: str | bytes) -> httpx.Response:
        return httpx.post(
            f"{server.url}/api/{path}/json",
            content=rules.form_body({"private_key": KEY, **form}),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )

    bad = rules.encode_data({"items": [{"title": "no id"}]})
    good = rules.encode_data({"items": [{"id": 1, "title": "ok"}]})
    wrong = httpx.post(
        f"{server.url}/api/items/update/json", data={"private_key": "nope", "data": "{}"}
    )
    assert (wrong.status_code, wrong.json()) == (
        401,
        {"errors": {"error": "error_invalid_private_key"}},
    )
    assert httpx.get(f"{server.url}/api/items/update/json").status_code == 405  # POST only
    for _ in range(3):
        resp = post("items/update", data=bad)
        assert resp.status_code == 400 and resp.json()["errors"]["error"] == "error_invalid_data"
        assert "items[0] (id None): id: required" in resp.json()["errors"]["messages"]
    empty = post("items/delete")  # no id: the seed's error_empty_request, malformed too
    assert (empty.status_code, empty.json()) == (400, {"errors": {"error": "error_empty_request"}})
    assert post("items/update", data=good).json() == "ok"  # four malformed: still served
    assert server.state()["malformed"]["last_hour"] == 4 and not server.state()["blocked"]
    assert post("items/update", data=bad).status_code == 400  # the fifth
    assert server.state()["blocked"]
    blocked = post("items/update", data=good)
    assert (blocked.status_code, blocked.json()) == (
        403,
        {"errors": {"error": "inactive_private_key"}},
    )
    state_get = httpx.get(f"{server.url}/api/state/get/json?private_key={KEY}&status")
    assert state_get.json() == {"errors": {"error": "inactive_private_key"}}
    api = UpdateApi(server.url, KEY)
    with pytest.raises(SinkError, match="blocked after five malformed requests"):
        api.post("items/update", {"data": good})
    api.close()
    assert server.state()["items"] == {"1": {"id": 1, "title": "ok"}}

    # The window is an hour: four now and four an hour later do not block.
    now = [0.0]
    with Server(private_key=KEY, clock=lambda: now[0]) as other:
        for step in range(8):
            now[0] = 0.0 if step < 4 else 3601.0
            httpx.post(f"{other.url}/api/items/delete/json", data={"private_key": KEY})
        assert other.state()["malformed"] == {
            "last_hour": 4,
            "total": 8,
            "last_error": "error_empty_request: no id",
        }
        assert not other.state()["blocked"]


# --------------------------------------------------------------------------- (b)


def test_full_import_replaces_the_index_at_done(server: Server, tmp_path: Path) -> None:
    live = SearchServiceSink(UpdateApi(server.url, KEY), tmp_path / "live.sqlite")
    live.open()
    live.add([DocumentMessage("product", pid, _product(pid, 1), 1, 1) for pid in (1000, 1001)])
    live.flush()  # stale items the import must remove
    products = [_product(pid, 5, f"imported {pid}") for pid in range(1, 301)]
    categories = [_category(4, 5, "Kitchen"), _category(9, 5, "Coffee", (4, "Kitchen"))]
    seen: dict[str, Any] = {}

    def records() -> Iterator[DocumentMessage]:
        for c in categories:
            yield DocumentMessage("category", c.id, c, c.version, 0)
        for i, p in enumerate(products):
            if i == 260:  # 250 products went out in one request: not indexed yet
                seen["during"] = server.state()
                seen["status"] = status(server.url, KEY)
                # A change arriving during the import waits for done, like the rest.
                live.add([DocumentMessage("product", 2000, _product(2000, 9), 9, 9)])
                live.flush()
            yield DocumentMessage("product", p.id, p, p.version, 0)
        yield DocumentMessage("product", 300, None, 6, 0)  # deleted meanwhile

    importer = SearchServiceSink(UpdateApi(server.url, KEY), tmp_path / "import.sqlite")
    assert importer.full_import(records()) == []
    during = seen["during"]
    assert sorted(during["items"]) == ["1000", "1001"]
    assert len(during["staging"]["items"]) == 250 and during["full_import"] == "start"
    assert seen["status"] == {"status": "update", "full_import": "start", "product_count": "2"}
    state = server.state()
    want = {str(p.id): product_item(p, LINKS) for p in products if p.id != 300}
    want["2000"] = product_item(_product(2000, 9), LINKS)
    assert state["items"] == want
    assert state["categories"] == {str(c.id): category_item(c, LINKS) for c in categories}
    assert status(server.url, KEY) == {
        "status": "normal",
        "full_import": "done",
        "product_count": "300",
    }
    sizes = [len(r.get("items", [])) for r in state["requests"] if r["endpoint"] == "items/update"]
    assert max(sizes) == 250
    assert [r["full_import"] for r in state["requests"] if r["endpoint"] == "state/update"] == [
        "start",
        "done",
    ]
    live.close()
    importer.close()


# --------------------------------------------------------------------------- (c)


def test_the_service_follows_the_database(
    server: Server, catalog_dsn: str, kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    seed_catalog(catalog_dsn, products=40, seed=8)
    runtime = _runtime(server, kafka_bootstrap, topic_prefix, tmp_path / "ss.sqlite")
    with (
        running_reader(catalog_dsn, kafka_bootstrap, topic_prefix),
        running_assembler(kafka_bootstrap, topic_prefix, tmp_path / "a.sqlite"),
        running(runtime),
    ):
        run_edits(catalog_dsn, rate=30, duration=3, seed=21)
        # After the edits (which could undo them):
        with psycopg.connect(catalog_dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT min(id) FROM products WHERE deleted_at IS NULL AND id > 3"
            ).fetchone()
            assert row is not None
            renamed = str(row[0])
            conn.execute(
                "UPDATE products SET name = 'Renamed one', price = 12.34 WHERE id = %s", (row[0],)
            )
            conn.execute("UPDATE products SET deleted_at = now() WHERE id = 2")
            conn.execute("DELETE FROM products WHERE id = 3")
            conn.execute("UPDATE categories SET name = 'Renamed category' WHERE id = 2")
            conn.execute("UPDATE categories SET active = false WHERE id = 3")
        wait_in_sync(catalog_dsn, kafka_bootstrap, topic_prefix)
        mismatch: list[str] = []

        def service_matches() -> bool:
            with psycopg.connect(catalog_dsn) as conn:
                products, categories = expected_documents(conn)
            state = server.state()
            want_items = {str(i): product_item(p, LINKS) for i, p in products.items()}
            want_cats = {
                str(i): obj
                for i, c in categories.items()
                if (obj := category_item(c, LINKS)) is not None
            }
            mismatch[:] = [
                f"items: {sorted(set(state['items']) ^ set(want_items))[:10]}",
                f"changed: {[i for i in want_items if state['items'].get(i) != want_items[i]][:10]}",
                f"categories: {sorted(set(state['categories']) ^ set(want_cats))[:10]}",
            ]
            return state["items"] == want_items and state["categories"] == want_cats

        wait_for(service_matches, 60, f"the service to equal the database {mismatch}")
    state = server.state()
    assert "2" not in state["items"] and "3" not in state["items"]
    assert (
        state["items"][renamed]["title"] == "Renamed one"
        and state["items"][renamed]["price"] == 12.34
    )
    assert state["malformed"]["total"] == 0
    assert all(len(r.get("items", [])) <= 250 for r in state["requests"])
    assert status(server.url, KEY)["product_count"] == str(len(state["items"]))
    sink = runtime.sink
    assert isinstance(sink, SearchServiceSink)
    assert sink.stats["items"] >= 38 and sink.stats["deleted"] >= 2, sink.stats


def test_consume_options_are_checked(tmp_path: Path) -> None:
    conns = ConnectionSettings(kafka_bootstrap="127.0.0.1:1", topic_prefix="x")
    with pytest.raises(ConfigurationError, match="private_key"):
        SearchServiceSink.from_context(SinkContext(conns, {"state": str(tmp_path / "s")}))
    with pytest.raises(ConfigurationError, match="product_url"):
        SearchServiceSink.from_context(
            SinkContext(conns, {"private_key": "k", "product_url": "shop/{nope}"})
        )
    with pytest.raises(ConfigurationError, match="colour"):
        SearchServiceSink.from_context(SinkContext(conns, {"private_key": "k", "colour": "red"}))
