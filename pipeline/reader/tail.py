"""`catalog-cdc tail`: decode a change-event topic and print it as JSON lines."""

from __future__ import annotations

import json
import sys
import time
import uuid
from typing import TextIO

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, TopicPartition

from pipeline.codec import make_codec
from pipeline.errors import CatalogCdcError
from pipeline.jsonify import event_to_json, jsonable
from pipeline.kafka import consumer_config


class TailError(CatalogCdcError):
    """The topic cannot be read."""


def tail(
    *,
    bootstrap: str,
    topic: str,
    topic_prefix: str,
    schema_registry_url: str | None = None,
    from_beginning: bool = False,
    max_messages: int | None = None,
    idle_timeout: float | None = None,
    out: TextIO = sys.stdout,
) -> int:
    """Print decoded messages of ``topic``; return how many were printed.

    Reads every partition without a consumer group (nothing is committed). Stops after
    ``max_messages``, or after ``idle_timeout`` seconds without a message.
    """
    codec = make_codec(
        topic_prefix=topic_prefix,
        schema_registry_url=schema_registry_url,
        kafka_bootstrap=bootstrap,
    )
    consumer = Consumer(consumer_config(bootstrap, f"catalog-cdc-tail-{uuid.uuid4().hex[:8]}"))
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            raise TailError(f"topic {topic!r} does not exist (is the reader running?)")
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        consumer.assign([TopicPartition(topic, p, start) for p in sorted(meta.partitions)])
        printed = 0
        last = time.monotonic()
        while max_messages is None or printed < max_messages:
            msg = consumer.poll(0.5)
            if msg is None:
                if idle_timeout is not None and time.monotonic() - last > idle_timeout:
                    break
                continue
            if msg.error():
                raise TailError(f"reading {topic}: {msg.error()}")
            last = time.monotonic()
            key, value = msg.key(), msg.value()
            record: dict[str, object] = {
                "topic": msg.topic(),
                "partition": msg.partition(),
                "offset": msg.offset(),
            }
            if value is None:
                record["key"] = jsonable(codec.decode_key(key)) if key else None
                record["tombstone"] = True
            else:
                event = codec.decode(key or None, value)
                assert event is not None
                record["key"] = jsonable(event.key) if key else None
                record.update(event_to_json(event))
            out.write(json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n")
            out.flush()
            printed += 1
        return printed
    finally:
        consumer.close()
