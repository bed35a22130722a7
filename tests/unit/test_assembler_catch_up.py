"""When a catch-up (a new or rebuilt assembler state) may end and emit every document.

``Assembler._inputs_settled`` is pure decision logic over the inputs' high watermarks;
these tests give it watermarks from a table (the service itself is tested against
the stack's broker in tests/integration/test_assembler*.py).
"""

from __future__ import annotations

import logging
import time
from types import SimpleNamespace
from typing import Any

from confluent_kafka import TopicPartition

from pipeline.assembler import service
from pipeline.assembler.service import Assembler


class _Ends:
    """Answers watermark queries from a dict the test changes between calls."""

    def __init__(self, ends: dict[tuple[str, int], int], assigned: list[TopicPartition]) -> None:
        self.ends = ends
        self.assigned = assigned
        self.asked = 0

    def get_watermark_offsets(self, tp: TopicPartition, **_: Any) -> tuple[int, int]:
        self.asked += 1
        return 0, self.ends[(tp.topic, tp.partition)]

    def assignment(self) -> list[TopicPartition]:
        return self.assigned


def _assembler(slack: int, window: float = 0.0) -> tuple[Assembler, _Ends, _Ends]:
    owned = [TopicPartition("p.public.products", 0), TopicPartition("p.public.product_variants", 0)]
    ends = {
        ("p.public.products", 0): 100,
        ("p.public.product_variants", 0): 0,
        ("p.public.brands", 0): 5,
    }
    group = _Ends(ends, owned)
    globals_ = _Ends(ends, [TopicPartition("p.public.brands", 0)])
    asm = Assembler.__new__(Assembler)
    asm.settings = SimpleNamespace(catch_up_slack=slack, catch_up_window=window)  # type: ignore[assignment]
    asm.group, asm.globals = group, globals_  # type: ignore[assignment]
    asm._watermarks = lambda tps: [  # type: ignore[method-assign]
        ((tp.topic, tp.partition), group.get_watermark_offsets(tp)) for tp in tps
    ]
    asm._assigned = owned
    asm._targets = {("p.public.products", 0): 100, ("p.public.brands", 0): 5}
    asm._positions = {("p.public.products", 0): 100, ("p.public.brands", 0): 5}
    asm._base = {key: ends[key] for key in ends}
    asm._window_start = time.monotonic()
    asm._waiting_logged = False
    asm._extensions = 0
    # No `{prefix}._reader` record (raw events not from a reader): the growth rule.
    asm._reader_state = SimpleNamespace(load_all=dict)  # type: ignore[assignment]
    asm._snapshot_done = None
    asm._snapshot_checked = 0.0
    asm._snapshot_logged = False
    asm._after_snapshot = False
    return asm, group, globals_


def test_a_catch_up_waits_for_the_readers_snapshot_then_reads_to_the_ends_once_more() -> None:
    """With a reader record, its word decides: while it says the snapshot runs the
    catch-up reads on (whatever the growth); once done, the inputs' ends are taken once
    more and the catch-up ends only when it has read to them."""
    asm, group, _ = _assembler(slack=10**9)
    records = {"db/slot": {"snapshot_done": False}}
    asm._reader_state = SimpleNamespace(load_all=lambda: records)  # type: ignore[assignment]
    assert not asm._inputs_settled()
    records["db/slot"] = {"snapshot_done": True}
    asm._snapshot_checked = 0.0  # (read at most every 0.5 s)
    group.ends[("p.public.product_variants", 0)] = 40  # the snapshot's last table
    assert not asm._inputs_settled()
    assert asm._targets[("p.public.product_variants", 0)] == 40
    asm._positions[("p.public.product_variants", 0)] = 40
    assert asm._reached_targets() and asm._inputs_settled()


def test_a_catch_up_ends_when_nothing_more_arrived() -> None:
    asm, _, _ = _assembler(slack=1000)
    assert asm._reached_targets()
    assert asm._inputs_settled()


