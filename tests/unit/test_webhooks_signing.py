"""Webhooks: the signature and the receivers' snippet, backoff, max age, config rules."""

from __future__ import annotations

import hashlib
import hmac
import inspect
import json
import re
import socket
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from consumers.contract import Record
from consumers.webhooks import events
from consumers.webhooks.config import load_subscribers, parse_duration, subscribers_from
from consumers.webhooks.sink import (
    WebhooksSink,
    backoff_delay,
    classify,
    retry_after_seconds,
)
from pipeline.documents.model import ProductDocument
from pipeline.documents.wire import DocumentMessage
from pipeline.errors import ConfigurationError
from tests.contracts import webhooks as contract
from tests.unit.test_documents import product_data

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cret-s3cret-s3cret-s3cret-s3cret!"


def _doc_snippet() -> str:
    text = (ROOT / "docs" / "webhooks.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    found = [b for b in blocks if "def verify_webhook" in b]
    assert len(found) == 1, "docs/webhooks.md must hold exactly one verify_webhook snippet"
    return str(found[0])


def _snippet_verify() -> Callable[..., None]:
    namespace: dict[str, Any] = {}
    exec(compile(_doc_snippet(), "docs/webhooks.md", "exec"), namespace)
    fn: Callable[..., None] = namespace["verify_webhook"]
    return fn


def _doc(pid: int = 7, version: int = 10, **changes: Any) -> ProductDocument:
    return ProductDocument.model_validate(
        product_data(id=pid, version=version, source_ts_ms=version, **changes)
    )


def _signed(body: bytes, secret: str = SECRET, at: float | None = None) -> dict[str, str]:
    now = time.time() if at is None else at
    return events.headers(secret, "wh_1", events.UPDATED, body, now)


# -- the signature and the snippet ---------------------------------------------------------


def test_the_docs_snippet_is_the_contract_servers_verification() -> None:
    snippet = _doc_snippet()
    source = inspect.getsource(contract.verify_webhook)
    assert snippet[snippet.index("def verify_webhook") :] == source
    assert snippet.startswith("import hashlib\nimport hmac\nimport time\n")


def test_signature_over_timestamp_and_raw_body_verifies_with_the_snippet() -> None:
    verify = _snippet_verify()
    body = events.product_body("wh_1", events.UPDATED, _doc(), 10, _utc_now())
    h = _signed(body)
    ts, sig = h[events.HEADER_TIMESTAMP], h[events.HEADER_SIGNATURE]
    verify(SECRET, body, ts, sig)  # no exception: authentic and fresh
    # The documented signed string: "{timestamp}." + raw body, HMAC-SHA256, lower hex.
    expected = hmac.new(SECRET.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    assert sig == expected and re.fullmatch(r"[0-9a-f]{64}", sig)
    assert h[events.HEADER_ID] == "wh_1" and h[events.HEADER_EVENT] == "product.updated"
    assert h["Content-Type"] == "application/json"


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("tampered body", "does not match"),
        ("wrong secret", "does not match"),
        ("stale timestamp", "stale"),
        ("future timestamp", "stale"),
        ("timestamp swapped", "does not match"),
        ("missing signature", "missing"),
        ("not a number", "not a Unix time"),
    ],
)
def test_bad_requests_fail_verification(case: str, message: str) -> None:
    verify = _snippet_verify()
    body = events.deleted_body("wh_1", 7, 10, 0, _utc_now())
    secret, ts, sig = SECRET, "", ""
    h = _signed(body)
    ts, sig = h[events.HEADER_TIMESTAMP], h[events.HEADER_SIGNATURE]
    if case == "tampered body":
        body = body.replace(b'"product_id":7', b'"product_id":8')
    elif case == "wrong secret":
        secret = SECRET + "x"
    elif case in ("stale timestamp", "future timestamp"):
        at = time.time() + (-301 if case == "stale timestamp" else 301)
        h = _signed(body, at=at)  # correctly signed, but too far from now
        ts, sig = h[events.HEADER_TIMESTAMP], h[events.HEADER_SIGNATURE]
    elif case == "timestamp swapped":
        ts = str(int(ts) - 1)
    elif case == "missing signature":
        sig = ""
    elif case == "not a number":
        ts = "yesterday"
    with pytest.raises(ValueError, match=message):
        verify(secret, body, ts, sig)


