"""The Confluent Schema Registry path.

Against a stand-in registry (this module's HTTP server, implementing the REST calls
confluent-kafka's ``SchemaRegistryClient`` makes) that records every request, and - when
a Docker engine answers - against ``confluentinc/cp-schema-registry`` + ``apache/kafka``.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from pipeline.codec import RegistryError, SchemaNotFoundError, make_codec, value_schema
from pipeline.codec.avro_schema import canonical_json, key_schema
from pipeline.codec.registry import ConfluentRegistryCodec
from pipeline.events import UNCHANGED_TOAST, ChangeEvent, Column, Source, TableSchema

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
PREFIX = "catalog"
TOPIC = "catalog.public.products"
V1 = TableSchema(
    1,
    "public",
    "products",
    (Column("id", 23, is_key=True), Column("name", 25), Column("attrs", 3802)),
)
V2 = TableSchema(
    1,
    "public",
    "products",
    (
        Column("id", 20, is_key=True),
        Column("name", 25),
        Column("attrs", 3802),
        Column("price", 1700, (10 << 16 | 2) + 4),
    ),
)
SOURCE = Source("catalog", "public", "products", 99, 5, 1234)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


@dataclass
class FakeRegistry:
    """State of the stand-in: schemas by id, versions by subject, requests seen."""

    schemas: list[str] = field(default_factory=list)  # id - 1 -> schema text
    subjects: dict[str, list[int]] = field(default_factory=dict)  # subject -> ids by version
    requests: list[Request] = field(default_factory=list)
    compatibility: str = "BACKWARD"
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, req: Request) -> tuple[int, Any]:
        parts = [urllib.parse.unquote(p) for p in req.path.strip("/").split("/")]
        with self.lock:
            self.requests.append(req)
            match req.method, parts:
                case "POST", ["subjects", subject, "versions"]:
                    text = req.body["schema"]
                    json.loads(text)  # a real registry rejects invalid JSON (422)
                    if text not in self.schemas:
                        self.schemas.append(text)
                    schema_id = self.schemas.index(text) + 1
                    versions = self.subjects.setdefault(subject, [])
                    if schema_id not in versions:
                        versions.append(schema_id)
                    return 200, {"id": schema_id}
                case "POST", ["subjects", subject]:
                    text = req.body["schema"]
                    ids = self.subjects.get(subject, [])
                    for version, schema_id in enumerate(ids, 1):
                        if self.schemas[schema_id - 1] == text:
                            return 200, self._version(subject, version)
                    return 404, {"error_code": 40403, "message": "Schema not found"}
                case "GET", ["schemas", "ids", schema_id]:
                    if not 0 < int(schema_id) <= len(self.schemas):
                        return 404, {"error_code": 40403, "message": "Schema not found"}
                    return 200, {"schema": self.schemas[int(schema_id) - 1]}
                case "GET", ["subjects", subject, "versions", version]:
                    known = self.subjects.get(subject)
                    if not known:
                        return 404, {"error_code": 40401, "message": "Subject not found"}
                    number = len(known) if version == "latest" else int(version)
                    return 200, self._version(subject, number)
                case "GET", ["subjects"]:
                    return 200, sorted(self.subjects)
                case "GET", ["config", *_]:
                    return 200, {"compatibilityLevel": self.compatibility}
                case "PUT", ["config", *_]:
                    self.compatibility = req.body["compatibility"]
                    return 200, {"compatibility": self.compatibility}
        return 404, {"error_code": 404, "message": f"not implemented: {req.method} {req.path}"}

    def _version(self, subject: str, version: int) -> dict[str, Any]:
        schema_id = self.subjects[subject][version - 1]
        return {
            "subject": subject,
            "version": version,
            "id": schema_id,
            "schema": self.schemas[schema_id - 1],
        }


@pytest.fixture
def registry() -> Iterator[tuple[str, FakeRegistry]]:
    state = FakeRegistry()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            req = Request(
                self.command,
                url.path,
                urllib.parse.parse_qs(url.query),
                {k.lower(): v for k, v in self.headers.items()},
                json.loads(raw) if raw else None,
            )
            status, payload = state.handle(req)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _event() -> ChangeEvent:
    return ChangeEvent(
        "u",
        SOURCE,
        1235,
        before={"id": 1, "name": "old", "attrs": UNCHANGED_TOAST},
        after={"id": 1, "name": "new", "attrs": {"color": ["red", 1.5]}},
        key={"id": 1},
    )


def test_wire_format_and_what_the_client_sent(registry: tuple[str, FakeRegistry]) -> None:
    url, state = registry
    codec = make_codec(topic_prefix=PREFIX, schema_registry_url=url)
    assert isinstance(codec, ConfluentRegistryCodec)
    event = _event()
    assert event.key is not None
    key = codec.encode_key(TOPIC, V1, event.key)
    value = codec.encode_value(TOPIC, V1, event)

    posts = [r for r in state.requests if r.method == "POST"]
    assert [r.path for r in posts] == [
        f"/subjects/{TOPIC}-key/versions",
        f"/subjects/{TOPIC}-value/versions",
    ]
    for req, schema in zip(posts, (key_schema(V1, PREFIX), value_schema(V1, PREFIX)), strict=True):
        assert req.headers["content-type"] == CONTENT_TYPE
        assert req.body["schemaType"] == "AVRO"
        assert json.loads(req.body["schema"]) == schema
        assert req.body["schema"] == canonical_json(schema)
    key_id, value_id = 1, 2
    assert key[0] == 0 and int.from_bytes(key[1:5], "big") == key_id
    assert value[0] == 0 and int.from_bytes(value[1:5], "big") == value_id

    # a second event of the same table registers nothing more
    codec.encode_value(TOPIC, V1, event)
    assert len([r for r in state.requests if r.method == "POST"]) == 2

    # a fresh client fetches the writer schemas by id and decodes exactly
    reader = ConfluentRegistryCodec.from_url(url, PREFIX)
    decoded = reader.decode(key, value)
    assert decoded is not None
    assert decoded.after == event.after and decoded.before == event.before
    assert decoded.before is not None and decoded.before["attrs"] is UNCHANGED_TOAST
    assert decoded.key == {"id": 1} and decoded.source == SOURCE and decoded.op == "u"
    lean = reader.decode_value(value, before_of_deletes_only=True)  # an update: no before
    assert lean.before is None and lean.after == event.after and lean.source == SOURCE
    gets = [r.path for r in state.requests if r.method == "GET"]
    assert f"/schemas/ids/{value_id}" in gets and f"/schemas/ids/{key_id}" in gets
    assert reader.decode(key, None) is None  # tombstone


def test_new_version_and_schema_resolution(registry: tuple[str, FakeRegistry]) -> None:
    url, state = registry
    codec = ConfluentRegistryCodec.from_url(url, PREFIX)
    old = codec.encode_value(TOPIC, V1, _event())
    new = codec.encode_value(
        TOPIC, V2, ChangeEvent("c", SOURCE, 1, after={"id": 2**40, "price": None})
    )
    assert state.subjects[f"{TOPIC}-value"] == [1, 2]
    assert int.from_bytes(new[1:5], "big") == 2
    reader = ConfluentRegistryCodec.from_url(url, PREFIX)
    resolved = reader.decode_value(old, reader_schema=value_schema(V2, PREFIX))
    assert resolved.after == {**(_event().after or {}), "price": None}
    assert reader.writer_schema(2) == value_schema(V2, PREFIX)
    latest = reader.client.get_latest_version(f"{TOPIC}-value")
    assert latest.schema_id == 2 and latest.version == 2


def test_unknown_schema_id(registry: tuple[str, FakeRegistry]) -> None:
    url, _ = registry
    codec = ConfluentRegistryCodec.from_url(url, PREFIX)
    with pytest.raises(SchemaNotFoundError, match="schema id 77"):
        codec.decode_value(b"\x00" + (77).to_bytes(4, "big") + b"\x00")


def test_registry_refusal_is_a_registry_error(registry: tuple[str, FakeRegistry]) -> None:
    url, _ = registry
    codec = ConfluentRegistryCodec.from_url(url, PREFIX)
    with pytest.raises(RegistryError, match="subject 'x-value'"):
        codec.register("x-value", "{not json")


def test_single_object_bytes_are_refused(registry: tuple[str, FakeRegistry]) -> None:
    url, _ = registry
    codec = ConfluentRegistryCodec.from_url(url, PREFIX)
    with pytest.raises(Exception, match="single-object"):
        codec.decode_value(b"\xc3\x01" + bytes(9))


# --- real images ----------------------------------------------------------------------


def _docker_or_skip() -> None:
    """Skip (with the reason) unless a Docker engine answers ``/_ping``.

    A local engine is probed on its socket directly: docker-py leaks the socket of a
    failed connection, which this suite's ``filterwarnings = error`` turns into a failure.
    """
    import os
    import socket

    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    reason = f"no Docker engine answers at {host}; registry containers test skipped"
    if not host.startswith("unix://"):
        import docker

        try:
            client = docker.from_env(timeout=5)
            try:
                client.ping()
            finally:
                client.close()
        except (docker.errors.DockerException, OSError):
            pytest.skip(reason)
        return
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(3)
            sock.connect(host.removeprefix("unix://"))
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            answered = b" 200 " in sock.recv(256)
    except OSError:
        answered = False
    if not answered:
        pytest.skip(reason)


@pytest.mark.containers
def test_real_schema_registry() -> None:
    _docker_or_skip()
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.network import Network
    from testcontainers.core.waiting_utils import wait_for_logs
    from testcontainers.kafka import KafkaContainer

    with Network() as network:
        kafka = KafkaContainer("apache/kafka:3.8.0").with_network(network)
        kafka.with_network_aliases("kafka")
        with kafka:
            registry = (
                DockerContainer("confluentinc/cp-schema-registry:7.7.1")
                .with_network(network)
                .with_env("SCHEMA_REGISTRY_HOST_NAME", "schema-registry")
                .with_env("SCHEMA_REGISTRY_LISTENERS", "http://0.0.0.0:8081")
                .with_env("SCHEMA_REGISTRY_KAFKASTORE_BOOTSTRAP_SERVERS", "PLAINTEXT://kafka:9092")
                .with_exposed_ports(8081)
            )
            with registry:
                wait_for_logs(registry, "Server started", timeout=120)
                host = registry.get_container_host_ip()
                url = f"http://{host}:{registry.get_exposed_port(8081)}"
                codec = ConfluentRegistryCodec.from_url(url, PREFIX)
                value = codec.encode_value(TOPIC, V1, _event())
                codec.encode_value(TOPIC, V2, ChangeEvent("c", SOURCE, 1, after={"id": 1}))
                reader = ConfluentRegistryCodec.from_url(url, PREFIX)
                decoded = reader.decode_value(value, reader_schema=value_schema(V2, PREFIX))
                assert decoded.after == {**(_event().after or {}), "price": None}
