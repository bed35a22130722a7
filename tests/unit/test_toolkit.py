"""The sinks' shared toolkit: the chunker, Retry-After, the SQLite ledger."""

from __future__ import annotations

import itertools
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumers.toolkit.batching import chunks
from consumers.toolkit.headers import retry_after
from consumers.toolkit.ledger import open_ledger, open_read_only, rows, transaction

# -- chunks ---------------------------------------------------------------------------


@given(
    sizes=st.lists(st.integers(min_value=0, max_value=120), max_size=200),
    max_items=st.integers(min_value=1, max_value=20),
    max_bytes=st.integers(min_value=1, max_value=300),
)
def test_chunks_keep_every_item_once_in_order_within_both_limits(
    sizes: list[int], max_items: int, max_bytes: int
) -> None:
    items = list(enumerate(sizes))  # (position, size): equal sizes stay distinct

    def size_of(item: tuple[int, int]) -> int:
        return item[1]

    out = list(chunks(items, max_items=max_items, max_bytes=max_bytes, size_of=size_of))
    assert [item for chunk in out for item in chunk] == items
    for chunk in out:
        assert 1 <= len(chunk) <= max_items
        weight = sum(size for _, size in chunk)
        assert weight <= max_bytes or (len(chunk) == 1 and weight > max_bytes)


@given(
    sizes=st.lists(st.integers(min_value=0, max_value=120), max_size=100),
    max_items=st.integers(min_value=1, max_value=20),
    max_bytes=st.integers(min_value=1, max_value=300),
)
def test_chunks_are_as_full_as_the_limits_allow(
    sizes: list[int], max_items: int, max_bytes: int
) -> None:
    """A chunk is cut only because the next item would break a limit (greedy)."""
    out = list(chunks(sizes, max_items=max_items, max_bytes=max_bytes, size_of=lambda n: n))
    for chunk, following in itertools.pairwise(out):
        assert len(chunk) == max_items or sum(chunk) + following[0] > max_bytes


@given(items=st.lists(st.integers(), max_size=100), max_items=st.integers(1, 30))
def test_chunks_by_count_only(items: list[int], max_items: int) -> None:
    out = list(chunks(items, max_items=max_items))
    assert out == [items[i : i + max_items] for i in range(0, len(items), max_items)]


def test_an_oversized_item_travels_alone() -> None:
    out = list(chunks([1, 50, 2, 3], max_items=10, max_bytes=10, size_of=lambda n: n))
    assert out == [[1], [50], [2, 3]]


def test_chunks_read_the_input_only_as_far_as_the_chunk_asked_for() -> None:
    pulled: list[int] = []

    def source() -> Iterator[int]:
        for i in range(10):
            pulled.append(i)
            yield i

    stream = chunks(source(), max_items=3)
    assert next(stream) == [0, 1, 2]
    assert pulled == [0, 1, 2]  # nothing built ahead of the chunk handed out
    assert next(stream) == [3, 4, 5]
    assert pulled == [0, 1, 2, 3, 4, 5]


def test_chunks_refuse_nonsense_limits() -> None:
    with pytest.raises(ValueError, match="max_items"):
        list(chunks([1], max_items=0))
    with pytest.raises(ValueError, match="size_of"):
        list(chunks([1], max_items=1, max_bytes=10))


# -- Retry-After ----------------------------------------------------------------------

NOW = datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("7", 7.0),
        (" 120 ", 120.0),
        ("0", 0.0),
        ("0.5", 0.5),
        ("Tue, 14 Nov 2023 22:13:30 GMT", 10.0),  # HTTP-date, 10 s after NOW
        ("Tuesday, 14-Nov-23 22:13:30 GMT", 10.0),  # the obsolete RFC 850 form
        ("Tue, 14 Nov 2023 22:13:00 GMT", 0.0),  # passed: retry now
        (None, None),
        ("", None),
        ("-5", None),
        ("soon", None),
        ("1e3", None),
        ("inf", None),
        ("nan", None),
        ("Tue, 99 Foo 2023 99:99:99 GMT", None),
    ],
)
def test_retry_after_reads_both_forms(value: str | None, expected: float | None) -> None:
    assert retry_after(value, now=NOW) == (None if expected is None else pytest.approx(expected))


@given(seconds=st.integers(min_value=0, max_value=10**9))
def test_retry_after_delta_seconds(seconds: int) -> None:
    assert retry_after(str(seconds)) == float(seconds)


@given(delay=st.integers(min_value=0, max_value=10**7))
def test_retry_after_http_date_is_seconds_from_now(delay: int) -> None:
    when = datetime.fromtimestamp(NOW + delay, UTC)
    assert retry_after(format_datetime(when, usegmt=True), NOW) == pytest.approx(delay)


@given(value=st.text(max_size=40))
def test_retry_after_never_raises(value: str) -> None:
    result = retry_after(value, NOW)
    assert result is None or result >= 0.0


# -- ledger ---------------------------------------------------------------------------

_SCHEMA = "CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, v INTEGER NOT NULL);"


def test_a_ledger_is_wal_and_synchronous_full(tmp_path: Path) -> None:
    db = open_ledger(tmp_path / "sub" / "state.sqlite", _SCHEMA)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert db.in_transaction is False  # autocommit: transactions are explicit
    finally:
        db.close()


def test_a_transaction_commits_or_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    db = open_ledger(path, _SCHEMA)
    with transaction(db) as tx:
        tx.execute("INSERT INTO t VALUES ('a', 1)")
    with pytest.raises(RuntimeError), transaction(db) as tx:
        tx.execute("INSERT INTO t VALUES ('b', 2)")
        raise RuntimeError("half-way")
    db.close()
    reader = open_read_only(path)
    try:
        assert rows(reader, "SELECT k, v FROM t") == [{"k": "a", "v": 1}]
        with pytest.raises(sqlite3.OperationalError):
            reader.execute("INSERT INTO t VALUES ('c', 3)")
    finally:
        reader.close()


def test_an_existing_file_opens_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    old = sqlite3.connect(path)
    old.executescript(_SCHEMA + "INSERT INTO t VALUES ('x', 9);")
    old.close()
    db = open_ledger(path, _SCHEMA)
    try:
        assert rows(db, "SELECT v FROM t WHERE k = ?", ("x",)) == [{"v": 9}]
    finally:
        db.close()


def test_a_busy_database_raises_what_the_owner_asks(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    holder = open_ledger(path, _SCHEMA)
    holder.execute("BEGIN IMMEDIATE")
    other = sqlite3.connect(path, isolation_level=None, timeout=0.05)
    try:
        with (
            pytest.raises(LookupError, match="busy"),
            transaction(other, busy=lambda exc: LookupError(f"busy: {exc}")),
        ):
            pass  # pragma: no cover - never reached
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        other.close()


def test_a_shared_ledger_is_usable_from_another_thread_under_its_lock(tmp_path: Path) -> None:
    db = open_ledger(tmp_path / "state.sqlite", _SCHEMA, shared=True)
    lock = threading.Lock()

    def write() -> None:
        with transaction(db, lock=lock) as tx:
            tx.execute("INSERT INTO t VALUES ('thread', 1)")

    worker = threading.Thread(target=write)
    worker.start()
    worker.join()
    assert not lock.locked()
    assert rows(db, "SELECT k FROM t") == [{"k": "thread"}]
    db.close()
