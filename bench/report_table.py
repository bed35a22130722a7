"""The median/min/max rows every section of bench/RESULTS.md is made of."""

from __future__ import annotations

import statistics
from typing import Any


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
