"""``GET /v1/status``: each consumer's state in the hosted search service's words, and lag.

Per consumer ``NAME`` (every installed one), from its consumer group
``{prefix}-NAME``:

* ``lag``: the high watermark minus the committed offset, summed over the partitions
  of every topic the group has committed offsets on (for a partition of such a topic
  without a commit: high minus low watermark).  Per topic in ``topics``.
* ``status`` (the Update API's ``status`` values):

  ========== ==============================================================
  ``none``    the group has never committed an offset (nothing imported)
  ``normal``  lag 0: everything on the topics is in the sink
  ``updating``lag > 0 and the group has members (the consumer is indexing)
  ``update``  lag > 0 and nobody consumes (the changes await indexation);
              also while a replay of the consumer runs (full_import start)
  ``error``   the consumer's last replay job (not a dry run) failed
  ========== ==============================================================

* ``full_import``: ``start`` while a replay job (not a dry run) of the consumer is
  queued or running, else ``done``.
* ``product_count``: for a consumer whose sink is a
  :class:`~consumers.capabilities.TargetProbe`, its ``target_count()`` (passed in as
  ``target_counts``; null when the target cannot tell or does not answer); for every
  other consumer, the live product documents (keys whose newest message is not a
  tombstone) on ``{prefix}.doc.products`` -- what the sink holds once its lag is 0.
  Counted by an incremental read of the keys only (each call reads just what arrived
  since).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    ConsumerGroupState,
    ConsumerGroupTopicPartitions,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from pipeline.admin.jobs import JobManager
from pipeline.errors import CatalogCdcError
from pipeline.kafka import consumer_config
from pipeline.topics import doc_topic

__all__ = ["KafkaUnavailable", "StatusReader"]


class KafkaUnavailable(CatalogCdcError):
    """Kafka did not answer the offset queries."""


@dataclass
class _LiveKeys:
    """Live keys of one compacted topic, read incrementally."""

    positions: dict[int, int] = field(default_factory=dict)
    alive: set[bytes] = field(default_factory=set)


class StatusReader:
    """Computes the status document; one instance per server (keeps Kafka clients)."""

    def __init__(
        self,
        bootstrap: str,
        prefix: str,
        *,
        timeout: float = 5.0,
    ) -> None:
        self.prefix = prefix
        self.timeout = timeout
        self._lock = threading.Lock()
        self._admin = AdminClient({"bootstrap.servers": bootstrap})
        self._consumer = Consumer(consumer_config(bootstrap, f"{prefix}-admin-status"))
        self._keys = _LiveKeys()

    def close(self) -> None:
        self._consumer.close()

    # -- Kafka ----------------------------------------------------------------------------

    def _committed(self, groups: Iterable[str]) -> dict[str, dict[str, dict[int, int]]]:
        """group -> topic -> partition -> committed offset (only real commits)."""
        futures = {
            g: self._admin.list_consumer_group_offsets(
                [ConsumerGroupTopicPartitions(g)], request_timeout=self.timeout
            )[g]
            for g in groups
        }
        out: dict[str, dict[str, dict[int, int]]] = {}
        for g, fut in futures.items():
            parts: dict[str, dict[int, int]] = {}
            for tp in fut.result(self.timeout).topic_partitions or []:
                if tp.offset >= 0 and not tp.error:
                    parts.setdefault(tp.topic, {})[tp.partition] = tp.offset
            out[g] = parts
        return out

    def _members(self, groups: list[str]) -> dict[str, bool]:
        """group -> has members (someone consumes)."""
        if not groups:
            return {}
        found = self._admin.describe_consumer_groups(groups, request_timeout=self.timeout)
        out = {}
        for g, fut in found.items():
            desc = fut.result(self.timeout)
            out[g] = bool(desc.members) or desc.state in (
                ConsumerGroupState.STABLE,
                ConsumerGroupState.PREPARING_REBALANCING,
                ConsumerGroupState.COMPLETING_REBALANCING,
            )
        return out

    def _watermarks(self, topic: str) -> dict[int, tuple[int, int]]:
        meta = self._consumer.list_topics(topic, timeout=self.timeout).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            return {}
        return {
            p: self._consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=self.timeout)
            for p in sorted(meta.partitions)
        }

    def _live_products(self, marks: dict[int, tuple[int, int]]) -> int:
        """Keys whose newest message on ``{prefix}.doc.products`` is not a tombstone."""
        topic = doc_topic(self.prefix, "product")
        state = self._keys
        todo = {p: hi for p, (_lo, hi) in marks.items() if hi > state.positions.get(p, 0)}
        if not todo:
            return len(state.alive)
        self._consumer.assign(
            [TopicPartition(topic, p, state.positions.get(p, OFFSET_BEGINNING)) for p in todo]
        )
        idle_since = time.monotonic()
        try:
            while todo:
                msgs = self._consumer.consume(1000, 0.1)  # returns early only when full
                if not msgs:
                    if time.monotonic() - idle_since > self.timeout:
                        raise KafkaUnavailable(f"reading {topic}: nothing in {self.timeout}s")
                    continue
                idle_since = time.monotonic()
                for msg in msgs:
                    if msg.error():
                        raise KafkaUnavailable(f"reading {topic}: {msg.error()}")
                    part, offset, key = msg.partition() or 0, msg.offset() or 0, msg.key()
                    if part not in todo:
                        continue
                    if key is not None:
                        if msg.value() is None:
                            state.alive.discard(key)
                        else:
                            state.alive.add(key)
                    state.positions[part] = offset + 1
                    if offset + 1 >= todo[part]:
                        del todo[part]
        finally:
            self._consumer.unassign()
        return len(state.alive)

    # -- the document ---------------------------------------------------------------------

    def status(
        self,
        consumers: Iterable[str],
        jobs: JobManager,
        target_counts: Mapping[str, int | None] | None = None,
    ) -> dict[str, Any]:
        """The document of ``GET /v1/status``; ``target_counts``: the ``product_count`` of
        the consumers whose targets tell it (the others count from the topic)."""
        counts = target_counts or {}
        names = sorted(consumers)
        groups = {n: f"{self.prefix}-{n}" for n in names}
        with self._lock:
            try:
                committed = self._committed(groups.values())
                members = self._members([g for g in groups.values() if committed.get(g)])
                marks: dict[str, dict[int, tuple[int, int]]] = {}
                for by_topic in committed.values():
                    for topic in by_topic:
                        if topic not in marks:
                            marks[topic] = self._watermarks(topic)
                products = doc_topic(self.prefix, "product")
                if products not in marks:
                    marks[products] = self._watermarks(products)
                live = self._live_products(marks[products]) if marks[products] else 0
            except KafkaException as exc:
                raise KafkaUnavailable(f"Kafka did not answer: {exc}") from exc
        out: dict[str, Any] = {}
        for name in names:
            group = groups[name]
            topics: dict[str, Any] = {}
            lag = 0
            for topic, parts in committed[group].items():
                t_lag = 0
                for p, (lo, hi) in marks.get(topic, {}).items():
                    t_lag += max(0, hi - parts[p]) if p in parts else max(0, hi - lo)
                topics[topic] = {"lag": t_lag, "committed": sum(parts.values())}
                lag += t_lag
            running = jobs.active(name, dry_runs=False)
            last = jobs.last(name)
            last_real = jobs.last(name, dry_runs=False)
            if running is not None:
                state = "update"
            elif last_real is not None and last_real.state == "failed":
                state = "error"
            elif not committed[group]:
                state = "none"
            elif lag == 0:
                state = "normal"
            else:
                state = "updating" if members.get(group) else "update"
            count = counts.get(name, live)
            out[name] = {
                "status": state,
                "full_import": "start" if running is not None else "done",
                "product_count": count,
                "group": group,
                "lag": lag,
                "topics": topics,
                "consuming": bool(members.get(group)),
                "job": None if last is None else {"id": last.id, "state": last.state},
            }
        return {
            "topic_prefix": self.prefix,
            "consumers": out,
            "jobs": [j.to_json() for j in jobs.all() if j.active],
        }
