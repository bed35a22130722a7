"""The same checks against real images (apache/kafka, elasticsearch, postgres).

Marked ``containers``: needs a Docker engine, and skips with the reason when none
answers. The local-stack tests cover the same behaviour without Docker.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

pytestmark = pytest.mark.containers


def _docker_or_skip() -> None:
    """Skip unless a Docker engine answers /_ping (probed with a plain socket)."""
    import os
    import socket

    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    reason = f"no Docker engine at {host}; containers tests skipped (the stack tests cover this)"
    if not host.startswith("unix://"):
        return  # a remote engine: let testcontainers report on it
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(3)
            sock.connect(host.removeprefix("unix://"))
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            if b" 200 " not in sock.recv(256):
                pytest.skip(reason)
    except OSError:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def kafka_container() -> Iterator[str]:
    _docker_or_skip()
    from testcontainers.kafka import KafkaContainer

    with KafkaContainer("apache/kafka:3.8.0").with_kraft() as kafka:
        yield kafka.get_bootstrap_server()


def test_postgres_image_logical_slot() -> None:
    _docker_or_skip()
    import psycopg
    from testcontainers.postgres import PostgresContainer

    pg = PostgresContainer("postgres:16", driver=None).with_command(
        "postgres -c wal_level=logical -c max_replication_slots=10 -c max_wal_senders=10"
    )
    with pg, psycopg.connect(pg.get_connection_url(), autocommit=True) as conn:
        assert conn.execute("SHOW wal_level").fetchone() == ("logical",)
        conn.execute("CREATE TABLE t (id int primary key)")
        conn.execute("SELECT pg_create_logical_replication_slot('s', 'pgoutput')")
        conn.execute("INSERT INTO t VALUES (1)")
        n = conn.execute(
            "SELECT count(*) FROM pg_logical_slot_peek_binary_changes('s', NULL, NULL, "
            "'proto_version', '1', 'publication_names', 'none')"
        ).fetchone()
        assert n is not None


def test_kafka_image_roundtrip(kafka_container: str) -> None:
    from confluent_kafka import Consumer, Producer

    topic = f"rt-{uuid.uuid4().hex[:8]}"
    producer = Producer({"bootstrap.servers": kafka_container, "enable.idempotence": True})
    for i in range(10):
        producer.produce(topic, key=str(i).encode(), value=b"x")
    assert producer.flush(30) == 0
    consumer = Consumer(
        {"bootstrap.servers": kafka_container, "group.id": "g", "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic])
    got = 0
    deadline = time.monotonic() + 60
    while got < 10 and time.monotonic() < deadline:
        msg = consumer.poll(1)
        if msg is not None and not msg.error():
            got += 1
    consumer.close()
    assert got == 10


def test_elasticsearch_image_info() -> None:
    _docker_or_skip()
    from elasticsearch import Elasticsearch
    from testcontainers.elasticsearch import ElasticSearchContainer

    image = "docker.elastic.co/elasticsearch/elasticsearch:8.15.3"
    with ElasticSearchContainer(image) as es_c, Elasticsearch(es_c.get_url()) as es:
        assert es.info()["version"]["number"].startswith("8.")
