"""Issue 24: one request holds a refusal and a throttled item — every sink, at the runtime level.

For each consumer the real :class:`~consumers.runtime.ConsumerRuntime` runs the real sink
against its real server (the search engine) or contract server, on a one-partition
document topic of its own.  A first product (the *baseline*) is consumed and committed;
then three products are produced at once, so that they make one batch and one request:

* ``OK`` — written at once;
* ``REFUSED`` — refused for good, per that target's rules (a 4xx of its own, or the
  sink's local check of the seed's rules where the API refuses whole requests);
* ``THROTTLED`` — answered 429 (per item, or the whole request where the API has no
  per-item throttle: each test says which) until the test lifts the throttle.

Asserted, black-box: while the throttle is in force the group's committed offset is not
past the batch (webhooks: the batch is in the outbox, see its test); once lifted the
throttled product is written with its content and version, the committed offset reaches
the end only then, the refused product is on ``{prefix}.dlq.{consumer}`` with the reason
in its ``error`` header (exactly once), and nothing else is missing.

Before the fix of issue 24 the search sink dropped the refusals of a flush that also had
items to retry: the retry succeeded, the next flush returned ``[]`` and the offset was
committed past a document that was neither indexed nor dead-lettered.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from consumers.edge_kv.backends.rest import RestBackend
from consumers.edge_kv.layout import product_value
from consumers.edge_kv.sink import EdgeKvSink
from consumers.runtime import ConsumerRuntime, RuntimeSettings
from consumers.search import mapping as search_mapping
from consumers.search.engine import SearchEngine, connect
from consumers.search.sink import SearchSink
from consumers.search_service.client import UpdateApi
from consumers.search_service.mapping import Links, product_item
from consumers.search_service.sink import SearchServiceSink
from consumers.storefront_api import mapping as storefront_mapping
from consumers.storefront_api.client import StorefrontClient
from consumers.storefront_api.sink import StorefrontApiSink
from consumers.webhooks.config import Subscriber
from consumers.webhooks.sink import WebhooksSink
from pipeline.documents.model import ProductDocument
from pipeline.documents.reading import document_codec
from pipeline.documents.wire import doc_key, headers_of
from pipeline.kafka import TopicSpec, consumer_config, ensure_topics, producer_config
from pipeline.topics import doc_topic
from tests.contracts import kv_rest, search_service, storefront_api, webhooks
from tests.integration.test_consumer_runtime import running
from tests.unit.test_documents import product_data

pytestmark = pytest.mark.integration

BASELINE, OK, REFUSED, THROTTLED = 1, 2, 3, 4


# --------------------------------------------------------------------------- helpers


def _product(pid: int, version: int, **changes: Any) -> ProductDocument:
    """A valid product with its own reference, url key and name."""
    data = product_data(
        id=pid,
        reference=f"KIT-{pid:06d}",
        url_key=f"product-{pid}",
        name=f"Product {pid} v{version}",
        version=version,
        source_ts_ms=version,
    )
    data.update(changes)
    return ProductDocument.model_validate(data)


def _overflowing(pid: int, version: int) -> ProductDocument:
    """Valid as a document, but its total_quantity (and the search service's quantity) is
    beyond the 32-bit integer of the targets' schemas: the search index refuses it (400,
    mapper_parsing_exception), the search service's rules do."""
    big = 2**31 - 1
    variants = [
        {"sku": f"BIG-{pid}-{i}", "price": Decimal("1.00"), "quantity": big, "attributes": {}}
        for i in range(2)
    ]
    return _product(pid, version, variants=variants, total_quantity=2 * big)


def _settings() -> RuntimeSettings:
    return RuntimeSettings(poll_timeout=0.2, backoff_initial=0.05, backoff_max=0.5)


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _produce(bootstrap: str, prefix: str, items: list[tuple[int, ProductDocument]]) -> list[int]:
    """``items`` onto the one partition of ``{prefix}.doc.products``, in one flush (so that
    a consumer that is paused gets them in one fetch); their offsets."""
    codec = document_codec(bootstrap, prefix)
    topic = doc_topic(prefix, "product")
    ensure_topics(bootstrap, [TopicSpec(topic, 1, {"cleanup.policy": "compact"})])
    producer = Producer(producer_config(bootstrap))
    offsets: dict[int, int] = {}

    def delivered(err: Any, msg: Any) -> None:
        assert err is None, err
        offsets[int(msg.key())] = msg.offset()

    for pid, doc in items:
        producer.produce(
            topic,
            key=doc_key(pid),
            value=codec.encode(doc),
            partition=0,
            headers=headers_of("product", doc.version, doc.source_ts_ms),
            on_delivery=delivered,
        )
    assert producer.flush(30) == 0
    return [offsets[pid] for pid, _ in items]


