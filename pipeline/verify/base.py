"""The seam between ``catalog-cdc verify`` and a consumer: the :class:`Verifier` protocol.

One implementation per consumer whose target can be read back
(:mod:`consumers.search.verify`, :mod:`consumers.edge_kv.verify`).  The driver
(:mod:`pipeline.verify.driver`) calls ``expected()`` (what the database calls for),
``actual()`` (what the sink holds), ``compare()`` and, with ``--repair``, ``repair()``
and then the three again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from consumers.contract import Rejected, TransientSinkError
from pipeline.errors import CatalogCdcError
from pipeline.verify.report import Report, Snapshot

log = logging.getLogger(__name__)

__all__ = [
    "RepairOutcome",
    "Unsupported",
    "Verifier",
    "VerifyError",
    "now_ms",
    "repair_version",
    "with_retries",
]

T = TypeVar("T")


class VerifyError(CatalogCdcError):
    """The sink or the database could not be read (the message says which and why)."""


class Unsupported(CatalogCdcError):
    """This consumer's target cannot be listed, so it cannot be compared (exit status 2)."""


@dataclass
class RepairOutcome:
    """What ``--repair`` sent: documents re-emitted, deletes, writes that bypass
    re-emission (edge KV keys), and what the sink refused or could not be repaired."""

    reemitted: int = 0
    deleted: int = 0
    key_writes: int = 0
    key_deletes: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


class Verifier(Protocol):
    """A consumer's target, read back and compared with the database."""

    name: str

    @property
    def classes(self) -> Sequence[str]:
        """The document classes reported (also when there are none on either side)."""
        ...

    def expected(self) -> Snapshot:
        """What the database calls for (``expected_documents`` and the rows the sink
        uses), in the form the sink stores it."""
        ...

    def actual(self) -> Snapshot:
        """What the sink's target holds, with its versions where it has them."""
        ...

    def compare(self, expected: Snapshot, actual: Snapshot) -> Report: ...

    def repair(self, report: Report, expected: Snapshot, actual: Snapshot) -> RepairOutcome:
        """Fix every difference of ``report`` through the consumer's own sink."""
        ...

    def close(self) -> None: ...


def repair_version(db_version: int, sink_version: int | None) -> int:
    """The version a repair writes with: above what the sink holds, so that external
    versioning accepts it (``max(db, sink + 1)``; 1 when the sink has nothing)."""
    return max(db_version, (sink_version or 0) + 1)


def now_ms() -> int:
    return int(time.time() * 1000)


def with_retries(what: str, call: Callable[[], T], attempts: int = 6) -> T:
    """``call()``, retried on :class:`TransientSinkError` with a capped backoff (0.2 s
    doubling to 5 s, honouring ``retry_after``); the last failure is raised as
    :class:`VerifyError`."""
    delay = 0.2
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except TransientSinkError as exc:
            if attempt == attempts:
                raise VerifyError(f"{what}: still failing after {attempts} tries: {exc}") from exc
            wait = min(exc.retry_after or delay, 5.0)
            log.warning(
                "event=verify_retry what=%s attempt=%d wait=%.1f error=%s", what, attempt, wait, exc
            )
            time.sleep(wait)
            delay = min(delay * 2, 5.0)
    raise AssertionError("unreachable")
