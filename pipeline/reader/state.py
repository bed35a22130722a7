"""The reader's own durable state, kept in Kafka (compacted topic ``{prefix}._reader``).

One record per database and slot, holding whether the initial snapshot finished:
``{"snapshot_done": false}`` is written (and acknowledged) before a new slot's
snapshot produces its first event, ``{"snapshot_done": true, ...}`` once every
snapshot event is acknowledged.  The slot's confirmed position is the only resume
point for streaming; this record says whether a slot that exists may be trusted (its
snapshot completed) or must be dropped and the snapshot redone, and it tells a new
assembler when a snapshot it is catching up with has ended (it emits each document
once, after the whole snapshot, not once per table the snapshot reaches).
"""

from __future__ import annotations

import json
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from pipeline.kafka import TopicSpec, consumer_config, ensure_topics, producer_config
from pipeline.reader.errors import ReaderError
from pipeline.topics import reader_topic


class ReaderStateStore:
    """Read and write the reader's state records (JSON values, key = ``db/slot``)."""

    def __init__(self, bootstrap: str, topic_prefix: str, replication_factor: int = 1) -> None:
        self.bootstrap = bootstrap
        self.topic = reader_topic(topic_prefix)
        ensure_topics(
            bootstrap,
            [TopicSpec(self.topic, 1, {"cleanup.policy": "compact"})],
        )
        self._replication_factor = replication_factor

    def load(self, key: str) -> dict[str, Any] | None:
        """The newest record for ``key``, reading the topic to its end."""
        return self.load_all().get(key)

    def load_all(self) -> dict[str, dict[str, Any]]:
        """The newest record of every key (a deleted one left out), read to the end."""
        consumer = Consumer(consumer_config(self.bootstrap, "catalog-cdc-reader-state"))
        try:
            tp = TopicPartition(self.topic, 0)
            low, high = consumer.get_watermark_offsets(tp, timeout=15)
            found: dict[str, dict[str, Any]] = {}
            if high <= low:
                return found
            consumer.assign([TopicPartition(self.topic, 0, low)])
            position = low
            while position < high:
                msg = consumer.poll(5.0)
                if msg is None:
                    raise ReaderError(f"timed out reading reader state from {self.topic}")
                if msg.error():
                    raise ReaderError(f"cannot read {self.topic}: {msg.error()}")
                position = (msg.offset() or 0) + 1
                key, value = (msg.key() or b"").decode(), msg.value()
                if value is None:
                    found.pop(key, None)
                    continue
                try:
                    found[key] = json.loads(value)
                except ValueError as exc:
                    raise ReaderError(
                        f"the record {key!r} at offset {msg.offset()} of {self.topic} is not "
                        f"JSON ({exc}): delete it (a null value for that key) or fix its writer"
                    ) from exc
            return found
        finally:
            consumer.close()

    def save(self, key: str, value: dict[str, Any]) -> None:
        """Write a record and wait until Kafka acknowledged it."""
        producer = Producer(producer_config(self.bootstrap, **{"message.timeout.ms": 60000}))
        errors: list[str] = []

        def on_delivery(err: Any, _msg: Any) -> None:
            if err is not None:
                errors.append(str(err))

        producer.produce(self.topic, key=key.encode(), value=json.dumps(value).encode(),
                         on_delivery=on_delivery)  # fmt: skip
        remaining = producer.flush(60)
        if remaining or errors:
            raise ReaderError(f"could not save reader state to {self.topic}: {errors or 'timeout'}")
