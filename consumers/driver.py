"""Driving a sink: decode, add, flush with retries, dead letters — one piece of code
for live consuming (:mod:`consumers.runtime`) and for replay (:mod:`pipeline.replay`).

:class:`SinkDriver` takes polled Kafka messages and does, the same way for both:

1. decodes each message into a :class:`~consumers.contract.Record` (a document topic)
   or a :class:`~consumers.contract.RawRecord` (a raw change topic the sink reads as
   :class:`~consumers.capabilities.RawInput`); a message that cannot be decoded is
   *poison*: it goes to the dead-letter topic with the reason, never raises;
2. hands the records to the sink and flushes; a
   :class:`~consumers.contract.TransientSinkError` waits (capped exponential backoff
   with jitter, ``retry_after`` honoured) and flushes again, for as long as it takes:
   nothing is skipped.  The refusals an error carries are dead-lettered *before* the
   wait, and so are those the final flush returns;
3. waits for Kafka to acknowledge every dead letter before it reports the batch
   written: the caller moves its offsets (a commit, a replay's saved positions) only
   after that.

How the driver waits is the caller's: the live runtime keeps polling Kafka with its
partitions paused, so that an outage of any length does not get it evicted from its
group (``max.poll.interval.ms``); replay just waits.

Guarantee: at-least-once.  Every record is either confirmed by the sink or on the
dead-letter topic (acknowledged by Kafka) before the batch is reported written.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from confluent_kafka import Message, Producer

from consumers.capabilities import LateDeadLetters, RawInput
from consumers.contract import RawRecord, Record, Rejected, Sink, SinkError, TransientSinkError
from consumers.metrics import RuntimeMetrics
from pipeline.codec import EventCodec, make_codec
from pipeline.documents.reading import document_codec
from pipeline.documents.wire import DocumentCodec, doc_key, headers_of
from pipeline.errors import CatalogCdcError
from pipeline.kafka import TopicSpec, ensure_topics, producer_config
from pipeline.topics import dlq_topic, doc_kind, doc_topic, raw_topic

log = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = [
    "STOPPED",
    "Backoff",
    "Decoded",
    "SinkDriver",
    "Stopped",
    "Wait",
    "Written",
    "raw_record",
]

Wait = Callable[[float], bool]
"""``wait(seconds)``: wait that long; ``True`` when the caller is stopping."""


class Stopped:
    """What :meth:`SinkDriver.retrying` returns when the caller stops while retrying."""


STOPPED = Stopped()


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with ±20 % jitter, starting at ``initial`` seconds."""

    initial: float = 0.2
    maximum: float = 30.0

    def wait_for(self, attempt: int, retry_after: float | None) -> float:
        """Seconds before retry ``attempt`` (1, 2, ...); ``retry_after`` wins when given."""
        base = retry_after if retry_after is not None else self.initial * 2 ** (attempt - 1)
        return min(self.maximum, base) * random.uniform(0.8, 1.2)


@dataclass
class Poison:
    """A message that cannot be decoded, and why."""

    message: Message
    reason: str


@dataclass
class Decoded:
    """One polled batch, decoded."""

    records: list[Record] = field(default_factory=list)
    raws: list[RawRecord] = field(default_factory=list)
    poison: list[Poison] = field(default_factory=list)
    positions: dict[tuple[str, int], int] = field(default_factory=dict)
    """``(topic, partition) -> next offset`` past every message of the batch."""
    originals: dict[tuple[str, int, int], Message] = field(default_factory=dict)
    """``(topic, partition, offset) -> message``: what a dead letter carries."""

    def __len__(self) -> int:
        return len(self.records) + len(self.raws) + len(self.poison)


@dataclass
class Written:
    """What a batch came to: the records the sink confirmed, and the dead letters."""

    confirmed: list[Record]
    raws: int
    dead_letters: int


def raw_record(codec: EventCodec, msg: Message, table: str) -> RawRecord | None:
    """Decode one raw change message of ``table`` (``None`` for a tombstone: the delete
    event before it did the work).  Raises :class:`CatalogCdcError` when undecodable."""
    if msg.value() is None:
        return None
    event = codec.decode(msg.key() or None, msg.value())
    if event is None:
        return None
    key = event.key or {}
    ident = (
        str(next(iter(key.values())))
        if len(key) == 1
        else ",".join(f"{k}={v}" for k, v in key.items())
    )
    return RawRecord(table, ident, event, msg.partition() or 0, msg.offset() or 0)


