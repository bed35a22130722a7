"""What a sink can do beyond ``add`` and ``flush``: one typed protocol per ability.

The runtime, replay, verify and the admin API never ask for a consumer by name: they
ask its sink whether it implements one of these (``isinstance(sink, Verifiable)``;
every protocol is ``runtime_checkable``) and use it.  A new consumer gains an ability
by implementing the protocol — mypy checks the signature where the sink is declared
to satisfy it (``_: Verifiable = MySink(...)`` in its tests, or a ``TYPE_CHECKING``
assignment).  ``docs/adding-a-consumer.md`` walks through each.

=====================  ================================================================
:class:`RawInput`      also reads raw change topics of tables that are in no document
:class:`LateDeadLetters`  gives up on records after their batch was committed (an outbox)
:class:`FullImport`    its target rebuilds through a protocol of its own (start/done)
:class:`Replayable`    a replay needs a plan (a new generation swapped in, a clean-up)
:class:`Verifiable`    its target can be read back and compared with the database
:class:`Unverifiable`  says why its target cannot be read back, and what to check instead
:class:`TargetProbe`   tells cheaply whether its target answers, and how much it holds
=====================  ================================================================
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from consumers.contract import RawRecord, Record, Rejected, Sink

if TYPE_CHECKING:
    from consumers.registry import SinkContext
    from pipeline.verify.base import Verifier

__all__ = [
    "FullImport",
    "LateDeadLetters",
    "RawInput",
    "ReplayPlan",
    "ReplayRequest",
    "Replayable",
    "TargetProbe",
    "Unverifiable",
    "UpsertPlan",
    "Verifiable",
]


@runtime_checkable
class RawInput(Protocol):
    """Reads the raw change topics of ``raw_tables`` too (schema-qualified names, or
    bare names in ``public``).  Their records come through ``add_raw`` before
    ``flush``, under the same rules as documents: committed only after the flush, an
    undecodable message is poison, a :class:`~consumers.contract.Rejected` raw record
    goes to the dead-letter topic."""

    @property
    def raw_tables(self) -> Sequence[str]: ...

    def add_raw(self, records: Sequence[RawRecord]) -> None: ...


@runtime_checkable
class LateDeadLetters(Protocol):
    """Delivers after its batch was committed (an outbox, e.g. consumers/webhooks).

    ``dead_letters()`` returns the records it gave up on since the last call; the
    driver polls it every loop, puts them on the dead-letter topic and calls again only
    after Kafka acknowledged them (so the sink may treat the next call as the
    acknowledgement of the previous one)."""

    def dead_letters(self) -> list[Rejected]: ...


@runtime_checkable
class FullImport(Protocol):
    """Its target is rebuilt through a protocol of its own (the hosted search service's
    ``full_import`` start ... done): a replay hands it every current document at once
    instead of driving ``add``/``flush``.  Returns what the target refused."""

    def full_import(self, records: Iterable[Record]) -> list[Rejected]: ...


class ReplayPlan(Protocol):
    """What is special about replaying one consumer.  Each step gets the state it
    returned last (saved atomically between steps, so an interrupted replay resumes)."""

    def prepare(self, sink: Sink, saved: dict[str, Any]) -> dict[str, Any]:
        """Before the first batch (and on resume, with what it returned last time)."""
        ...

    def switch(self, sink: Sink, saved: dict[str, Any]) -> dict[str, Any]:
        """After the first pass: make the rebuilt target the live one (atomic)."""
        ...

    def finish(self, sink: Sink, saved: dict[str, Any]) -> dict[str, Any]:
        """After the last pass (clean-up: e.g. the old generation after a grace)."""
        ...


class UpsertPlan:
    """Re-send everything through the sink (idempotent upserts by id): nothing to
    switch.  The plan of every sink that is not :class:`Replayable`."""

    def prepare(self, sink: Sink, saved: dict[str, Any]) -> dict[str, Any]:
        return saved

    def switch(self, sink: Sink, saved: dict[str, Any]) -> dict[str, Any]:
        return saved

    def finish(self, sink: Sink, saved: dict[str, Any]) -> dict[str, Any]:
        return saved


@dataclass(frozen=True)
class ReplayRequest:
    """What a replay plan may need to know about the replay it serves."""

    state_path: Path
    """The replay's state file; a plan may keep files of its own beside it."""
    grace: float = 30.0
    """Seconds an old target generation is kept after a switch."""
    stop: threading.Event = field(default_factory=threading.Event)


@runtime_checkable
class Replayable(Protocol):
    """A replay of this sink follows a plan (see :class:`ReplayPlan`)."""

    def replay_plan(self, request: ReplayRequest) -> ReplayPlan: ...


@runtime_checkable
class Verifiable(Protocol):
    """Its target can be read back and compared with the database (``catalog-cdc
    verify``): returns the :class:`~pipeline.verify.base.Verifier` that does it."""

    def verifier(self, context: SinkContext, dsn: str) -> Verifier: ...


@runtime_checkable
class Unverifiable(Protocol):
    """Its target cannot be listed: ``verify_unsupported`` says why, and what can be
    checked instead (``catalog-cdc verify`` prints it and exits 2)."""

    @property
    def verify_unsupported(self) -> str: ...


@runtime_checkable
class TargetProbe(Protocol):
    """Cheap questions about the target, for status pages and the admin API."""

    def target_available(self) -> bool:
        """Whether the target answers now (an admin request that needs it gets 503)."""
        ...

    def target_count(self) -> int | None:
        """How many documents the target holds (``None``: cannot tell)."""
        ...
