"""`catalog-cdc stack up | down | status`: the local stack of real services.

What runs (docs/local-services.md): PostgreSQL 15 (Debian's), **Apache Kafka 4.4** (one
KRaft node, or three with ``kafka_nodes=3``) and **OpenSearch 2.19** (one node), both
from Maven Central; beside them the stand-ins: noida-db (a Kafka-protocol broker and an
Elasticsearch API, still the default endpoints of the tests, the demo and the
benchmarks), Tansu (a second, independent Kafka implementation for the broker matrix)
and Redis (an edge-KV backend).

``up`` is idempotent (a running, answering service is left alone) and returns only
when every service answers for real: a SQL query on PostgreSQL, cluster metadata
through confluent-kafka's AdminClient on each broker, the search servers' ``GET /``.
``down`` stops only what ``up`` started (by pid, or by the cluster's data directory for
PostgreSQL) and keeps data unless asked to wipe it.  Concurrent calls are serialized
by a lock file.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import httpx
from confluent_kafka.admin import AdminClient

from pipeline.stack.brokers import NoidaService, TansuService
from pipeline.stack.kafka import KafkaCluster
from pipeline.stack.opensearch import OpenSearchService, opensearch_info
from pipeline.stack.postgres import PostgresService
from pipeline.stack.redis_server import RedisService, redis_ping
from pipeline.stack.state import ServiceState, StackState, read_state, write_state

log = logging.getLogger(__name__)
_QUIET = logging.getLogger("pipeline.stack.probe.librdkafka")
_QUIET.setLevel(logging.CRITICAL)

SERVICES = ("postgres", "kafka", "opensearch", "noida", "tansu", "redis")


class Service(Protocol):
    name: str

    def is_running(self, state: ServiceState) -> bool: ...
    def start(self, state: ServiceState) -> None: ...
    def stop(self, state: ServiceState) -> None: ...
    def wipe(self, state: ServiceState) -> None: ...


def _tcp_accepts(address: str, timeout: float) -> None:
    host, _, port = address.split(",")[0].rpartition(":")
    with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
        pass


def kafka_metadata(bootstrap: str, timeout: float = 3.0) -> int:
    """Number of brokers in the cluster's metadata (raises when unreachable)."""
    _tcp_accepts(bootstrap, timeout)  # keeps librdkafka from logging refused connects
    config: dict[str, object] = {
        "bootstrap.servers": bootstrap,
        "socket.timeout.ms": int(timeout * 1000),
        "logger": _QUIET,
    }
    admin = AdminClient(config)  # type: ignore[arg-type]  # "logger" takes a Logger
    meta = admin.list_topics(timeout=timeout)
    return len(meta.brokers)


def elasticsearch_info(url: str, timeout: float = 3.0) -> str:
    """The version an Elasticsearch-API server reports at ``GET /`` (raises when it does
    not answer)."""
    _tcp_accepts(url.split("//", 1)[-1].split("/", 1)[0], timeout)
    answer = httpx.get(url, timeout=timeout)
    answer.raise_for_status()
    return str(answer.json()["version"]["number"])


