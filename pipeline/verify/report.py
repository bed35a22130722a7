"""Comparing what a sink holds with what the database calls for, and the report of it.

Pure logic, no I/O.  A :class:`Snapshot` is, per *document class* (``product``,
``category``, or a key kind of the edge KV layout), ``id -> comparable value`` (a dict
of fields, or any JSON-like value), with the version the sink holds where it has one.
:func:`compare` of the database's snapshot (*expected*) and the sink's (*actual*) gives
a :class:`Report` in the vocabulary of the inventory-sync seed's sync status:

* ``in sync``: present on both sides with equal content;
* ``out of sync``: present on both sides, content differs (the fields that differ, with
  the sink's and the database's values);
* ``missing``: in the database, not in the sink;
* ``extra``: in the sink, not in the database.

The overall verdict is ``in sync`` when every class has nothing out of sync, missing or
extra, else ``out of sync``.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

__all__ = [
    "ABSENT",
    "EXTRA",
    "IN_SYNC",
    "MISSING",
    "OUT_OF_SYNC",
    "ClassReport",
    "Difference",
    "FieldDiff",
    "Report",
    "Snapshot",
    "compare",
    "field_diffs",
    "render",
    "short",
    "shown",
]

IN_SYNC: Final = "in sync"
OUT_OF_SYNC: Final = "out of sync"
MISSING: Final = "missing"
EXTRA: Final = "extra"
Status = Literal["out of sync", "missing", "extra"]

ABSENT: Final = "(absent)"
"""The value shown for a field one side does not have."""

VALUE_WIDTH: Final = 80
"""Characters of a value shown in a difference (the JSON text, cut with ``...``)."""


@dataclass
class Snapshot:
    """One side of a comparison: per class, ``id -> value`` and ``id -> version``."""

    items: dict[str, dict[Hashable, Any]] = field(default_factory=dict)
    versions: dict[str, dict[Hashable, int]] = field(default_factory=dict)

    def put(self, cls: str, ident: Hashable, value: Any, version: int | None = None) -> None:
        self.items.setdefault(cls, {})[ident] = value
        if version is not None:
            self.versions.setdefault(cls, {})[ident] = version

    def version(self, cls: str, ident: Hashable) -> int | None:
        return self.versions.get(cls, {}).get(ident)


@dataclass(frozen=True)
class FieldDiff:
    """One field that differs: its name, the sink's value, the database's value."""

    field: str
    sink: Any
    db: Any


@dataclass(frozen=True)
class Difference:
    """One document (or key) that is not in sync."""

    cls: str
    id: Hashable
    status: Status
    fields: tuple[FieldDiff, ...] = ()

    def describe(self, width: int = VALUE_WIDTH) -> str:
        head = f"{self.cls} {self.id}: {self.status}"
        if self.status == MISSING:
            return f"{head} (in the database, not in the sink)"
        if self.status == EXTRA:
            return f"{head} (in the sink, not in the database)"
        parts = [
            "{}: sink {} != db {}".format(d.field, *shown(d.sink, d.db, width)) for d in self.fields
        ]
        return f"{head}; " + "; ".join(parts)

    def as_json(self, width: int = VALUE_WIDTH) -> dict[str, Any]:
        out: dict[str, Any] = {"class": self.cls, "id": self.id, "status": self.status}
        if self.fields:
            out["fields"] = [
                dict(
                    zip(
                        ("field", "sink", "db"), (d.field, *shown(d.sink, d.db, width)), strict=True
                    )
                )
                for d in self.fields
            ]
        return out


@dataclass
class ClassReport:
    """The counts of one document class."""

    cls: str
    in_sync: int = 0
    out_of_sync: int = 0
    missing: int = 0
    extra: int = 0

    @property
    def ok(self) -> bool:
        return not (self.out_of_sync or self.missing or self.extra)

    def as_json(self) -> dict[str, int]:
        return {
            IN_SYNC: self.in_sync,
            OUT_OF_SYNC: self.out_of_sync,
            MISSING: self.missing,
            EXTRA: self.extra,
        }


@dataclass
class Report:
    """Every class's counts and every difference (ordered: class, status, id)."""

    consumer: str
    classes: dict[str, ClassReport] = field(default_factory=dict)
    differences: list[Difference] = field(default_factory=list)

    @property
    def in_sync(self) -> bool:
        return all(c.ok for c in self.classes.values())

    @property
    def verdict(self) -> str:
        return IN_SYNC if self.in_sync else OUT_OF_SYNC

    def of(self, status: Status) -> list[Difference]:
        return [d for d in self.differences if d.status == status]

    def as_json(self, limit: int) -> dict[str, Any]:
        return {
            "consumer": self.consumer,
            "status": self.verdict,
            "classes": {name: c.as_json() for name, c in self.classes.items()},
            "differences": [d.as_json() for d in self.differences[:limit]],
            "differences_total": len(self.differences),
        }


