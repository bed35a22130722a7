"""Test helpers shipped for people who write consumers: an in-memory sink.

:class:`MemorySink` implements :class:`~consumers.contract.Sink` without a target: it
keeps the latest document per ``(kind, id)`` in a dict, as an idempotent target would,
and can be told to misbehave the two ways the contract knows — refuse given ids for
good, or throttle given ids for the next N flushes — so a test can check what a
driver, a pipeline or a wrapper around a sink does with dead letters and retries,
without a network and in milliseconds::

    sink = MemorySink()
    sink.throttle("product", 7, flushes=2, retry_after=0.1)
    sink.refuse("product", 8, "price below zero")
    sink.add(records)
    with pytest.raises(TransientSinkError) as err:   # 7 throttled: kept; 8 refused
        sink.flush()
    assert [r.record.id for r in err.value.rejected] == [8]

Guarantee (the same as a real sink's, so a test relying on it holds for them): a flush
that returns wrote every record added except those it returns as
:class:`~consumers.contract.Rejected`; a flush that raises
:class:`~consumers.contract.TransientSinkError` wrote every record except the throttled
ones, which it keeps for the next flush, and carries the refusals (``rejected``).
Writes are idempotent: an equal or older version of a key is a no-op, a delete
(``doc`` ``None``) deletes, and a key's version is remembered after its delete so an
older redelivered document does not come back.  Outcomes are reported through
:class:`~consumers.contract.FlushOutcome`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from consumers.contract import FlushOutcome, Record, Rejected

__all__ = ["MemorySink"]

Key = tuple[str, int]
"""``(kind, id)`` of a document."""


@dataclass
class _Throttle:
    flushes: int
    retry_after: float | None


class MemorySink:
    """A :class:`~consumers.contract.Sink` that writes into memory (see the module)."""

    def __init__(self, name: str = "memory", kinds: Sequence[str] = ("product", "category")):
        self.name = name
        self.kinds: Sequence[str] = tuple(kinds)
        self.documents: dict[Key, Record] = {}
        """The latest record of every key that exists (deleted keys are absent)."""
        self.versions: dict[Key, int] = {}
        """The version applied last per key, deletes included."""
        self.flushes = 0
        """How many times :meth:`flush` was called."""
        self.opened = False
        self.closed = False
        self.stats = {"written": 0, "deleted": 0, "noop": 0, "refused": 0, "throttled": 0}
        self._pending: list[Record] = []
        self._refused: dict[Key, str] = {}
        self._throttled: dict[Key, _Throttle] = {}

    # -- telling it how to behave ---------------------------------------------------

    def refuse(self, kind: str, doc_id: int, reason: str = "refused by MemorySink") -> None:
        """From now on, every record of ``(kind, doc_id)`` is refused for good."""
        self._refused[(kind, doc_id)] = reason

    def throttle(
        self, kind: str, doc_id: int, flushes: int = 1, retry_after: float | None = None
    ) -> None:
        """The next ``flushes`` calls of :meth:`flush` (counted whether or not the key is
        pending then) keep the records of ``(kind, doc_id)`` and raise
        :class:`~consumers.contract.TransientSinkError` (with ``retry_after``)."""
        if flushes < 1:
            raise ValueError(f"flushes must be at least 1 (got {flushes})")
        self._throttled[(kind, doc_id)] = _Throttle(flushes, retry_after)

    # -- reading what it holds ------------------------------------------------------

    def get(self, kind: str, doc_id: int) -> Record | None:
        """The latest record of a key, ``None`` if it was never written or is deleted."""
        return self.documents.get((kind, doc_id))

    @property
    def pending(self) -> list[Record]:
        """What was added and not yet written (throttled records, after a flush)."""
        return list(self._pending)

    # -- the Sink protocol ----------------------------------------------------------

    def open(self) -> None:
        self.opened = True

    def add(self, records: Sequence[Record]) -> None:
        self._pending.extend(records)

    def flush(self) -> list[Rejected]:
        self.flushes += 1
        outcome = FlushOutcome()
        kept: list[Record] = []
        for record in self._pending:
            key = (record.kind, record.id)
            reason = self._refused.get(key)
            if reason is not None:
                outcome.refuse(record, reason)
                self.stats["refused"] += 1
                continue
            throttle = self._throttled.get(key)
            if throttle is not None:
                kept.append(record)
                outcome.retry(f"{record.kind} {record.id} throttled", 1, throttle.retry_after)
                self.stats["throttled"] += 1
                continue
            self._apply(key, record)
        for key, throttle in list(self._throttled.items()):
            throttle.flushes -= 1
            if throttle.flushes <= 0:
                del self._throttled[key]
        self._pending = kept
        return outcome.result()

    def close(self) -> None:
        self.closed = True

    def _apply(self, key: Key, record: Record) -> None:
        last = self.versions.get(key)
        if last is not None and record.version <= last:
            self.stats["noop"] += 1
            return
        self.versions[key] = record.version
        if record.doc is None:
            self.documents.pop(key, None)
            self.stats["deleted"] += 1
        else:
            self.documents[key] = record
            self.stats["written"] += 1