class Stack:
    """The local stack rooted at ``stack_dir``.  ``kafka_nodes``: 1 or 3 Kafka nodes
    (``None``: as many as run now, else 1)."""

    def __init__(
        self,
        stack_dir: Path,
        progress: Callable[[str], None] | None = None,
        kafka_nodes: int | None = None,
    ) -> None:
        self.stack_dir = stack_dir
        self.progress = progress or (lambda msg: log.info("event=stack msg=%r", msg))
        self.postgres = PostgresService(stack_dir)
        self.opensearch = OpenSearchService(stack_dir, progress=self.progress)
        self.noida = NoidaService(stack_dir)
        self.tansu = TansuService(stack_dir)
        self.redis = RedisService(stack_dir)
        self.kafka_nodes = kafka_nodes

    def kafka(self, state: StackState) -> KafkaCluster:
        """The Kafka cluster: the shape asked for, else the one that runs, else 1 node."""
        nodes = self.kafka_nodes
        if nodes is None:
            three = KafkaCluster(self.stack_dir, 3, self.progress)
            running = any(m.is_running(state.service(m.name)) for m in three.members)
            nodes = 3 if running else 1
        return KafkaCluster(self.stack_dir, nodes, self.progress)

    def _services(self) -> list[Service]:
        """The services started one by one (Kafka's nodes start together: :meth:`up`)."""
        return [self.postgres, self.opensearch, self.noida, self.tansu, self.redis]

    @contextlib.contextmanager
    def _locked(self) -> Iterator[StackState]:
        self.stack_dir.mkdir(parents=True, exist_ok=True)
        gitignore = self.stack_dir / ".gitignore"
        if not gitignore.exists():
            gitignore.write_text("*\n")
        with open(self.stack_dir / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = read_state(self.stack_dir) or StackState()
            try:
                yield state
            finally:
                write_state(self.stack_dir, state)

    def up(self, timeout: float = 90.0) -> StackState:
        """Start whatever is not running and wait until every service answers."""
        with self._locked() as state:
            services = self._services()
            for i, svc in enumerate(services):
                self._up_one(svc, state, timeout)
                if i == 0:  # after PostgreSQL: Kafka's nodes, together
                    self._up_kafka(state, timeout)
            for svc in services:  # already-running ones must answer too
                self._wait_ready(svc.name, state.service(svc.name), timeout)
            return state

    def _up_one(self, svc: Service, state: StackState, timeout: float) -> None:
        st = state.service(svc.name)
        if svc.is_running(st):
            self.progress(f"{svc.name}: already running (pid {st.pid})")
            return
        self.progress(f"{svc.name}: starting")
        started = time.monotonic()
        svc.start(st)
        write_state(self.stack_dir, state)
        self._wait_ready(svc.name, st, timeout)
        self.progress(f"{svc.name}: ready in {time.monotonic() - started:.1f}s")

    def _up_kafka(self, state: StackState, timeout: float) -> None:
        kafka = self.kafka(state)
        started = time.monotonic()
        running = all(m.is_running(state.service(m.name)) for m in kafka.members)
        if not running:
            self.progress(f"kafka: starting {kafka.nodes} node(s) of Apache Kafka")
        try:
            kafka.up(state, max(timeout, 120.0))
        finally:
            write_state(self.stack_dir, state)
        if not running:
            self.progress(f"kafka: ready in {time.monotonic() - started:.1f}s")

    def _wait_ready(self, name: str, st: ServiceState, timeout: float) -> None:
        endpoints = StackState(services={name: st}).endpoints()
        if name == "postgres":
            self.postgres.wait_ready(st, timeout)
        elif name == "opensearch":
            self.opensearch.wait_ready(st, max(timeout, 180.0))
        elif name == "noida":
            self.noida.wait_until(
                st, lambda: kafka_metadata(endpoints["kafka_bootstrap"]), "Kafka API", timeout
            )
            self.noida.wait_until(
                st, lambda: elasticsearch_info(endpoints["elasticsearch_url"]), "ES API", timeout
            )
        elif name == "tansu":
            self.tansu.wait_until(
                st, lambda: kafka_metadata(endpoints["kafka_bootstrap_alt"]), "Kafka API", timeout
            )
        elif name == "redis":
            self.redis.wait_until(st, lambda: redis_ping(endpoints["redis_url"]), "PING", timeout)

    def down(self, wipe: bool = False) -> None:
        """Stop what the stack started; with ``wipe``, delete its data as well."""
        with self._locked() as state:
            services = self._services()
            for i, svc in reversed(list(enumerate(services))):
                st = state.service(svc.name)
                if svc.is_running(st):
                    self.progress(f"{svc.name}: stopping")
                    svc.stop(st)
                st.pid = None
                if wipe:
                    svc.wipe(st)
                    state.services.pop(svc.name, None)
                if i == 1:  # Kafka stops before OpenSearch and PostgreSQL, as it started
                    for nodes in (1, 3):
                        KafkaCluster(self.stack_dir, nodes, self.progress).down(state, wipe)
        if wipe:
            shutil.rmtree(self.stack_dir, ignore_errors=True)

    def status(self) -> dict[str, Any]:
        """Endpoints, engines and versions, and live health of every service (one
        JSON-able object)."""
        state = read_state(self.stack_dir) or StackState()
        endpoints = state.endpoints()
        out: dict[str, Any] = {"stack_dir": str(self.stack_dir)}
        for field in ENDPOINTS:
            out[field] = endpoints.get(field)
        services: dict[str, Any] = {}
        for svc in self._services():
            st = state.services.get(svc.name, ServiceState())
            services[svc.name] = {
                "running": svc.is_running(st),
                "pid": st.pid,
                "ports": st.ports,
                "data_dir": st.data_dir,
                "log_file": st.log_file,
            }

        def brokers(bootstrap: str) -> dict[str, Any]:
            return {"kafka_brokers": kafka_metadata(bootstrap, 2.0)}

        def stand_in(url: str) -> dict[str, str]:
            version = elasticsearch_info(url, 2.0)
            return {"engine": "noida-db (Kafka-protocol and Elasticsearch-API stand-in)",
                    "elasticsearch_version": version}  # fmt: skip

        def tansu(bootstrap: str) -> dict[str, Any]:
            return {"engine": "Tansu (Kafka-protocol stand-in)", **brokers(bootstrap)}

        def postgres(dsn: str) -> object:
            facts = PostgresService.probe(dsn)
            return {"engine": "PostgreSQL", **facts} if isinstance(facts, dict) else facts

        def search(url: str) -> dict[str, str]:
            facts = opensearch_info(url, 2.0)
            return {**facts, "engine": "OpenSearch", "version": facts["opensearch_version"]}

        checks: list[tuple[str, str, Callable[[str], object]]] = [
            ("postgres", "postgres_dsn", postgres),
            ("opensearch", "opensearch_url", search),
            ("noida", "kafka_bootstrap", brokers),
            ("noida", "elasticsearch_url", stand_in),
            ("tansu", "kafka_bootstrap_alt", tansu),
            ("redis", "redis_url", redis_ping),
        ]
        for name, field, check in checks:
            entry = services[name]
            target = endpoints.get(field)
            if not entry["running"] or not target:
                entry.setdefault("answers", False)
                continue
            try:
                facts = check(target)
                entry.setdefault("answers", True)
                if isinstance(facts, dict):
                    entry.update(facts)
            except Exception as exc:  # noqa: BLE001 - status reports, never raises
                entry["answers"] = False
                entry["error"] = str(exc)
        kafka = {name: node for name, node in self.kafka(state).status(state).items()}
        ordered = {"postgres": services.pop("postgres"), **kafka, **services}
        out["services"] = ordered
        out["healthy"] = all(s["running"] and s.get("answers") for s in ordered.values())
        return out


ENDPOINTS = (
    "postgres_dsn",
    "kafka_bootstrap",
    "kafka_bootstrap_alt",
    "kafka_bootstrap_apache",
    "elasticsearch_url",
    "opensearch_url",
    "redis_url",
)
"""The endpoint fields of ``status()`` (``stack status --json``)."""
