"""Which WAL position may be confirmed: the end of the newest transaction whose every
event, and every event before it, Kafka has acknowledged.

Events are produced in WAL order, but Kafka acknowledges per partition, so acks
arrive out of order.  The tracker keeps, in stream order, one entry per transaction
that still has events in flight; a transaction's end LSN becomes confirmable only
when it and all transactions before it are fully acknowledged.  Memory is bounded by
the number of transactions in flight, not by their size (a 1M-row transaction is one
entry with a counter).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Tx:
    pending: int = 0
    end_lsn: int | None = None
    """Set at Commit; None while the transaction is still being read."""
    callback: Any = None
    """The delivery callback of this transaction's events (made once, not per event)."""


class AckTracker:
    """Tracks in-flight events per transaction; reports the confirmable LSN."""

    def __init__(self) -> None:
        self._txs: deque[_Tx] = deque()
        self._open: _Tx | None = None
        self._confirmable = 0
        self.in_flight = 0
        self.failed: str | None = None
        """First delivery error; once set nothing more is ever confirmed."""

    def begin(self) -> _Tx:
        """Open the next transaction (events that follow belong to it)."""
        tx = _Tx()
        self._txs.append(tx)
        self._open = tx
        return tx

    def add(self, tx: _Tx) -> None:
        """One more event of ``tx`` handed to the producer."""
        tx.pending += 1
        self.in_flight += 1

    def ack(self, tx: _Tx) -> None:
        """Kafka acknowledged one event of ``tx``."""
        tx.pending -= 1
        self.in_flight -= 1
        if tx.pending == 0 and tx.end_lsn is not None:
            self._advance()

    def on_delivery(self, tx: _Tx) -> Callable[[Any, Any], None]:
        """The producer's delivery callback for ``tx``'s events: :meth:`ack` on success,
        :meth:`fail` on error.  One per transaction (not per event), and one Python call
        per delivery report, as the hot path needs.
        """

        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                self.fail(str(err))
                log.error("event=delivery_failed error=%s", err)
                return
            tx.pending -= 1
            self.in_flight -= 1
            if tx.pending == 0 and tx.end_lsn is not None:
                self._advance()

        return delivered

    def fail(self, reason: str) -> None:
        """A delivery failed for good: stop confirming (a restart replays from the slot)."""
        if self.failed is None:
            self.failed = reason

    def commit(self, end_lsn: int) -> None:
        """The open transaction ended at ``end_lsn``."""
        tx = self._open if self._open is not None else self.begin()
        tx.end_lsn = end_lsn
        self._open = None
        self._advance()

    def idle(self, lsn: int) -> None:
        """No transaction is open and nothing is in flight at ``lsn``: it may be confirmed.

        Used for keepalive positions between transactions (no WAL of interest there).
        """
        if self._open is None and not self._txs and self.failed is None:
            self._confirmable = max(self._confirmable, lsn)

    def _advance(self) -> None:
        while self._txs:
            head = self._txs[0]
            if head.pending or head.end_lsn is None:
                break
            self._txs.popleft()
            if self.failed is None:
                self._confirmable = max(self._confirmable, head.end_lsn)

    @property
    def confirmable(self) -> int:
        return self._confirmable

    @property
    def open_transactions(self) -> int:
        return len(self._txs)
