"""The assembler section of bench/RESULTS.md, from bench/out/assembler.json."""

from __future__ import annotations

import statistics
from typing import Any

import report_table


def render(data: dict[str, Any]) -> list[str]:
    rounds = data["rounds"]
    products = rounds[0]["products"]

    def row(label: str, key: str, fmt: str) -> str:
        return report_table.row(rounds, label, key, fmt)

    ratio = report_table.stat(rounds, "ratio")
    cpu_us = statistics.median(r["assembler_cpu_s"] / r["products"] * 1e3 for r in rounds)
    return [
        "## Assembler: raw change topics -> product documents",
        "",
        f"The demo catalog, {products:,} products (and their variants, images, technical",
        "data, category links: about 15 raw events a product), snapshotted by the reader onto",
        "the raw topics. **Assembler**: `catalog-cdc assembler` with a fresh state, timed from",
        "process start until every product document is on `{prefix}.doc.products` (Kafka",
        "end offsets; nothing else is polled): it reads every raw event, keeps its SQLite",
        "state, builds, validates, Avro-encodes and produces each document and waits for the",
        "acknowledgements. **Reference**: the same documents built straight from PostgreSQL",
        "by SQL joins in one snapshot (`pipeline/documents/reference.py`, the same pydantic",
        "models) — the cost when the database does the joining. **Fan-out**: every product",
        "is given one brand, then the brand is renamed (one row); timed from the rename's",
        f"commit until {products:,} new product documents are on the topic (the reader's",
        f"latency included). {len(rounds)} rounds.",
        "",
        "| figure | median | min | max |",
        "| --- | --- | --- | --- |",
        f"| assembler / SQL reference (documents/s ratio) | **{ratio[0]:.2f}** | "
        f"{ratio[1]:.2f} | {ratio[2]:.2f} |",
        row("assembler documents/s (from process start)", "assembler_docs_per_s", ",.0f"),
        row("SQL reference documents/s", "reference_docs_per_s", ",.0f"),
        row(f"brand rename fan-out to {products:,} products, s", "fanout_s", ".1f"),
        row("fan-out documents/s", "fanout_docs_per_s", ",.0f"),
        row("assembler peak RSS, MB", "assembler_peak_rss_mb", ".0f"),
        "",
        f"The assembler used {cpu_us:.2f} ms of CPU per product document for the whole first",
        "load (start-up, decoding every raw event, the SQLite writes, building and encoding):",
        "it is one Python thread. What caps it: per raw event, Avro decoding and one SQLite",
        "upsert; per document, one indexed query for its rows, the model's validation and",
        "Avro encoding. The SQL reference is faster because PostgreSQL joins in C and reads",
        "each table once; the assembler's worth is that it needs no database and keeps the",
        "documents current change by change (the fan-out row: a brand rename costs one",
        "document build per product, not a reload).",
        "",
        "Raw numbers: `bench/out/assembler.json`. Profile the assembler with",
        "`ASSEMBLER_BENCH_PROFILE=/tmp/asm.prof python bench/assembler_bench.py --rounds 1`.",
        "",
    ]
