"""`make bench`: run every benchmark and rewrite bench/RESULTS.md.

Each figure is the median of several rounds (min and max beside it), and every
speed figure is a ratio to a reference measured in the same run on the same machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ALL = (
    "reader",
    "assembler",
    "search",
    "latency",
    "doc-latency",
    "sinks",
    "replay",
    "replay-scale",
    "services",
)
"""Every benchmark of ``make bench``, in the order they run."""


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("psycopg", "confluent-kafka", "fastavro", "noida-db"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "-"
    try:
        from pipeline.stack.postgres import find_bindir

        bindir = find_bindir()
        if bindir:
            out["postgresql"] = subprocess.run(
                [str(bindir / "postgres"), "--version"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.split()[2]
    except Exception:  # noqa: BLE001 - informational only
        pass
    return out


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


class _Benches:
    """Runs the benchmark scripts of this folder, one subprocess each; with
    ``fresh_stack`` every script but the first starts on a wiped, restarted stack
    (``CATALOG_CDC_STACK_DIR``, the bench's own): noida-db's autosave CPU grows with
    what it holds (bench/README.md)."""

    def __init__(self, fresh_stack: bool) -> None:
        self.fresh_stack = fresh_stack
        self.started = 0

    def __call__(self, script: str, *args: object) -> None:
        """Run ``script`` with ``args``; fail if it fails."""
        if self.fresh_stack and self.started:
            cli = Path(sys.executable).with_name("catalog-cdc")
            for action in (["down", "--wipe"], ["up"]):
                subprocess.run([str(cli), "stack", *action], check=True, stdout=subprocess.DEVNULL)
        self.started += 1
        subprocess.run([sys.executable, str(HERE / script), *map(str, args)], check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rows and rounds (smoke run)")
    parser.add_argument(
        "--render-only", action="store_true", help="rewrite RESULTS.md from bench/out/ only"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=[*ALL],
        help="run only these benchmarks (repeatable); the others are rendered from bench/out/",
    )
    parser.add_argument(
        "--fresh-stack",
        action="store_true",
        help="wipe and restart the stack ($CATALOG_CDC_STACK_DIR) before every benchmark "
        "script but the first (make bench does, on its own .stack-bench; never on a stack "
        "whose data you want)",
    )
    args = parser.parse_args()
    if args.fresh_stack and not os.environ.get("CATALOG_CDC_STACK_DIR"):
        parser.error("--fresh-stack wipes the stack: name it with CATALOG_CDC_STACK_DIR")
    _bench = _Benches(args.fresh_stack)
    only = set(args.only or ALL)
    rows, rounds, big = (50_000, 1, 200_000) if args.quick else (200_000, 5, 1_000_000)
    out_dir = HERE / "out"
    out_dir.mkdir(exist_ok=True)
    reader_json = out_dir / "reader.json"
    assembler_json = out_dir / "assembler.json"
    search_json = out_dir / "search.json"
    latency_json = out_dir / "latency.json"
    replay_json = out_dir / "replay.json"
    doc_latency_json = out_dir / "doc_latency.json"
    services_json = out_dir / "services.json"
    replay_scale_json = out_dir / "replay_scale.json"
    runs = 1 if args.quick else 3  # of the latency benchmarks' sustained rates
    sink_names = ["edge-kv", "storefront-api", "search-service", "webhooks"]
    # The reader first: the other benchmarks leave the broker busy for a while.
    if not args.render_only and "reader" in only:
        _bench(
            "reader_bench.py",
            "--rows",
            rows,
            "--rounds",
            rounds,
            "--big-rows",
            big,
            "--json",
            reader_json,
        )
    if not args.render_only and "assembler" in only:
        products, arounds = (2_000, 1) if args.quick else (10_000, 3)
        _bench(
            "assembler_bench.py",
            "--products",
            products,
            "--rounds",
            arounds,
            "--json",
            assembler_json,
        )
    if not args.render_only and "search" in only:
        docs, overwrites, srounds = (1_000, 200, 1) if args.quick else (5_000, 3_000, 5)
        _bench(
            "search_bench.py",
            "--products",
            docs,
            "--overwrites",
            overwrites,
            "--rounds",
            srounds,
            "--json",
            search_json,
        )
    if not args.render_only and "latency" in only:
        products, duration = (1_000, 20) if args.quick else (2_000, 60)
        _bench(
            "latency_bench.py",
            "--products",
            products,
            "--duration",
            duration,
            "--rounds",
            runs,
            "--json",
            latency_json,
        )
    if not args.render_only and "doc-latency" in only:
        rates, seconds = ("200,500", 10) if args.quick else ("500,2000,5000", 30)
        _bench(
            "doc_latency_bench.py",
            "--rates",
            rates,
            "--duration",
            seconds,
            "--rounds",
            runs,
            "--json",
            doc_latency_json,
        )
    if not args.render_only and "sinks" in only:
        # Search has its own section (latency.json); the other sinks, one run each.
        rates, probe, seconds = ("25,50", 8, 10) if args.quick else ("25,50,100,200", 10, 20)
        for name in sink_names:
            _bench(
                "latency_bench.py",
                "--consumer",
                name,
                "--products",
                "1000",
                "--rates",
                rates,
                "--probe",
                probe,
                "--duration",
                seconds,
                "--rounds",
                runs,
                "--json",
                out_dir / f"latency-{name}.json",
            )
    if not args.render_only and "replay" in only:
        products, rrounds = (10_000, 1) if args.quick else (100_000, 2)
        _bench(
            "replay_bench.py", "--products", products, "--rounds", rrounds, "--json", replay_json
        )
        if not args.quick:  # how the cost grows: a tenth of the documents
            _bench(
                "replay_bench.py",
                "--products",
                "10000",
                "--rounds",
                "2",
                "--json",
                out_dir / "replay-10000.json",
            )
    if not args.render_only and "replay-scale" in only:
        sizes = "2000,10000" if args.quick else "10000,100000,1000000"
        _bench("replay_scale_bench.py", "--sizes", sizes, "--json", replay_scale_json)
    if not args.render_only and "services" in only:
        products, srounds = (2_000, 1) if args.quick else (10_000, 3)
        _bench(
            "services_bench.py",
            "--products",
            products,
            "--rounds",
            srounds,
            "--json",
            services_json,
        )
    r = json.loads(reader_json.read_text())
    rows, rounds = r["rows"], len(r["rounds"])
    big_run = r.get("big_transaction") or {}
    versions = _versions()

    def stat(key: str) -> tuple[float, float, float]:
        values = [x[key] for x in r["rounds"]]
        return statistics.median(values), min(values), max(values)

    ratio = stat("ratio")
    reader_rate = stat("reader_rows_per_s")
    recv_rate = stat("pg_recvlogical_rows_per_s")
    rss = stat("reader_peak_rss_mb")
    per_row = [x["reader_cpu_s"] / x["rows"] * 1e6 for x in r["rounds"]]
    cpu_per_row = statistics.median(per_row), min(per_row), max(per_row)
    main_per_row = None
    if all("reader_main_thread_cpu_s" in x for x in r["rounds"]):
        main = [x["reader_main_thread_cpu_s"] / x["rows"] * 1e6 for x in r["rounds"]]
        main_per_row = statistics.median(main), min(main), max(main)
    load = stat("load_1m") if all("load_1m" in x for x in r["rounds"]) else None
    cores = os.cpu_count() or 1
    lines = [
        "# Benchmark results",
        "",
        f"Written by `make bench` (`bench/run.py`) on {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC;"
        " each section says when it was measured.",
        f"Machine: {cores} cores, {_cpu()}; "
        + ", ".join(f"{k} {v}" for k, v in versions.items())
        + ".",
        "",
        "## Reader: PostgreSQL -> Kafka-acknowledged, vs pg_recvlogical",
        "",
        f"{rows:,} inserts into `product_variants` (6 columns incl. numeric and jsonb) in one",
        "transaction; both clients read the same WAL from identical pgoutput slots, one after",
        "the other, timed from process start (so both include the walsender decoding the",
        "transaction before it sends its first change). pg_recvlogical writes to /dev/null;",
        "the reader decodes, converts, Avro-encodes, produces and waits for every Kafka",
        f"acknowledgement (slot confirmed). {rounds} rounds.",
        "",
        "| figure | median | min | max |",
        "| --- | --- | --- | --- |",
        "| reader / pg_recvlogical (rows/s ratio; goal >= 0.5) | "
        f"**{ratio[0]:.2f}** | {ratio[1]:.2f} | {ratio[2]:.2f} |",
        "| reader rows/s | " + " | ".join(f"{v:,.0f}" for v in reader_rate) + " |",
        "| pg_recvlogical rows/s | " + " | ".join(f"{v:,.0f}" for v in recv_rate) + " |",
        "| reader CPU per row, µs (all its threads) | "
        + " | ".join(f"{v:.1f}" for v in cpu_per_row)
        + " |",
        "| reader peak RSS, MB | " + " | ".join(f"{v:.0f}" for v in rss) + " |",
    ]
    if main_per_row is not None:
        lines.insert(
            -1,
            "| of which its Python (main) thread, µs | "
            + " | ".join(f"{v:.1f}" for v in main_per_row)
            + " |",
        )
    if load is not None:
        lines.append(
            "| machine load (1 min) after the round | "
            + " | ".join(f"{v:.1f}" for v in load)
            + " |"
        )
    if all("broker_cores_during_reader" in x for x in r["rounds"]):
        lines += [
            "| broker CPU (cores) while pg_recvlogical ran | "
            + " | ".join(f"{v:.2f}" for v in stat("broker_cores_during_pg_recvlogical"))
            + " |",
            "| broker CPU (cores) while the reader ran | "
            + " | ".join(f"{v:.2f}" for v in stat("broker_cores_during_reader"))
            + " |",
        ]
    lines.append("")
    if big_run:
        lines += [
            f"One transaction of {big_run['rows']:,} rows: reader peak RSS "
            f"**{big_run['reader_peak_rss_mb']:.0f} MB** (median {rss[0]:.0f} MB for "
            f"{rows:,} rows), {big_run['reader_rows_per_s']:,.0f} rows/s, "
            f"{big_run['reader_cpu_s'] / big_run['rows'] * 1e6:.1f} µs CPU per row"
            + (
                f" ({big_run['reader_main_thread_cpu_s'] / big_run['rows'] * 1e6:.1f} µs in "
                "the Python thread: start-up counts little here)"
                if "reader_main_thread_cpu_s" in big_run
                else ""
            )
            + f", ratio {big_run['ratio']:.2f}.",
            "",
        ]
    wall_us = statistics.median(x["reader_s"] / x["rows"] * 1e6 for x in r["rounds"])
    verdict = "meets" if ratio[0] >= 0.5 else "is BELOW"
    main_text = f", {main_per_row[0]:.1f} µs of it in its Python thread" if main_per_row else ""
    lines += [
        f"The median ratio {verdict} the goal of 0.5. The reader used {cpu_per_row[0]:.1f} µs",
        f"of CPU per row{main_text} (start-up included: about 0.5 s of",
        f"imports and connections, i.e. ~{0.5e6 / rows:.1f} µs per row here), for",
        f"{wall_us:.1f} µs of wall time. What caps it: pg_recvlogical only copies bytes, so",
        "its time is the walsender's (decoding the transaction, then sending it). The",
        "reader's one Python thread (pgoutput parsing and Avro encoding in one pass per",
        "Insert, produce(), delivery reports) needs a core of its own for the whole stream,",
        "while the second core is shared by the walsender, the Kafka broker taking the",
        "events and librdkafka's threads: the reader's wall time is at least its CPU time",
        "plus the walsender's decoding phase, and other work on the machine lengthens it",
        "(the load and broker rows: the broker, noida-db, also serves Elasticsearch, and",
        "CPU it uses while pg_recvlogical runs is other work's). Under such load even the",
        "CPU time of the same work varies (see the CPU rows' min and max).",
    ]
    if load is not None and (load[2] > cores or ratio[2] > 1.3 * ratio[1]):
        lines += [
            "",
            f"**Disturbed run**: the load average reached {load[2]:.1f} on {cores} cores "
            f"and the rounds spread from {ratio[1]:.2f} to {ratio[2]:.2f}: other work was",
            "running on the machine, so these are not a quiet machine's figures; re-run",
            "`make bench` when it is quiet.",
        ]
    lines += [
        "",
        "Raw numbers: `bench/out/reader.json`. Profile the reader with",
        "`READER_BENCH_PROFILE=/tmp/reader.prof python bench/reader_bench.py --rounds 1`.",
        "",
    ]
    sys.path.insert(0, str(HERE))
    import assembler_report
    import latency_report
    import pipeline_report
    import replay_report
    import search_report

    def measured(path: Path) -> list[str]:
        when = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC)
        return [f"Measured {when:%Y-%m-%d %H:%M} UTC.", ""]

    lines[lines.index("## Reader: PostgreSQL -> Kafka-acknowledged, vs pg_recvlogical") + 1 : 0] = [
        "",
        *measured(reader_json)[:1],
    ]
    if assembler_json.exists():
        section = assembler_report.render(json.loads(assembler_json.read_text()))
        lines += section[:2] + measured(assembler_json) + section[2:]
    if search_json.exists():
        section = search_report.render(json.loads(search_json.read_text()))
        lines += section[:2] + measured(search_json) + section[2:]
    if latency_json.exists():
        section = latency_report.render(json.loads(latency_json.read_text()))
        lines += section[:2] + measured(latency_json) + section[2:]
    if doc_latency_json.exists():
        section = pipeline_report.render_doc_latency(json.loads(doc_latency_json.read_text()))
        lines += section[:2] + measured(doc_latency_json) + section[2:]
    per_sink = {}
    if latency_json.exists():
        per_sink["search"] = json.loads(latency_json.read_text())
    for name in sink_names:
        path = out_dir / f"latency-{name}.json"
        if path.exists():
            per_sink[name] = json.loads(path.read_text())
    if len(per_sink) > 1:
        section = pipeline_report.render_sinks(per_sink)
        newest = max((out_dir / f"latency-{n}.json" for n in sink_names if n in per_sink),
                     key=lambda p: p.stat().st_mtime)  # fmt: skip
        lines += section[:2] + measured(newest) + section[2:]
    if replay_json.exists():
        scale = [json.loads(p.read_text()) for p in sorted(out_dir.glob("replay-*.json"))]
        section = replay_report.render(json.loads(replay_json.read_text()), scale)
        lines += section[:2] + measured(replay_json) + section[2:]
        if replay_scale_json.exists():
            section = replay_report.render_scale(json.loads(replay_scale_json.read_text()))
            lines += section[:2] + measured(replay_scale_json) + section[2:]
    if services_json.exists():
        section = pipeline_report.render_services(json.loads(services_json.read_text()))
        lines += section[:2] + measured(services_json) + section[2:]
    (HERE / "RESULTS.md").write_text("\n".join(lines))
    print((HERE / "RESULTS.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
