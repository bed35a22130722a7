"""``catalog-cdc replay`` and ``resnapshot`` on the stack: no failed search during the
alias swap, the new index equals the topics, an interrupted replay resumes.  The search
replays run on each engine (Elasticsearch, OpenSearch: ``search_url``)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from consumers.runtime import ConsumerRuntime, RuntimeSettings
from consumers.search import mapping
from consumers.search.engine import SearchEngine, connect
from consumers.search.sink import SearchSink, delete_index
from pipeline.demo.seed import seed_catalog
from pipeline.documents.reading import latest_documents
from pipeline.replay import ReplayProgress, replay
from pipeline.settings import ConnectionSettings
from tests.integration.reader_support import read_events, running_reader, wait_for
from tests.integration.test_consumer_runtime import _produce, _product, running

pytestmark = pytest.mark.integration


def _connections(kafka_bootstrap: str, es_url: str, prefix: str) -> ConnectionSettings:
    return ConnectionSettings(
        kafka_bootstrap=kafka_bootstrap, elasticsearch_url=es_url, topic_prefix=prefix
    )


def _index_versions(es: SearchEngine, index: str) -> dict[int, int]:
    es.refresh(index)
    return {int(h.id): int(h.version or 0) for h in es.scan(index)}


def _topic_versions(bootstrap: str, prefix: str) -> dict[int, int]:
    latest = latest_documents(bootstrap, prefix, "product")
    return {i: m.version for i, m in latest.items() if m.doc is not None}


def test_search_replay_swaps_the_alias_while_searches_and_edits_go_on(
    kafka_bootstrap: str,
    search_url: str,
    search_engine: SearchEngine,
    topic_prefix: str,
    tmp_path: Path,
) -> None:
    es, es_url = search_engine, search_url
    _produce(kafka_bootstrap, topic_prefix, [(i, _product(i, 10 + i)) for i in range(1, 121)])
    live = ConsumerRuntime(
        SearchSink(connect(es_url), topic_prefix),
        bootstrap=kafka_bootstrap,
        topic_prefix=topic_prefix,
        settings=RuntimeSettings(poll_timeout=0.05),
    )
    alias = mapping.alias(topic_prefix)
    failures: list[str] = []
    searches = [0]
    stop_searching = threading.Event()

    def search_loop() -> None:
        while not stop_searching.is_set():
            try:
                es.search(alias, {"match_all": {}}, size=1)
                searches[0] += 1
            except Exception as exc:  # noqa: BLE001 - every failure is the finding
                failures.append(repr(exc))
            time.sleep(0.01)

    def edit_loop() -> None:  # updates and a delete while the replay runs
        for round_ in range(1, 6):
            _produce(
                kafka_bootstrap,
                topic_prefix,
                [(i, _product(i, 1000 * round_ + i, f"r{round_}")) for i in range(1, 21)],
            )
            time.sleep(0.3)
        _produce(kafka_bootstrap, topic_prefix, [(60, None)])  # (version 99 > 70)

    try:
        with running(live):
            assert live.caught_up.wait(60)
            first = es.alias_indices(alias)
            assert first == [mapping.generation(topic_prefix, 1)]
            searcher = threading.Thread(target=search_loop, daemon=True)
            editor = threading.Thread(target=edit_loop, daemon=True)
            searcher.start()
            editor.start()
            seen: list[ReplayProgress] = []
            result = replay(
                "search",
                connections=_connections(kafka_bootstrap, es_url, topic_prefix),
                grace=1.0,
                state_path=tmp_path / "replay.json",
                progress=seen.append,
                batch_size=25,
            )
            editor.join(60)
            # The live consumer writes what came after the replay's last pass.
            target = mapping.generation(topic_prefix, 2)
            wait_for(
                lambda: (
                    _index_versions(es, target) == _topic_versions(kafka_bootstrap, topic_prefix)
                ),
                60,
                "the new index to equal the topic",
            )
            stop_searching.set()
            searcher.join(10)
        assert failures == [], failures[:3]
        assert searches[0] > 20
        assert result.records >= 120 and result.rejected == 0
        assert seen and seen[-1].phase == "done" and any(p.docs_per_s > 0 for p in seen)
        # The alias moved to a new generation; the old one is gone.
        assert es.alias_indices(alias) == [target]
        assert not es.index_exists(mapping.generation(topic_prefix, 1))
        # The new index equals the topic: every live document at its latest version.
        assert _index_versions(es, target) == _topic_versions(kafka_bootstrap, topic_prefix)
        assert not (tmp_path / "replay.json").exists()  # done: nothing to resume
    finally:
        stop_searching.set()
        delete_index(es, topic_prefix)


def test_an_interrupted_replay_resumes_and_gives_the_same_index(
    kafka_bootstrap: str,
    search_url: str,
    search_engine: SearchEngine,
    topic_prefix: str,
    tmp_path: Path,
) -> None:
    es, es_url = search_engine, search_url
    _produce(kafka_bootstrap, topic_prefix, [(i, _product(i, 5 + i)) for i in range(1, 151)])
    conns = _connections(kafka_bootstrap, es_url, topic_prefix)
    state = tmp_path / "replay.json"
    stop = threading.Event()

    def interrupt(p: ReplayProgress) -> None:
        if p.done >= 50:
            stop.set()

    try:
        first = replay(
            "search", connections=conns, grace=0, state_path=state, progress=interrupt,
            stop=stop, batch_size=25,
        )  # fmt: skip
        assert first.detail.get("interrupted") and 50 <= first.records < 150
        saved = json.loads(state.read_text())
        assert saved["pass"] == "first" and saved["plan"]["target"].endswith("-products-2")
        # The CLI resumes it (same state file) and finishes.
        out = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "replay", "search", "--grace", "0",
             "--state", str(state), "--json"],
            env=_env(kafka_bootstrap, es_url, topic_prefix), capture_output=True, text=True,
            timeout=180, check=True,
        )  # fmt: skip
        result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        assert result["records"] + first.records >= 150, result
        alias = mapping.alias(topic_prefix)
        target = saved["plan"]["target"]
        assert es.alias_indices(alias) == [target]
        assert _index_versions(es, target) == _topic_versions(kafka_bootstrap, topic_prefix)
        assert not state.exists()
    finally:
        delete_index(es, topic_prefix)


def _env(kafka_bootstrap: str, es_url: str, prefix: str) -> dict[str, str]:
    import os

    return {
        **os.environ,
        "CATALOG_CDC_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "CATALOG_CDC_SEARCH_URL": es_url,  # the preferred name (the older one still works)
        "CATALOG_CDC_TOPIC_PREFIX": prefix,
    }


def test_dry_run_counts_and_upsert_replay_resends_everything(
    kafka_bootstrap: str, es_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    _produce(kafka_bootstrap, topic_prefix, [(i, _product(i, 1 + i)) for i in range(1, 31)])
    conns = _connections(kafka_bootstrap, es_url, topic_prefix)
    dry = replay(
        "jsonl", connections=conns, dry_run=True, options={"path": "x", "kinds": "product"}
    )
    assert dry.dry_run and dry.records == 30
    out = tmp_path / "docs.jsonl"
    done = replay(
        "jsonl", connections=conns, options={"path": str(out), "kinds": "product"},
        state_path=tmp_path / "r.json",
    )  # fmt: skip
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert done.records == 30 and sorted(x["id"] for x in lines) == list(range(1, 31))


def test_resnapshot_puts_the_rows_back_on_the_topics(
    catalog_dsn: str, kafka_bootstrap: str, topic_prefix: str
) -> None:
    seed_catalog(catalog_dsn, products=12, seed=3)
    topic = f"{topic_prefix}.public.products"

    def events() -> list[Any]:
        return [e for _, e, _, _ in read_events(kafka_bootstrap, topic_prefix, topic) if e]

    with running_reader(catalog_dsn, kafka_bootstrap, topic_prefix):
        with psycopg.connect(catalog_dsn) as conn:
            row = conn.execute("SELECT count(*) FROM products").fetchone()
            assert row is not None
            rows = int(row[0])
        wait_for(lambda: len(events()) >= rows, 60, "the snapshot")
        before = len(events())

        def incremental() -> int:
            return sum(1 for e in events() if e.op == "r" and e.source.snapshot == "incremental")

        assert incremental() == 0
        env = {
            **_env(kafka_bootstrap, "http://127.0.0.1:9", topic_prefix),
            "CATALOG_CDC_POSTGRES_DSN": catalog_dsn,
        }
        subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "resnapshot", "--tables", "public.products"],
            env=env, check=True, capture_output=True, timeout=60,
        )  # fmt: skip

        wait_for(lambda: incremental() >= rows, 60, "the re-snapshot's events")
        assert len(events()) >= before + rows


def test_storefront_replay_resends_every_product(
    kafka_bootstrap: str, es_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    from tests.contracts.storefront_api import Server

    docs = [
        (i, _product(i, 1 + i).model_copy(update={"reference": f"R-{i}"})) for i in range(1, 13)
    ]
    _produce(kafka_bootstrap, topic_prefix, docs)
    conns = _connections(kafka_bootstrap, es_url, topic_prefix)
    with Server() as server:
        assert isinstance(server, Server)
        options = {
            "url": server.url, "username": "demo", "password": "demo",
            "state": str(tmp_path / "sf.sqlite"), "images": "none",
        }  # fmt: skip
        for round_ in (1, 2):  # the second replay re-sends although the state is current
            replay(
                "storefront-api", connections=conns, options=options,
                state_path=tmp_path / "r.json",
            )  # fmt: skip
            received = server.state()["received"]
            assert len(received) == 12 * round_, received
        assert len(server.state()["products"]) == 12


def test_edge_kv_replay_rebuilds_a_lost_store(
    catalog_dsn: str, kafka_bootstrap: str, es_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    from consumers.edge_kv.backends.sqlite import SqliteBackend
    from consumers.edge_kv.layout import PULSE
    from tests.integration.assembler_support import running_assembler, wait_in_sync
    from tests.integration.test_edge_kv import PAGE_SIZE, contents, expected_layout

    seed_catalog(catalog_dsn, products=15, seed=5)
    with (
        running_reader(catalog_dsn, kafka_bootstrap, topic_prefix),
        running_assembler(kafka_bootstrap, topic_prefix, tmp_path / "a.sqlite"),
    ):
        wait_in_sync(catalog_dsn, kafka_bootstrap, topic_prefix)
    store = tmp_path / "kv.sqlite"  # never written by a live consumer: a store "lost"
    result = replay(
        "edge-kv",
        connections=_connections(kafka_bootstrap, es_url, topic_prefix),
        options={"backend": "sqlite", "path": str(store), "page_size": str(PAGE_SIZE)},
        state_path=tmp_path / "r.json",
    )
    assert result.records > 15 and result.rejected == 0
    backend = SqliteBackend(store)
    got = contents(backend)
    assert got.pop(PULSE)  # the rebuilt store has a pulse
    assert got == expected_layout(catalog_dsn)
    assert not (tmp_path / "r.kv-index").exists()


def test_search_replay_under_demo_edits_ends_equal_to_the_database(
    catalog_dsn: str,
    kafka_bootstrap: str,
    search_url: str,
    search_engine: SearchEngine,
    topic_prefix: str,
    tmp_path: Path,
) -> None:
    """Issue 8's check: a replay of search while `demo edits` runs and a loop of searches
    hits the alias: no search fails during the swap; the new index equals the database."""
    from consumers.registry import SinkContext
    from pipeline.demo.edits import run_edits
    from pipeline.verify.driver import run as verify
    from pipeline.verify.driver import verifier_for
    from tests.integration.assembler_support import running_assembler, wait_in_sync

    es, es_url = search_engine, search_url
    alias = mapping.alias(topic_prefix)
    seed_catalog(catalog_dsn, products=40, seed=21)
    conns = ConnectionSettings(
        postgres_dsn=catalog_dsn, kafka_bootstrap=kafka_bootstrap, elasticsearch_url=es_url,
        topic_prefix=topic_prefix,
    )  # fmt: skip
    live = ConsumerRuntime(
        SearchSink(connect(es_url), topic_prefix),
        bootstrap=kafka_bootstrap,
        topic_prefix=topic_prefix,
        settings=RuntimeSettings(poll_timeout=0.05),
    )
    failures: list[str] = []
    searches = [0]
    done = threading.Event()

    def search_loop() -> None:
        while not done.is_set():
            try:
                es.search(alias, {"match": {"name": "coffee"}}, size=3)
                searches[0] += 1
            except Exception as exc:  # noqa: BLE001 - every failure is the finding
                failures.append(repr(exc))
            time.sleep(0.01)

    try:
        with (
            running_reader(catalog_dsn, kafka_bootstrap, topic_prefix),
            running_assembler(kafka_bootstrap, topic_prefix, tmp_path / "a.sqlite"),
            running(live),
        ):
            wait_in_sync(catalog_dsn, kafka_bootstrap, topic_prefix)
            wait_for(lambda: es.alias_exists(alias), 60, "the live index")
            searcher = threading.Thread(target=search_loop, daemon=True)
            searcher.start()
            edits = threading.Thread(
                target=run_edits, args=(catalog_dsn,), kwargs={"rate": 20, "duration": 8, "seed": 4},
                daemon=True,
            )  # fmt: skip
            edits.start()
            result = replay(
                "search", connections=conns, grace=1.0, state_path=tmp_path / "r.json",
                batch_size=20,
            )  # fmt: skip
            edits.join(60)
            wait_in_sync(catalog_dsn, kafka_bootstrap, topic_prefix)

            def index_in_sync() -> bool:
                verifier = verifier_for("search", SinkContext(conns, {}), catalog_dsn)
                try:
                    return verify(verifier).final.in_sync
                finally:
                    verifier.close()

            wait_for(index_in_sync, 60, "the new index to equal the database")
            done.set()
            searcher.join(10)
        assert failures == [], failures[:3]
        assert searches[0] > 50 and result.rejected == 0
        assert es.alias_indices(alias) == [mapping.generation(topic_prefix, 2)]
    finally:
        done.set()
        delete_index(es, topic_prefix)