class SinkDriver:
    """Drives one sink (see the module docstring).  Not thread-safe: one caller."""

    def __init__(
        self,
        sink: Sink,
        *,
        bootstrap: str,
        topic_prefix: str,
        wait: Wait,
        schema_registry_url: str | None = None,
        backoff: Backoff | None = None,
        metrics: RuntimeMetrics | None = None,
        stats: dict[str, int] | None = None,
    ) -> None:
        self.sink = sink
        self.prefix = topic_prefix
        self.wait = wait
        self.backoff = backoff or Backoff()
        self.metrics = metrics or RuntimeMetrics()
        self.stats = stats if stats is not None else {}
        for k in ("retries", "dead_letters"):
            self.stats.setdefault(k, 0)
        self.dlq_topic = dlq_topic(topic_prefix, sink.name)
        self.raw_topics: dict[str, str] = {}
        """Raw change topics the sink reads -> their table (bare name)."""
        if isinstance(sink, RawInput):
            for table in sink.raw_tables:
                self.raw_topics[raw_topic(topic_prefix, table)] = table.rpartition(".")[2]
        self.doc_topics = [doc_topic(topic_prefix, k) for k in sink.kinds]
        ensure_topics(bootstrap, [TopicSpec(self.dlq_topic, 1)])
        self.codec: DocumentCodec = document_codec(bootstrap, topic_prefix, schema_registry_url)
        self.raw_codec: EventCodec | None = None
        if self.raw_topics:
            self.raw_codec = make_codec(
                topic_prefix=topic_prefix,
                schema_registry_url=schema_registry_url,
                kafka_bootstrap=bootstrap,
            )
        self.producer = Producer(producer_config(bootstrap))
        self._delivery_errors: list[str] = []

    @property
    def topics(self) -> list[str]:
        """Every topic the sink reads: its document topics, then its raw topics."""
        return self.doc_topics + list(self.raw_topics)

    # -- decoding -------------------------------------------------------------------------

    def decode(self, msgs: Sequence[Message]) -> Decoded:
        """Decode messages (without errors: the caller handles those); undecodable ones
        are poison, not exceptions."""
        out = Decoded()
        for msg in msgs:
            topic, part, offset = msg.topic() or "", msg.partition() or 0, msg.offset() or 0
            out.positions[(topic, part)] = offset + 1
            out.originals[(topic, part, offset)] = msg
            try:
                table = self.raw_topics.get(topic)
                if table is not None:
                    assert self.raw_codec is not None
                    raw = raw_record(self.raw_codec, msg, table)
                    if raw is not None:  # a tombstone: the delete before it did the work
                        out.raws.append(raw)
                    continue
                kind = doc_kind(self.prefix, topic)
                if kind is None:
                    raise CatalogCdcError(f"{topic!r} is not a topic this sink reads")
                out.records.append(
                    self.codec.decode_message(
                        kind, msg.key(), msg.value(), msg.headers(), part, offset
                    )
                )
            except CatalogCdcError as exc:
                out.poison.append(Poison(msg, f"cannot decode: {exc}"))
        return out

    # -- writing --------------------------------------------------------------------------

    def open(self) -> bool:
        """``sink.open()``, retried while the target is unreachable; ``False``: stopping."""
        return not isinstance(
            self.retrying("connect to the sink's target", self.sink.open), Stopped
        )

    def write(self, batch: Decoded) -> Written | None:
        """Add and flush ``batch``, dead-letter what is refused or poison, and wait for
        Kafka to acknowledge the dead letters.  ``None``: stopping while the target was
        down — nothing of the batch may be taken as written."""
        refused: list[Rejected] = []

        def dead_letter_now(rejected: list[Rejected]) -> None:
            self._dead_letter_rejected(rejected, batch)
            self._flush_producer()
            refused.extend(rejected)

        if batch.raws:
            assert isinstance(self.sink, RawInput)
            self.sink.add_raw(batch.raws)
        if batch.records or batch.raws:
            if batch.records:
                self.sink.add(batch.records)
            final = self.retrying("flush a batch", self.sink.flush, on_rejected=dead_letter_now)
            if isinstance(final, Stopped):
                return None
            self._dead_letter_rejected(final, batch)
            refused += final
        for p in batch.poison:
            self._dead_letter(p.message, p.reason, None)
        self._flush_producer()
        gone = {
            (r.record.kind, r.record.id, r.record.partition, r.record.offset)
            for r in refused
            if isinstance(r.record, Record)
        }
        confirmed = [r for r in batch.records if (r.kind, r.id, r.partition, r.offset) not in gone]
        letters = len(refused) + len(batch.poison)
        self.metrics.dead_letters.labels(self.sink.name).inc(letters)
        self.stats["dead_letters"] += letters
        return Written(confirmed, len(batch.raws), letters)

    def late_dead_letters(self) -> int:
        """Dead letters the sink found after their batch was committed
        (:class:`~consumers.capabilities.LateDeadLetters`); the number put on the topic."""
        if not isinstance(self.sink, LateDeadLetters):
            return 0
        return self.dead_letter_records(self.sink.dead_letters())

    def dead_letter_records(self, rejected: Sequence[Rejected]) -> int:
        """Refusals whose original messages are not at hand (a late dead letter, a full
        import): each document is rebuilt into its message; acknowledged by Kafka when
        this returns."""
        if not rejected:
            return 0
        for rej in rejected:
            r = rej.record
            self._dead_letter(None, rej.reason, None if isinstance(r, RawRecord) else r)
        self._flush_producer()
        self.metrics.dead_letters.labels(self.sink.name).inc(len(rejected))
        self.stats["dead_letters"] += len(rejected)
        return len(rejected)

    def retrying(
        self,
        what: str,
        call: Callable[[], T],
        on_rejected: Callable[[list[Rejected]], None] | None = None,
    ) -> T | Stopped:
        """``call()`` until it does not raise :class:`TransientSinkError`;
        :data:`STOPPED` when the wait says the caller is stopping.  The refusals an error
        carries go to ``on_rejected`` before the wait (an error carrying refusals
        without an ``on_rejected`` is a bug in the caller: it raises)."""
        attempt = 0
        while True:
            try:
                return call()
            except TransientSinkError as exc:
                if exc.rejected:
                    if on_rejected is None:
                        raise SinkError(
                            f"{what}: refusals came with a retry where none can be "
                            f"dead-lettered ({exc.rejected[0].reason})"
                        ) from exc
                    on_rejected(exc.rejected)
                attempt += 1
                self.stats["retries"] += 1
                self.metrics.retries.labels(self.sink.name).inc()
                delay = self.backoff.wait_for(attempt, exc.retry_after)
                log.warning(
                    "event=sink_unavailable consumer=%s action=%r attempt=%d retry_in=%.1fs "
                    "refused_meanwhile=%d error=%s",
                    self.sink.name, what, attempt, delay, len(exc.rejected), exc,
                )  # fmt: skip
                if self.wait(delay):
                    return STOPPED

    # -- dead letters ---------------------------------------------------------------------

    def _dead_letter_rejected(self, rejected: list[Rejected], batch: Decoded) -> None:
        for rej in rejected:
            r = rej.record
            if isinstance(r, RawRecord):
                topic = next((t for t, table in self.raw_topics.items() if table == r.kind), "")
                self._dead_letter(
                    batch.originals.get((topic, r.partition, r.offset)), rej.reason, None
                )
                continue
            original = batch.originals.get((doc_topic(self.prefix, r.kind), r.partition, r.offset))
            self._dead_letter(original, rej.reason, r)

    def _dead_letter(self, msg: Message | None, reason: str, record: Record | None) -> None:
        log.error(
            "event=dead_letter consumer=%s topic=%s partition=%s offset=%s reason=%s",
            self.sink.name,
            None if msg is None else msg.topic(),
            None if msg is None else msg.partition(),
            None if msg is None else msg.offset(),
            reason,
        )
        headers: list[tuple[str, str | bytes | None]] = [
            ("error", reason.encode()),
            ("consumer", self.sink.name.encode()),
        ]
        if msg is not None:
            headers += [
                ("original.topic", (msg.topic() or "").encode()),
                ("original.partition", str(msg.partition()).encode()),
                ("original.offset", str(msg.offset()).encode()),
            ]
            original = msg.headers() or []
            headers += list(original.items() if isinstance(original, dict) else original)
        key = None if msg is None else msg.key()
        value = None if msg is None else msg.value()
        if msg is None and record is not None:  # a late dead letter: rebuild the message
            key = doc_key(record.id)
            headers += [
                ("original.topic", doc_topic(self.prefix, record.kind).encode()),
                ("original.partition", str(record.partition).encode()),
                ("original.offset", str(record.offset).encode()),
                *headers_of(record.kind, record.version, record.source_ts_ms),
            ]
            if record.doc is not None:
                value = self.codec.encode(record.doc)
        if value is None and record is not None:
            value = json.dumps({"kind": record.kind, "id": record.id, "delete": True}).encode()
        self.producer.produce(
            self.dlq_topic, key=key, value=value, headers=headers, on_delivery=self._delivered
        )

    def _delivered(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self._delivery_errors.append(str(err))

    def _flush_producer(self) -> None:
        while self.producer.flush(5.0) > 0:
            log.warning("event=dlq_flush_waiting consumer=%s", self.sink.name)
        if self._delivery_errors:
            raise SinkError(
                f"Kafka refused dead letters ({self._delivery_errors[0]}); "
                "the batch is not committed"
            )

    def close(self) -> None:
        """Deliver what is queued for the dead-letter topic (up to 30 s)."""
        self.producer.flush(30)
