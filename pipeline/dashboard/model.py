"""What the dashboard shows, computed from scrapes of the services' ``/metrics``.

A :class:`Scrape` is one service's metrics at one moment (or the error that kept us
from reading them).  :func:`figures` picks the few numbers the dashboard needs out of
it; :func:`row` turns two consecutive figures of a service into rates (counter deltas
over the time between the scrapes) and a status; :class:`Board` keeps the recent
scrapes of every target (rates over a window of a few seconds) and tells when the whole
pipeline is quiet and caught up.

The metrics read (docs/dashboard.md): reader ``catalog_cdc_reader_events`` (events/s),
``_lag_bytes`` (slot lag), ``_lag_seconds``, ``_in_flight``, ``_snapshot_tables`` /
``_snapshot_tables_done``; assembler ``catalog_cdc_assembler_documents`` (documents/s),
``_lag_messages``, ``_dead_letters``, ``_catching_up``; consumers
``catalog_cdc_consumer_records`` (records/s), ``_lag_messages``, ``_dead_letters``,
``_retries``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from prometheus_client.parser import text_string_to_metric_families

Kind = Literal["reader", "assembler", "consumer", "unknown"]

READER = "catalog_cdc_reader_"
READER_BEHIND_BYTES = 64 * 1024 * 1024
"""Slot lag from which the reader counts as behind: WAL it still has to read (other
databases' WAL too: a slot decodes the whole server's). Below it, what the lag shows is
WAL written since the reader's last confirmation, normal under load."""
ASSEMBLER = "catalog_cdc_assembler_"
CONSUMER = "catalog_cdc_consumer_"


@dataclass(frozen=True)
class Target:
    """A ``/metrics`` URL, and the service's name (``None``: taken from the metrics)."""

    url: str
    name: str | None = None


@dataclass(frozen=True)
class Sample:
    name: str
    labels: Mapping[str, str]
    value: float


@dataclass(frozen=True)
class Scrape:
    """One read of a target: its samples and families, or ``error``."""

    target: Target
    at: float
    """``time.monotonic()`` when the answer came."""
    samples: tuple[Sample, ...] = ()
    families: frozenset[str] = frozenset()
    error: str | None = None


def parse_metrics(text: str) -> tuple[tuple[Sample, ...], frozenset[str]]:
    """Prometheus text format -> (samples, family names).  Families without samples
    (a labelled metric no label set of which was used yet) are in the names."""
    samples: list[Sample] = []
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        for s in family.samples:
            samples.append(Sample(s.name, dict(s.labels), float(s.value)))
    return tuple(samples), frozenset(names)


def total(samples: Iterable[Sample], name: str) -> float | None:
    """The sum of every sample called ``name`` (``None`` when there is none)."""
    values = [s.value for s in samples if s.name == name]
    return sum(values) if values else None


@dataclass(frozen=True)
class Figures:
    """The numbers of one service at one scrape."""

    kind: Kind
    name: str
    count: float | None = None
    """The counter whose rate is shown: reader events, assembler documents, consumer
    records (documents + deletes written)."""
    lag: float | None = None
    """Reader: slot lag in bytes; assembler, consumer: messages behind the end of their
    input partitions (sum), as of the service's last check; ``None``: not checked yet."""
    lag_seconds: float | None = None
    dead_letters: float | None = None
    retries: float | None = None
    in_flight: float | None = None
    snapshot: tuple[int, int] | None = None
    """Reader: (tables done, tables) while a snapshot runs."""
    catching_up: bool = False


def kind_of(families: frozenset[str]) -> Kind:
    for prefix, kind in ((CONSUMER, "consumer"), (ASSEMBLER, "assembler"), (READER, "reader")):
        if any(f.startswith(prefix) for f in families):
            return kind  # type: ignore[return-value]
    return "unknown"


def figures(scrape: Scrape) -> Figures:
    """Pick the dashboard's numbers out of a successful scrape."""
    s = scrape.samples
    kind = kind_of(scrape.families)
    name = scrape.target.name or _name_from(kind, s) or scrape.target.url
    if kind == "reader":
        tables = total(s, READER + "snapshot_tables") or 0
        done = total(s, READER + "snapshot_tables_done") or 0
        return Figures(
            kind,
            name,
            count=total(s, READER + "events_total") or 0.0,
            lag=total(s, READER + "lag_bytes"),
            lag_seconds=total(s, READER + "lag_seconds"),
            in_flight=total(s, READER + "in_flight"),
            snapshot=(int(done), int(tables)) if tables and done < tables else None,
        )
    if kind == "assembler":
        return Figures(
            kind,
            name,
            count=total(s, ASSEMBLER + "documents_total") or 0.0,
            lag=total(s, ASSEMBLER + "lag_messages"),
            dead_letters=total(s, ASSEMBLER + "dead_letters_total") or 0.0,
            catching_up=bool(total(s, ASSEMBLER + "catching_up")),
        )
    if kind == "consumer":
        return Figures(
            kind,
            name,
            count=total(s, CONSUMER + "records_total") or 0.0,
            lag=total(s, CONSUMER + "lag_messages"),
            dead_letters=total(s, CONSUMER + "dead_letters_total") or 0.0,
            retries=total(s, CONSUMER + "retries_total") or 0.0,
        )
    return Figures(kind, name)