def test_event_bodies_follow_the_seed() -> None:
    doc = _doc(active=False)
    body = json.loads(events.product_body("wh_9", events.CREATED, doc, 10, _utc_now()))
    assert body["id"] == "wh_9" and body["event_type"] == "product.created"
    assert body["created_at"].endswith("Z")
    data = body["data"]
    assert data["product_id"] == 7 and data["version"] == 10
    product = data["product"]
    assert product["id"] == 7 and product["version"] == 10 and product["is_active"] is False
    assert "active" not in product and "source_ts_ms" not in product
    assert product["price"] == "129.90"  # exact decimal string
    assert product["updated_at"].endswith("Z") or product["updated_at"].endswith("+00:00")
    assert product["images"][0]["url"] == "https://x/a.jpg"
    gone = json.loads(events.deleted_body("wh_8", 7, 11, 1_700_000_000_000, _utc_now()))
    assert gone["event_type"] == "product.deleted"
    assert gone["data"] == {
        "product_id": 7,
        "version": 11,
        "deleted_at": "2023-11-14T22:13:20.000000Z",
    }
    # One id per (subscriber, product, version): the same on every retry and replay.
    assert events.delivery_id("a", 7, 10) == events.delivery_id("a", 7, 10)
    assert events.delivery_id("a", 7, 10) != events.delivery_id("b", 7, 10)
    assert events.delivery_id("a", 7, 10) != events.delivery_id("a", 7, 11)


def _utc_now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


# -- backoff, classification -----------------------------------------------------------------


def test_backoff_schedule_doubles_and_is_capped() -> None:
    schedule = [backoff_delay(n, 1.0, 300.0) for n in range(1, 13)]
    assert schedule == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]
    assert backoff_delay(10_000, 1.0, 300.0) == 300.0  # no overflow
    assert backoff_delay(0, 1.0, 300.0) == 0.0


def test_retry_after_and_status_classes() -> None:
    assert retry_after_seconds("7", 0) == 7.0
    assert retry_after_seconds(None, 0) is None and retry_after_seconds("soon", 0) is None
    at = 1_700_000_000.0
    assert retry_after_seconds("Tue, 14 Nov 2023 22:13:30 GMT", at) == pytest.approx(10.0)
    assert [classify(s) for s in (200, 204, 408, 429, 500, 503)] == [
        "ok", "ok", "retry", "retry", "retry", "retry"
    ]  # fmt: skip
    assert [classify(s) for s in (301, 400, 401, 404, 409, 422)] == ["refused"] * 6


# -- the sink without a reachable subscriber: queueing and max age ----------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed on exit: connections are refused


def _sink(tmp_path: Path, max_age: float) -> WebhooksSink:
    subs = subscribers_from(
        {"subscribers": [{"name": "nobody", "url": f"http://127.0.0.1:{_closed_port()}/h",
                          "secret": SECRET, "timeout": 1}]},
        "test",
        {},
    )  # fmt: skip
    return WebhooksSink(
        subs, tmp_path / "state.sqlite", max_age=max_age, backoff_initial=0.05, backoff_max=0.2
    )


def _rec(pid: int, version: int, doc: ProductDocument | None, offset: int = 0) -> Record:
    return DocumentMessage("product", pid, doc, version, version, 0, offset)


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_past_max_age_an_event_is_dead_lettered(tmp_path: Path) -> None:
    sink = _sink(tmp_path, max_age=0.8)
    sink.open()
    try:
        sink.add([_rec(7, 10, _doc()), _rec(8, 11, None, offset=1)])
        assert sink.flush() == []
        _wait(lambda: sink.stats["nobody"]["dead_lettered"] == 2, 10, "two dead letters")
        stats = sink.stats["nobody"]
        assert stats["pending"] == 0 and stats["retried"] >= 2 and stats["sent"] == 0
        letters = sink.dead_letters()
        assert sorted(r.record.id for r in letters) == [7, 8]
        by_id = {r.record.id: r for r in letters}
        assert by_id[7].record.doc == _doc() and by_id[7].record.version == 10
        assert by_id[8].record.doc is None and by_id[8].record.offset == 1
        for r in letters:
            assert "not delivered within max_age=0.8s" in r.reason
            assert "cannot connect" in r.reason and "'nobody'" in r.reason
        assert sink.dead_letters() == []  # handed over once (this call acknowledges them)
    finally:
        sink.close()
    with sqlite3.connect(tmp_path / "state.sqlite") as db:
        rows = db.execute("SELECT product_id, handed FROM dead_letters ORDER BY id").fetchall()
    assert sorted(rows) == [(7, 2), (8, 2)]


def test_created_updated_deleted_and_redelivery(tmp_path: Path) -> None:
    sink = _sink(tmp_path, max_age=3600)
    sink.open()
    try:
        sink.add([_rec(7, 10, _doc(version=10)), _rec(7, 11, _doc(version=11, name="Renamed"))])
        sink.flush()
        sink.add([_rec(7, 12, _doc(version=12, name="Renamed"))])  # nothing visible changed
        sink.add([_rec(7, 11, _doc(version=11, name="Renamed"))])  # redelivered: older
        sink.add([_rec(7, 13, None), _rec(7, 14, None)])  # deleted, then deleted again
        sink.add([_rec(7, 15, _doc(version=15)), _rec(9, 5, None)])  # back; never-announced
        sink.flush()
        sink.add([_rec(7, 15, _doc(version=15)), _rec(9, 5, None)])  # a redelivered batch
        sink.flush()
        assert sink.stats["nobody"]["skipped_unchanged"] == 1
    finally:
        sink.close()
    with sqlite3.connect(tmp_path / "state.sqlite") as db:
        rows = db.execute("SELECT product_id, version, event_type FROM outbox ORDER BY seq")
        queued = rows.fetchall()
    assert queued == [
        (7, 10, "product.created"),
        (7, 11, "product.updated"),
        (7, 13, "product.deleted"),
        (7, 15, "product.created"),
        (9, 5, "product.deleted"),
    ]