def _committed(bootstrap: str, group: str, topic: str) -> int:
    """The group's committed offset of partition 0 (< 0: none)."""
    consumer = Consumer(consumer_config(bootstrap, group))
    try:
        [tp] = consumer.committed([TopicPartition(topic, 0)], timeout=10)
        return int(tp.offset)
    finally:
        consumer.close()


def _end(bootstrap: str, topic: str) -> int:
    consumer = Consumer(consumer_config(bootstrap, "test-watermarks"))
    try:
        return int(consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1])
    finally:
        consumer.close()


def _dead_letters(bootstrap: str, topic: str) -> list[tuple[bytes, str]]:
    """(key, ``error`` header) of every message on the dead-letter topic."""
    consumer = Consumer(consumer_config(bootstrap, "test-dlq"))
    try:
        tp = TopicPartition(topic, 0)
        low, high = consumer.get_watermark_offsets(tp, timeout=10)
        out: list[tuple[bytes, str]] = []
        if high <= max(low, 0):
            return out
        consumer.assign([TopicPartition(topic, 0, low)])
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert not msg.error(), msg.error()
            headers = dict(msg.headers() or [])
            out.append((msg.key(), (headers.get("error") or b"").decode()))
            if msg.offset() >= high - 1:
                return out
        raise AssertionError(f"could not read {topic} up to offset {high}")
    finally:
        consumer.close()


@dataclass
class Throttle:
    on: Callable[[], None]
    off: Callable[[], None]
    hits: Callable[[], int]
    """How many times the target has throttled the THROTTLED product (or its request)."""


def _scenario(
    runtime: ConsumerRuntime,
    bootstrap: str,
    prefix: str,
    throttle: Throttle,
    holds: Callable[[], bool],
    reason: str,
    *,
    refused: ProductDocument | None = None,
    outbox: Callable[[], bool] | None = None,
) -> None:
    """The run every test shares (see the module docstring).  ``holds()``: the target
    holds BASELINE, OK and THROTTLED with their content and version, and not REFUSED.
    ``reason``: a part of the dead letter's ``error`` header.  ``outbox``: the sink
    confirms a batch once it is queued durably (webhooks), and this says the throttled
    event is queued; the committed offset may then pass the batch before delivery."""
    topic = doc_topic(prefix, "product")
    name = runtime.sink.name
    group, dlq = f"{prefix}-{name}", f"{prefix}.dlq.{name}"  # the runtime's conventions
    [base] = _produce(bootstrap, prefix, [(BASELINE, _product(BASELINE, 5))])
    with running(runtime):
        assert runtime.caught_up.wait(20), f"the consumer did not catch up: {runtime.stats}"
        assert _committed(bootstrap, group, topic) == base + 1
        throttle.on()
        batch = [
            (OK, _product(OK, 10)),
            (REFUSED, refused or _overflowing(REFUSED, 11)),
            (THROTTLED, _product(THROTTLED, 12)),
        ]
        offsets = _produce(bootstrap, prefix, batch)
        end = offsets[-1] + 1
        _wait(lambda: throttle.hits() >= 3, 15, "the throttled product to be retried 3 times")
        committed = _committed(bootstrap, group, topic)
        if outbox is None:
            assert committed <= offsets[0], (
                f"while THROTTLED (offset {offsets[2]}) is not written the group committed "
                f"{committed}, past the batch starting at {offsets[0]}"
            )
        else:
            assert outbox(), "the throttled event is neither delivered nor in the outbox"
        throttle.off()
        _wait(lambda: _committed(bootstrap, group, topic) == end, 15, f"the commit of {end}")
        assert _end(bootstrap, topic) == end
        if outbox is None:  # committed: written (and dead-lettered) before
            assert holds(), "the offsets were committed before the target held the batch"
        else:
            _wait(holds, 15, "the throttled event to be delivered")
            _wait(lambda: bool(_dead_letters(bootstrap, dlq)), 15, "the dead letter")
        dead = _dead_letters(bootstrap, dlq)
    assert [key for key, _ in dead] == [doc_key(REFUSED)], (
        f"the refused product {REFUSED} (offset {offsets[1]}) is not dead-lettered once on "
        f"{dlq} although the group committed {end}: dead letters {dead}"
    )
    assert reason in dead[0][1], dead[0][1]
    assert holds()


# --------------------------------------------------------------------------- search


