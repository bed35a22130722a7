"""Commit-to-document-topic latency (reader + assembler) at fixed, high edit rates.

One database with the demo catalog (N products); ``catalog-cdc reader`` and
``catalog-cdc assembler`` run as subprocesses.  The edits are what a shop does most
at such rates: one variant's stock changed per transaction (an order, a warehouse
feed), spread over every variant.  They come from PL/pgSQL (``bench_stock_edits``, a
procedure that commits after every update and paces itself by the clock), in
``--connections`` sessions at once, so that PostgreSQL — not a Python client — sets
how many edits a second can be committed.

For every product document that reaches ``{prefix}.doc.products`` during a phase:
latency = its message's CreateTime (the assembler produced it) minus the PostgreSQL
commit time of the newest change in it (``source_ts_ms``), one clock.  A rate is
*sustained* when the edits committed reach 90 % of it, the p99 latency stays under
5 s, and the last document arrives within 5 s after the edits stop.  Each rate runs
for ``--duration`` seconds, ``--rounds`` times while it is sustained (the report's
figures are medians with min and max); the CPU each process used and the services'
peak RSS are recorded beside.

Usage: python bench/doc_latency_bench.py [--products N] [--rates 500,2000,5000]
       [--duration S] [--connections C] [--rounds R] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka.admin import AdminClient
from latency_bench import (
    _DocTopicWatch,
    _process_cpu_s,
    _service,
    _stack_pids,
    _summary,
    scratch_database,
    sustained,
)
from reader_bench import _vm_hwm_kb, _with_db

from pipeline.demo.catalog import load_schema
from pipeline.demo.seed import seed_catalog
from pipeline.settings import load_connections

_PROCEDURE = """
CREATE OR REPLACE PROCEDURE bench_stock_edits(rate double precision, seconds double precision,
                                              worker int, workers int)
LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[];
    n int;
    i bigint := 0;
    started timestamptz := clock_timestamp();
    ahead double precision;
BEGIN
    SELECT array_agg(id ORDER BY id) INTO ids FROM product_variants WHERE id % workers = worker;
    n := coalesce(array_length(ids, 1), 0);
    IF n = 0 THEN RETURN; END IF;
    COMMIT;
    WHILE extract(epoch FROM clock_timestamp() - started) < seconds LOOP
        UPDATE product_variants SET quantity = (quantity + 7) % 500
         WHERE id = ids[1 + (i * 7919) % n];
        COMMIT;
        i := i + 1;
        -- Pace: i edits should have taken i / rate seconds.
        ahead := i / rate - extract(epoch FROM clock_timestamp() - started);
        IF ahead > 0.002 THEN PERFORM pg_sleep(ahead); END IF;
    END LOOP;
    RAISE NOTICE 'committed %', i;
