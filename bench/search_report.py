"""The search section of bench/RESULTS.md, from bench/out/search.json."""

from __future__ import annotations

from typing import Any

import report_table


def render(data: dict[str, Any]) -> list[str]:
    rounds = data["rounds"]

    def stat(key: str) -> tuple[float, float, float]:
        return report_table.stat(rounds, key)

    def row(label: str, key: str, fmt: str, bold: bool = False) -> str:
        return report_table.row(rounds, label, key, fmt, bold)

    n, m = rounds[0]["new_documents"], rounds[0]["overwrites"]
    verdict = "meet" if min(stat("new_ratio")[0], stat("overwrite_ratio")[0]) >= 0.8 else "miss"
    return [
        "## Search sink: documents -> Elasticsearch, vs a bare helpers.bulk",
        "",
        f"{n:,} product documents of the demo catalog written as new documents, then {m:,}",
        "of them overwritten with a new version and name, into fresh indices of the stack's",
        "Elasticsearch-API server: once by a bare `elasticsearch.helpers.bulk` (500 a",
        "request, the same bodies and external versions), once by the consumer's",
        "`SearchSink.add` + `flush` (body building, content hashing, chunking by count and",
        "bytes, per-item status handling). Who goes first alternates between rounds.",
        f"{len(rounds)} rounds.",
        "",
        "| figure | median | min | max |",
        "| --- | --- | --- | --- |",
        row("new documents: sink / bare (goal >= 0.8)", "new_ratio", ".2f", True),
        row("overwrites: sink / bare (goal >= 0.8)", "overwrite_ratio", ".2f", True),
        row("sink new documents/s", "sink_new_docs_per_s", ",.0f"),
        row("bare new documents/s", "bare_new_docs_per_s", ",.0f"),
        row("sink overwrites/s", "sink_overwrite_docs_per_s", ",.0f"),
        row("bare overwrites/s", "bare_overwrite_docs_per_s", ",.0f"),
        "",
        f"The medians {verdict} the goal of 0.8. The server's own indexing caps both",
        "clients; the sink adds its Python per document (body, hash) on top.",
        "",
        *report_table.RATES_NOTE,
        "",
        "Raw numbers: `bench/out/search.json`.",
        "",
    ]