class ThrottlingProxy:
    """An HTTP proxy between the search sink and the real search engine.

    While ``active``, every bulk request that holds an action on ``doc_id`` is forwarded
    without that action (and its source line), and the server's answer gets, at the
    action's place, ``{"index": {"_id": doc_id, "status": 429, "error": ...}}``: the item
    really was not written.  ``throttled`` lists, per such request, the ids it held."""

    def __init__(self, upstream: str, doc_id: str) -> None:
        parts = urlsplit(upstream)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 9200
        self.doc_id = doc_id
        self.active = False
        self.throttled: list[list[str]] = []
        self.lock = threading.Lock()
        self._content_type = "application/json"
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self) -> ThrottlingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    def forward(
        self, method: str, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            skip = {"host", "content-length", "connection", "accept-encoding"}
            conn.request(
                method,
                path,
                body=body if body or method in ("POST", "PUT") else None,
                headers={k: v for k, v in headers.items() if k.lower() not in skip},
            )
            resp = conn.getresponse()
            payload = resp.read()
            return resp.status, resp.getheaders(), payload
        finally:
            conn.close()

    def bulk(
        self, method: str, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        lines = [line for line in body.split(b"\n") if line.strip()]
        kept: list[bytes] = []
        ids: list[str] = []
        cut: list[tuple[int, str, Any]] = []  # (position, action, _index) of throttled items
        i = n = 0
        while i < len(lines):
            [(action, meta)] = json.loads(lines[i]).items()
            width = 1 if action == "delete" else 2
            ids.append(str(meta.get("_id")))
            with self.lock:
                throttle = self.active and str(meta.get("_id")) == self.doc_id
            if throttle:
                cut.append((n, action, meta.get("_index")))
            else:
                kept += lines[i : i + width]
            i += width
            n += 1
        if not cut:
            return self.forward(method, path, body, headers)
        with self.lock:
            self.throttled.append(ids)
        if kept:
            status, out_headers, payload = self.forward(
                method, path, b"\n".join(kept) + b"\n", headers
            )
            if status != 200:
                return status, out_headers, payload
            answer = json.loads(payload)
        else:
            out_headers = [
                ("Content-Type", self._content_type),
                ("X-Elastic-Product", "Elasticsearch"),
            ]
            answer = {"took": 0, "errors": False, "items": []}
        for position, action, index in cut:
            item = {
                "_index": index,
                "_id": self.doc_id,
                "status": 429,
                "error": {
                    "type": "es_rejected_execution_exception",
                    "reason": "rejected execution of bulk item (the test's throttling proxy)",
                },
            }
            answer["items"].insert(position, {action: item})
        answer["errors"] = True
        return 200, out_headers, json.dumps(answer).encode()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = dict(self.headers.items())
                path = urlsplit(self.path).path
                if self.command in ("POST", "PUT") and path.rstrip("/").endswith("/_bulk"):
                    status, out, payload = proxy.bulk(self.command, self.path, body, headers)
                else:
                    status, out, payload = proxy.forward(self.command, self.path, body, headers)
                    for name, value in out:
                        if name.lower() == "content-type" and status == 200:
                            proxy._content_type = value
                self.send_response(status)
                hop = {"content-length", "transfer-encoding", "connection", "keep-alive"}
                for name, value in out:
                    if name.lower() not in hop:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _serve

        return Handler


def test_search_refused_and_throttled_in_one_bulk(
    search_url: str,
    search_engine: SearchEngine,
    kafka_bootstrap: str,
    topic_prefix: str,
    index_prefix: str,
) -> None:
    """Search (issue 24), on each engine (Elasticsearch, OpenSearch).  One ``_bulk`` holds
    OK, REFUSED and THROTTLED.  REFUSED: a real 400 (mapper_parsing_exception) from the
    engine — total_quantity over the mapping's ``integer``.  THROTTLED: a per-item 429 — a
    proxy between the sink and the server takes THROTTLED's action out of every bulk
    request while the throttle is on and answers 429 for it in its place (so it really
    is not written).  The sink detects the engine through the proxy."""
    es = search_engine
    with ThrottlingProxy(search_url, str(THROTTLED)) as proxy:
        runtime = ConsumerRuntime(
            SearchSink(connect(proxy.url, timeout=10), index_prefix),
            bootstrap=kafka_bootstrap,
            topic_prefix=topic_prefix,
            settings=_settings(),
        )

        def on(active: bool) -> None:
            with proxy.lock:
                proxy.active = active

        def holds() -> bool:
            ids = [str(i) for i in (BASELINE, OK, REFUSED, THROTTLED)]
            found = es.mget(search_mapping.alias(index_prefix), ids)
            docs = {int(i): hit for i, hit in found.items()}
            want = {BASELINE: _product(BASELINE, 5), OK: _product(OK, 10)}
            want[THROTTLED] = _product(THROTTLED, 12)
            return set(docs) == set(want) and all(
                docs[i].version == p.version and docs[i].source["name"] == p.name
                for i, p in want.items()
            )

        _scenario(
            runtime,
            kafka_bootstrap,
            topic_prefix,
            Throttle(lambda: on(True), lambda: on(False), lambda: len(proxy.throttled)),
            holds,
            f"{es.label} refused it (400)",
        )
        first = proxy.throttled[0]
        assert {str(OK), str(REFUSED), str(THROTTLED)} <= set(first), (
            f"OK, REFUSED and THROTTLED were not in one bulk request: {proxy.throttled}"
        )


# --------------------------------------------------------------------------- storefront


def test_storefront_refused_and_throttled_in_one_batch(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """Storefront API.  One ``POST /api/products/sync/batch`` holds OK, REFUSED and
    THROTTLED.  REFUSED: a per-item 422 from the contract server — a category the shop
    does not have (only the shop knows: the sink's local checks pass).  THROTTLED: a
    per-item 429 in the batch answer (then a 429 of the single-product request the sink
    resends it with), until lifted."""
    unknown = [{"id": 999, "name": "Nowhere", "url_key": "nowhere", "path": ["Nowhere"],
                "position": 0}]  # fmt: skip
    with storefront_api.Server(categories="1-100") as server:
        assert isinstance(server, storefront_api.Server)
        client = StorefrontClient(server.url, "demo", "demo", timeout=10)
        sink = StorefrontApiSink(client, tmp_path / "storefront.sqlite", images=False)
        runtime = ConsumerRuntime(
            sink,
            bootstrap=kafka_bootstrap,
            topic_prefix=topic_prefix,
            settings=_settings(),
        )
        ref = f"KIT-{THROTTLED:06d}"

        def holds() -> bool:
            products = server.state()["products"]
            want = {p.reference: p for p in (_product(BASELINE, 5), _product(OK, 10))}
            want[ref] = _product(THROTTLED, 12)
            if set(products) != set(want):
                return False
            for reference, doc in want.items():
                body = json.loads(json.dumps(storefront_mapping.body(doc, images=False)))
                if {k: products[reference].get(k) for k in body} != body:
                    return False
            return True

        _scenario(
            runtime,
            kafka_bootstrap,
            topic_prefix,
            Throttle(
                lambda: server.throttle_references([ref]),
                lambda: server.throttle_references(),
                lambda: server.state()["received"].count(ref),
            ),
            holds,
            "the storefront API refused the create (422)",
            refused=_product(REFUSED, 11, categories=unknown),
        )
        mixed = [
            {r["reference"]: r["status"] for r in s.get("results", [])}
            for s in server.state()["syncs"]
        ]
        assert {f"KIT-{OK:06d}": 200, f"KIT-{REFUSED:06d}": 422, ref: 429} in mixed, mixed


# --------------------------------------------------------------------------- search service


def test_search_service_refused_and_throttled_in_one_batch(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """Search service (Update API).  The API has no per-item answer: a malformed request
    is refused whole (and five an hour block the key), so the sink checks the seed's
    rules itself.  REFUSED: breaks them (a quantity over ``int``), refused by the sink
    and never sent.  THROTTLED (with OK): the ``items/update`` request of the batch is
    answered 429 as a whole (the API has no per-item throttle), until lifted."""
    ensure_topics(kafka_bootstrap, [TopicSpec(doc_topic(topic_prefix, "category"), 1)])
    key = "demo-private-key"
    with search_service.Server(private_key=key) as server:
        assert isinstance(server, search_service.Server)
        sink = SearchServiceSink(UpdateApi(server.url, key, 5), tmp_path / "search-service.sqlite")
        runtime = ConsumerRuntime(
            sink,
            bootstrap=kafka_bootstrap,
            topic_prefix=topic_prefix,
            settings=_settings(),
        )

        def holds() -> bool:
            items = server.state()["items"]
            want = {BASELINE: _product(BASELINE, 5), OK: _product(OK, 10)}
            want[THROTTLED] = _product(THROTTLED, 12)
            return set(items) == {str(i) for i in want} and all(
                items[str(i)] == product_item(p, Links()) for i, p in want.items()
            )

        _scenario(
            runtime,
            kafka_bootstrap,
            topic_prefix,
            Throttle(server.throttle, lambda: server.throttle(False), lambda: server.throttled),
            holds,
            f"product {REFUSED} breaks the Update API's rules",
        )
        state = server.state()
        assert all(REFUSED not in r.get("items", []) for r in state["requests"])
        assert state["malformed"]["total"] == 0 and not state["blocked"]
        sent = [r["items"] for r in state["requests"] if r["status"] == 200 and r.get("items")]
        assert [OK, THROTTLED] in sent, sent


# --------------------------------------------------------------------------- webhooks


def test_webhooks_refused_and_throttled_in_one_batch(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """Webhooks.  A delivery carries one event, so "one request" is the batch the sink
    confirms: OK, REFUSED and THROTTLED are queued in its outbox in one transaction, then
    delivered.  REFUSED: the subscriber answers its event 422 (the ERP seed's validation
    error; ``refuse_products``) — a dead letter.  THROTTLED: the subscriber answers its
    event 429 (``throttle_products``) until lifted.  The sink's
    guarantee is "durable before the commit": the batch is committed once it is in the
    outbox, so while throttled the test checks the event is there rather than the offset."""
    with webhooks.Server() as server:
        assert isinstance(server, webhooks.Server)
        subscriber = Subscriber("shop", server.url + server.path, server.secret, timeout=2.0)
        sink = WebhooksSink(
            [subscriber], tmp_path / "webhooks.sqlite", max_age=60.0,
            backoff_initial=0.05, backoff_max=0.3,
        )  # fmt: skip
        runtime = ConsumerRuntime(
            sink,
            bootstrap=kafka_bootstrap,
            topic_prefix=topic_prefix,
            settings=_settings(),
        )
        server.refuse_products([REFUSED])

        def hits() -> int:
            return sum(1 for r in server.state()["refused"] if r["reason"] == "throttle_products")

        def holds() -> bool:
            products = server.state()["products"]
            want = {BASELINE: _product(BASELINE, 5), OK: _product(OK, 10)}
            want[THROTTLED] = _product(THROTTLED, 12)
            return set(products) == {str(i) for i in want} and all(
                products[str(i)]["version"] == p.version
                and products[str(i)]["product"]["name"] == p.name
                for i, p in want.items()
            )

        _scenario(
            runtime,
            kafka_bootstrap,
            topic_prefix,
            Throttle(
                lambda: server.throttle_products([THROTTLED]),
                lambda: server.throttle_products(),
                hits,
            ),
            holds,
            "refused with 422",
            refused=_product(REFUSED, 11),
            outbox=lambda: sink.stats["shop"]["pending"] >= 1,
        )
        assert server.state()["out_of_order"] == []


# --------------------------------------------------------------------------- edge KV


def test_edge_kv_rest_refused_and_throttled_in_one_batch(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """Edge KV on the Workers KV REST backend.  The KV API refuses or throttles a bulk
    request whole, so: REFUSED breaks the seed's key limit (url_key making the key over
    512 bytes), refused by the sink and never sent; THROTTLED (with OK, their listing
    pages and ``pulse``): the ``PUT .../bulk`` of the batch is answered 429 / 10049 as a
    whole (``throttle_writes``; the API has no per-item throttle), until lifted."""
    ensure_topics(
        kafka_bootstrap,
        [TopicSpec(f"{topic_prefix}.public.{t}", 1) for t in EdgeKvSink.raw_tables]
        + [TopicSpec(doc_topic(topic_prefix, "category"), 1)],
    )
    with kv_rest.Server() as kv:
        assert isinstance(kv, kv_rest.Server)
        backend = RestBackend(kv.api_url, kv.account, kv.namespace, kv.token)
        runtime = ConsumerRuntime(
            EdgeKvSink(backend, tmp_path / "rest.state"),
            bootstrap=kafka_bootstrap,
            topic_prefix=topic_prefix,
            settings=_settings(),
        )
        long_key = _product(REFUSED, 11, url_key="x" * 600)

        def holds() -> bool:
            keys = kv.state()["keys"]
            want = [_product(BASELINE, 5), _product(OK, 10), _product(THROTTLED, 12)]
            products = {k for k in keys if ":product:" in k}
            return products == {f"main:product:{p.url_key}" for p in want} and all(
                keys[f"main:product:{p.url_key}"] == product_value(p) for p in want
            )

        _scenario(
            runtime,
            kafka_bootstrap,
            topic_prefix,
            Throttle(kv.throttle_writes, lambda: kv.throttle_writes(False), lambda: kv.throttled),
            holds,
            f"product {REFUSED}: field url_key",
            refused=long_key,
        )
        assert kv.state()["violations"] == []
