"""Kafka plumbing shared by every service: librdkafka configuration in one place,
topic creation, and the partitioner.

The partitioner is ``crc32(partition value) mod partitions``: stable across processes
and languages (zlib's CRC-32), computed in C.  Every stage that must agree on a
partition uses :func:`partition_for`.
"""

from __future__ import annotations

import contextlib
import logging
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from pipeline.errors import CatalogCdcError

log = logging.getLogger(__name__)


class KafkaSetupError(CatalogCdcError):
    """A topic could not be created or inspected."""


def producer_config(bootstrap: str, **overrides: Any) -> dict[str, Any]:
    """An idempotent, ``acks=all`` producer: no loss, no reordering on retries."""
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "max.in.flight.requests.per.connection": 5,
        "linger.ms": 5,
        "batch.num.messages": 10000,
        "queue.buffering.max.messages": 200000,
        "queue.buffering.max.kbytes": 262144,
        "compression.type": "lz4",
        # Never give up on a message by time: a broker outage must stall, not drop.
        "message.timeout.ms": 0,
    }
    config.update(overrides)
    return config


def consumer_config(bootstrap: str, group: str | None = None, **overrides: Any) -> dict[str, Any]:
    """A consumer that commits only when told to, starting from the earliest offset."""
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
        # noida-db (the local broker) ignores fetch.max.bytes: reading a long topic from
        # the beginning it answered one fetch with 109 MB, over librdkafka's 100 MB
        # default, and the consumer retried it forever.  Real Kafka honours the limit.
        "receive.message.max.bytes": 1_000_000_000,
    }
    config["group.id"] = group or "catalog-cdc-tools"
    config.update(overrides)
    return config


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int = 1
    config: Mapping[str, str] = field(default_factory=dict)


def ensure_topics(
    bootstrap: str, specs: Iterable[TopicSpec], timeout: float = 30.0
) -> dict[str, int]:
    """Create the missing topics; return ``{topic: partition count}`` for all of them.

    An existing topic is left as it is (its partition count is returned, and is what
    partitioning must use).
    """
    specs = list(specs)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    existing = admin.list_topics(timeout=timeout).topics
    missing = [s for s in specs if s.name not in existing]
    if missing:
        futures = admin.create_topics(
            [
                NewTopic(
                    s.name,
                    num_partitions=s.partitions,
                    replication_factor=-1,
                    config=dict(s.config),
                )
                for s in missing
            ],
            request_timeout=timeout,
        )
        for name, fut in futures.items():
            try:
                fut.result(timeout)
                log.info("event=topic_created topic=%s", name)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise KafkaSetupError(f"cannot create topic {name}: {exc}") from exc
    counts = await_leaders(admin, [s.name for s in specs], timeout)
    if missing:
        _await_leadership(bootstrap, {s.name: counts[s.name] for s in missing}, timeout)
    return counts


_NOT_YET: Final = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError._UNKNOWN_TOPIC,
    }
)
"""What a partition created a moment ago answers until its leader has taken over."""


def _await_leadership(bootstrap: str, topics: Mapping[str, int], timeout: float) -> None:
    """Until every partition of the new ``topics`` answers a ListOffsets.

    Apache Kafka (KRaft) names a partition's leader in the metadata before that broker
    has taken leadership: a watermark query right after CreateTopics was answered
    NOT_LEADER_FOR_PARTITION (measured on 4.4.0: one partition of three).  A topic is
    handed out only once it is usable by every client."""
    probe = Consumer(consumer_config(bootstrap, "catalog-cdc-topic-probe"))
    deadline = time.monotonic() + timeout
    try:
        for topic, partitions in topics.items():
            for part in range(partitions):
                while True:
                    try:
                        probe.get_watermark_offsets(TopicPartition(topic, part), timeout=timeout)
                        break
                    except KafkaException as exc:
                        code = exc.args[0].code() if exc.args else None
                        if code not in _NOT_YET or time.monotonic() > deadline:
                            raise KafkaSetupError(
                                f"topic {topic}[{part}] did not become usable: {exc}"
                            ) from exc
                        time.sleep(0.05)
    finally:
        probe.close()


def await_leaders(client: Any, topics: Iterable[str], timeout: float = 30.0) -> dict[str, int]:
    """Until every partition of ``topics`` has a leader in ``client``'s metadata (any
    confluent-kafka client: it is that client's own cache that must know them);
    ``{topic: partition count}``.

    Apache Kafka answers CreateTopics before the new partitions have leaders and before
    other clients' metadata holds them: a consumer asking for the watermarks of a topic
    created a moment ago got ``_UNKNOWN_PARTITION``."""
    counts: dict[str, int] = {}
    deadline = time.monotonic() + timeout
    for topic in topics:
        while True:
            meta = client.list_topics(topic, timeout=timeout).topics.get(topic)
            if (
                meta is not None
                and meta.error is None
                and meta.partitions
                and all(p.leader >= 0 and p.error is None for p in meta.partitions.values())
            ):
                counts[topic] = len(meta.partitions)
                break
            if time.monotonic() > deadline:
                raise KafkaSetupError(f"topic {topic} did not become available in {timeout}s")
            time.sleep(0.1)
    return counts


