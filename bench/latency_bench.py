"""Commit-to-indexed latency of the whole pipeline, at the highest edit rate it sustains.

One database with the demo catalog (N products); ``catalog-cdc reader`` and
``catalog-cdc assembler`` run as subprocesses, the search consumer (the consumer
runtime + ``SearchSink``) in this process; the edits (``pipeline.demo.edits``, the
realistic mix: prices, stock, new products, renames, deletes, brand renames that fan
out to many products...) come from a subprocess too.

For every record the consumer confirms, latency = the time Elasticsearch acknowledged
it (and the offset was committed) minus the PostgreSQL commit timestamp of the newest
change in it (``source_ts_ms``): commit-to-indexed, one clock.

Rates are probed upwards (15 s each); a rate is *sustained* when the edits reach
90 % of it, the p99 latency stays under 5 s and the pipeline drains within 5 s
after the edits stop.  The highest sustained rate is then run for 60 s, ``--rounds``
times (each figure of the report is the median of those runs, with min and max:
p50/p99/max, the rate reached, and the writes the sink saved, documents whose indexed
content had not changed since its last write, skipped by content hash).  When most of
those runs do not hold the rate, they run again at the next lower sustained one
(below the lowest probe: at half the rate, down to 5 edits/s).

Usage: python bench/latency_bench.py [--products N] [--rates 25,50,...] [--duration S]
       [--consumer NAME] [--probe S] [--rounds R] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Consumer
from psycopg import sql
from reader_bench import _cpu_s, _tree_cpu_s, _vm_hwm_kb, _with_db

from consumers.contract import Record
from consumers.runtime import ConsumerRuntime, RuntimeSettings
from consumers.search.engine import connect
from consumers.search.sink import SearchSink, delete_index
from pipeline.demo.catalog import load_schema
from pipeline.demo.seed import seed_catalog
from pipeline.kafka import consumer_config, pause_while_idle
from pipeline.settings import load_connections

CLI = str(Path(sys.executable).parent / "catalog-cdc")
SUSTAINED_P99_S = 5.0
SUSTAINED_DRAIN_S = 5.0
MIN_FINAL_RATE = 5.0
"""The final runs step down (halving below the lowest probe) no further than this."""
POSTGRES = "postgres (all its processes)"


class _Collector:
    """Latencies of the records confirmed since ``start(t0)`` whose commit is after t0."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.since_ms = float("inf")
        self.latencies: list[float] = []
        self.last_ack = 0.0

    def start(self) -> None:
        with self.lock:
            self.since_ms = time.time() * 1000
            self.latencies = []

    def on_batch(self, records: Sequence[Record], acked_at: float) -> None:
        with self.lock:
            self.last_ack = acked_at
            for r in records:
                if r.source_ts_ms >= self.since_ms:
                    self.latencies.append(acked_at - r.source_ts_ms / 1000)


class _DocTopicWatch:
    """Commit-to-document-topic latency (reader + assembler): the document message's
    create timestamp (the assembler's produce time) minus its ``source_ts_ms``."""

    def __init__(self, bootstrap: str, prefix: str) -> None:
        self.consumer = Consumer(consumer_config(bootstrap, f"bench-lat-{uuid.uuid4().hex[:6]}"))
        self.consumer.subscribe([f"{prefix}.doc.products"])
        self.col = _Collector()
        self.newest_ts_ms = 0
        """The newest commit time seen in a document (under ``col.lock``)."""
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            msgs = self.consumer.consume(1000, 0.05)
            if not msgs:
                pause_while_idle([self.consumer], 0.15, self.stop.wait)
            for msg in msgs:
                if msg.error():
                    continue
                with self.col.lock:
                    self.col.last_ack = time.time()  # when a document last arrived
                headers = dict(msg.headers() or [])
                ts_ms = int(headers.get("source_ts_ms", b"0"))
                kind, created = msg.timestamp()
                if ts_ms >= self.col.since_ms and kind != TIMESTAMP_NOT_AVAILABLE:
                    with self.col.lock:
                        self.col.latencies.append(created / 1000 - ts_ms / 1000)
                        self.newest_ts_ms = max(self.newest_ts_ms, ts_ms)
        self.consumer.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)