def test_a_catch_up_reads_on_while_the_inputs_grow_fast(caplog: Any) -> None:
    """The reader snapshots table after table: variants arrive after the products were
    read.  The catch-up moves its targets to the new ends instead of emitting every
    product now (and again for every table that follows)."""
    asm, group, _ = _assembler(slack=1000)
    group.ends[("p.public.product_variants", 0)] = 30_000
    with caplog.at_level(logging.INFO, logger="pipeline.assembler.service"):
        assert not asm._inputs_settled()
    assert asm._targets[("p.public.product_variants", 0)] == 30_000
    assert not asm._reached_targets()
    assert "event=catch_up_extended messages=30000" in caplog.text
    # Read to the new ends; a few live edits arrived meanwhile (at most the slack).
    asm._positions[("p.public.product_variants", 0)] = 30_000
    group.ends[("p.public.product_variants", 0)] = 30_400
    group.ends[("p.public.brands", 0)] = 7
    assert asm._reached_targets()
    assert asm._inputs_settled()


def test_growth_is_counted_over_every_input_together() -> None:
    asm, group, _ = _assembler(slack=1000)
    group.ends[("p.public.products", 0)] = 800
    group.ends[("p.public.product_variants", 0)] = 300
    group.ends[("p.public.brands", 0)] = 7  # 700 + 300 + 2 > 1000
    assert not asm._inputs_settled()


def test_a_catch_up_ends_after_so_many_extensions_under_any_load() -> None:
    asm, group, _ = _assembler(slack=0)
    for n in range(service._MAX_EXTENSIONS):
        group.ends[("p.public.products", 0)] += 10
        assert not asm._inputs_settled(), n
    group.ends[("p.public.products", 0)] += 10
    assert asm._inputs_settled()


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_growth_is_measured_over_the_window_even_when_read_at_once(monkeypatch: Any) -> None:
    """A snapshot's first rows (a few brands) are read in milliseconds: reading to the
    targets again and again, each round saw almost no growth and the catch-up ended
    while the products were still arriving.  Growth is counted over at least
    ``catch_up_window`` seconds, messages already read included."""
    clock = _Clock()
    monkeypatch.setattr(service.time, "monotonic", clock)
    asm, group, _ = _assembler(slack=1000, window=0.5)
    asm._window_start = clock.now
    clock.now += 0.1
    assert not asm._inputs_settled()
    assert group.asked == 0, "inside the window: no broker round trips"
    # 3,000 products arrive and are read at once (positions at the ends).
    group.ends[("p.public.products", 0)] = 3_100
    asm._positions[("p.public.products", 0)] = 3_100
    clock.now += 0.5
    assert not asm._inputs_settled()
    assert asm._extensions == 1
    assert asm._reached_targets(), "already read: nothing more to read before emitting"
    # Then quiet for a window: settled.
    clock.now += 0.5
    assert asm._inputs_settled()


def test_a_fresh_catch_up_waits_while_no_input_holds_a_message(
    monkeypatch: Any, caplog: Any
) -> None:
    """`catalog-cdc run` starts the reader and the assembler at once: a fresh assembler
    finds every input empty.  It must not end its catch-up on nothing (and then take the
    whole snapshot in live, emitting each product once per table): it waits for the
    first messages, then measures their growth."""
    clock = _Clock()
    monkeypatch.setattr(service.time, "monotonic", clock)
    asm, group, _ = _assembler(slack=1000, window=0.5)
    for key in group.ends:
        group.ends[key] = 0
    asm._base = dict.fromkeys(group.ends, 0)
    asm._targets, asm._positions = {}, {}
    asm._window_start = clock.now
    with caplog.at_level(logging.INFO, logger="pipeline.assembler.service"):
        for _ in range(5):
            clock.now += 1.0
            assert asm._reached_targets()
            assert not asm._inputs_settled()
    assert asm._extensions == 0, "waiting is not an extension"
    assert caplog.text.count("event=catch_up_waiting") == 1
    # The snapshot starts: 5,000 messages within the window, then it ends.
    group.ends[("p.public.brands", 0)] = 31
    group.ends[("p.public.products", 0)] = 5_000
    clock.now += 0.6
    assert not asm._inputs_settled()
    assert asm._targets[("p.public.products", 0)] == 5_000
    assert not asm._reached_targets()
    asm._positions.update({("p.public.products", 0): 5_000, ("p.public.brands", 0): 31})
    clock.now += 0.6
    assert asm._inputs_settled()
