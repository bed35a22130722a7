"""Assembler throughput vs the same documents built by SQL, and the cost of a fan-out.

For each round: a fresh database with the demo catalog of N products, a reader (in a
thread) that snapshots it onto the raw topics, then:

- **reference**: the documents straight from PostgreSQL (one consistent snapshot, SQL
  joins, the same pydantic models: ``pipeline.documents.reference``) — what building
  the documents costs when the database does the joining;
- **assembler**: ``catalog-cdc assembler`` (a subprocess, fresh state) from start
  until every product document is on ``{prefix}.doc.products`` (Kafka end offsets,
  nothing else polled): it reads every raw event of the snapshot, keeps its SQLite
  state, builds, Avro-encodes and produces the documents and waits for the acks;
- **fan-out**: all N products are given one brand, then the brand is renamed (one
  row); timed from the rename's commit until N more product documents are on the
  topic (reader latency included).

The ratio is assembler documents/s / reference documents/s.  Peak RSS of the
assembler is read from /proc (VmHWM).

Usage: python bench/assembler_bench.py [--products N] [--rounds R] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Consumer, TopicPartition
from psycopg import sql
from reader_bench import _cpu_s, _vm_hwm_kb, _with_db  # the same /proc and DSN helpers

from pipeline.demo.catalog import load_schema
from pipeline.demo.seed import seed_catalog
from pipeline.documents.reference import expected_documents
from pipeline.kafka import consumer_config
from pipeline.reader.service import Reader
from pipeline.reader.settings import ReaderSettings
from pipeline.settings import load_connections

CLI = str(Path(sys.executable).parent / "catalog-cdc")
PROFILE = os.environ.get("ASSEMBLER_BENCH_PROFILE")  # write a cProfile of the assembler here


def _vm_hwm_mb(pid: int) -> float:
    return _vm_hwm_kb(pid) / 1024


class _EndOffsets:
    """Messages on a topic (sum of high watermarks), without consuming it."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = Consumer(consumer_config(bootstrap, f"bench-{uuid.uuid4().hex[:6]}"))
        self.topic = topic

    def total(self) -> int:
        meta = self.consumer.list_topics(self.topic, timeout=10).topics.get(self.topic)
        if meta is None or meta.error is not None or not meta.partitions:
            return 0
        return sum(
            self.consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)[1]
            for p in meta.partitions
        )

    def wait_for(self, count: int, timeout: float, what: str) -> float:
        deadline = time.monotonic() + timeout
        while True:
            if self.total() >= count:
                return time.monotonic()
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what} ({self.total()}/{count})")
            time.sleep(0.05)

    def close(self) -> None:
        self.consumer.close()


def one_round(admin_dsn: str, bootstrap: str, products: int) -> dict[str, Any]:
    db = f"bench_{uuid.uuid4().hex[:8]}"
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
    dsn = _with_db(admin_dsn, db)
    stop = threading.Event()
    errors: list[BaseException] = []
    try:
        with psycopg.connect(dsn) as conn:
            load_schema(conn)
        seed_catalog(dsn, products=products, seed=42)

        reader = Reader(
            dsn=dsn,
            bootstrap=bootstrap,
            topic_prefix=prefix,
            settings=ReaderSettings(slot=f"s_{prefix}", heartbeat_interval=1.0),
        )

        def run_reader() -> None:
            try:
                reader.run(stop)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        thread = threading.Thread(target=run_reader, daemon=True)
        thread.start()
        while reader.incremental is None:  # streaming = the snapshot is on Kafka
            if errors:
                raise errors[0]
            time.sleep(0.1)

        t = time.perf_counter()
        with psycopg.connect(dsn) as conn:
            ref_products, ref_categories = expected_documents(conn)
        ref_s = time.perf_counter() - t
        n_docs = len(ref_products)

        docs = _EndOffsets(bootstrap, f"{prefix}.doc.products")
        with tempfile.TemporaryDirectory() as tmp:
            env = {
                **os.environ,
                "CATALOG_CDC_KAFKA_BOOTSTRAP": bootstrap,
                "CATALOG_CDC_TOPIC_PREFIX": prefix,
            }
            started = time.monotonic()
            command = [CLI]
            if PROFILE:
                command = [sys.executable, "-m", "cProfile", "-o", PROFILE, "-m", "pipeline.cli"]
            proc = subprocess.Popen(
                [
                    *command,
                    "--log-level",
                    os.environ.get("ASSEMBLER_BENCH_LOG", "warning"),
                    "assembler",
                    "--state",
                    f"{tmp}/a.sqlite",
                ],
                env=env,
            )
            try:
                done = docs.wait_for(n_docs, 600, "the product documents")
                asm_s = done - started
                asm_cpu = _cpu_s(proc.pid)

                # Fan-out: one brand for every product, then rename the brand.
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute("UPDATE products SET brand_id = 1")
                docs.wait_for(docs.total() + n_docs, 600, "the brand moves")
                time.sleep(1.0)  # let the last moves settle
                base = docs.total()
                with psycopg.connect(dsn, autocommit=True) as conn:
                    renamed = time.monotonic()
                    conn.execute("UPDATE brands SET name = name || ' (renamed)' WHERE id = 1")
                fanned = docs.wait_for(base + n_docs, 600, "the brand rename fan-out")
                fan_s = fanned - renamed
                rss = _vm_hwm_mb(proc.pid)
            finally:
                proc.terminate()
                proc.wait(60)
        docs.close()
        return {
            "products": n_docs,
            "categories": len(ref_categories),
            "reference_s": ref_s,
            "reference_docs_per_s": n_docs / ref_s,
            "assembler_s": asm_s,
            "assembler_cpu_s": asm_cpu,
            "assembler_docs_per_s": n_docs / asm_s,
            "ratio": (n_docs / asm_s) / (n_docs / ref_s),
            "fanout_s": fan_s,
            "fanout_docs_per_s": n_docs / fan_s,
            "assembler_peak_rss_mb": rss,
        }
    finally:
        stop.set()
        if errors:
            print(f"reader error: {errors[0]!r}", file=sys.stderr)
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                "WHERE database = %s AND active_pid IS NOT NULL",
                (db,),
            )
            time.sleep(1.0)
            for (slot,) in conn.execute(
                "SELECT slot_name FROM pg_replication_slots WHERE database = %s", (db,)
            ).fetchall():
                conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db))
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    conns = load_connections()
    admin = _with_db(conns.require("postgres_dsn"), "postgres")
    bootstrap = conns.require("kafka_bootstrap")
    rounds = []
    for i in range(args.rounds):
        r = one_round(admin, bootstrap, args.products)
        rounds.append(r)
        print(
            f"round {i + 1}: assembler {r['assembler_docs_per_s']:,.0f} docs/s, reference "
            f"{r['reference_docs_per_s']:,.0f} docs/s, ratio {r['ratio']:.2f}; brand rename "
            f"fan-out to {r['products']:,} products in {r['fanout_s']:.1f} s; "
            f"peak RSS {r['assembler_peak_rss_mb']:.0f} MB",
            flush=True,
        )
    result = {"products": args.products, "rounds": rounds}
    print(json.dumps({k: statistics.median(x[k] for x in rounds) for k in rounds[0]}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
