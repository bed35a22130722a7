"""The reader's Prometheus metrics (one registry per reader; no globals)."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server


class ReaderMetrics:
    """Events/s (rate of ``events``), lag in bytes and seconds, confirmed LSN, snapshot."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "catalog_cdc_reader_events", "Change events produced", ["table", "op"], registry=r
        )
        self.transactions = Counter(
            "catalog_cdc_reader_transactions", "Transactions read from the slot", registry=r
        )
        self.confirmed_lsn = Gauge(
            "catalog_cdc_reader_confirmed_lsn", "Last LSN confirmed to the server", registry=r
        )
        self.server_wal_lsn = Gauge(
            "catalog_cdc_reader_server_wal_lsn",
            "Server's current WAL LSN (last heartbeat)",
            registry=r,
        )
        self.lag_bytes = Gauge(
            "catalog_cdc_reader_lag_bytes", "Server WAL LSN minus confirmed LSN", registry=r
        )
        self.lag_bytes.set_function(
            lambda: max(0.0, _value(self.server_wal_lsn) - _value(self.confirmed_lsn))
        )
        self.last_commit_ts = Gauge(
            "catalog_cdc_reader_last_commit_timestamp_seconds",
            "Commit time of the newest transaction read",
            registry=r,
        )
        self.lag_seconds = Gauge(
            "catalog_cdc_reader_lag_seconds", "Now minus the newest commit time read", registry=r
        )
        self.lag_seconds.set_function(
            lambda: (
                max(0.0, time.time() - _value(self.last_commit_ts))
                if _value(self.last_commit_ts)
                else 0.0
            )
        )
        self.in_flight = Gauge(
            "catalog_cdc_reader_in_flight", "Events produced, not yet acknowledged", registry=r
        )
        self.snapshot_rows = Counter(
            "catalog_cdc_reader_snapshot_rows", "Rows read by snapshots", registry=r
        )
        self.snapshot_tables_total = Gauge(
            "catalog_cdc_reader_snapshot_tables", "Tables in the running snapshot", registry=r
        )
        self.snapshot_tables_done = Gauge(
            "catalog_cdc_reader_snapshot_tables_done", "Tables the snapshot finished", registry=r
        )

        self._event_children: dict[tuple[str, str], Any] = {}
        self._pending: dict[tuple[str, str], int] = {}

    def count_event(self, table: str, op: str, n: int = 1) -> None:
        """``events{table, op} += n``, added to the counter by :meth:`flush_counts`.

        A plain dict on the hot path: a Prometheus counter takes a lock per ``inc``.
        """
        key = (table, op)
        pending = self._pending
        pending[key] = pending.get(key, 0) + n

    def flush_counts(self) -> None:
        """Add the counts since the last call to ``events`` (the reader calls it often)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        for (table, op), n in pending.items():
            child = self._event_children.get((table, op))
            if child is None:
                child = self._event_children[(table, op)] = self.events.labels(table, op)
            child.inc(n)

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        """Serve ``/metrics`` on ``addr:port`` from a daemon thread."""
        start_http_server(port, addr=addr, registry=self.registry)


def _value(gauge: Gauge) -> float:
    return float(gauge._value.get())
