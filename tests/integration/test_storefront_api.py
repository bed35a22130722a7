"""The storefront-api consumer against its contract server (in-process) on the real stack.

Documents produced straight onto a document topic: creates, updates, a create that
meets 409 and becomes an update, deletes that deactivate, rule violations
dead-lettered and never sent, 429/502 retried with nothing lost, one re-login on an
expired token, per-item batch failures resent alone.  Then end to end: PostgreSQL
edits -> reader -> assembler -> consumer -> the server holds exactly the database's
products, mapped field by field (deleted ones deactivated).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest

from consumers.contract import SinkError, TransientSinkError
from consumers.runtime import ConsumerRuntime, RuntimeSettings
from consumers.storefront_api import mapping
from consumers.storefront_api.client import StorefrontClient
from consumers.storefront_api.sink import StorefrontApiSink, status
from pipeline.demo.edits import run_edits
from pipeline.demo.seed import seed_catalog
from pipeline.documents.model import ProductDocument
from pipeline.documents.reference import expected_documents
from pipeline.documents.wire import DocumentMessage
from tests.contracts.storefront_api import Server
from tests.integration.assembler_support import running_assembler, wait_in_sync
from tests.integration.reader_support import wait_for
from tests.integration.test_consumer_runtime import _dlq, _produce, running
from tests.unit.test_documents import product_data

pytestmark = pytest.mark.integration


def _doc(pid: int, version: int, **changes: Any) -> ProductDocument:
    data = product_data(id=pid, reference=f"KIT-{pid:06d}", version=version, source_ts_ms=version)
    data["images"] = [
        {"file_name": f"p{pid}-{k}.jpg", "url": f"https://cdn.example.com/main/products/{pid}/"
         f"p{pid}-{k}.jpg", "position": k} for k in range(2)
    ]  # fmt: skip
    data.update(changes)
    return ProductDocument.model_validate(data)


def _sink(server: Server, state: Path, **kw: Any) -> StorefrontApiSink:
    client = StorefrontClient(server.url, "demo", "demo", timeout=10)
    return StorefrontApiSink(client, state, image_base_url=f"{server.url}/cdn", **kw)


def _runtime(sink: StorefrontApiSink, bootstrap: str, prefix: str, **kw: Any) -> ConsumerRuntime:
    return ConsumerRuntime(
        sink,
        bootstrap=bootstrap,
        topic_prefix=prefix,
        settings=RuntimeSettings(poll_timeout=0.2, backoff_initial=0.05, backoff_max=2.0, **kw),
    )


def on_server(doc: ProductDocument) -> dict[str, Any]:
    """What the server should hold for ``doc``: the mapped body, images as the server
    records them (name, size, hash of the bytes the CDN stand-in serves)."""
    want = mapping.body(doc)
    images = []
    for image in doc.images:
        raw = Server.image_bytes(urlsplit(image.url).path)
        images.append(
            {
                "fileName": image.file_name,
                "bytes": len(raw),
                "sha256": hashlib.sha256(raw).hexdigest(),
            }
        )
    want["images"] = images
    out: dict[str, Any] = json.loads(json.dumps(want))
    return out


def _held(server: Server, ref: str) -> dict[str, Any]:
    product: dict[str, Any] = server.state()["products"][ref]
    return product


def _subset(product: dict[str, Any], want: dict[str, Any]) -> dict[str, Any]:
    return {k: product.get(k) for k in want}


def test_creates_updates_conflicts_and_deletes(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    with Server() as server:
        assert isinstance(server, Server)
        # Product 3 already exists in the shop: its create meets 409 and becomes an update.
        server.preload({"reference": "KIT-000003", "name": "Old name", "price": 1, "quantity": 1})
        _produce(
            kafka_bootstrap,
            topic_prefix,
            [(1, _doc(1, 10)), (2, _doc(2, 20)), (3, _doc(3, 30)), (4, _doc(4, 40))],
        )
        state = tmp_path / "state.sqlite"
        runtime = _runtime(_sink(server, state), kafka_bootstrap, topic_prefix)
        with running(runtime):
            assert runtime.caught_up.wait(60)
            # A rename, a delete, a delete of a product the shop never had, a stale version.
            _produce(
                kafka_bootstrap,
                topic_prefix,
                [
                    (1, _doc(1, 11, name="Renamed")),
                    (2, None),
                    (5, None),
                    (4, _doc(4, 35, name="x")),
                ],
            )
            wait_for(lambda: runtime.stats["records"] >= 8, 60, "the second batch")
        sink = runtime.sink
        assert isinstance(sink, StorefrontApiSink)
        products = server.state()["products"]
        assert sorted(products) == ["KIT-000001", "KIT-000002", "KIT-000003", "KIT-000004"]
        want1 = on_server(_doc(1, 11, name="Renamed"))
        assert _subset(products["KIT-000001"], want1) == want1
        assert products["KIT-000002"]["active"] is False and products["KIT-000002"]["quantity"] == 0
        assert products["KIT-000002"]["name"] == "Barista Coffee Machine"  # the rest kept
        want3 = on_server(_doc(3, 30))
        assert _subset(products["KIT-000003"], want3) == want3
        assert products["KIT-000003"]["createdSyncId"] == "preload"
        want4 = on_server(_doc(4, 40))
        assert _subset(products["KIT-000004"], want4) == want4  # version 35 < 40: skipped
        assert sink.stats["conflicts"] == 1 and sink.stats["created"] == 3, sink.stats
        assert sink.stats["updated"] == 2, sink.stats  # product 3 (after the 409), product 1
        assert sink.stats["deactivated"] == 1 and sink.stats["delete_noop"] == 1, sink.stats
        assert sink.stats["noop"] == 1, sink.stats
        # Every sync recorded with its id and status, readable by status().
        seen = status(state)
        assert seen["products"]["synced"] == 3 and seen["products"]["deactivated"] == 1, seen
        server_ids = {s["syncId"] for s in server.state()["syncs"]}
        assert {s["sync_id"] for s in seen["last_syncs"]} <= server_ids
        # the first batch is "partial" (product 3's create: 409), the rest "completed"
        assert seen["syncs"] == {"partial": 1, "completed": 2, "total": 3}, seen

        # Redelivering everything (a new group from the beginning, the same state file)
        # sends nothing: every record is at or below its confirmed version.
        before = len(server.state()["received"])
        replay = _runtime(
            _sink(server, state), kafka_bootstrap, topic_prefix, group=f"{topic_prefix}-replay"
        )
        with running(replay):
            assert replay.caught_up.wait(60)
        assert len(server.state()["received"]) == before
        assert isinstance(replay.sink, StorefrontApiSink)
        stats = replay.sink.stats
        assert stats["noop"] >= 5 and stats["created"] + stats["updated"] == 0, stats
        assert stats["deactivated"] == 0, stats


def test_rule_violations_are_dead_lettered_and_never_sent(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    eleven = [
        {"file_name": f"i{k}.jpg", "url": f"https://cdn.example.com/main/i{k}.jpg", "position": k}
        for k in range(11)
    ]
    bmp = [{"file_name": "scan.bmp", "url": "https://cdn.example.com/main/scan.bmp", "position": 0}]
    unknown_category = {
        "categories": [
            {"id": 999, "name": "Nowhere", "url_key": "nowhere", "path": ["Nowhere"], "position": 0}
        ]
    }
    with Server(categories="1-100") as server:
        assert isinstance(server, Server)
        _produce(
            kafka_bootstrap,
            topic_prefix,
            [
                (1, _doc(1, 1)),
                (2, _doc(2, 2, images=eleven, ean13="123")),
                (3, _doc(3, 3)),
                (4, _doc(4, 4, images=bmp)),
                (5, _doc(5, 5, **unknown_category)),  # only the shop knows: 422
                (6, _doc(6, 6)),
            ],
        )
        runtime = _runtime(_sink(server, tmp_path / "s.sqlite"), kafka_bootstrap, topic_prefix)
        with running(runtime):
            assert runtime.caught_up.wait(60)
        received = server.state()["received"]
        assert "KIT-000002" not in received and "KIT-000004" not in received
        assert sorted(server.state()["products"]) == ["KIT-000001", "KIT-000003", "KIT-000006"]
        dead = {m.key(): dict(m.headers())["error"].decode() for m in
                _dlq(kafka_bootstrap, f"{topic_prefix}.dlq.storefront-api")}  # fmt: skip
        assert sorted(dead) == [b"2", b"4", b"5"], dead
        assert dead[b"2"].startswith("product 2 (reference 'KIT-000002')"), dead[b"2"]
        assert "images: at most 10 images (got 11)" in dead[b"2"]
        assert "ean13: must be 13 characters or empty (got 3)" in dead[b"2"]
        assert "product 4" in dead[b"4"] and "images[0].fileName" in dead[b"4"]
        assert "product 5" in dead[b"5"] and "(422)" in dead[b"5"]
        assert '"field": "categories[0]"' in dead[b"5"], dead[b"5"]
        assert runtime.stats["dead_letters"] == 3


def test_429_502_and_an_expired_token(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    with Server() as server:
        assert isinstance(server, Server)
        server.fail_next(1, status=429, retry_after=1)
        _produce(kafka_bootstrap, topic_prefix, [(i, _doc(i, i)) for i in range(1, 5)])
        runtime = _runtime(_sink(server, tmp_path / "s.sqlite"), kafka_bootstrap, topic_prefix)

        def held(n: int) -> bool:
            return len(server.state()["products"]) >= n

        with running(runtime):
            wait_for(lambda: held(4), 60, "4 products after a 429")
            codes = [c for m, p, c in server.requests if p.startswith("/api/products/sync")]
            assert codes[0] == 429 and 200 in codes[1:], codes
            # Two 502s in a row: retried with backoff, nothing lost.
            server.fail_next(2, status=502)
            _produce(kafka_bootstrap, topic_prefix, [(5, _doc(5, 5)), (6, _doc(6, 6))])
            wait_for(lambda: held(6), 60, "6 products after two 502s")
            # The token expires: exactly one new login, the update goes through.
            logins = server.logins
            server.expire_tokens()
            _produce(kafka_bootstrap, topic_prefix, [(1, _doc(1, 100, name="After expiry"))])
            wait_for(lambda: _held(server, "KIT-000001")["name"] == "After expiry", 30, "update")
        assert server.logins == logins + 1
        assert sum(1 for _, _, c in server.requests if c == 401) == 1
        assert runtime.stats["retries"] >= 3 and runtime.stats["dead_letters"] == 0
        for i in range(2, 7):
            want = on_server(_doc(i, i))
            assert _subset(_held(server, f"KIT-{i:06d}"), want) == want


def _record(doc: ProductDocument | None, pid: int, version: int) -> DocumentMessage:
    return DocumentMessage("product", pid, doc, version, version, 0, version)


def test_batch_item_failures_resend_only_those(tmp_path: Path) -> None:
    """Direct sink calls (no Kafka): a batch with two items failing 502 keeps exactly
    those pending; the next flush sends only them.  Over ``batch``, requests split."""
    with Server() as server:
        assert isinstance(server, Server)
        sink = _sink(server, tmp_path / "s.sqlite", batch=4)
        sink.open()
        try:
            sink.add([_record(_doc(i, i), i, i) for i in range(1, 7)])  # 4 + 2
            server.fail_items(2, status=502)
            with pytest.raises(TransientSinkError):
                sink.flush()
            assert len(server.state()["products"]) == 4
            assert sink.flush() == []
            assert len(server.state()["products"]) == 6
            counts = Counter(server.state()["received"])
            assert sorted(counts.values()) == [1, 1, 1, 1, 2, 2], counts
            statuses = [s["status"] for s in server.state()["syncs"]]
            assert statuses == ["partial", "completed", "completed"], statuses
            batches = [p for _, p, _ in server.requests if p == "/api/products/sync/batch"]
            assert len(batches) == 3  # [4 items, 2 failed], [2 items]; then the 2 again
            assert not any(p == "/api/products/sync" for _, p, _ in server.requests)
        finally:
            sink.close()


def test_bad_credentials_stop_the_consumer(tmp_path: Path) -> None:
    with Server(password="secret") as server:
        assert isinstance(server, Server)
        sink = _sink(server, tmp_path / "s.sqlite")  # logs in with demo/demo
        with pytest.raises(SinkError, match=r"refused the login .*CATALOG_CDC_STOREFRONT"):
            sink.open()
        sink.close()
    with Server(token_ttl="0") as server:  # every token is expired at once
        assert isinstance(server, Server)
        sink = _sink(server, tmp_path / "t.sqlite")
        sink.open()
        sink.add([_record(_doc(1, 1), 1, 1)])
        with pytest.raises(SinkError, match="refused a fresh token"):
            sink.flush()
        sink.close()
        assert server.logins == 2 and server.state()["products"] == {}


def test_shop_follows_the_database(
    catalog_dsn: str, kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    from tests.integration.reader_support import running_reader

    seed_catalog(catalog_dsn, products=40, seed=21)
    with Server() as server:
        assert isinstance(server, Server)
        runtime = _runtime(_sink(server, tmp_path / "s.sqlite"), kafka_bootstrap, topic_prefix)
        with (
            running_reader(catalog_dsn, kafka_bootstrap, topic_prefix),
            running_assembler(kafka_bootstrap, topic_prefix, tmp_path / "a.sqlite"),
            running(runtime),
        ):
            wait_for(lambda: len(server.state()["products"]) >= 30, 60, "the first products")
            with psycopg.connect(catalog_dsn, autocommit=True) as conn:
                row = conn.execute("SELECT reference FROM products WHERE id = 3").fetchone()
                assert row is not None
                ref3 = str(row[0])
                conn.execute("UPDATE products SET name = 'Renamed one' WHERE id = 1")
                conn.execute("UPDATE products SET deleted_at = now() WHERE id = 2")
                conn.execute("DELETE FROM products WHERE id = 3")
                conn.execute(
                    "UPDATE product_variants SET quantity = quantity + 5 WHERE product_id = 4"
                )
            run_edits(catalog_dsn, rate=25, duration=3, seed=5)
            wait_in_sync(catalog_dsn, kafka_bootstrap, topic_prefix)

            def shop_matches() -> bool:
                with psycopg.connect(catalog_dsn) as conn:
                    products, _ = expected_documents(conn)
                held = server.state()["products"]
                want = {p.reference: on_server(p) for p in products.values()}
                for ref, body in want.items():
                    if ref not in held or _subset(held[ref], body) != body:
                        return False
                return all(
                    not p["active"] and p["quantity"] == 0
                    for ref, p in held.items()
                    if ref not in want
                )

            wait_for(shop_matches, 60, "the shop to equal the database")
        gone = server.state()["products"][ref3]  # hard-deleted: deactivated, kept
        assert gone["active"] is False and gone["quantity"] == 0, gone
    sink = runtime.sink
    assert isinstance(sink, StorefrontApiSink)
    assert sink.stats["created"] >= 38 and sink.stats["deactivated"] >= 2, sink.stats
    assert runtime.stats["dead_letters"] == 0


def test_a_new_reference_retires_the_old_one(tmp_path: Path) -> None:
    """Direct sink calls: the product's reference changes -> the old one is deactivated,
    the new one created; images=none sends no images field."""
    with Server() as server:
        assert isinstance(server, Server)
        sink = _sink(server, tmp_path / "s.sqlite", images=False)
        sink.open()
        try:
            sink.add([_record(_doc(1, 1), 1, 1)])
            assert sink.flush() == []
            sink.add([_record(_doc(1, 2, reference="NEW-1"), 1, 2)])
            assert sink.flush() == []
        finally:
            sink.close()
        products = server.state()["products"]
        assert products["KIT-000001"]["active"] is False
        assert products["KIT-000001"]["quantity"] == 0
        assert products["NEW-1"]["active"] is True and products["NEW-1"]["images"] == []
        assert status(tmp_path / "s.sqlite")["products"]["synced"] == 1
