"""catalog-cdc dashboard: the services' real metrics parsed, rates from two scrapes,
statuses, the synced test, the terminal and the line views, and the demo's helpers."""

from __future__ import annotations

import io
import socket
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest, start_http_server

from consumers.runtime import RuntimeMetrics
from pipeline.assembler.metrics import AssemblerMetrics
from pipeline.cli import main
from pipeline.dashboard import demo, demo_prepare, demo_proof, demo_wait, render
from pipeline.dashboard.model import Board, Scrape, Target, figures, parse_metrics, rate, row
from pipeline.dashboard.scrape import parse_target, targets_from_config
from pipeline.errors import ConfigurationError
from pipeline.reader.metrics import ReaderMetrics
from pipeline.supervisor.config import load_config

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "scripts" / "demo.toml"


def _reader(events: int = 0, lag: float = 0.0, in_flight: int = 0) -> ReaderMetrics:
    m = ReaderMetrics()
    if events:
        m.count_event("products", "u", events - events // 3)
        m.count_event("product_variants", "c", events // 3)
        m.flush_counts()
    m.confirmed_lsn.set(1_000_000)
    m.server_wal_lsn.set(1_000_000 + lag)
    m.in_flight.set(in_flight)
    return m


def _assembler(documents: int = 0, lag: int | None = 0) -> AssemblerMetrics:
    m = AssemblerMetrics()
    m.documents.labels("product", "document").inc(documents)
    m.documents.labels("product", "tombstone").inc(0)
    if lag is not None:
        m.lag.labels("catalog.public.products", "0").set(lag)
        m.lag.labels("catalog.public.products", "1").set(0)
    return m


def _consumer(
    name: str, records: int = 0, lag: int | None = 0, dead: int = 0, retries: int = 0
) -> RuntimeMetrics:
    m = RuntimeMetrics()
    if records:
        m.records.labels(name, "document").inc(records - 1)
        m.records.labels(name, "delete").inc(1)
    m.dead_letters.labels(name).inc(dead)
    m.retries.labels(name).inc(retries)
    if lag is not None:
        m.lag.labels(name, "catalog.doc.products", "0").set(lag)
        m.lag.labels(name, "catalog.doc.categories", "0").set(0)
    return m


def _scrape(registry: CollectorRegistry, at: float, name: str | None = None) -> Scrape:
    samples, families = parse_metrics(generate_latest(registry).decode())
    return Scrape(Target(f"http://127.0.0.1:1/{name}", name), at, samples, families)


# -- parsing the services' metrics ----------------------------------------------------


def test_reader_metrics_give_events_slot_lag_and_in_flight() -> None:
    f = figures(_scrape(_reader(events=300, lag=4096, in_flight=7).registry, 0.0))
    assert (f.kind, f.name) == ("reader", "reader")
    assert f.count == 300  # summed over table and op
    assert f.lag == 4096  # server WAL LSN minus confirmed, a gauge computed at scrape
    assert f.in_flight == 7
    assert f.snapshot is None and f.dead_letters is None


def test_reader_during_a_snapshot() -> None:
    m = _reader()
    m.snapshot_tables_total.set(9)
    m.snapshot_tables_done.set(4)
    now = _scrape(m.registry, 1.0)
    assert figures(now).snapshot == (4, 9)
    assert row(_scrape(m.registry, 0.0), now).status == "snapshot 4/9 tables"
    m.snapshot_tables_done.set(9)
    assert figures(_scrape(m.registry, 2.0)).snapshot is None


def test_assembler_metrics_give_documents_lag_and_dead_letters() -> None:
    m = _assembler(documents=250, lag=12)
    m.dead_letters.inc(2)
    f = figures(_scrape(m.registry, 0.0))
    assert (f.kind, f.name) == ("assembler", "assembler")
    assert (f.count, f.lag, f.dead_letters) == (250, 12, 2)
    assert not f.catching_up


def test_consumer_metrics_name_the_consumer_from_the_labels() -> None:
    f = figures(_scrape(_consumer("storefront-api", 40, lag=5, dead=1).registry, 0.0))
    assert (f.kind, f.name) == ("consumer", "storefront-api")
    assert (f.count, f.lag, f.dead_letters, f.retries) == (40, 5, 1, 0)


def test_a_consumer_that_has_not_checked_its_lag_yet() -> None:
    # No label set used yet: the families are there (HELP/TYPE), with no samples.
    s = _scrape(RuntimeMetrics().registry, 0.0, name="search")
    f = figures(s)
    assert (f.kind, f.name, f.lag, f.count) == ("consumer", "search", None, 0)
    assert row(s, s).status == "starting"
    assert not row(s, s).quiet


def test_a_configured_name_wins_over_the_labels() -> None:
    s = _scrape(_consumer("search", 3).registry, 0.0, name="search-es")
    assert figures(s).name == "search-es"


def test_text_that_is_not_prometheus_is_refused() -> None:
    with pytest.raises(ValueError):
        parse_metrics("<html>not metrics</html>\n")


# -- rates and statuses from two scrapes ------------------------------------------------


def test_rates_are_counter_deltas_over_the_time_between_scrapes() -> None:
    reader = _reader(events=100)
    before = _scrape(reader.registry, 10.0)
    reader.count_event("products", "u", 50)
    reader.flush_counts()
    r = row(before, _scrape(reader.registry, 12.0))
    assert r.rate == pytest.approx(25.0)
    assert r.status == "streaming"
    assert row(None, before).rate is None  # one scrape: no rate yet


def test_the_board_smooths_rates_over_its_window() -> None:
    # The services count in batches: 500 records at once, then nothing for a while.
    m = _consumer("search", 1, lag=0)
    board = Board([Target("s", "search")], window=3.0)
    rates = []
    for at in (0.0, 1.0, 2.0, 3.0, 4.0, 5.0):
        if at == 1.0:
            m.records.labels("search", "document").inc(500)
        rates.append(board.update([_scrape(m.registry, at, "search")])[0].rate)
    assert rates[0] is None
    assert rates[1:] == pytest.approx([500.0, 250.0, 500 / 3, 0.0, 0.0])
    # window 0: the delta since the previous scrape alone
    board = Board([Target("s", "search")], window=0.0)
    for at in (0.0, 1.0):
        board.update([_scrape(m.registry, at, "search")])
    m.records.labels("search", "document").inc(10)
    assert board.update([_scrape(m.registry, 3.0, "search")])[0].rate == pytest.approx(5.0)


def test_a_counter_that_went_down_was_reset_by_a_restart() -> None:
    assert rate(1000, 30, 2.0) == pytest.approx(15.0)
    assert rate(None, 30, 2.0) is None
    assert rate(10, 30, 0.0) is None


def test_consumer_statuses() -> None:
    m = _consumer("webhooks", 10, lag=0)
    first = _scrape(m.registry, 0.0)
    assert row(first, _scrape(m.registry, 1.0)).status == "in sync"
    assert row(first, _scrape(m.registry, 1.0)).quiet
    m.records.labels("webhooks", "document").inc(5)
    busy = row(first, _scrape(m.registry, 1.0))
    assert (busy.status, busy.rate, busy.quiet) == ("busy", 5.0, False)
    m.lag.labels("webhooks", "catalog.doc.products", "0").set(80)
    second = _scrape(m.registry, 2.0)
    behind = row(second, _scrape(m.registry, 3.0))
    assert (behind.status, behind.quiet) == ("behind", False)
    assert render.cells(behind)[1] == "behind 80"
    m.retries.labels("webhooks").inc()
    assert row(second, _scrape(m.registry, 3.0)).status == "retrying"


def test_assembler_statuses() -> None:
    m = _assembler(documents=10, lag=0)
    s0 = _scrape(m.registry, 0.0)
    assert row(s0, _scrape(m.registry, 1.0)).status == "idle"
    m.catching_up.set(1)
    assert row(s0, _scrape(m.registry, 1.0)).status == "catching up"
    assert not row(s0, _scrape(m.registry, 1.0)).quiet
    none_yet = _scrape(_assembler(lag=None).registry, 0.0)
    assert row(none_yet, none_yet).status == "starting"


def test_a_target_that_does_not_answer_is_down() -> None:
    s = Scrape(Target("http://127.0.0.1:9/metrics", "edge-kv"), 1.0, error="connection refused")
    r = row(None, s)
    assert (r.name, r.status, r.up, r.quiet) == ("edge-kv", "down", False, False)
    assert render.cells(r) == ("edge-kv", "down", "-", "-", "-", "-")


def test_the_board_is_synced_after_every_service_stays_quiet() -> None:
    reader, assembler, search = _reader(events=5), _assembler(5), _consumer("search", 5)
    targets = [Target("r", "reader"), Target("a", "assembler"), Target("s", "search")]
    board = Board(targets)

    def scrapes(at: float) -> list[Scrape]:
        return [
            Scrape(t, at, *parse_metrics(generate_latest(registry).decode()))
            for t, registry in zip(
                targets, (reader.registry, assembler.registry, search.registry), strict=True
            )
        ]

    board.update(scrapes(0.0))
    assert board.synced_for(0.0) == 0  # no rates yet
    board.update(scrapes(1.0))
    board.update(scrapes(2.0))
    assert board.synced_for(3.5) == pytest.approx(2.5)
    search.records.labels("search", "document").inc()  # something moved
    board.update(scrapes(3.0))
    assert board.synced_for(3.5) == 0
    board.update(scrapes(4.0))
    reader.in_flight.set(3)  # the reader waits for acks: not synced
    board.update(scrapes(5.0))
    assert board.synced_for(5.0) == 0
    assert [r.name for r in board.of("consumer")] == ["search"]


# -- rendering --------------------------------------------------------------------------


def _rows() -> list[Any]:
    reader, assembler = _reader(events=1000, lag=2048), _assembler(400, lag=3)
    sf = _consumer("storefront-api", 200, lag=0, dead=2)
    out = []
    for m in (reader, assembler, sf):
        before = _scrape(m.registry, 0.0)
        if isinstance(m, ReaderMetrics):
            m.count_event("products", "u", 20)
            m.flush_counts()
        elif isinstance(m, AssemblerMetrics):
            m.documents.labels("product", "document").inc(10)
        out.append(row(before, _scrape(m.registry, 2.0)))
    out.append(row(None, Scrape(Target("x", "webhooks"), 2.0, error="connection refused")))
    return out


def test_the_table_lines_up_every_figure() -> None:
    lines = render.table(_rows(), "title")
    assert lines[0] == "title"
    header, reader, assembler, storefront, webhooks = lines[2:7]
    assert header.split() == ["SERVICE", "STATUS", "RATE", "TOTAL", "LAG", "DEAD", "LETTERS"]
    assert reader.split()[:4] == ["reader", "streaming", "10.0", "events/s"]
    assert "1,020" in reader and "slot 2.0 KiB" in reader
    assert assembler.split()[:5] == ["assembler", "behind", "3", "5.0", "docs/s"]
    assert storefront.split() == [
        "storefront-api", "in", "sync", "0.0", "records/s", "200", "0", "msgs", "2"
    ]  # fmt: skip
    assert webhooks.split() == ["webhooks", "down", "-", "-", "-", "-"]
    assert lines[-1] == "  webhooks: connection refused"
    # right-aligned columns end at the same place
    ends = {line.index(" msgs") for line in (assembler, storefront)}
    assert len(ends) == 1


def test_a_terminal_frame_redraws_in_place() -> None:
    text = render.frame(_rows(), "title", ["footer"])
    assert text.startswith(render.HOME)
    assert text.endswith(render.CLEAR_BELOW)
    assert text.count(render.CLEAR_LINE) == len(render.table(_rows(), "title")) + 1


def test_one_line_per_refresh_without_a_terminal() -> None:
    line = render.plain(_rows(), "12:00:01")
    assert "\n" not in line and "\x1b" not in line
    assert line.startswith("12:00:01 reader=streaming events/s=10.0 slot_lag_bytes=2048 | ")
    assert "assembler=behind docs/s=5.0 lag=3 dead_letters=0" in line
    assert "storefront-api=in_sync records/s=0.0 lag=0 dead_letters=2" in line
    assert line.endswith("| webhooks=down(connection_refused)")


def test_sizes() -> None:
    assert [render.size(v) for v in (None, 0, 1023, 4200, 5 * 1024**2)] == [
        "-", "0 B", "1023 B", "4.1 KiB", "5.0 MiB"
    ]  # fmt: skip


# -- targets ----------------------------------------------------------------------------


def test_targets_from_flags() -> None:
    assert parse_target("9187") == Target("http://127.0.0.1:9187/metrics")
    assert parse_target("reader=localhost:9187") == Target(
        "http://localhost:9187/metrics", "reader"
    )
    assert parse_target("http://h:1/custom") == Target("http://h:1/custom")
    assert parse_target("x=https://h/") == Target("https://h/metrics", "x")
    with pytest.raises(ConfigurationError, match="expected"):
        parse_target("ftp://h/metrics")


def test_targets_from_the_demo_config() -> None:
    targets = targets_from_config(DEMO_CONFIG)
    names = [t.name for t in targets]
    assert names == [
        "reader", "assembler", "search", "edge-kv", "storefront-api", "search-service",
        "webhooks",
    ]  # fmt: skip
    assert targets[0].url == "http://127.0.0.1:19187/metrics"


def test_a_config_without_metrics_ports_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text("[reader]\n[assembler]\nenabled = false\n")
    with pytest.raises(ConfigurationError, match="metrics_port"):
        targets_from_config(path)


# -- the command against real /metrics endpoints ------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served() -> Iterator[tuple[list[str], RuntimeMetrics]]:
    """A reader and a consumer serving their metrics over HTTP, as the services do."""
    reader, consumer = _reader(events=10), _consumer("search", 4)
    servers = []
    urls = []
    for name, registry in (("reader", reader.registry), ("search", consumer.registry)):
        port = _free_port()
        server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
        servers.append((server, thread))
        urls.append(f"{name}=127.0.0.1:{port}")
    try:
        yield urls, consumer
    finally:
        for server, thread in servers:
            server.shutdown()
            server.server_close()
            thread.join(5)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_once_prints_one_table(
    served: tuple[list[str], RuntimeMetrics], capsys: pytest.CaptureFixture[str]
) -> None:
    urls, _ = served
    args = [f"--metrics={u}" for u in urls]
    assert main(["dashboard", *args, "--metrics=dead=127.0.0.1:9", "--once", "--interval=0.1"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out
    assert "reader" in out and "search" in out and "in sync" in out
    assert "dead: connection refused" in out


def test_lines_when_not_a_terminal_and_until_synced(
    served: tuple[list[str], RuntimeMetrics], capsys: pytest.CaptureFixture[str]
) -> None:
    urls, _ = served
    args = [f"--metrics={u}" for u in urls]
    started = time.monotonic()
    code = main(["dashboard", *args, "--interval=0.1", "--until-synced", "--settle=0.3"])
    assert code == 0 and time.monotonic() - started < 5
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) >= 4  # a line per refresh
    assert lines[-1].endswith("| synced")
    assert "search=in_sync records/s=0.0 lag=0 dead_letters=0" in lines[-1]


def test_until_synced_gives_up_after_the_timeout(
    served: tuple[list[str], RuntimeMetrics], capsys: pytest.CaptureFixture[str]
) -> None:
    urls, consumer = served
    consumer.lag.labels("search", "catalog.doc.products", "0").set(9)
    args = [f"--metrics={u}" for u in urls]
    code = main(["dashboard", *args, "--interval=0.1", "--until-synced", "--timeout=0.5"])
    assert code == 1
    assert "not synced after 0.5 s: search behind" in capsys.readouterr().err


def test_a_terminal_gets_the_view_redrawn(served: tuple[list[str], RuntimeMetrics]) -> None:
    import argparse

    from pipeline.dashboard.cli import Dashboard
    from pipeline.dashboard.scrape import Scraper

    urls, _ = served
    out = _Terminal()
    args = argparse.Namespace(
        interval=0.1, once=False, duration=0.35, until_synced=False, settle=3.0, timeout=None,
        window=1.0,
        title="t", plain=False,
    )  # fmt: skip
    with Scraper([parse_target(u) for u in urls]) as scraper:
        assert Dashboard(args, scraper, out).run() == 0
    text = out.getvalue()
    assert text.startswith(render.CLEAR_SCREEN + render.HOME)
    assert text.count(render.HOME) >= 3  # one frame per refresh
    assert "search" in text.split(render.HOME)[-1]


def test_bad_flags() -> None:
    from pipeline.cli import build_parser

    for argv, message in (
        (["--metrics=1", "--timeout=3"], "--until-synced"),
        (["--metrics=1", "--interval=0"], "more than 0"),
    ):
        args = build_parser().parse_args(["dashboard", *argv])
        with pytest.raises(ConfigurationError, match=message):
            args.handler(args)


# -- the demo's helpers -------------------------------------------------------------------


def test_demo_config_ports_and_state_files() -> None:
    config = load_config(DEMO_CONFIG)
    ports = demo.used_ports(config)
    assert (18701, "contract server storefront-api-server") in ports
    assert (19187, "reader metrics") in ports
    assert (18780, "service admin") in ports  # from its command line's --port
    assert len({p for p, _ in ports}) == len(ports) == 11
    files = demo_prepare.state_files(config, Path(".stack"))
    assert {f.name for f in files} == {
        "edge-kv.sqlite", "storefront-api.sqlite", "search-service.sqlite", "webhooks.sqlite"
    }  # fmt: skip


def test_the_topics_each_demo_consumer_reads() -> None:
    assert demo_wait.consumer_topics("storefront-api", "p") == ["p.doc.products"]
    assert demo_wait.consumer_topics("search", "p") == ["p.doc.products"]
    assert demo_wait.consumer_topics("edge-kv", "p") == [
        "p.doc.products", "p.doc.categories", "p.public.stores", "p.public.cms_pages"
    ]  # fmt: skip


def test_a_port_in_use_is_found() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert demo.taken([(port, "x"), (_free_port(), "y")]) == [(port, "x")]


_DB = demo_proof.Expected(
    {
        1: {"reference": "R-1", "name": "A", "price": Decimal("9.90"), "active": True,
            "quantity": 3},
        2: {"reference": "R-2", "name": "B", "price": Decimal("5"), "active": False,
            "quantity": 0},
    },
    live_sql=2,
)  # fmt: skip


def test_storefront_proof() -> None:
    shop = {
        "R-1": {"name": "A", "price": 9.9, "active": True, "quantity": 3},
        "R-2": {"name": "B", "price": 5, "active": False, "quantity": 0},
        "R-3": {"name": "C", "price": 1, "active": False, "quantity": 0},  # deleted: deactivated
    }
    state = {"products": shop, "syncs": [{}], "logins": 1}
    assert demo_proof.prove_storefront(state, _DB).in_sync
    shop["R-1"] = {**shop["R-1"], "price": 9.5}
    shop["R-3"] = {**shop["R-3"], "active": True}
    proof = demo_proof.prove_storefront(state, _DB)
    assert not proof.in_sync
    assert any("price 9.5 != 9.90" in d for d in proof.differences)
    assert any("R-3: active in the shop, deleted" in d for d in proof.differences)


def test_search_service_proof() -> None:
    items = {
        "1": {"title": "A", "price": 9.9, "status": "active"},
        "2": {"title": "B", "price": 5.0, "status": "disabled"},
    }
    state = {
        "items": items, "status": "normal", "full_import": "done",
        "malformed": {"total": 0}, "blocked": False,
    }  # fmt: skip
    assert demo_proof.prove_search_service(state, _DB).in_sync
    items["3"] = {"title": "C", "price": 1, "status": "active"}
    proof = demo_proof.prove_search_service(state, _DB)
    assert proof.difference_count == 2  # the count and the extra item
    assert "items in the hosted index: 3 received vs 2" in proof.lines[0]


def test_webhooks_proof() -> None:
    def event(kind: str, name: str, price: str, active: bool, qty: int) -> dict[str, Any]:
        product = {"name": name, "price": price, "is_active": active, "total_quantity": qty}
        return {"event_type": kind, "product": product}

    state: dict[str, Any] = {
        "events": [{}] * 5,
        "products": {
            "1": event("product.updated", "A", "9.90", True, 3),
            "2": event("product.created", "B", "5.00", False, 0),
            "3": {"event_type": "product.deleted"},
        },
        "out_of_order": [], "duplicates": [], "refused": [],
    }  # fmt: skip
    proof = demo_proof.prove_webhooks(state, _DB)
    assert proof.in_sync, proof.differences
    assert proof.lines[0].startswith("events received: 5 for 3 distinct products")
    state["products"]["2"] = {"event_type": "product.deleted"}
    assert not demo_proof.prove_webhooks(state, _DB).in_sync


def test_demo_prepare_names_the_service_that_is_down(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CATALOG_CDC_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:1/catalog")
    monkeypatch.setenv("CATALOG_CDC_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    code = demo.main(["prepare", "--config", str(DEMO_CONFIG), "--run", "demo1202999999"])
    err = capsys.readouterr().err
    assert code == 1
    assert "preparing demo run demo1202999999: PostgreSQL: connection failed" in err
    assert demo.main(["prepare", "--config", str(DEMO_CONFIG), "--run", "bogus"]) == 1
    assert "a demo run id is 'demo' and 10-14 digits, not 'bogus'" in capsys.readouterr().err


def test_the_demo_waits_while_the_assembler_catches_up() -> None:
    """A fresh assembler commits its inputs while catching up and emits documents at the
    end: wait-groups reads its catching_up gauge (real metrics over HTTP) first."""
    from prometheus_client import start_http_server

    from pipeline.assembler.metrics import AssemblerMetrics

    metrics = AssemblerMetrics()
    server, thread = start_http_server(0, addr="127.0.0.1", registry=metrics.registry)
    try:
        port = server.server_port
        metrics.catching_up.set(1)
        assert demo_wait.assembler_catching_up(port)
        metrics.catching_up.set(0)
        assert not demo_wait.assembler_catching_up(port)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert demo_wait.assembler_catching_up(port)  # not answering: not done yet
