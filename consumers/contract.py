"""The sink contract: what a consumer implements, and what a flush may answer.

A sink is a small protocol (:class:`Sink`): ``add`` a batch of records (documents and
deletes), ``flush`` them durably.  The driver (:mod:`consumers.driver`, shared by the
live runtime and by replay) does the rest: decoding, retries, dead letters, offsets.

What a flush may answer, and what the driver does with it:

* **returns** a list of :class:`Rejected`: everything added is written, except those,
  which the target refused for good (a mapping error, a field rule).  The driver puts
  them, with the reason, on ``{prefix}.dlq.{name}`` and only then commits.
* **raises** :class:`TransientSinkError`: some records must be written again later
  (timeout, 429, 5xx, connection refused).  The sink keeps exactly those for the next
  ``flush``.  Records the same flush refused for good travel *in the error*
  (``rejected=``): the driver dead-letters them before it waits and retries, so a
  refusal can never be lost behind a retry.  The :class:`FlushOutcome` helper builds
  either answer from per-item outcomes, so a sink cannot drop one by mistake.
* **raises** :class:`SinkError`: the sink cannot go on (bad credentials, a
  configuration error); nothing of the batch is committed and the consumer stops.

Records not yet written are never committed past: offsets move only after a flush
returned and its dead letters were acknowledged by Kafka.  Guarantee: at-least-once;
sinks write idempotently (external versions, upserts by id), so a redelivery changes
nothing that is already right.

Optional abilities of a sink (reading raw change topics, dead letters found after the
commit, a replay plan, a verifier...) are typed protocols in
:mod:`consumers.capabilities`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from pipeline.documents.wire import DocumentMessage
from pipeline.errors import CatalogCdcError
from pipeline.events import ChangeEvent

__all__ = [
    "FlushOutcome",
    "RawRecord",
    "Record",
    "Rejected",
    "Sink",
    "SinkError",
    "TransientSinkError",
    "handing_over",
]

Record = DocumentMessage
"""One document-topic message: ``kind``, ``id``, ``doc`` (``None``: a delete),
``version``, ``source_ts_ms``, ``partition``, ``offset``."""


@dataclass(frozen=True)
class RawRecord:
    """One raw change-topic message (``{prefix}.{schema}.{table}``) for a sink that reads
    raw tables (:class:`~consumers.capabilities.RawInput`): ``kind`` is the table name,
    ``id`` the primary key as text (one column: its value; several: ``col=value,...``)."""

    kind: str
    id: str
    event: ChangeEvent
    partition: int
    offset: int


@dataclass(frozen=True)
class Rejected:
    """A record the target refused for good, and why (it goes to the dead-letter topic)."""

    record: Record | RawRecord
    reason: str


class SinkError(CatalogCdcError):
    """A sink cannot go on."""


class TransientSinkError(SinkError):
    """The target is unavailable for now (timeout, 429, 5xx, connection refused).

    The driver calls ``flush`` again later; ``retry_after`` (seconds) is honoured when
    given.  ``rejected``: records this same attempt refused for good — the driver
    dead-letters them before it retries (the sink must not keep them)."""

    def __init__(
        self,
        message: str,
        retry_after: float | None = None,
        rejected: Iterable[Rejected] = (),
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.rejected: list[Rejected] = list(rejected)


class Sink(Protocol):
    """What a consumer implements.  ``name`` names its group and dead-letter topic."""

    @property
    def name(self) -> str:
        """Names the consumer's group and dead-letter topic."""
        ...

    @property
    def kinds(self) -> Sequence[str]:
        """Which document topics to read: ``"product"`` and/or ``"category"``."""
        ...

    def open(self) -> None:
        """Connect; raise :class:`TransientSinkError` while the target is unreachable."""
        ...

    def add(self, records: Sequence[Record]) -> None:
        """Take a batch (per partition in offset order; per key in version order)."""
        ...

    def flush(self) -> list[Rejected]:
        """Write everything added durably and return the records refused for good.

        Raise :class:`TransientSinkError` to be called again later: keep the records
        still to write, and hand over (``rejected=``) those refused for good meanwhile.
        """
        ...

    def close(self) -> None: ...


class FlushOutcome:
    """Per-item outcomes of one flush, turned into the contract's answer.

    ``refuse(record, reason)`` and ``retry(reason)`` as the target answers;
    :meth:`result` then returns the refusals, or — when anything is to be retried —
    raises :class:`TransientSinkError` carrying them.  A sink that reports through one
    of these cannot lose a refusal behind a retry."""

    def __init__(self) -> None:
        self.rejected: list[Rejected] = []
        self.retries = 0
        self.retry_after: float | None = None
        self._why: list[str] = []

    def refuse(self, record: Record | RawRecord, reason: str) -> None:
        self.rejected.append(Rejected(record, reason))

    def retry(self, reason: str, count: int = 1, retry_after: float | None = None) -> None:
        """``count`` items (kept by the sink) must be written again: ``reason`` says why."""
        self.retries += count
        if reason not in self._why:
            self._why.append(reason)
        if retry_after is not None:
            self.retry_after = max(self.retry_after or 0.0, retry_after)

    def result(self) -> list[Rejected]:
        if self.retries:
            raise TransientSinkError(
                f"{self.retries} writes to retry ({'; '.join(self._why)})",
                retry_after=self.retry_after,
                rejected=self.rejected,
            )
        return self.rejected


def handing_over(send: Callable[[], None], refused: list[Rejected]) -> list[Rejected]:
    """A flush for a sink that collects its refusals in ``refused`` while it sends:
    ``send()``, then the refusals it collected — returned, or carried by the
    :class:`TransientSinkError` it raised.  ``refused`` is emptied either way."""
    try:
        send()
    except TransientSinkError as exc:
        exc.rejected += refused
        refused.clear()
        raise
    out = list(refused)
    refused.clear()
    return out
