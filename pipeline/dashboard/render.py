"""The dashboard as text: a table for a terminal (redrawn in place), one line otherwise."""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.dashboard.model import Row

HOME = "\x1b[H"
CLEAR_LINE = "\x1b[K"
CLEAR_BELOW = "\x1b[J"
CLEAR_SCREEN = "\x1b[2J"

_UNITS = {"reader": "events/s", "assembler": "docs/s", "consumer": "records/s"}
_COLUMNS = ("SERVICE", "STATUS", "RATE", "TOTAL", "LAG", "DEAD LETTERS")


def number(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def size(value: float | None) -> str:
    """Bytes, 1024-based: ``512 B``, ``4.1 KiB``, ``12.0 MiB``."""
    if value is None:
        return "-"
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(amount) < 1024 or unit == "GiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    raise AssertionError("unreachable")


def cells(r: Row) -> tuple[str, str, str, str, str, str]:
    """The table cells of one row."""
    f = r.figures
    if not r.up or f is None:
        return (r.name, r.status, "-", "-", "-", "-")
    unit = _UNITS.get(f.kind, "")
    rate = "-" if r.rate is None else f"{number(r.rate, 1)} {unit}"
    if f.kind == "reader":
        lag = f"slot {size(f.lag)}"
        if f.lag_seconds is not None:
            lag += f" ({f.lag_seconds:.1f} s)"
        dead = "-"
    else:
        lag = "-" if f.lag is None else f"{number(f.lag)} msgs"
        dead = number(f.dead_letters)
    status = r.status
    if f.kind in ("assembler", "consumer") and r.status == "behind" and f.lag:
        status = f"behind {number(f.lag)}"
    return (r.name, status, rate, number(f.count), lag, dead)


def table(rows: Sequence[Row], title: str) -> list[str]:
    """The terminal view: a title, a header and one line per service, aligned."""
    body = [cells(r) for r in rows]
    widths = [max(len(c[i]) for c in [_COLUMNS, *body]) for i in range(len(_COLUMNS))]
    right = {2, 3, 4, 5}

    def line(c: Sequence[str]) -> str:
        parts = [
            c[i].rjust(widths[i]) if i in right else c[i].ljust(widths[i])
            for i in range(len(_COLUMNS))
        ]
        return "  ".join(parts).rstrip()

    out = [title, "", line(_COLUMNS)]
    out += [line(c) for c in body]
    errors = [f"  {r.name}: {r.error}" for r in rows if r.error]
    if errors:
        out += ["", "not answering:", *errors]
    return out


def frame(rows: Sequence[Row], title: str, footer: Sequence[str] = ()) -> str:
    """A whole screen for a terminal: home, every line cleared to its end, and the
    rest of the screen cleared (no flicker, nothing left of a longer previous frame)."""
    lines = [*table(rows, title), *footer]
    return HOME + "".join(f"{text}{CLEAR_LINE}\n" for text in lines) + CLEAR_BELOW


def plain(rows: Sequence[Row], stamp: str) -> str:
    """One line per refresh (no terminal: CI logs), ``key=value`` pairs per service:

    ``12:00:01 reader=streaming events/s=412.0 slot_lag_bytes=4096 | assembler=busy
    docs/s=250.0 lag=0 dead_letters=0 | search=in sync records/s=0.0 lag=0 ...``
    """
    parts = []
    for r in rows:
        f = r.figures
        name = r.name.replace(" ", "_")
        if not r.up or f is None:
            reason = (r.error or "").split(" (")[0].replace(" ", "_")
            parts.append(f"{name}=down({reason})" if reason else f"{name}=down")
            continue
        words = [f"{name}={r.status.replace(' ', '_')}"]
        unit = _UNITS.get(f.kind)
        if unit is not None:
            words.append(f"{unit}={'-' if r.rate is None else f'{r.rate:.1f}'}")
        if f.kind == "reader":
            words.append(f"slot_lag_bytes={number(f.lag).replace(',', '')}")
        elif f.kind in ("assembler", "consumer"):
            words.append(f"lag={number(f.lag).replace(',', '')}")
            words.append(f"dead_letters={number(f.dead_letters).replace(',', '')}")
        parts.append(" ".join(words))
    return f"{stamp} " + " | ".join(parts)
