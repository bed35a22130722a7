"""The assembler's Prometheus metrics (one registry per assembler; no globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class AssemblerMetrics:
    """Events in, documents out, late arrivals, lag per input partition, batch time."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "catalog_cdc_assembler_events", "Raw change events applied", ["table"], registry=r
        )
        self.documents = Counter(
            "catalog_cdc_assembler_documents",
            "Documents emitted",
            ["kind", "type"],  # type: document | tombstone
            registry=r,
        )
        self.late = Counter(
            "catalog_cdc_assembler_late_arrivals",
            "Documents emitted at version + 1 after a late cross-topic change",
            registry=r,
        )
        self.dead_letters = Counter(
            "catalog_cdc_assembler_dead_letters", "Documents sent to the DLQ", registry=r
        )
        self.batch_seconds = Histogram(
            "catalog_cdc_assembler_batch_seconds",
            "Time to apply, emit and commit one batch",
            registry=r,
        )
        self.lag = Gauge(
            "catalog_cdc_assembler_lag_messages",
            "Messages behind the end of an input partition (last check)",
            ["topic", "partition"],
            registry=r,
        )
        self.owned = Gauge(
            "catalog_cdc_assembler_owned_partitions", "Product partitions owned", registry=r
        )
        self.catching_up = Gauge(
            "catalog_cdc_assembler_catching_up", "1 while a new state catches up", registry=r
        )

    def serve(self, port: int) -> None:
        from pipeline.settings import metrics_address

        start_http_server(port, addr=metrics_address(), registry=self.registry)