@contextlib.contextmanager
def _sink_for(
    name: str, es_url: str, bootstrap: str, prefix: str, tmp: str
) -> Iterator[tuple[Any, list[Any]]]:
    """Consumer ``name``'s sink, built by the registry from its options as
    ``catalog-cdc consume`` builds it, and the contract servers it writes to (started
    here, in this process: the local stand-ins for the third-party APIs)."""
    from consumers.registry import SinkContext, load
    from pipeline.settings import ConnectionSettings

    root = str(Path(__file__).resolve().parent.parent)  # tests.contracts: the servers
    if root not in sys.path:
        sys.path.insert(0, root)

    conns = ConnectionSettings(
        kafka_bootstrap=bootstrap, elasticsearch_url=es_url, topic_prefix=prefix
    )
    servers: list[Any] = []
    options: dict[str, str] = {}
    if name == "edge-kv":
        options = {"backend": "sqlite", "path": f"{tmp}/kv.sqlite"}
    elif name == "storefront-api":
        from tests.contracts.storefront_api import Server as Storefront

        servers.append(Storefront(username="bench", password="bench", rate_limit=50).start())
        options = {"url": servers[0].url, "username": "bench", "password": "bench",
                   "images": "none", "batch": "50", "state": f"{tmp}/sf.sqlite"}  # fmt: skip
    elif name == "search-service":
        from tests.contracts.search_service import Server as SearchService

        servers.append(SearchService(private_key="bench-key").start())
        options = {"url": servers[0].url, "private_key": "bench-key",
                   "state": f"{tmp}/ss.sqlite", "initial_import": "off"}  # fmt: skip
    elif name == "webhooks":
        from tests.contracts.webhooks import Server as Webhooks

        secret = "whsec_bench-webhook-secret-0123456789abcdef"
        servers.append(Webhooks(secret=secret).start())
        config = Path(tmp) / "webhooks.toml"
        config.write_text(
            f'[[subscribers]]\nname = "bench"\nurl = "{servers[0].url}/webhooks/pixlpay"\n'
            f'secret = "{secret}"\ntimeout = 10\n'
        )
        options = {"config": str(config), "state": f"{tmp}/wh.sqlite",
                   "backoff_initial": "0.2s", "backoff_max": "5s"}  # fmt: skip
    elif name != "search":
        raise SystemExit(f"latency_bench: no setup for consumer {name!r}")
    try:
        yield load(name)(SinkContext(conns, options)), servers
    finally:
        for server in servers:
            server.stop()


def sustained(
    lat: list[float], achieved: float, rate: float, p99: float | None, drain: float
) -> bool:
    """A rate is sustained: the edits reach 90 % of it, p99 under 5 s, drained in 5 s."""
    return bool(
        lat
        and achieved >= 0.9 * rate
        and p99 is not None
        and p99 <= SUSTAINED_P99_S
        and drain <= SUSTAINED_DRAIN_S
    )


@contextlib.contextmanager
def scratch_database(admin_dsn: str) -> Iterator[str]:
    """A new database (its DSN) for one benchmark; dropped afterwards with the
    replication slots on it."""
    db = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
    try:
        yield _with_db(admin_dsn, db)
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            time.sleep(1.0)
            for (slot,) in conn.execute(
                "SELECT slot_name FROM pg_replication_slots WHERE database = %s", (db,)
            ).fetchall():
                with contextlib.suppress(psycopg.Error):
                    conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db))
            )


def _summary(lat: list[float]) -> dict[str, float | None]:
    if not lat:
        return {"p50_s": None, "p99_s": None, "max_s": None}
    return {"p50_s": _percentile(lat, 0.5), "p99_s": _percentile(lat, 0.99), "max_s": max(lat)}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@contextlib.contextmanager
