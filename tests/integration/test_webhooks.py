"""The webhooks consumer on the real stack, with two in-process subscriber contract servers.

Documents produced straight to the document topic: order, signatures, a subscriber down
while the other is not delayed, dead letters (400, max age), a restart on the same
state file.  End to end: PostgreSQL edits -> reader -> assembler -> webhooks -> each
subscriber's final state equals the database.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from consumers.runtime import ConsumerRuntime, RuntimeSettings
from consumers.webhooks import events
from consumers.webhooks.config import Subscriber
from consumers.webhooks.sink import WebhooksSink
from pipeline.codec.jsontext import json_dumps as _json_dumps
from pipeline.demo.edits import run_edits
from pipeline.demo.seed import seed_catalog
from pipeline.documents.reading import document_codec
from pipeline.documents.reference import expected_documents
from tests.contracts.webhooks import Server
from tests.integration.assembler_support import running_assembler, wait_in_sync
from tests.integration.reader_support import running_reader, wait_for
from tests.integration.test_consumer_runtime import _dlq, _produce, _product, running

pytestmark = pytest.mark.integration

OTHER_SECRET = "another-webhook-secret-with-32-chars-or-more"


def _subscriber(name: str, server: Server, timeout: float = 2.0) -> Subscriber:
    return Subscriber(name, server.url + server.path, server.secret, timeout=timeout)


def _sink(state: Path, subs: list[Subscriber], max_age: float = 60.0) -> WebhooksSink:
    return WebhooksSink(subs, state, max_age=max_age, backoff_initial=0.1, backoff_max=1.0)


def _runtime(
    sink: WebhooksSink, bootstrap: str, prefix: str, group: str | None = None
) -> ConsumerRuntime:
    return ConsumerRuntime(
        sink,
        bootstrap=bootstrap,
        topic_prefix=prefix,
        settings=RuntimeSettings(poll_timeout=0.2, backoff_initial=0.05, group=group),
    )


def _history(server: Server, pid: int) -> list[tuple[str, int]]:
    return [(e["event_type"], e["version"]) for e in server.state()["history"].get(str(pid), [])]


def _count(server: Server) -> int:
    return len(server.state()["events"])


def _drained(sink: WebhooksSink) -> bool:
    return all(s["pending"] == 0 for s in sink.stats.values())


def _clean(server: Server) -> None:
    state = server.state()
    assert state["out_of_order"] == [], state["out_of_order"]
    ids = [e["id"] for e in state["events"]]
    assert len(ids) == len(set(ids))  # every accepted delivery once (repeats are deduplicated)
    assert not [r for r in state["refused"] if r["status"] == 401], state["refused"]


def test_in_order_signed_and_a_down_subscriber_does_not_delay_the_other(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    with Server() as a, Server(secret=OTHER_SECRET, path="/hooks/catalog") as b:
        assert isinstance(a, Server) and isinstance(b, Server)
        sink = _sink(tmp_path / "w.sqlite", [_subscriber("a", a), _subscriber("b", b)])
        runtime = _runtime(sink, kafka_bootstrap, topic_prefix)
        _produce(kafka_bootstrap, topic_prefix, [(1, _product(1, 10)), (2, _product(2, 20))])
        with running(runtime):
            wait_for(lambda: _count(a) == 2 and _count(b) == 2, 30, "the first events")
            b.down(5)
            down_at = time.monotonic()
            _produce(
                kafka_bootstrap,
                topic_prefix,
                [(1, _product(1, 11, "Renamed")), (3, _product(3, 30)), (1, None), (2, None)],
            )
            wait_for(lambda: _count(a) == 6, 10, "subscriber a to get everything")
            assert time.monotonic() - down_at < 5, "a was held back by b being down"
            assert _count(b) == 2  # still down
            wait_for(lambda: _count(b) == 6, 30, "subscriber b after its outage")
            wait_for(lambda: _drained(sink), 10, "the outbox to drain")
            stats = sink.stats
        for server in (a, b):
            assert _history(server, 1) == [
                ("product.created", 10),
                ("product.updated", 11),
                ("product.deleted", 99),
            ]
            assert _history(server, 2) == [("product.created", 20), ("product.deleted", 99)]
            assert _history(server, 3) == [("product.created", 30)]
            _clean(server)
            product = server.state()["products"]["3"]
            assert product["product"]["name"] == "A product" and product["version"] == 30
        assert any(r["reason"] == "down" for r in b.state()["refused"])
        assert stats["a"]["retried"] == 0 and stats["a"]["sent"] == 6, stats
        assert stats["b"]["retried"] > 0 and stats["b"]["sent"] == 6, stats
        assert stats["a"]["dead_lettered"] == stats["b"]["dead_lettered"] == 0


def test_a_refused_event_and_an_expired_one_are_dead_letters(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    with Server() as a, Server(secret=OTHER_SECRET) as b:
        assert isinstance(a, Server) and isinstance(b, Server)
        a.fail_next(1, status=400)  # a permanent refusal of the first event
        b.down(60)  # down for longer than max_age
        sink = _sink(tmp_path / "w.sqlite", [_subscriber("a", a), _subscriber("b", b)], max_age=2.0)
        runtime = _runtime(sink, kafka_bootstrap, topic_prefix)
        _produce(kafka_bootstrap, topic_prefix, [(5, _product(5, 50)), (5, _product(5, 51, "B"))])
        with running(runtime):
            wait_for(lambda: sink.stats["b"]["dead_lettered"] == 2, 20, "b's events to expire")
            wait_for(lambda: _drained(sink), 10, "the outbox to drain")
            # The runtime drains the sink's late dead letters onto the DLQ topic.
            wait_for(lambda: runtime.stats["dead_letters"] == 3, 20, "the dead letters")
            assert sink.dead_letters() == []
        # a: the created event refused (400) and dead-lettered; the next one delivered.
        assert _history(a, 5) == [("product.updated", 51)]
        assert _history(b, 5) == []
        letters = _dlq(kafka_bootstrap, f"{topic_prefix}.dlq.webhooks")
        headers = [dict(m.headers() or []) for m in letters]
        reasons = sorted(
            (int(m.key()), int(h["version"]), h["error"].decode())
            for m, h in zip(letters, headers, strict=True)
        )
        assert len(reasons) == 3, reasons
        refused = [r for r in reasons if "'a'" in r[2]]
        assert [(i, v) for i, v, _ in refused] == [(5, 50)]
        assert "product.created" in refused[0][2] and "refused with 400" in refused[0][2]
        assert "failing on purpose (400)" in refused[0][2]
        expired = [r for r in reasons if "'b'" in r[2]]
        assert [(i, v) for i, v, _ in expired] == [(5, 50), (5, 51)]
        assert all("not delivered within max_age=2s" in r for _, _, r in expired)
        assert all("answered 503" in r for _, _, r in expired)
        # The dead letters carry the original documents and where they came from.
        codec = document_codec(kafka_bootstrap, topic_prefix)
        for m, h in zip(letters, headers, strict=True):
            assert h["original.topic"] == f"{topic_prefix}.doc.products".encode()
            doc = codec.decode_message("product", m.key(), m.value(), m.headers()).doc
            assert doc is not None and doc.version == int(h["version"])
            assert doc.name == ("B" if doc.version == 51 else doc.name)
        assert sink.stats["a"]["dead_lettered"] == 1 and sink.stats["a"]["sent"] == 1


def test_a_restart_on_the_same_state_loses_nothing_and_sends_nothing_twice(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    state = tmp_path / "w.sqlite"
    with Server() as a, Server(secret=OTHER_SECRET) as b:
        assert isinstance(a, Server) and isinstance(b, Server)
        subs = [_subscriber("a", a), _subscriber("b", b)]
        _produce(kafka_bootstrap, topic_prefix, [(i, _product(i, 10 + i)) for i in range(1, 11)])
        first = _sink(state, subs)
        with running(_runtime(first, kafka_bootstrap, topic_prefix)):
            wait_for(lambda: _count(a) == 10 and _count(b) == 10, 30, "the first events")
            b.down(120)
            _produce(
                kafka_bootstrap,
                topic_prefix,
                [(i, _product(i, 100 + i, "v2")) for i in range(1, 11)],
            )
            wait_for(lambda: _count(a) == 20, 30, "a to get the updates")
            wait_for(lambda: first.stats["b"]["pending"] == 10, 10, "b's pending updates")
        # Stopped with 10 events pending for b.  A new runtime and sink on the same state
        # file, in a new consumer group: every record is redelivered from the beginning.
        b.down(0)
        second = _sink(state, subs)
        runtime = _runtime(second, kafka_bootstrap, topic_prefix, group=f"{topic_prefix}-again")
        with running(runtime):
            assert runtime.caught_up.wait(60)
            _produce(kafka_bootstrap, topic_prefix, [(1, _product(1, 300, "v3"))])
            wait_for(lambda: _count(b) == 21 and _count(a) == 21, 30, "everything once")
            wait_for(lambda: _drained(second), 10, "the outbox to drain")
            time.sleep(1.0)  # nothing else comes
        for server in (a, b):
            assert _count(server) == 21
            assert _history(server, 1) == [
                ("product.created", 11),
                ("product.updated", 101),
                ("product.updated", 300),
            ]
            for i in range(2, 11):
                assert _history(server, i) == [("product.created", 10 + i),
                                               ("product.updated", 100 + i)]  # fmt: skip
            _clean(server)
        # Any repeat (a 2xx lost in the stop) carried an id already accepted.
        for server in (a, b):
            st = server.state()
            assert set(st["duplicates"]) <= {e["id"] for e in st["events"]}
        assert second.stats["a"]["sent"] == 1 and second.stats["b"]["sent"] == 11


def test_a_slow_subscriber_times_out_and_the_retry_is_deduplicated(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    with Server() as a:
        assert isinstance(a, Server)
        a.respond_slowly(1.0)  # accepts, but after the sender gave up (timeout 0.4 s)
        sink = _sink(tmp_path / "w.sqlite", [_subscriber("a", a, timeout=0.4)])
        _produce(kafka_bootstrap, topic_prefix, [(1, _product(1, 10)), (1, _product(1, 11, "N"))])
        with running(_runtime(sink, kafka_bootstrap, topic_prefix)):
            wait_for(lambda: sink.stats["a"]["retried"] >= 1, 20, "a timed-out attempt")
            a.respond_slowly(0)
            wait_for(lambda: _drained(sink), 20, "the outbox to drain")
        # The timed-out attempt is still asleep in the server when the retry has been
        # accepted and the outbox drained: it lands (as the duplicate) up to 1 s later.
        wait_for(lambda: bool(a.state()["duplicates"]), 5, "the timed-out attempt to land")
        assert _history(a, 1) == [("product.created", 10), ("product.updated", 11)]
        state = a.state()
        assert state["duplicates"], "a repeat after a timeout was expected"
        assert set(state["duplicates"]) <= {e["id"] for e in state["events"]}
        _clean(a)


def _comparable(payload: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(_json_dumps(payload))
    out.pop("version", None)
    return out


def _matches_database(dsn: str, server: Server) -> bool:
    with psycopg.connect(dsn) as conn:
        products, _ = expected_documents(conn)
    state = server.state()["products"]
    for pid, doc in products.items():
        got = state.get(str(pid))
        if got is None or got["event_type"] == events.DELETED:
            return False
        if _comparable(got["product"]) != _comparable(events.product_payload(doc)):
            return False
    return all(
        got["event_type"] == events.DELETED
        for pid, got in state.items()
        if int(pid) not in products
    )


def test_subscribers_follow_the_database(
    catalog_dsn: str, kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    seed_catalog(catalog_dsn, products=40, seed=21)
    with Server() as a, Server(secret=OTHER_SECRET) as b:
        assert isinstance(a, Server) and isinstance(b, Server)
        b.fail_next(5, status=503)
        sink = _sink(tmp_path / "w.sqlite", [_subscriber("a", a), _subscriber("b", b)])
        runtime = _runtime(sink, kafka_bootstrap, topic_prefix)
        with (
            running_reader(catalog_dsn, kafka_bootstrap, topic_prefix),
            running_assembler(kafka_bootstrap, topic_prefix, tmp_path / "a.sqlite"),
            running(runtime),
        ):
            with psycopg.connect(catalog_dsn, autocommit=True) as conn:
                conn.execute("UPDATE products SET name = 'Renamed one' WHERE id = 1")
                conn.execute("UPDATE products SET deleted_at = now() WHERE id = 2")
                conn.execute("DELETE FROM products WHERE id = 3")
                conn.execute(
                    "UPDATE product_variants SET quantity = quantity + 5 WHERE product_id = 4"
                )
            run_edits(catalog_dsn, rate=30, duration=4, seed=5)
            wait_in_sync(catalog_dsn, kafka_bootstrap, topic_prefix)
            for server in (a, b):
                check = functools.partial(_matches_database, catalog_dsn, server)
                wait_for(check, 60, f"{server.url} to equal the database")
            wait_for(lambda: _drained(sink), 10, "the outbox to drain")
        for server in (a, b):
            _clean(server)
            assert _history(server, 3)[-1][0] == events.DELETED
            assert _history(server, 1)[0][0] == events.CREATED
        assert len(a.state()["products"]) >= 40
        stats = sink.stats
        assert stats["b"]["retried"] >= 5 and stats["a"]["dead_lettered"] == 0, stats
        assert stats["a"]["sent"] == stats["b"]["sent"] >= 40, stats
