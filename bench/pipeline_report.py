"""Sections of bench/RESULTS.md for the pipeline at high rates and per sink.

From bench/out/doc_latency.json (``doc_latency_bench.py``) and
bench/out/latency-{consumer}.json (``latency_bench.py --consumer NAME``).
"""

from __future__ import annotations

import statistics
from typing import Any

from report_table import spread, stepped_down_note


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _busiest(cpu: dict[str, float]) -> str:
    name = max(cpu, key=lambda k: cpu[k])
    return f"{name} ({cpu[name]:.2f} cores)"


def render_doc_latency(data: dict[str, Any]) -> list[str]:
    lines = [
        "## Commit -> document topic (reader + assembler) at 500, 2,000 and 5,000 edits/s",
        "",
        f"The demo catalog ({data['products']:,} products); `catalog-cdc reader` and",
        "`catalog-cdc assembler` as processes. The edits are single-row stock changes (one",
        "variant per transaction, spread over every variant), committed by a PL/pgSQL",
        f"procedure that paces itself by the clock, in {data['connections']} sessions at",
        "once, so that PostgreSQL and not a Python client decides how many commits a",
        "second there are. Per product document that reached the document topic: its",
        "message's CreateTime (the assembler produced it) minus the commit time of its",
        "newest change (`source_ts_ms`), one clock. *Sustained* = the commits reach 90 %",
        "of the rate, p99 under 5 s, the last document within 5 s of the edits stopping.",
        f"Each rate ran {data.get('rounds', 1)} time(s) while it was sustained (one run",
        "when it was not: its backlog is the answer); figures are the median of the runs,",
        "min-max in brackets.",
        "",
        "| edits/s asked | runs | committed/s | documents | p50 s | p99 s | max s | drain s "
        "| sustained |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    by_rate: dict[float, list[dict[str, Any]]] = {}
    for p in data["phases"]:
        by_rate.setdefault(p["rate"], []).append(p)
    for rate, runs in by_rate.items():
        ok = sum(1 for p in runs if p["sustained"])
        lines.append(
            f"| {rate:,.0f} | {len(runs)} | "
            f"{statistics.median(p['edits_per_s'] for p in runs):,.0f} | "
            f"{statistics.median(p['documents'] for p in runs):,.0f} | "
            f"{spread([p['p50_s'] for p in runs])} | {spread([p['p99_s'] for p in runs])} | "
            f"{spread([p['max_s'] for p in runs])} | "
            f"{statistics.median(p['drain_s'] for p in runs):.1f} | "
            + (
                "yes"
                if ok == len(runs)
                else "**no**"
                if len(runs) == 1
                else f"**no** ({ok} of {len(runs)} runs)"
            )
            + " |"
        )
    unsustained = [p for p in data["phases"] if not p["sustained"]]
    lines.append("")
    if unsustained:
        first = unsustained[0]
        if first["edits_per_s"] < 0.9 * first["rate"]:
            cap = (
                "PostgreSQL could not commit that many single-row transactions a second "
                f"here ({first['edits_per_s']:,.0f}/s reached)"
            )
        else:
            wall = first["seconds"] + first["drain_s"]
            cpu = first["cpu_cores"]
            cores = cpu.get("assembler", 0.0)
            edits = first["edits_per_s"] * first["seconds"]
            us = 1e6 * cores * wall / max(edits, 1)
            others = ", ".join(f"{k} {v:.2f}" for k, v in cpu.items() if k != "assembler")
            cap = (
                f"the machine's 2 cores were taken (cores: assembler {cores:.2f}, {others}; "
                f"together {sum(cpu.values()):.2f}), and the assembler, one Python thread, "
                f"worked through {edits / wall:,.0f} changes/s ({us:.0f} µs of CPU each: "
                "Avro decoding, the SQLite upsert, and the product documents rebuilt from "
                f"a batch's changes, {first['documents']:,} of them), fewer than came"
            )
        lines += [
            f"From {first['rate']:,.0f} edits/s on, the rate is not sustained: {cap}. "
            "Changes to one product within one poll batch are built once, and the "
            "latency is then the backlog's.",
            "",
        ]
    lines += [
        "CPU per phase (cores, each rate's first run): "
        + "; ".join(
            f"{rate:,.0f}/s: " + ", ".join(f"{k} {v:.2f}" for k, v in runs[0]["cpu_cores"].items())
            for rate, runs in by_rate.items()
        )
        + ".",
        "",
        "Peak RSS (MB): " + ", ".join(f"{k} {v:.0f}" for k, v in data["peak_rss_mb"].items()) + ".",
        "",
        "Raw numbers: `bench/out/doc_latency.json`.",
        "",
    ]
    return lines


_CAPS = {
    "edge-kv": "the edge KV sink writes one SQLite transaction per batch (the layout's "
    "product, listing-page and pulse keys)",
    "storefront-api": "the storefront contract server: batches of at most 50 and its rate "
    "limit (50 requests/s here)",
    "search-service": "the hosted-search contract server (zlib, at most 250 items a request)",
    "webhooks": "one signed HTTP POST per event, ordered per product, from a durable outbox",
    "search": "the local Elasticsearch-API server's indexing",
}


def render_sinks(per_sink: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "## Commit -> acknowledged, per sink",
        "",
        "Each sink alone behind the reader and the assembler (processes), its consumer",
        "(runtime + sink, built by the registry from its options as `catalog-cdc consume`",
        "builds it) in the benchmark's process, writing to the local server: Elasticsearch",
        "(search), SQLite (edge-kv), the contract servers (storefront-api, search-service,",
        "webhooks). The realistic edit mix of `pipeline.demo.edits`; rates probed upwards,",
        "then the highest sustained one run longer. Per record: the time the sink confirmed",
        "it (offset committed) minus the PostgreSQL commit time of its newest change. The",
        "highest sustained rate ran several times: each figure is the median of the runs,",
        "min-max in brackets (held: the runs that sustained it); when most runs did not",
        "hold it, they ran again at the next lower sustained rate (below the lowest probe:",
        "at half the rate, down to 5 edits/s).",
        "",
        "| sink | highest sustained (edits/s) | runs (held) | p50 s | p99 s | max s | records "
        "| busiest process |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, data in per_sink.items():
        finals = data.get("finals") or [data["final"]]
        best = data["best_rate"]
        first = finals[0]
        if best and data.get("final_held", True):
            rate = f"{best:.0f}"
        elif best:
            rate = f"none over {first['seconds']:.0f} s (lowest tried: {best:.0f})"
        else:
            rate = f"none (at {first['rate']:.0f}: not sustained)"
        lines.append(
            f"| {name} | {rate} | {len(finals)} ({sum(1 for f in finals if f['sustained'])}) | "
            f"{spread([f['p50_s'] for f in finals])} | "
            f"{spread([f['p99_s'] for f in finals])} | {spread([f['max_s'] for f in finals])} | "
            f"{statistics.median(f['records'] for f in finals):,.0f} | "
            f"{_busiest(first['cpu_cores'])} |"
        )
    lines += ["", "What caps each (the first rate not sustained, and why):", ""]
    for name, data in per_sink.items():
        failed = [p for p in data["probes"] if not p["sustained"]]
        stepped = stepped_down_note(data)
        if stepped:
            lines.append(f"- {name}: {stepped}; {_CAPS.get(name, '')}.")
        elif failed:
            f = failed[0]
            if f["edits_per_s"] < 0.9 * f["rate"]:
                lines.append(
                    f"- {name}: at {f['rate']:.0f} edits/s the edit generator reached only "
                    f"{f['edits_per_s']:.0f}/s (one Python process making the realistic mix, "
                    "sharing the 2 cores): the load, not the sink, stopped the probe here."
                )
            else:
                lines.append(
                    f"- {name}: {f['rate']:.0f} edits/s not sustained (p99 {_s(f['p99_s'])} s, "
                    f"drain {f['drain_s']:.1f} s; busiest {_busiest(f['cpu_cores'])}); "
                    f"{_CAPS.get(name, '')}."
                )
        else:
            lines.append(f"- {name}: every probed rate sustained (up to "
                         f"{data['probes'][-1]['rate']:.0f} edits/s).")  # fmt: skip
    lines += [
        "",
        "Peak RSS (MB) in these runs: "
        + "; ".join(
            f"{name}: " + ", ".join(f"{k} {v:.0f}" for k, v in data["peak_rss_mb"].items())
            for name, data in per_sink.items()
        )
        + " (a consumer's figure is the benchmark process: its runtime and sink, plus the",
        "benchmark's own bookkeeping - an upper bound).",
        "",
        "Raw numbers: `bench/out/latency-*.json`.",
        "",
    ]
    return lines


def render_services(data: dict[str, Any]) -> list[str]:
    rounds = data["rounds"]
    first = rounds[0]
    names = list(first["peak_rss_mb"])
    lines = [
        "## Peak memory of every service (the whole pipeline under `catalog-cdc run`)",
        "",
        f"What `make demo` runs (`scripts/demo.toml`), {first['products']:,} products: the",
        "reader, the assembler, the five consumers, the admin API and the three contract",
        "servers (local stand-ins for the third-party APIs), each a child of `catalog-cdc",
        "run`. The initial load through every consumer, then `demo edits` at "
        f"{first['edit_rate']:.0f}/s for {first['edit_seconds']:.0f} s,",
        "caught up again, 20 admin API status calls, SIGTERM. The supervisor reads each",
        "child's `VmHWM` every second and logs the highest (`event=peak_rss`).",
        f"{len(rounds)} rounds, each a demo run of its own; median, min and max.",
        "",
        "| service | peak RSS MB (median) | min | max |",
        "| --- | --- | --- | --- |",
    ]
    for name in names:
        values = [r["peak_rss_mb"].get(name, 0.0) for r in rounds]
        lines.append(
            f"| {name} | {statistics.median(values):.0f} | {min(values):.0f} | {max(values):.0f} |"
        )
    ours = [n for n in names if not n.endswith("-server")]
    whole = [r["initial_load_s"] + r["edit_seconds"] + r["catch_up_s"] for r in rounds]
    total = statistics.median(sum(r["peak_rss_mb"].get(n, 0.0) for n in ours) for r in rounds)
    lines += [
        "",
        f"The pipeline's own services together (contract servers left out): {total:,.0f} MB",
        "(the sum of the peaks, an upper bound: they do not all peak at once). Beside them",
        "PostgreSQL and the broker of the local stack, not counted here.",
        "",
        "From `run` until every consumer had caught up after the edits (initial load, "
        f"{first['edit_seconds']:.0f} s of edits, catch-up; median of the rounds): "
        + f"{statistics.median(whole):.0f} s; "
        + f"{statistics.median(r['edits_committed'] for r in rounds):,.0f} edits committed; "
        + f"service failures {sum(r['service_failures'] for r in rounds)}; `run` exit statuses "
        + ", ".join(str(r["run_exit_status"]) for r in rounds)
        + ".",
        "",
        "Raw numbers: `bench/out/services.json`.",
        "",
    ]
    return lines