def _service(args: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([CLI, "--log-level", "warning", *args], env=env)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def _edits(dsn: str, rate: float, duration: float, seed: int) -> dict[str, Any]:
    code = (
        "import dataclasses, json, logging; logging.disable(logging.WARNING)\n"
        "from pipeline.demo.edits import run_edits\n"
        f"s = run_edits({dsn!r}, rate={rate}, duration={duration}, seed={seed})\n"
        "print(json.dumps(dataclasses.asdict(s)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _phase(
    dsn: str,
    runtime: ConsumerRuntime,
    sink: Any,
    col: _Collector,
    watch: _DocTopicWatch,
    pids: dict[str, int],
    rate: float,
    s: float,
) -> dict[str, Any]:
    stats = getattr(sink, "stats", None)
    search = isinstance(sink, SearchSink)
    before = dict(stats) if search else {}
    cpu0 = {name: _process_cpu_s(name, pid) for name, pid in pids.items()}
    t0 = time.monotonic()
    col.start()
    watch.col.start()
    edits = _edits(dsn, rate, s, seed=int(rate))
    ended = time.time()
    # Drained: nothing confirmed for 3 s and the consumer at the end of its topics.
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        time.sleep(0.5)
        with col.lock:
            quiet = time.time() - max(col.last_ack, ended) > 3.0
        if quiet and runtime.caught_up.is_set():
            break
    with col.lock:
        lat, last_ack = list(col.latencies), col.last_ack
    with watch.col.lock:
        doc_lat = list(watch.col.latencies)
    wall = time.monotonic() - t0
    cpu = {name: (_process_cpu_s(name, pid) - cpu0[name]) / wall for name, pid in pids.items()}
    after = dict(stats) if search and stats is not None else {}
    delta = {k: after[k] - before.get(k, 0) for k in after}
    written = delta["indexed"] + delta["deleted"] + delta["noop"] if search else None
    achieved = edits["committed"] / max(edits["elapsed_s"], 1e-9)
    drain = max(0.0, last_ack - ended)
    result = {
        "rate": rate,
        "seconds": s,
        "edits_committed": edits["committed"],
        "edits_per_s": achieved,
        "brand_renames": edits["brand_renames"],
        "records": len(lat),
        "p50_s": _percentile(lat, 0.50) if lat else None,
        "p99_s": _percentile(lat, 0.99) if lat else None,
        "max_s": max(lat) if lat else None,
        "mean_s": statistics.fmean(lat) if lat else None,
        "drain_s": drain,
        "doc_topic": {"documents": len(doc_lat), **_summary(doc_lat)},
        "cpu_cores": cpu,
        "sink": delta,
        "writes_sent": written,
        "writes_saved": delta["skipped_unchanged"] if search else None,
    }
    result["sustained"] = sustained(lat, achieved, rate, result["p99_s"], drain)
    return result


def run(
    admin_dsn: str,
    bootstrap: str,
    es_url: str,
    products: int,
    rates: list[float],
    duration: float,
    consumer: str = "search",
    probe_s: float = 15.0,
    rounds: int = 1,
) -> dict[str, Any]:
    prefix = f"lat{uuid.uuid4().hex[:6]}"
    es = connect(es_url, timeout=120)
    stop = threading.Event()
    with scratch_database(admin_dsn) as dsn:
        try:
            return _run(dsn, bootstrap, es_url, prefix, products, rates, duration, consumer,
                        probe_s, rounds, stop)  # fmt: skip
        finally:
            stop.set()
            delete_index(es, prefix)
            es.delete_index_template(f"{prefix}-products")
            es.close()


def _run(
    dsn: str,
    bootstrap: str,
    es_url: str,
    prefix: str,
    products: int,
    rates: list[float],
    duration: float,
    consumer: str,
    probe_s: float,
    rounds: int,
    stop: threading.Event,
) -> dict[str, Any]:
    with psycopg.connect(dsn) as conn:
        load_schema(conn)
    seed_catalog(dsn, products=products, seed=42)
    env = {
        **os.environ,
        "CATALOG_CDC_POSTGRES_DSN": dsn,
        "CATALOG_CDC_KAFKA_BOOTSTRAP": bootstrap,
        "CATALOG_CDC_TOPIC_PREFIX": prefix,
        "CATALOG_CDC_READER_SLOT": f"s_{prefix}",
        "CATALOG_CDC_READER_PUBLICATION": f"p_{prefix}",
    }
    col = _Collector()
    errors: list[BaseException] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        _sink_for(consumer, es_url, bootstrap, prefix, tmp) as (sink, _servers),
        _service(["reader"], env) as reader,
        _service(["assembler", "--state", f"{tmp}/a.sqlite"], env) as assembler,
    ):
        runtime = ConsumerRuntime(
            sink,
            bootstrap=bootstrap,
            topic_prefix=prefix,
            settings=RuntimeSettings(poll_timeout=0.1),
            on_batch=col.on_batch,
        )

        def consume() -> None:
            try:
                runtime.run(stop)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        thread = threading.Thread(target=consume, daemon=True)
        thread.start()
        t0 = time.monotonic()
        # The initial load is in once something was indexed, nothing more for 3 s
        # and the consumer is at the end of the document topics.
        while not (
            col.last_ack > 0 and time.time() - col.last_ack > 3.0 and runtime.caught_up.is_set()
        ):
            if errors:
                raise errors[0]
            if time.monotonic() - t0 > 900:
                raise RuntimeError(f"initial load not confirmed by {consumer}")
            time.sleep(0.5)
        print(f"initial load confirmed by {consumer} in {time.monotonic() - t0:.0f} s",
              flush=True)  # fmt: skip
        probes = []
        best: float | None = None
        watch = _DocTopicWatch(bootstrap, prefix)
        pids = {
            "reader": reader.pid,
            "assembler": assembler.pid,
            f"{consumer} consumer + bench": os.getpid(),
            **_stack_pids(),
        }
        for rate in rates:
            r = _phase(dsn, runtime, sink, col, watch, pids, rate, probe_s)
            probes.append(r)
            print(_line("probe", r), flush=True)
            if not r["sustained"]:
                break
            best = rate
        # The final run, several times (each figure a median).  A rate that held for a
        # probe but not over most of the longer final runs is not the highest
        # sustained one: the finals step down to the next sustained probe rate, and the
        # runs that did not hold are kept (the report names them).
        held_rates = sorted(p["rate"] for p in probes if p["sustained"])
        rate = best or rates[0]
        stepped_down: list[dict[str, Any]] = []
        while True:
            finals = []
            for k in range(rounds):
                finals.append(_phase(dsn, runtime, sink, col, watch, pids, rate, duration))
                print(_line(f"final {k + 1}/{rounds} at {rate:.0f}/s", finals[-1]), flush=True)
            held = sum(1 for f in finals if f["sustained"])
            if best is None or 2 * held > len(finals):
                break
            # The next lower probe that held; below the lowest probe, half the rate
            # (down to MIN_FINAL_RATE): the figure is then at a rate that holds, or
            # the report says that none did.
            lower = [r for r in held_rates if r < rate]
            step = lower[-1] if lower else float(int(rate // 2))
            if step < MIN_FINAL_RATE:
                break
            print(f"{rate:.0f} edits/s held in {held} of {len(finals)} final runs: "
                  f"stepping down to {step:.0f}", flush=True)  # fmt: skip
            stepped_down.append({"rate": rate, "finals": finals})
            rate = best = step
        watch.close()
        rss = {
            "reader": _vm_hwm_kb(reader.pid) / 1024,
            "assembler": _vm_hwm_kb(assembler.pid) / 1024,
            f"{consumer} consumer (bench process)": _vm_hwm_kb(os.getpid()) / 1024,
        }
        stop.set()
        thread.join(60)
    if errors:
        raise errors[0]
    return {
        "consumer": consumer,
        "products": products,
        "probes": probes,
        "best_rate": best,
        "final_held": 2 * sum(1 for f in finals if f["sustained"]) > len(finals),
        "final": finals[0],
        "finals": finals,
        "stepped_down": stepped_down,
        "peak_rss_mb": rss,
    }


def _stack_pids() -> dict[str, int]:
    """PostgreSQL (the postmaster: :func:`_process_cpu_s` counts its backends too) and
    noida-db (Kafka + Elasticsearch APIs) of the local stack."""
    from pipeline.settings import default_stack_dir
    from pipeline.stack.state import read_state

    state = read_state(default_stack_dir())
    out = {}
    for name, label in (("postgres", POSTGRES), ("noida", "noida-db")):
        svc = None if state is None else state.services.get(name)
        if svc is not None and svc.pid:
            out[label] = svc.pid
    return out


def _process_cpu_s(name: str, pid: int) -> float:
    """CPU seconds of a measured process; PostgreSQL's with every backend's."""
    return _tree_cpu_s(pid) if name == POSTGRES else _cpu_s(pid)


def _line(what: str, r: dict[str, Any]) -> str:
    if not r["records"]:
        return f"{what} {r['rate']:.0f} edits/s: nothing confirmed"
    return (
        f"{what} {r['rate']:.0f} edits/s for {r['seconds']:.0f} s: reached "
        f"{r['edits_per_s']:.0f}/s, {r['records']} records, p50 {r['p50_s']:.2f} s, "
        f"p99 {r['p99_s']:.2f} s, max {r['max_s']:.2f} s, drain {r['drain_s']:.1f} s, "
        f"doc topic p50 {r['doc_topic']['p50_s'] or 0:.2f} s p99 {r['doc_topic']['p99_s'] or 0:.2f} s, "
        f"cpu {', '.join(f'{k} {v:.2f}' for k, v in r['cpu_cores'].items())}, "
        + (
            f"writes sent {r['writes_sent']}, saved {r['writes_saved']} "
            if r["writes_sent"] is not None
            else ""
        )
        + "-> "
        f"{'sustained' if r['sustained'] else 'NOT sustained'}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=2000)
    parser.add_argument("--rates", default="25,50,100,200,400", help="edits/s to probe, ascending")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of the final run")
    parser.add_argument("--consumer", default="search", help="the sink to measure")
    parser.add_argument("--probe", type=float, default=15.0, help="seconds per probed rate")
    parser.add_argument("--rounds", type=int, default=3, help="final runs (figures: median)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    conns = load_connections()
    admin = _with_db(conns.require("postgres_dsn"), "postgres")
    result = run(
        admin,
        conns.require("kafka_bootstrap"),
        conns.require("elasticsearch_url"),
        args.products,
        [float(x) for x in args.rates.split(",")],
        args.duration,
        args.consumer,
        args.probe,
        args.rounds,
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
