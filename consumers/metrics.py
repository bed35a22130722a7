"""The consumers' Prometheus metrics (one registry per consumer process)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["RuntimeMetrics"]


@dataclass
class RuntimeMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.records = Counter(
            "catalog_cdc_consumer_records", "Records written", ["consumer", "type"], registry=r
        )
        self.retries = Counter(
            "catalog_cdc_consumer_retries", "Flushes retried", ["consumer"], registry=r
        )
        self.dead_letters = Counter(
            "catalog_cdc_consumer_dead_letters", "Records dead-lettered", ["consumer"], registry=r
        )
        self.batch_seconds = Histogram(
            "catalog_cdc_consumer_batch_seconds", "Seconds per batch", ["consumer"], registry=r
        )
        self.latency = Histogram(
            "catalog_cdc_consumer_commit_to_ack_seconds",
            "From the source commit (PostgreSQL) to the sink's acknowledgement, per record",
            ["consumer"],
            buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60, 300),
            registry=r,
        )
        self.lag = Gauge(
            "catalog_cdc_consumer_lag_messages",
            "Messages behind the end of a partition (refreshed after a batch, at most once a "
            "second, and when idle)",
            ["consumer", "topic", "partition"],
            registry=r,
        )
