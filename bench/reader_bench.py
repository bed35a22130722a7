"""Reader throughput vs pg_recvlogical, side by side in one run, and peak RSS.

For each round: a fresh database with the demo schema, two logical slots created at
the same WAL position (one for the reader, one for pg_recvlogical), then N row
inserts into ``product_variants`` in one transaction.  Then, one after the other:

- ``pg_recvlogical`` (PostgreSQL's C client) receives the same pgoutput stream to
  /dev/null, up to the end LSN: the practical ceiling of decoding on this machine;
- ``catalog-cdc reader`` (subprocess, snapshot off) streams the same WAL to Kafka
  until the slot's confirmed LSN reaches the end LSN, i.e. every event is
  Kafka-acknowledged.

Both are timed from process start.  The ratio is reader rows/s / pg_recvlogical
rows/s.  Peak RSS of the reader is read from /proc (VmHWM) before it stops.

Usage: python bench/reader_bench.py [--rows N] [--rounds R] [--big-rows M] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pipeline.demo.catalog import load_schema
from pipeline.reader.snapshot import describe_table  # noqa: F401 - import check
from pipeline.settings import load_connections
from pipeline.stack.postgres import find_bindir
from pipeline.supervisor.supervisor import peak_rss_kb

CLI = str(Path(sys.executable).parent / "catalog-cdc")
PROFILE = os.environ.get("READER_BENCH_PROFILE")  # write a cProfile of the reader here


def _with_db(dsn: str, db: str) -> str:
    params = conninfo_to_dict(dsn)
    params["dbname"] = db
    return make_conninfo(**params)  # type: ignore[arg-type]


def _lsn(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    return str(row[0])


def _confirmed(conn: psycopg.Connection[Any], slot: str, target: str) -> bool:
    row = conn.execute(
        "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots WHERE slot_name = %s",
        (target, slot),
    ).fetchone()
    conn.rollback()
    return bool(row and row[0])


def _vm_hwm_kb(pid: int) -> int:
    """Peak RSS of ``pid`` in KB (what `catalog-cdc run` reports too); 0 once it is gone."""
    return peak_rss_kb(pid) or 0


def _cpu_s(pid: int, tid: int | None = None) -> float:
    stat = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    fields = Path(stat).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tree_cpu_s(pid: int) -> float:
    """CPU of a process and of its children, the live ones and those it reaped: the
    PostgreSQL postmaster's backends come and go with their sessions (the editing
    sessions of a phase are gone, reaped, when the phase is measured)."""
    tick = os.sysconf("SC_CLK_TCK")

    def own_and_reaped(fields: list[str]) -> int:
        return sum(int(f) for f in fields[11:15])  # utime stime cutime cstime

    total = own_and_reaped(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid:
            total += own_and_reaped(fields)
    return total / tick


def _main_thread_cpu_s(pid: int) -> float:
    """CPU of the process's main thread (the reader's Python thread), not librdkafka's."""
    return _cpu_s(pid, pid)


def _broker_pid() -> int | None:
    """The local stack's Kafka broker process (noida-db), to see what it costs."""
    try:
        out = subprocess.run(
            [CLI, "stack", "status", "--json"], capture_output=True, text=True, check=True
        ).stdout
        pid = json.loads(out)["services"]["noida"]["pid"]
        return int(pid) if pid and Path(f"/proc/{pid}").exists() else None
    except (subprocess.CalledProcessError, KeyError, TypeError, ValueError):
        return None


def _cpu_or_zero(pid: int | None) -> float:
    try:
        return _cpu_s(pid) if pid else 0.0
    except OSError:
        return 0.0