def short(value: Any, width: int = VALUE_WIDTH) -> str:
    """``value`` as compact JSON, cut to ``width`` characters (``...`` marks a cut);
    :data:`ABSENT` as it is."""
    text = _text(value)
    return text if len(text) <= width else text[: max(width - 3, 1)] + "..."


def _text(value: Any) -> str:
    if value is ABSENT:
        return ABSENT
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True, default=str)


def shown(sink: Any, db: Any, width: int = VALUE_WIDTH) -> tuple[str, str]:
    """Both values of a difference, cut to ``width`` characters around where they first
    differ (a long list whose start is equal shows the part that is not)."""
    a, b = _text(sink), _text(db)
    if len(a) <= width and len(b) <= width:
        return a, b
    common = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        common += 1
    start = max(common - width // 4, 0)
    if start < 3:
        return short(sink, width), short(db, width)

    def cut(text: str) -> str:
        part = "..." + text[start:]
        return part if len(part) <= width else part[: width - 3] + "..."

    return cut(a), cut(b)


def field_diffs(sink: Any, db: Any) -> tuple[FieldDiff, ...]:
    """The top-level fields whose values differ (a field on one side only is
    :data:`ABSENT` on the other, which differs from ``null``); two values that are not
    both dicts differ as a whole, as field ``value``."""
    if isinstance(sink, Mapping) and isinstance(db, Mapping):
        names = sorted(set(sink) | set(db), key=str)
        return tuple(
            FieldDiff(str(n), sink.get(n, ABSENT), db.get(n, ABSENT))
            for n in names
            if sink.get(n, ABSENT) != db.get(n, ABSENT)
        )
    return () if sink == db else (FieldDiff("value", sink, db),)


def _order(ident: Hashable) -> tuple[int, Any]:
    return (0, ident) if isinstance(ident, int) else (1, str(ident))


def compare(
    consumer: str, expected: Snapshot, actual: Snapshot, classes: Iterable[str] = ()
) -> Report:
    """The report of ``actual`` (the sink) against ``expected`` (the database).

    ``classes`` are reported even when both sides have none of them (counts of 0).
    """
    report = Report(consumer)
    names = list(dict.fromkeys([*classes, *expected.items, *actual.items]))
    for cls in names:
        want = expected.items.get(cls, {})
        have = actual.items.get(cls, {})
        counts = report.classes[cls] = ClassReport(cls)
        diffs: list[Difference] = []
        for ident in sorted(set(want) | set(have), key=_order):
            if ident not in have:
                counts.missing += 1
                diffs.append(Difference(cls, ident, MISSING))
            elif ident not in want:
                counts.extra += 1
                diffs.append(Difference(cls, ident, EXTRA))
            elif fields := field_diffs(have[ident], want[ident]):
                counts.out_of_sync += 1
                diffs.append(Difference(cls, ident, OUT_OF_SYNC, fields))
            else:
                counts.in_sync += 1
        report.differences.extend(diffs)
    return report


def render(report: Report, limit: int) -> str:
    """The report for people: a line per class, the verdict, the first ``limit``
    differences."""
    lines = [f"{report.consumer}: {report.verdict}"]
    width = max((len(c) for c in report.classes), default=0)
    for name, c in report.classes.items():
        lines.append(
            f"  {name:<{width}}  {IN_SYNC} {c.in_sync}, {OUT_OF_SYNC} {c.out_of_sync}, "
            f"{MISSING} {c.missing}, {EXTRA} {c.extra}"
        )
    shown = report.differences[:limit]
    if shown:
        lines.append(f"differences ({len(shown)} of {len(report.differences)}):")
        lines.extend(f"  {d.describe()}" for d in shown)
    return "\n".join(lines)