def is_fatal(err: KafkaError) -> bool:
    """Whether a consumer error means the client is dead for good (librdkafka's fatal
    errors: a static member fenced by another with its ``group.instance.id``, ...).

    A consumer reports it as a message whose error has the code ``_FATAL`` and whose
    ``fatal()`` is false (confluent-kafka-python issue #869): checking ``fatal()``
    alone took it for a passing broker error, and the consumer sat there, polling a
    client that would never fetch again (seen: an assembler fenced after a 10 s stall
    stopped emitting, with no error).
    """
    return bool(err.fatal()) or err.code() == KafkaError._FATAL


def partition_for(value: object, partitions: int) -> int:
    """The partition of a partition-column value (``None`` goes to partition 0)."""
    if value is None:
        return 0
    return zlib.crc32(str(value).encode()) % partitions


def pause_while_idle(
    consumers: Iterable[Consumer], seconds: float, wait: Callable[[float], object]
) -> None:
    """Stop fetching for ``seconds`` after a poll that returned nothing, then go on.

    Kafka holds an empty fetch for up to ``fetch.wait.max.ms``; noida-db (the local
    stack's broker) answers it at once, so an idle librdkafka consumer sends about
    10,000 fetches a second and burns half a core (measured: 0.45 CPU-seconds per
    second for one consumer of six empty partitions).  Pausing the assignment stops the
    fetcher; librdkafka keeps the position and resumes from it.  A resumed partition is
    only fetched again when its broker's thread next wakes up (up to a second later when
    it has nothing else to fetch: measured 0.85 s), so a watermark query to that broker
    follows the resume and wakes it at once.  The cost is then at most ``seconds`` of
    extra latency when a quiet topic gets a message.  ``seconds <= 0``: do nothing.

    Kafka itself holds empty fetches, so this saves nothing there; on a cluster of
    several brokers the wake-up reaches one of them (the others resume within a
    second): set the pause to 0 there.
    """
    if seconds <= 0:
        return
    held = FetchHold(consumers)
    try:
        wait(seconds)
    finally:
        held.release()


class FetchHold:
    """The consumers' assignments paused (no fetching) until :meth:`release`.

    For a consumer at the live edge of its topics that now works on what it polled: on
    noida-db, which answers every fetch at once, the fetcher threads otherwise fetch
    again and again while the batch is processed, each answer holding a handful of
    messages or none (measured: a consumer of six partitions with nothing new burned
    0.49 cores of the broker and 0.49 of its own).  Held, the messages wait on the broker
    and the next fetch takes them all at once.  Hold only after a poll that emptied the
    local queue: pausing drops what librdkafka had prefetched (it is fetched again from
    the position, nothing is skipped).  Rebalance callbacks run inside ``consume()``, so
    the assignments cannot change while held if the holder does not poll.
    """

    def __init__(self, consumers: Iterable[Consumer]) -> None:
        self.since = time.monotonic()
        self._paused = [(c, parts) for c in consumers if (parts := c.assignment())]
        for c, parts in self._paused:
            c.pause(parts)

    def release(
        self, not_before: float = 0.0, wait: Callable[[float], object] | None = None
    ) -> None:
        """Resume fetching, ``not_before`` seconds after the hold began at the earliest
        (waiting with ``wait``, e.g. a stop event's); each consumer's broker thread is
        woken at once by a watermark query (see :func:`pause_while_idle`)."""
        rest = not_before - (time.monotonic() - self.since)
        if rest > 0 and wait is not None:
            wait(rest)
        for c, parts in self._paused:
            c.resume(parts)
            with contextlib.suppress(KafkaException):
                c.get_watermark_offsets(parts[0], timeout=1.0, cached=False)
        self._paused = []


def watermarks(
    admin: AdminClient, partitions: Iterable[TopicPartition], timeout: float = 10.0
) -> dict[tuple[str, int], tuple[int, int]]:
    """``(topic, partition) -> (low, high)`` of many partitions in two ListOffsets
    requests per broker, from an AdminClient.

    A consumer's ``get_watermark_offsets(cached=False)`` asks one partition at a time on
    the connection its fetches use; Apache Kafka answers a connection's requests in
    order, so each query waited behind the long-polled fetch (``fetch.wait.max.ms``,
    500 ms): an assembler owning 36 partitions spent 27 s per look at its inputs.
    Raises :class:`KafkaException` when the broker does not answer."""
    from confluent_kafka.admin import OffsetSpec  # type: ignore[attr-defined]

    tps = [TopicPartition(tp.topic, tp.partition) for tp in partitions]
    if not tps:
        return {}
    ends: dict[str, dict[tuple[str, int], int]] = {}
    specs = (("low", OffsetSpec.earliest()), ("high", OffsetSpec.latest()))  # type: ignore[no-untyped-call]
    for name, spec in specs:
        futures = admin.list_offsets({tp: spec for tp in tps}, request_timeout=timeout)
        ends[name] = {
            (tp.topic, tp.partition): fut.result(timeout).offset for tp, fut in futures.items()
        }
    return {key: (ends["low"][key], ends["high"][key]) for key in ends["high"]}
