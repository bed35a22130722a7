"""The three commerce consumers against their contract servers: every server down for
30 s in the middle of a stream, and a burst that trips the storefront's rate limit —
nothing lost, the newest version of every product last (issue 6)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from consumers.registry import SinkContext
from consumers.runtime import ConsumerRuntime, RuntimeSettings
from consumers.search_service.sink import SearchServiceSink
from consumers.storefront_api.sink import StorefrontApiSink
from consumers.webhooks.config import Subscriber
from consumers.webhooks.sink import WebhooksSink
from pipeline.documents.model import ProductDocument
from pipeline.kafka import TopicSpec, ensure_topics
from pipeline.settings import ConnectionSettings
from pipeline.topics import doc_topic
from tests.contracts.search_service import Server as SearchService
from tests.contracts.storefront_api import Server as Storefront
from tests.contracts.webhooks import Server as Subscribers
from tests.integration.reader_support import wait_for
from tests.integration.test_consumer_runtime import _produce, _product, running

pytestmark = pytest.mark.integration

N = 20
SETTINGS = RuntimeSettings(poll_timeout=0.1, backoff_initial=0.2, backoff_max=4.0)


def _doc(pid: int, version: int) -> ProductDocument:
    return _product(pid, version, f"name v{version}").model_copy(update={"reference": f"R-{pid}"})


def _runtimes(
    sf: Storefront, ss: SearchService, wh: Subscribers, bootstrap: str, prefix: str, tmp: Path
) -> list[ConsumerRuntime]:
    conns = ConnectionSettings(kafka_bootstrap=bootstrap, topic_prefix=prefix)
    storefront = StorefrontApiSink.from_context(SinkContext(conns, {
        "url": sf.url, "username": "demo", "password": "demo", "images": "none",
        "state": str(tmp / "sf.sqlite"),
    }))  # fmt: skip
    search_service = SearchServiceSink.from_context(SinkContext(conns, {
        "url": ss.url, "private_key": "demo-private-key", "state": str(tmp / "ss.sqlite"),
        "timeout": "5", "initial_import": "off",
    }))  # fmt: skip
    webhooks = WebhooksSink(
        [Subscriber("shop", wh.url + wh.path, wh.secret, timeout=2.0)],
        tmp / "wh.sqlite", max_age=600, backoff_initial=0.2, backoff_max=4.0,
    )  # fmt: skip
    return [
        ConsumerRuntime(sink, bootstrap=bootstrap, topic_prefix=prefix, settings=SETTINGS)
        for sink in (storefront, search_service, webhooks)
    ]


def _names(sf: Storefront, ss: SearchService, wh: Subscribers) -> list[dict[int, Any]]:
    shop = {int(r.removeprefix("R-")): p["name"] for r, p in sf.state()["products"].items()}
    hosted = {int(i): item.get("title") for i, item in ss.state()["items"].items()}
    hooks = {
        int(i): p["product"]["name"] for i, p in wh.state()["products"].items() if p.get("product")
    }
    return [shop, hosted, hooks]


def test_targets_down_30_s_and_a_rate_limit_burst_lose_nothing(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    with (
        Storefront(rate_limit=1) as sf,
        SearchService() as ss,
        Subscribers() as wh,
    ):
        assert isinstance(sf, Storefront) and isinstance(ss, SearchService)
        assert isinstance(wh, Subscribers)
        _produce(kafka_bootstrap, topic_prefix, [(i, _doc(i, 10)) for i in range(1, N + 1)])
        # (the search-service consumer reads the category documents too)
        categories = doc_topic(topic_prefix, "category")
        ensure_topics(kafka_bootstrap, [TopicSpec(categories, 1, {"cleanup.policy": "compact"})])
        a, b, c = _runtimes(sf, ss, wh, kafka_bootstrap, topic_prefix, tmp_path)
        first = {i: "name v10" for i in range(1, N + 1)}
        with running(a), running(b), running(c):
            wait_for(lambda: _names(sf, ss, wh) == [first] * 3, 60, "the first versions")
            # Every target down for 30 s while the stream goes on.
            for server in (sf, ss, wh):
                server.outage(30)
            down_until = time.monotonic() + 30
            for version in (20, 30):
                _produce(
                    kafka_bootstrap, topic_prefix, [(i, _doc(i, version)) for i in range(1, N + 1)]
                )
                time.sleep(2)
            assert _names(sf, ss, wh) == [first] * 3  # nothing got through the outage
            time.sleep(max(0.0, down_until - time.monotonic()))
            third = {i: "name v30" for i in range(1, N + 1)}
            wait_for(lambda: _names(sf, ss, wh) == [third] * 3, 90, "the versions after the outage")
            # A burst: one small batch after another, more requests than 1 a second.
            for version in range(31, 41):
                _produce(kafka_bootstrap, topic_prefix, [(i, _doc(i, version)) for i in (1, 2)])
                time.sleep(0.3)
            last = {**third, 1: "name v40", 2: "name v40"}
            wait_for(lambda: _names(sf, ss, wh) == [last] * 3, 90, "the burst")
        statuses = [status for _, path, status in sf.requests if path.startswith("/api/products")]
        assert 503 in statuses and 429 in statuses, sorted(set(statuses))
        assert all(a.stats["dead_letters"] == 0 for a in (a, b, c))
        assert wh.state()["out_of_order"] == []
        # Per product the subscriber saw versions only go up.
        for history in wh.state()["history"].values():
            versions = [e["version"] for e in history]
            assert versions == sorted(versions)