# -- config ---------------------------------------------------------------------------------


def test_config_rules(tmp_path: Path) -> None:
    example = ROOT / "docs" / "webhooks.example.toml"
    subs = load_subscribers(example, env={"ERP_WEBHOOK_SECRET": SECRET})
    assert [s.name for s in subs] == ["erp", "marketplace"]
    assert subs[0].secret == SECRET and subs[0].events == frozenset(events.EVENT_TYPES)
    assert subs[1].events == {"product.updated", "product.deleted"} and subs[1].timeout == 5
    assert SECRET not in repr(subs[0])

    def bad(item: dict[str, Any], env: dict[str, str] | None = None) -> str:
        base = {"name": "a", "url": "https://x/h", "secret": SECRET}
        merged = {k: v for k, v in {**base, **item}.items() if v is not None}
        with pytest.raises(ConfigurationError) as err:
            subscribers_from({"subscribers": [merged]}, "f.toml", env or {})
        return str(err.value)

    assert "at least 32" in bad({"secret": "short"})
    assert "WEBHOOK_KEY is not set" in bad({"secret": None, "secret_env": "WEBHOOK_KEY"})
    assert "exactly one of" in bad({"secret_env": "WEBHOOK_KEY"})
    assert "unknown field" in bad({"retries": 3})
    assert "url" in bad({"url": "ftp://x"})
    assert "events" in bad({"events": ["product.renamed"]})
    assert "timeout" in bad({"timeout": 0})
    with pytest.raises(ConfigurationError, match="not found"):
        load_subscribers(tmp_path / "missing.toml")
    assert parse_duration("24h", "max_age") == 86400 and parse_duration("2s", "x") == 2
    assert parse_duration("500ms", "x") == 0.5 and parse_duration("90", "x") == 90
    with pytest.raises(ConfigurationError, match="max_age"):
        parse_duration("soon", "max_age")


# -- the contract server enforces the same rules ------------------------------------------


def test_the_contract_server_verifies_deduplicates_and_records_order() -> None:
    import httpx

    with contract.Server(secret=SECRET, tolerance="60") as server:
        assert isinstance(server, contract.Server)
        url = server.url + server.path

        def post(body: bytes, event_type: str, event_id: str, **override: str) -> httpx.Response:
            h = events.headers(SECRET, event_id, event_type, body, time.time())
            h.update(override)
            return httpx.post(url, content=body, headers=h, timeout=5)

        def body(event_id: str, version: int) -> bytes:
            return events.product_body(
                event_id, events.UPDATED, _doc(version=version), version, _utc_now()
            )

        ok = post(body("wh_1", 10), events.UPDATED, "wh_1")
        assert ok.status_code == 200 and ok.json() == {"status": "received"}
        again = post(body("wh_1", 10), events.UPDATED, "wh_1")
        assert again.status_code == 200 and again.json()["duplicate"] is True
        tampered = body("wh_2", 11)
        h = events.headers(SECRET, "wh_2", events.UPDATED, tampered, time.time())
        r = httpx.post(url, content=tampered.replace(b"129.90", b"1.00"), headers=h, timeout=5)
        assert r.status_code == 401
        wrong = events.headers(SECRET + "x", "wh_2", events.UPDATED, tampered, time.time())
        assert httpx.post(url, content=tampered, headers=wrong, timeout=5).status_code == 401
        stale = events.headers(SECRET, "wh_2", events.UPDATED, tampered, time.time() - 61)
        r = httpx.post(url, content=tampered, headers=stale, timeout=5)
        assert r.status_code == 401 and "stale" in r.json()["message"]
        r = post(tampered, events.UPDATED, "wh_2", **{events.HEADER_SIGNATURE: ""})
        assert r.status_code == 401
        r = post(body("wh_3", 12), events.CREATED, "wh_3")  # header and body disagree
        assert r.status_code == 400 and r.json()["details"][0]["field"] == "X-Webhook-Event"
        assert post(body("wh_4", 9), events.UPDATED, "wh_4").status_code == 200  # older
        server.fail_next(1, status=503)
        assert post(body("wh_5", 13), events.UPDATED, "wh_5").status_code == 503
        state = server.state()
        assert [e["id"] for e in state["events"]] == ["wh_1", "wh_4"]
        assert state["duplicates"] == ["wh_1"]
        assert state["out_of_order"] == [
            {"product_id": 7, "version": 9, "after": 10, "id": "wh_4",
             "event_type": "product.updated"}
        ]  # fmt: skip
        assert state["products"]["7"]["version"] == 9
    with pytest.raises(ConfigurationError, match="at least 32"):
        contract.Server(secret="short")
