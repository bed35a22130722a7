"""`catalog-cdc stack up | down | status`: the local stack of real services.

``up`` is idempotent (a running, answering service is left alone) and returns only
when every service answers for real: a SQL query on PostgreSQL, cluster metadata
through confluent-kafka's AdminClient on each broker, ``info()`` through the
elasticsearch client.  ``down`` stops only what ``up`` started (by pid, or by the
cluster's data directory for PostgreSQL) and keeps data unless asked to wipe it.
Concurrent calls are serialized by a lock file.
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

from confluent_kafka.admin import AdminClient
from elasticsearch import Elasticsearch

from pipeline.stack.brokers import NoidaService, TansuService
from pipeline.stack.postgres import PostgresService
from pipeline.stack.redis_server import RedisService, redis_ping
from pipeline.stack.state import ServiceState, StackState, read_state, write_state

log = logging.getLogger(__name__)
_QUIET = logging.getLogger("pipeline.stack.probe.librdkafka")
_QUIET.setLevel(logging.CRITICAL)

SERVICES = ("postgres", "noida", "tansu", "redis")


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
    """The server's reported version (raises when unreachable)."""
    with Elasticsearch(url, request_timeout=timeout, max_retries=0) as es:
        return str(es.info()["version"]["number"])


class Stack:
    """The local stack rooted at ``stack_dir``."""

    def __init__(self, stack_dir: Path, progress: Callable[[str], None] | None = None) -> None:
        self.stack_dir = stack_dir
        self.progress = progress or (lambda msg: log.info("event=stack msg=%r", msg))
        self.postgres = PostgresService(stack_dir)
        self.noida = NoidaService(stack_dir)
        self.tansu = TansuService(stack_dir)
        self.redis = RedisService(stack_dir)

    def _services(self) -> list[Service]:
        return [self.postgres, self.noida, self.tansu, self.redis]

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
            for svc in self._services():
                st = state.service(svc.name)
                if svc.is_running(st):
                    self.progress(f"{svc.name}: already running (pid {st.pid})")
                    continue
                self.progress(f"{svc.name}: starting")
                started = time.monotonic()
                svc.start(st)
                write_state(self.stack_dir, state)
                self._wait_ready(svc.name, st, timeout)
                self.progress(f"{svc.name}: ready in {time.monotonic() - started:.1f}s")
            for svc in self._services():  # already-running ones must answer too
                self._wait_ready(svc.name, state.service(svc.name), timeout)
            return state

    def _wait_ready(self, name: str, st: ServiceState, timeout: float) -> None:
        endpoints = StackState(services={name: st}).endpoints()
        if name == "postgres":
            self.postgres.wait_ready(st, timeout)
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
            for svc in reversed(self._services()):
                st = state.service(svc.name)
                if svc.is_running(st):
                    self.progress(f"{svc.name}: stopping")
                    svc.stop(st)
                st.pid = None
                if wipe:
                    svc.wipe(st)
                    state.services.pop(svc.name, None)
        if wipe:
            shutil.rmtree(self.stack_dir, ignore_errors=True)

    def status(self) -> dict[str, Any]:
        """Endpoints and live health of every service (one JSON-able object)."""
        state = read_state(self.stack_dir) or StackState()
        endpoints = state.endpoints()
        out: dict[str, Any] = {"stack_dir": str(self.stack_dir)}
        for field in (
            "postgres_dsn",
            "kafka_bootstrap",
            "kafka_bootstrap_alt",
            "elasticsearch_url",
            "redis_url",
        ):
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

        def brokers(bootstrap: str) -> dict[str, int]:
            return {"kafka_brokers": kafka_metadata(bootstrap, 2.0)}

        def es_version(url: str) -> dict[str, str]:
            return {"elasticsearch_version": elasticsearch_info(url, 2.0)}

        checks: list[tuple[str, str, Callable[[str], object]]] = [
            ("postgres", "postgres_dsn", PostgresService.probe),
            ("noida", "kafka_bootstrap", brokers),
            ("noida", "elasticsearch_url", es_version),
            ("tansu", "kafka_bootstrap_alt", brokers),
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
        out["services"] = services
        out["healthy"] = all(s["running"] and s.get("answers") for s in services.values())
        return out
