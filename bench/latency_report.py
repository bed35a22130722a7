"""The latency section of bench/RESULTS.md, from bench/out/latency.json."""

from __future__ import annotations

from typing import Any

from report_table import RATES_NOTE, spread, stepped_down_note


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def render(data: dict[str, Any]) -> list[str]:
    final = data["final"]
    finals = data.get("finals") or [final]
    rate = data["best_rate"] or final["rate"]
    heading = (
        "At the highest sustained rate"
        if data["best_rate"] and data.get("final_held", True)
        else "No rate held over the full runs; at the lowest tried"
        if data["best_rate"]
        else "No probed rate was sustained; at the lowest"
    )
    sink = final["sink"]
    sent, saved = final["writes_sent"], final["writes_saved"]
    cpu = final["cpu_cores"]
    busiest = max(cpu, key=cpu.get)
    lines = [
        "## Pipeline latency: PostgreSQL commit -> indexed in Elasticsearch",
        "",
        f"The demo catalog ({data['products']:,} products); `catalog-cdc reader` and",
        "`catalog-cdc assembler` as processes, the search consumer (runtime + sink) in the",
        "benchmark's process, the realistic edit mix of `pipeline.demo.edits` (prices,",
        "stock, new products, renames, deletes, brand renames that fan out...) from another",
        "process. Per record: the time Elasticsearch acknowledged it minus the PostgreSQL",
        "commit time of its newest change (`source_ts_ms`), one clock. Rates were probed",
        "upwards for 15 s each; *sustained* = the edits reach 90 % of the rate, p99 under",
        "5 s, drained within 5 s of the edits stopping.",
        "",
        "| probe (edits/s) | reached | records | p50 s | p99 s | max s | sustained |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for p in data["probes"]:
        lines.append(
            f"| {p['rate']:.0f} | {p['edits_per_s']:.1f} | {p['records']:,} | {_s(p['p50_s'])} "
            f"| {_s(p['p99_s'])} | {_s(p['max_s'])} | {'yes' if p['sustained'] else 'no'} |"
        )
    docs = [f["doc_topic"] for f in finals]
    held = sum(1 for f in finals if f["sustained"])
    stepped = stepped_down_note(data)
    if stepped:
        lines += ["", f"Longer runs first: {stepped}; so the final runs stepped down."]
    lines += [
        "",
        f"{heading}, **{rate:.0f} edits/s** for {final['seconds']:.0f} s, {len(finals)} "
        f"run(s) (the first reached {final['edits_per_s']:.1f}/s, "
        f"{final['edits_committed']:,} transactions, {final['brand_renames']} brand renames, "
        f"{final['records']:,} documents; sustained over the full run in {held} of "
        f"{len(finals)}). Median of the runs, min-max in brackets:",
        "",
        "| commit -> | p50 s | p99 s | max s |",
        "| --- | --- | --- | --- |",
        "| indexed (acknowledged by Elasticsearch, offset committed) | "
        + " | ".join(f"**{spread([f[k] for f in finals])}**" for k in ("p50_s", "p99_s", "max_s"))
        + " |",
        "| on the document topic (reader + assembler) | "
        + " | ".join(spread([d[k] for d in docs]) for k in ("p50_s", "p99_s", "max_s"))
        + " |",
        "",
        "CPU while the first run ran (cores): "
        + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items())
        + f" (together {sum(cpu.values()):.2f}). The busiest is {busiest}; the machine has",
        "2 cores for all of it.",
        "",
        f"Writes: the sink sent {sent:,} (indexed {sink['indexed']:,}, deleted "
        f"{sink['deleted']:,}, version no-ops {sink['noop']:,}) and **saved {saved:,}** by "
        "content hash (documents whose indexed content had not changed since its last write:",
        "the assembler already emits a document only when it changed, so what is left here",
        "are changes to fields search does not index, e.g. a technical-data suffix).",
        "",
        "Peak RSS (MB): " + ", ".join(f"{k} {v:.0f}" for k, v in data["peak_rss_mb"].items()) + ".",
        "",
        *RATES_NOTE,
        "",
        "Raw numbers: `bench/out/latency.json`.",
        "",
    ]
    return lines