END $$;
"""


def _edits(dsn: str, rate: float, seconds: float, connections: int) -> dict[str, Any]:
    """``rate`` single-row stock edits a second for ``seconds``, from ``connections``
    sessions; what they committed."""
    done: list[int] = []
    errors: list[BaseException] = []

    def one(worker: int) -> None:
        notices: list[str] = []
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
                conn.execute(
                    "CALL bench_stock_edits(%s, %s, %s, %s)",
                    (rate / connections, seconds, worker, connections),
                )
            done.append(sum(int(n.split()[-1]) for n in notices if n.startswith("committed")))
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            errors.append(exc)

    t0 = time.monotonic()
    threads = [threading.Thread(target=one, args=(w,)) for w in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    elapsed = time.monotonic() - t0
    return {"committed": sum(done), "elapsed_s": elapsed}


def _phase(
    dsn: str,
    watch: _DocTopicWatch,
    pids: dict[str, int],
    rate: float,
    seconds: float,
    connections: int,
) -> dict[str, Any]:
    cpu0 = {name: _process_cpu_s(name, pid) for name, pid in pids.items()}
    t0 = time.monotonic()
    watch.col.start()
    edits = _edits(dsn, rate, seconds, connections)
    ended = time.time()
    # Drained: a document holds a change committed in the last 0.2 s of the edits (the
    # edits touch every product, so the last ones reach some document), then nothing
    # more for 2 s; at most 300 s.
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        time.sleep(0.5)
        with watch.col.lock:
            reached = watch.newest_ts_ms >= (ended - 0.2) * 1000
            last = watch.col.last_ack
        if reached and time.time() - last > 2.0:
            break
    with watch.col.lock:
        lat, last_doc = list(watch.col.latencies), watch.col.last_ack
    wall = time.monotonic() - t0
    cpu = {name: (_process_cpu_s(name, pid) - cpu0[name]) / wall for name, pid in pids.items()}
    achieved = edits["committed"] / max(seconds, 1e-9)
    drain = max(0.0, last_doc - ended)
    result = {
        "rate": rate,
        "seconds": seconds,
        "edits_committed": edits["committed"],
        "edits_per_s": achieved,
        "documents": len(lat),
        **_summary(lat),
        "mean_s": sum(lat) / len(lat) if lat else None,
        "drain_s": drain,
        "cpu_cores": cpu,
    }
    result["sustained"] = sustained(lat, achieved, rate, result["p99_s"], drain)
    return result


def run(
    admin_dsn: str,
    bootstrap: str,
    products: int,
    rates: list[float],
    seconds: float,
    connections: int,
    rounds: int = 1,
) -> dict[str, Any]:
    prefix = f"dlat{uuid.uuid4().hex[:6]}"
    with scratch_database(admin_dsn) as dsn:
        with psycopg.connect(dsn) as conn:
            load_schema(conn)
            conn.execute(_PROCEDURE)
        seed_catalog(dsn, products=products, seed=42)
        env = {
            **os.environ,
            "CATALOG_CDC_POSTGRES_DSN": dsn,
            "CATALOG_CDC_KAFKA_BOOTSTRAP": bootstrap,
            "CATALOG_CDC_TOPIC_PREFIX": prefix,
            "CATALOG_CDC_READER_SLOT": f"s_{prefix}",
            "CATALOG_CDC_READER_PUBLICATION": f"p_{prefix}",
        }
        with (
            tempfile.TemporaryDirectory() as tmp,
            _service(["reader"], env) as reader,
            _service(["assembler", "--state", f"{tmp}/a.sqlite"], env) as assembler,
        ):
            t0 = time.monotonic()
            admin = AdminClient({"bootstrap.servers": bootstrap})
            topic = f"{prefix}.doc.products"
            # Subscribe once the assembler made the topic (a subscription to a missing
            # topic sees it only at the next metadata refresh, minutes later).
            while topic not in admin.list_topics(timeout=10).topics:
                if time.monotonic() - t0 > 300:
                    raise RuntimeError(f"the assembler did not create {topic}")
                time.sleep(0.5)
            watch = _DocTopicWatch(bootstrap, prefix)
            # The initial load is in once documents came and then none for 5 s.
            while not (watch.col.last_ack and time.time() - watch.col.last_ack > 5.0):
                if reader.poll() is not None or assembler.poll() is not None:
                    raise RuntimeError("the reader or the assembler exited during the load")
                if time.monotonic() - t0 > 900:
                    raise RuntimeError("the initial load did not reach the document topic")
                time.sleep(0.5)
            print(f"initial load on the document topic in {time.monotonic() - t0:.0f} s")
            pids = {"reader": reader.pid, "assembler": assembler.pid, **_stack_pids()}
            phases = []
            for rate in rates:
                # Each rate `rounds` times (the report gives medians), but a rate that
                # was not sustained once is not repeated: its backlog is the answer.
                for k in range(rounds):
                    r = _phase(dsn, watch, pids, rate, seconds, connections)
                    r["round"] = k + 1
                    phases.append(r)
                    print(_line(r), flush=True)
                    if not r["sustained"]:
                        break
            watch.close()
            rss = {
                "reader": _vm_hwm_kb(reader.pid) / 1024,
                "assembler": _vm_hwm_kb(assembler.pid) / 1024,
            }
        return {
            "products": products,
            "connections": connections,
            "rounds": rounds,
            "phases": phases,
            "peak_rss_mb": rss,
        }


def _line(r: dict[str, Any]) -> str:
    if not r["documents"]:
        return f"{r['rate']:.0f} edits/s: no document"
    return (
        f"{r['rate']:.0f} edits/s for {r['seconds']:.0f} s: committed {r['edits_per_s']:.0f}/s, "
        f"{r['documents']} documents, p50 {r['p50_s']:.2f} s, p99 {r['p99_s']:.2f} s, "
        f"max {r['max_s']:.2f} s, drain {r['drain_s']:.1f} s, "
        f"cpu {', '.join(f'{k} {v:.2f}' for k, v in r['cpu_cores'].items())} -> "
        f"{'sustained' if r['sustained'] else 'NOT sustained'}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=2000)
    parser.add_argument("--rates", default="500,2000,5000", help="edits/s, one phase each")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per rate")
    parser.add_argument("--connections", type=int, default=4, help="editing sessions")
    parser.add_argument("--rounds", type=int, default=3, help="runs per sustained rate")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    conns = load_connections()
    admin = _with_db(conns.require("postgres_dsn"), "postgres")
    result = run(
        admin,
        conns.require("kafka_bootstrap"),
        args.products,
        [float(x) for x in args.rates.split(",")],
        args.duration,
        args.connections,
        args.rounds,
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
