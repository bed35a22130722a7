"""KafkaSchemaStore against the stack's broker: durable, idempotent, shared, evolvable."""

from __future__ import annotations

import json
import uuid

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import ConfigResource

from pipeline.codec import KafkaSchemaStore, SchemaNotFoundError, SingleObjectCodec, value_schema
from pipeline.codec.fingerprint import fingerprint
from pipeline.codec.single_object import split_header
from pipeline.events import UNCHANGED_TOAST, ChangeEvent, Column, Source, TableSchema

pytestmark = pytest.mark.integration

V1 = TableSchema(1, "public", "products", (Column("id", 23, is_key=True), Column("name", 25)))
V2 = TableSchema(
    1,
    "public",
    "products",
    (Column("id", 20, is_key=True), Column("name", 25), Column("price", 1700)),
)


def _records(bootstrap: str, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-{uuid.uuid4().hex}"})
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        consumer.assign([TopicPartition(topic, 0, low)])
        out: list[tuple[bytes | None, bytes | None]] = []
        while len(out) < high - low:
            msg = consumer.poll(10)
            assert msg is not None, f"timed out reading {topic}"
            if msg.error() is None:
                out.append((msg.key(), msg.value()))
        return out
    finally:
        consumer.close()


def test_register_twice_writes_one_record(kafka_bootstrap: str, topic_prefix: str) -> None:
    schema = value_schema(V1, topic_prefix)
    with KafkaSchemaStore(kafka_bootstrap, topic_prefix) as store:
        fp = store.register(schema)
        assert store.register(schema) == fp
    with KafkaSchemaStore(kafka_bootstrap, topic_prefix) as other:
        assert other.register(schema) == fp  # known from the topic: no second record
    records = _records(kafka_bootstrap, f"{topic_prefix}._schemas")
    assert len(records) == 1
    key, value = records[0]
    assert key == fp.hex().encode() and fp == fingerprint(schema)
    assert value is not None and json.loads(value) == schema  # the full schema, not the PCF


def test_topic_is_compacted(kafka_bootstrap: str, topic_prefix: str) -> None:
    with KafkaSchemaStore(kafka_bootstrap, topic_prefix) as store:
        store.register(value_schema(V1, topic_prefix))
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    topic = f"{topic_prefix}._schemas"
    metadata = admin.list_topics(topic, timeout=10).topics[topic]
    assert len(metadata.partitions) == 1
    resource = ConfigResource("topic", topic)
    config = admin.describe_configs([resource])[resource].result(timeout=10)
    assert config["cleanup.policy"].value == "compact"


def test_fresh_instance_finds_schema_of_another(kafka_bootstrap: str, topic_prefix: str) -> None:
    event = ChangeEvent(
        "u",
        Source("catalog", "public", "products", 42, 7, 1000),
        1001,
        before={"id": 1, "name": UNCHANGED_TOAST},
        after={"id": 1, "name": "Widget"},
    )
    with KafkaSchemaStore(kafka_bootstrap, topic_prefix) as writer_store:
        writer = SingleObjectCodec(writer_store, topic_prefix)
        data = writer.encode_value(f"{topic_prefix}.public.products", V1, event)
        key = writer.encode_key(f"{topic_prefix}.public.products", V1, {"id": 1})
    with KafkaSchemaStore(kafka_bootstrap, topic_prefix) as reader_store:
        decoded = SingleObjectCodec(reader_store, topic_prefix).decode(key, data)
    assert decoded is not None
    assert decoded.after == {"id": 1, "name": "Widget"}
    assert decoded.before == {"id": 1, "name": UNCHANGED_TOAST}
    assert decoded.key == {"id": 1}


def test_unknown_fingerprint_is_a_clear_error(kafka_bootstrap: str, topic_prefix: str) -> None:
    with KafkaSchemaStore(kafka_bootstrap, topic_prefix) as store:
        store.register(value_schema(V1, topic_prefix))
        with pytest.raises(SchemaNotFoundError) as info:
            store.lookup(bytes.fromhex("00112233445566ff"))
    assert "00112233445566ff" in str(info.value)
    assert f"{topic_prefix}._schemas" in str(info.value)


def test_new_version_after_added_column(kafka_bootstrap: str, topic_prefix: str) -> None:
    topic = f"{topic_prefix}.public.products"
    source = Source("catalog", "public", "products", 1, None, 1)
    with KafkaSchemaStore(kafka_bootstrap, topic_prefix) as store:
        codec = SingleObjectCodec(store, topic_prefix)
        old = codec.encode_value(
            topic, V1, ChangeEvent("c", source, 1, after={"id": 1, "name": "a"})
        )
        new = codec.encode_value(
            topic, V2, ChangeEvent("c", source, 2, after={"id": 2**40, "name": "b", "price": None})
        )
    v1_fp, v2_fp = split_header(old)[0], split_header(new)[0]
    assert v1_fp != v2_fp
    with KafkaSchemaStore(kafka_bootstrap, topic_prefix) as fresh:
        assert fresh.lookup(v1_fp) == value_schema(V1, topic_prefix)
        assert fresh.lookup(v2_fp) == value_schema(V2, topic_prefix)
        codec = SingleObjectCodec(fresh, topic_prefix)
        assert codec.decode_value(old).after == {"id": 1, "name": "a"}
        resolved = codec.decode_value(old, reader_schema=value_schema(V2, topic_prefix))
        assert resolved.after == {"id": 1, "name": "a", "price": None}
        assert codec.decode_value(new).after == {"id": 2**40, "name": "b", "price": None}
    assert len(_records(kafka_bootstrap, f"{topic_prefix}._schemas")) == 4  # 2 keys + 2 values