def one_round(admin_dsn: str, bootstrap: str, rows: int) -> dict[str, Any]:
    db = f"bench_{uuid.uuid4().hex[:8]}"
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
    dsn = _with_db(admin_dsn, db)
    try:
        with psycopg.connect(dsn) as conn:
            load_schema(conn)
            conn.execute(
                "INSERT INTO stores (id, code, name, currency, locale) VALUES (1, 'b', 'B', 'EUR', 'en')"
            )
            conn.execute(
                "INSERT INTO products (id, store_id, reference, name, price, url_key) VALUES (1, 1, 'R1', 'P', 1, 'p')"
            )
            conn.commit()
        env = {
            **os.environ,
            "CATALOG_CDC_POSTGRES_DSN": dsn,
            "CATALOG_CDC_KAFKA_BOOTSTRAP": bootstrap,
            "CATALOG_CDC_TOPIC_PREFIX": prefix,
            "CATALOG_CDC_READER_SLOT": f"r_{db}",
            "CATALOG_CDC_READER_PUBLICATION": "catalog_cdc",
            "CATALOG_CDC_READER_SNAPSHOT_MODE": "never",
            "CATALOG_CDC_READER_HEARTBEAT_INTERVAL": "0",
        }
        # Set-up run of the reader: publication, topics, slot; then stop it.
        log = Path(f"/tmp/{db}-reader.log")
        with open(log, "wb") as fh:
            setup = subprocess.Popen([CLI, "reader"], env=env, stdout=fh, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while "replication_started" not in log.read_text():
            assert setup.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.1)
        setup.terminate()
        assert setup.wait(30) == 0
        recv_slot = f"p_{db}"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (recv_slot,))
            with conn.transaction():
                conn.execute(
                    "INSERT INTO product_variants (id, product_id, sku, price, quantity, attributes) "
                    "SELECT g, 1, 'SKU-' || g, (g %% 1000) + 0.99, g %% 50, "
                    "jsonb_build_object('size', 'M', 'color', 'navy', 'n', g) "
                    "FROM generate_series(1, %s) g",
                    (rows,),
                )
            end = _lsn(conn)

        bindir = find_bindir()
        assert bindir is not None
        params = conninfo_to_dict(dsn)
        broker = _broker_pid()
        broker_cpu = _cpu_or_zero(broker)
        started = time.perf_counter()
        subprocess.run(
            [
                str(bindir / "pg_recvlogical"), "-d", dsn, "-S", recv_slot, "--start",
                "-o", "proto_version=1", "-o", "publication_names=catalog_cdc",
                "-E", end, "-f", "/dev/null", "--no-loop",
            ],
            check=True,
            env={**os.environ, "PGUSER": str(params.get("user", "postgres"))},
        )  # fmt: skip
        recv_s = time.perf_counter() - started
        broker_cores_recv = (_cpu_or_zero(broker) - broker_cpu) / recv_s

        broker_cpu = _cpu_or_zero(broker)
        started = time.perf_counter()
        argv = [CLI, "reader"]
        if PROFILE:
            argv = [sys.executable, "-m", "cProfile", "-o", PROFILE, "-m", "pipeline.cli", "reader"]
        with open(log, "ab") as fh:
            proc = subprocess.Popen(argv, env=env, stdout=fh, stderr=subprocess.STDOUT)
        peak_kb = 0
        with psycopg.connect(dsn) as conn:
            while not _confirmed(conn, f"r_{db}", end):
                assert proc.poll() is None, log.read_text()[-3000:]
                peak_kb = max(peak_kb, _vm_hwm_kb(proc.pid))
                time.sleep(0.02)
        reader_s = time.perf_counter() - started
        broker_cores_reader = (_cpu_or_zero(broker) - broker_cpu) / reader_s
        peak_kb = max(peak_kb, _vm_hwm_kb(proc.pid))
        cpu_s = _cpu_s(proc.pid)
        main_cpu_s = _main_thread_cpu_s(proc.pid)
        proc.terminate()
        proc.wait(60)
        return {
            "rows": rows,
            "pg_recvlogical_s": recv_s,
            "reader_s": reader_s,
            "pg_recvlogical_rows_per_s": rows / recv_s,
            "reader_rows_per_s": rows / reader_s,
            "ratio": recv_s / reader_s,
            "reader_peak_rss_mb": peak_kb / 1024,
            "reader_cpu_s": cpu_s,
            "reader_main_thread_cpu_s": main_cpu_s,
            # The machine's 1-minute load average after the round: above the core count,
            # other work competed with the round (both clients, but the reader more:
            # it needs a core of its own beside the walsender and the broker).
            "load_1m": os.getloadavg()[0],
            # Cores the broker process kept busy while each client ran (it also serves
            # Elasticsearch for other work: busy during pg_recvlogical = background).
            "broker_cores_during_pg_recvlogical": broker_cores_recv,
            "broker_cores_during_reader": broker_cores_reader,
        }
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            for (slot,) in conn.execute(
                "SELECT slot_name FROM pg_replication_slots WHERE database = %s", (db,)
            ).fetchall():
                conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db))
            )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--big-rows",
        type=int,
        default=1_000_000,
        help="rows of the one-transaction RSS run (0 = skip)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write results here")
    args = parser.parse_args()
    conns = load_connections()
    admin = _with_db(conns.require("postgres_dsn"), "postgres")
    bootstrap = conns.require("kafka_bootstrap")
    rounds = []
    for i in range(args.rounds):
        r = one_round(admin, bootstrap, args.rows)
        rounds.append(r)
        print(f"round {i + 1}: " + json.dumps({k: round(v, 3) for k, v in r.items()}), flush=True)
    big = one_round(admin, bootstrap, args.big_rows) if args.big_rows else None
    if big:
        print(
            "big transaction: " + json.dumps({k: round(v, 3) for k, v in big.items()}), flush=True
        )
    ratios = [r["ratio"] for r in rounds]
    summary = {
        "rows": args.rows,
        "rounds": rounds,
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "reader_rows_per_s_median": statistics.median(r["reader_rows_per_s"] for r in rounds),
        "pg_recvlogical_rows_per_s_median": statistics.median(
            r["pg_recvlogical_rows_per_s"] for r in rounds
        ),
        "big_transaction": big,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "rounds"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
