"""The median/min/max rows every section of bench/RESULTS.md is made of."""

from __future__ import annotations

import statistics
from typing import Any

RATES_NOTE = [
    "Absolute rates depend on the machine and on what else runs on it: `make bench` starts",
    "a stack of its own, empty, and stops it at the end, but anything running beside it",
    "shares the 2 cores. Compare the side-by-side ratios.",
]
"""What every section with absolute rates says about them."""


def stat(rounds: list[dict[str, Any]], key: str) -> tuple[float, float, float]:
    """Median, min and max of ``key`` over the rounds."""
    values = [r[key] for r in rounds]
    return statistics.median(values), min(values), max(values)


def row(rounds: list[dict[str, Any]], label: str, key: str, fmt: str, bold: bool = False) -> str:
    """``| label | median | min | max |``, the median in bold when ``bold``."""
    values = [format(v, fmt) for v in stat(rounds, key)]
    if bold:
        values[0] = f"**{values[0]}**"
    return f"| {label} | " + " | ".join(values) + " |"


def spread(values: list[float | None], fmt: str = ".2f") -> str:
    """``median (min-max)`` of several runs; the value alone for one; ``-`` for none."""
    known = [v for v in values if v is not None]
    if not known:
        return "-"
    mid = format(statistics.median(known), fmt)
    if len(known) == 1:
        return mid
    return f"{mid} ({format(min(known), fmt)}-{format(max(known), fmt)})"


def stepped_down_note(data: dict[str, Any]) -> str | None:
    """What a latency run's final rounds found at the rates above the one reported.

    ``latency_bench`` steps its final runs down when most of them did not hold a rate
    that held for a (shorter) probe; ``None`` when they held at once.
    """
    steps = data.get("stepped_down") or []
    if not steps:
        return None
    parts = []
    for step in steps:
        finals = step["finals"]
        held = sum(1 for f in finals if f["sustained"])
        parts.append(
            f"{step['rate']:.0f} edits/s held for the probe but over {finals[0]['seconds']:.0f} s "
            f"in {held} of {len(finals)} runs (p99 {spread([f['p99_s'] for f in finals])} s, "
            f"drain {spread([f['drain_s'] for f in finals], '.1f')} s)"
        )
    return "; ".join(parts)
