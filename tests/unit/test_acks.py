"""AckTracker: the confirmable LSN never passes an unacknowledged event."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.reader.acks import AckTracker


def test_in_order_acks_confirm_each_commit() -> None:
    t = AckTracker()
    tx = t.begin()
    t.add(tx)
    t.add(tx)
    t.commit(100)
    assert t.confirmable == 0
    t.ack(tx)
    assert t.confirmable == 0
    t.ack(tx)
    assert t.confirmable == 100


def test_later_tx_acked_first_waits_for_earlier() -> None:
    t = AckTracker()
    a = t.begin()
    t.add(a)
    t.commit(100)
    b = t.begin()
    t.add(b)
    t.commit(200)
    t.ack(b)
    assert t.confirmable == 0
    t.ack(a)
    assert t.confirmable == 200


def test_empty_transaction_confirms_at_commit() -> None:
    t = AckTracker()
    t.begin()
    t.commit(50)
    assert t.confirmable == 50


def test_failure_freezes_confirmation() -> None:
    t = AckTracker()
    a = t.begin()
    t.add(a)
    t.commit(100)
    t.fail("broker gone")
    t.ack(a)
    assert t.confirmable == 0
    t.idle(500)
    assert t.confirmable == 0


def test_idle_only_between_transactions() -> None:
    t = AckTracker()
    a = t.begin()
    t.add(a)
    t.idle(999)
    assert t.confirmable == 0
    t.commit(100)
    t.ack(a)
    t.idle(150)
    assert t.confirmable == 150


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=5), min_size=1, max_size=30),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_random_ack_order_never_confirms_unacked(sizes: list[int], seed: int) -> None:
    t = AckTracker()
    events: list[tuple[int, object]] = []
    ends = []
    for i, size in enumerate(sizes):
        tx = t.begin()
        for _ in range(size):
            t.add(tx)
            events.append((i, tx))
        end = (i + 1) * 10
        ends.append(end)
        t.commit(end)
    random.Random(seed).shuffle(events)
    acked = [0] * len(sizes)
    for i, tx in events:
        t.ack(tx)  # type: ignore[arg-type]
        acked[i] += 1
        # Highest LSN allowed: end of the longest fully-acked prefix.
        allowed = 0
        for j, size in enumerate(sizes):
            if acked[j] < size:
                break
            allowed = ends[j]
        assert t.confirmable == allowed
    assert t.confirmable == ends[-1]
    assert t.in_flight == 0
