"""When a catch-up (a new or rebuilt assembler state) may end and emit every document.

``Assembler._inputs_settled`` is pure decision logic over the inputs' high watermarks;
these tests give it watermarks from a table (the service itself is tested against
the stack's broker in tests/integration/test_assembler*.py).
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

from confluent_kafka import TopicPartition

from pipeline.assembler import service
from pipeline.assembler.service import Assembler


class _Ends:
    """Answers ``get_watermark_offsets`` from a dict the test changes between calls."""

    def __init__(self, ends: dict[tuple[str, int], int], assigned: list[TopicPartition]) -> None:
        self.ends = ends
        self.assigned = assigned

    def get_watermark_offsets(self, tp: TopicPartition, **_: Any) -> tuple[int, int]:
        return 0, self.ends[(tp.topic, tp.partition)]

    def assignment(self) -> list[TopicPartition]:
        return self.assigned


def _assembler(slack: int) -> tuple[Assembler, _Ends, _Ends]:
    owned = [TopicPartition("p.public.products", 0), TopicPartition("p.public.product_variants", 0)]
    ends = {
        ("p.public.products", 0): 100,
        ("p.public.product_variants", 0): 0,
        ("p.public.brands", 0): 5,
    }
    group = _Ends(ends, owned)
    globals_ = _Ends(ends, [TopicPartition("p.public.brands", 0)])
    asm = Assembler.__new__(Assembler)
    asm.settings = SimpleNamespace(catch_up_slack=slack)  # type: ignore[assignment]
    asm.group, asm.globals = group, globals_  # type: ignore[assignment]
    asm._assigned = owned
    asm._targets = {("p.public.products", 0): 100, ("p.public.brands", 0): 5}
    asm._positions = {("p.public.products", 0): 100, ("p.public.brands", 0): 5}
    asm._extensions = 0
    return asm, group, globals_


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