def _name_from(kind: Kind, samples: Sequence[Sample]) -> str | None:
    if kind in ("reader", "assembler"):
        return kind
    for sample in samples:
        if sample.name.startswith(CONSUMER) and "consumer" in sample.labels:
            return sample.labels["consumer"]
    return None


@dataclass(frozen=True)
class Row:
    """One line of the dashboard: a service's status and its figures' rates."""

    name: str
    kind: Kind
    status: str
    up: bool
    rate: float | None = None
    """Per second, of :attr:`Figures.count` (``None`` on a first scrape)."""
    figures: Figures | None = None
    retry_rate: float | None = None
    error: str | None = None

    @property
    def quiet(self) -> bool:
        """Up, nothing counted within the rate window, nothing behind."""
        f = self.figures
        if not self.up or f is None or self.rate is None or self.rate > 0:
            return False
        if self.retry_rate:
            return False
        if f.kind == "reader":
            behind = (f.lag or 0) >= READER_BEHIND_BYTES
            return not f.in_flight and f.snapshot is None and not behind
        if f.kind == "assembler":
            return f.lag == 0 and not f.catching_up
        if f.kind == "consumer":
            return f.lag == 0
        return True


def rate(before: float | None, after: float | None, seconds: float) -> float | None:
    """Per second between two readings of a counter; a counter that went down was
    reset (the service restarted): what it counted since is the delta."""
    if before is None or after is None or seconds <= 0:
        return None
    delta = after - before if after >= before else after
    return delta / seconds


def row(previous: Scrape | None, current: Scrape) -> Row:
    """The row of ``current``, with rates from ``previous`` (the same target's)."""
    name = current.target.name or current.target.url
    if current.error is not None:
        return Row(name, "unknown", "down", False, error=current.error)
    now = figures(current)
    before = figures(previous) if previous is not None and previous.error is None else None
    seconds = current.at - previous.at if previous is not None else 0.0
    r = rate(before.count, now.count, seconds) if before is not None else None
    retries = rate(before.retries, now.retries, seconds) if before is not None else None
    return Row(now.name, now.kind, _status(now, r, retries), True, r, now, retries)


def _status(f: Figures, rate_: float | None, retry_rate: float | None) -> str:
    busy = bool(rate_)
    if f.kind == "reader":
        if f.snapshot is not None:
            return f"snapshot {f.snapshot[0]}/{f.snapshot[1]} tables"
        if busy:
            return "streaming"
        return "behind" if (f.lag or 0) >= READER_BEHIND_BYTES else "idle"
    if f.kind == "assembler":
        if f.catching_up:
            return "catching up"
        if f.lag:
            return "behind"
        return "busy" if busy else ("idle" if f.lag == 0 else "starting")
    if f.kind == "consumer":
        if retry_rate:
            return "retrying"
        if busy:
            return "busy"
        if f.lag is None:
            return "starting"
        return "behind" if f.lag else "in sync"
    return "up"


@dataclass
class Board:
    """The latest rows of every target, with rates over the last ``window`` seconds
    (the services count in batches: a 1 s delta would jump between 0 and a burst)."""

    targets: Sequence[Target]
    window: float = 3.0
    history: dict[Target, deque[Scrape]] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    quiet_since: float | None = None
    """``time.monotonic()`` of the first of the current run of all-quiet refreshes."""

    def update(self, scrapes: Sequence[Scrape]) -> list[Row]:
        rows = []
        for s in scrapes:
            past = self.history.setdefault(s.target, deque())
            if s.error is not None:
                past.clear()
                rows.append(row(None, s))
                continue
            while len(past) > 1 and s.at - past[1].at >= self.window:
                past.popleft()  # keep the newest scrape at least `window` old
            rows.append(row(past[0] if past else None, s))
            past.append(s)
        self.rows = rows
        at = max((s.at for s in scrapes), default=0.0)
        if self.rows and all(r.quiet for r in self.rows):
            if self.quiet_since is None:
                self.quiet_since = at
        else:
            self.quiet_since = None
        return self.rows

    def synced_for(self, now: float) -> float:
        """Seconds the whole pipeline has been quiet (0 when it is not)."""
        return 0.0 if self.quiet_since is None else max(0.0, now - self.quiet_since)

    def of(self, kind: Kind) -> list[Row]:
        return [r for r in self.rows if r.kind == kind]
