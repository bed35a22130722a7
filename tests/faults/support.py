"""Scaffolding of the fault-injection suite: private services, restartable pipeline
processes, a supervisor-like watchdog, and the checks that every sink equals the database.

Nothing here touches the shared stack: the scenarios that stop, restart or freeze a
service start their own (:class:`PrivatePostgres`, :class:`NoidaProcess`), so other
tests running on the shared stack at the same time are not disturbed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka.admin import AdminClient
from elasticsearch import Elasticsearch

from consumers.registry import SinkContext
from consumers.webhooks import events
from pipeline.codec.jsontext import json_dumps as _json_dumps
from pipeline.documents.reference import expected_documents
from pipeline.settings import ConnectionSettings
from pipeline.stack.postgres import PostgresService, find_bindir
from pipeline.stack.process import free_port
from pipeline.stack.state import ServiceState
from pipeline.verify.driver import run as run_verify
from pipeline.verify.driver import verifier_for
from tests.contracts.webhooks import Server as WebhooksServer
from tests.integration.reader_support import CLI

log = logging.getLogger(__name__)


def noida_exe() -> str:
    import noida_db

    return str(Path(noida_db.__file__).parent / "noida-db")


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``predicate`` until true; return the seconds it took (AssertionError on timeout)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if predicate():
                return time.monotonic() - start
        except Exception:  # noqa: BLE001 - a service coming back up: not yet
            pass
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


# -- private services ------------------------------------------------------------------


class NoidaProcess:
    """A private noida-db serving one service (``kafka`` or ``elasticsearch``).

    The broker and the Elasticsearch API are run as two processes so that stopping
    Elasticsearch leaves the broker running (one noida-db serves both on the stack).
    Data lives in ``data_dir`` and survives restarts.
    """

    def __init__(self, service: str, data_dir: Path) -> None:
        assert service in ("kafka", "elasticsearch")
        self.service = service
        self.data_dir = data_dir
        self.port = free_port()
        self.log_path = data_dir.parent / f"noida-{service}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        if self.service == "kafka":
            return f"127.0.0.1:{self.port}"
        return f"http://127.0.0.1:{self.port}"

    def answers(self) -> bool:
        if self.service == "kafka":
            admin = AdminClient({"bootstrap.servers": self.address})
            return bool(admin.list_topics(timeout=3).brokers)
        return bool(Elasticsearch(self.address, request_timeout=3).info())

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        argv = [noida_exe(), "start", "--only", self.service, "--host", "127.0.0.1",
                f"--{self.service}-port", str(self.port), "--data-dir", str(self.data_dir)]  # fmt: skip
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as fh:
            self.proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT)
        wait_until(self.answers, 60, f"the private {self.service} on {self.address}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGCONT)  # in case it is frozen
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def freeze(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


class PrivatePostgres:
    """A private PostgreSQL cluster (``wal_level=logical``, a free port), started with the
    stack's own :class:`~pipeline.stack.postgres.PostgresService` (initdb as the
    ``postgres`` user when root).  ``restart()`` is a fast shutdown and a start on the
    same port: every connection, walsenders included, is cut."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.service = PostgresService(directory)
        self.state = ServiceState()

    @property
    def admin_dsn(self) -> str:
        return self.service.admin_dsn(self.state.ports["postgres"])

    def dsn(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.state.ports['postgres']}/{dbname}"

    def start(self) -> None:
        self.service.start(self.state)
        self.service.wait_ready(self.state)

    def stop(self) -> None:
        self.service.stop(self.state)

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: the same data directory and port (a stop and a
        ``start()`` could move to another port while the old one lingers in TIME_WAIT)."""
        bindir = find_bindir()
        assert bindir is not None and self.state.data_dir and self.state.log_file
        self.service._run(
            [str(bindir / "pg_ctl"), "restart", "-m", "fast", "-w", "-t", "60",
             "-D", self.state.data_dir, "-l", self.state.log_file],
            "restart",
        )  # fmt: skip
        self.service.wait_ready(self.state)

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()
        self.service.wipe(self.state)
        if self.state.data_dir:  # the cluster may live in /var/tmp/catalog-cdc-<digest>/
            with contextlib.suppress(OSError):
                Path(self.state.data_dir).parent.parent.rmdir()


# -- pipeline services as processes --------------------------------------------------------


@dataclass
class Service:
    """One ``catalog-cdc`` service as a subprocess that can be killed and started again."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    kills: int = 0
    exits: list[int] = field(default_factory=list)

    def start(self) -> None:
        with open(self.log_path, "ab") as fh:
            fh.write(f"\n===== start {self.starts + 1} of {self.name} =====\n".encode())
            fh.flush()
            self.proc = subprocess.Popen(
                self.argv, env=self.env, stdout=fh, stderr=subprocess.STDOUT
            )
        self.starts += 1

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        self.kills += 1

    def terminate(self, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Pipeline:
    """Reader, assembler and consumers as processes, watched like ``catalog-cdc run``'s
    supervisor does: a service that exits (a crash, a lost connection) is started again
    after ``restart_delay``.  A ``kill9`` is a crash too: the watchdog restarts it."""

    def __init__(self, restart_delay: float = 1.0) -> None:
        self.services: dict[str, Service] = {}
        self.restart_delay = restart_delay
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="watchdog", daemon=True)

    def add(self, service: Service) -> None:
        self.services[service.name] = service

    def start(self) -> None:
        for service in self.services.values():
            service.start()
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.2):
            with self._lock:
                for service in self.services.values():
                    if service.proc is not None and service.proc.poll() is not None:
                        service.exits.append(service.proc.returncode)
                        service.proc = None
                        self._stop.wait(self.restart_delay)
                        if self._stop.is_set():
                            return
                        service.start()

    def kill9(self, name: str) -> None:
        """SIGKILL ``name``; the watchdog starts it again."""
        with self._lock:
            service = self.services[name]
            if service.running:
                service.kill9()  # the watchdog sees it exited (-9) and starts it again

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Every running service stopped (SIGSTOP) inside the block, continued after; no
        kill or restart happens meanwhile."""
        with self._lock:
            stopped = [s for s in self.services.values() if s.running]
            for service in stopped:
                assert service.proc is not None
                service.proc.send_signal(signal.SIGSTOP)
            try:
                yield
            finally:
                for service in stopped:
                    assert service.proc is not None
                    service.proc.send_signal(signal.SIGCONT)

    def stop(self) -> dict[str, int | None]:
        """SIGTERM everything (consumers first, the reader last); their exit statuses."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)
        return {name: self.services[name].terminate() for name in reversed(list(self.services))}

    def summary(self) -> dict[str, dict[str, Any]]:
        return {
            n: {"starts": s.starts, "kills": s.kills, "exits": s.exits}
            for n, s in self.services.items()
        }


def service_env(
    base: Mapping[str, str], *, dsn: str, bootstrap: str, es_url: str, prefix: str, stack_dir: Path
) -> dict[str, str]:
    """The environment of a pipeline process: every endpoint explicit, and an empty stack
    directory so that nothing is filled in from the shared stack's state file."""
    env = {k: v for k, v in base.items() if not k.startswith("CATALOG_CDC_")}
    env.update(
        {
            "CATALOG_CDC_POSTGRES_DSN": dsn,
            "CATALOG_CDC_KAFKA_BOOTSTRAP": bootstrap,
            "CATALOG_CDC_ELASTICSEARCH_URL": es_url,
            "CATALOG_CDC_TOPIC_PREFIX": prefix,
            "CATALOG_CDC_STACK_DIR": str(stack_dir),
            "CATALOG_CDC_READER_SLOT": f"s_{prefix}",
            "CATALOG_CDC_READER_HEARTBEAT_INTERVAL": "1",
            "CATALOG_CDC_READER_STATUS_INTERVAL": "0.2",
            "CATALOG_CDC_ASSEMBLER_POLL_TIMEOUT": "0.1",
        }
    )
    return env


@dataclass(frozen=True)
class Targets:
    """Where the sinks of a scenario write, for the checks."""

    dsn: str
    bootstrap: str
    es_url: str
    prefix: str
    index_prefix: str
    kv_options: dict[str, str]
    webhooks: WebhooksServer

    def connections(self) -> ConnectionSettings:
        return ConnectionSettings(
            postgres_dsn=self.dsn,
            kafka_bootstrap=self.bootstrap,
            elasticsearch_url=self.es_url,
            topic_prefix=self.prefix,
        )


def write_webhooks_config(path: Path, server: WebhooksServer) -> Path:
    path.write_text(
        "[[subscribers]]\n"
        'name = "faults"\n'
        f'url = "{server.url}{server.path}"\n'
        f'secret = "{server.secret}"\n'
        "timeout = 3\n"
    )
    return path


def pipeline_for(targets: Targets, workdir: Path, env: Mapping[str, str]) -> Pipeline:
    """The whole pipeline as processes: reader, assembler, search, edge-kv (SQLite) and
    webhooks (to ``targets.webhooks``)."""
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    hooks = write_webhooks_config(workdir / "webhooks.toml", targets.webhooks)
    consume = [CLI, "consume", "--idle-pause", "0.15"]
    commands: dict[str, list[str]] = {
        "reader": [CLI, "reader"],
        "assembler": [CLI, "assembler", "--state", str(workdir / "assembler.sqlite")],
        "search": [
            *consume,
            "search",
            "--option",
            f"url={targets.es_url}",
            "--option",
            f"index_prefix={targets.index_prefix}",
        ],
        "edge-kv": [
            *consume,
            "edge-kv",
            *(a for k, v in targets.kv_options.items() for a in ("--option", f"{k}={v}")),
        ],
        "webhooks": [
            *consume,
            "webhooks",
            "--option",
            f"config={hooks}",
            "--option",
            f"state={workdir / 'webhooks.sqlite'}",
            "--option",
            "backoff_initial=0.2s",
            "--option",
            "backoff_max=2s",
            "--option",
            "max_age=1h",
        ],
    }
    pipeline = Pipeline()
    for name, argv in commands.items():
        pipeline.add(Service(name, argv, dict(env), logs / f"{name}.log"))
    return pipeline


# -- is every sink equal to the database? ------------------------------------------------


def verify_differences(name: str, targets: Targets, options: dict[str, str]) -> list[str]:
    """``pipeline.verify`` for ``name`` (search, edge-kv): the differences, [] when in sync."""
    verifier = verifier_for(name, SinkContext(targets.connections(), options), targets.dsn)
    report = run_verify(verifier).final
    if report.in_sync:
        return []
    counts = {c: r.as_json() for c, r in report.classes.items() if not r.ok}
    return [f"{name}: {d.describe()}" for d in report.differences[:10]] + [
        f"{name} counts: {counts}"
    ]


def _comparable(payload: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(_json_dumps(payload))
    out.pop("version", None)
    return out


def webhooks_differences(dsn: str, server: WebhooksServer) -> list[str]:
    """The receiver's last accepted event per product against the database: every
    product present and equal, every other product last told ``product.deleted``."""
    with psycopg.connect(dsn) as conn:
        products, _ = expected_documents(conn)
    state = server.state()["products"]
    out: list[str] = []
    for pid, doc in sorted(products.items()):
        got = state.get(str(pid))
        if got is None or got["event_type"] == events.DELETED:
            out.append(f"webhooks: product {pid} missing (last event {got and got['event_type']})")
        elif _comparable(got["product"]) != _comparable(events.product_payload(doc)):
            a, b = _comparable(got["product"]), _comparable(events.product_payload(doc))
            fields = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
            out.append(f"webhooks: product {pid} wrong, fields {fields}")
    out += [
        f"webhooks: product {pid} should be deleted, last event {got['event_type']}"
        for pid, got in state.items()
        if int(pid) not in products and got["event_type"] != events.DELETED
    ]
    return out


def sink_differences(targets: Targets) -> list[str]:
    """Every sink against the database: search and edge-kv through ``pipeline.verify``,
    the webhooks receiver through its recorded state."""
    search = {"url": targets.es_url, "index_prefix": targets.index_prefix}
    return (
        verify_differences("search", targets, search)
        + verify_differences("edge-kv", targets, dict(targets.kv_options))
        + webhooks_differences(targets.dsn, targets.webhooks)
    )


def wait_converged(targets: Targets, timeout: float) -> float:
    """Poll until every sink equals the database; the seconds it took.  On timeout, an
    AssertionError listing what still differs."""
    start = time.monotonic()
    diffs: list[str] = ["not checked yet"]
    while time.monotonic() - start < timeout:
        try:
            diffs = sink_differences(targets)
        except Exception as exc:  # noqa: BLE001 - a target still coming back: not yet
            diffs = [f"check failed: {exc!r}"]
        if not diffs:
            return time.monotonic() - start
        time.sleep(2.0)
    raise AssertionError(
        f"sinks not equal to the database after {timeout:.0f}s ({len(diffs)} differences):\n"
        + "\n".join(diffs[:30])
        + "\n"
        + _where_it_stopped(targets, diffs)
    )


def _where_it_stopped(targets: Targets, diffs: list[str]) -> str:
    """For the products that differ: their rows' last events on the raw topics and their
    last document on the document topic, to tell a stage that lost a change."""
    import re

    from pipeline.documents.reading import latest_documents
    from tests.integration.reader_support import read_events

    ids = sorted({int(m) for d in diffs for m in re.findall(r"product (\d+)", d)})[:3]
    # The fields named in the differences ("...; description: sink ... != db ...").
    fields = sorted({f for d in diffs for f in re.findall(r"[;,] ([a-z_]+): sink", d)})
    shown = ("id", "quantity", "deleted_at", "name", *[f for f in fields if f != "name"])

    def brief(value: object) -> object:
        text = repr(value)
        return text if len(text) <= 60 else f"{text[:48]}...({len(text)} chars)"

    out = []
    try:
        docs = latest_documents(targets.bootstrap, targets.prefix, "product")
        for table in ("products", "product_variants"):
            topic = f"{targets.prefix}.public.{table}"
            events = [
                (f"{part}:{off}", e)
                for _, e, part, off in read_events(targets.bootstrap, targets.prefix, topic)
                if e
            ]
            for pid in ids:
                col = "id" if table == "products" else "product_id"
                mine = [(o, e) for o, e in events if (e.after or e.before or {}).get(col) == pid]
                for off, e in mine[-8:]:
                    row = e.after or e.before or {}
                    values = {k: brief(v) for k, v in row.items() if k in shown or
                              table == "product_variants"}  # fmt: skip
                    out.append(f"raw {table} product {pid}: offset={off} op={e.op} "
                               f"lsn={e.source.lsn} tx={e.source.tx_id} row={values}")  # fmt: skip
        for pid in ids:
            m = docs.get(pid)
            values = {} if m is None or m.doc is None else {
                f: brief(getattr(m.doc, f, None)) for f in fields}  # fmt: skip
            out.append(f"doc product {pid}: version={None if m is None else m.version} "
                       f"deleted={m is None or m.doc is None} {values}")  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - a diagnostic only
        out.append(f"(no diagnostic: {exc!r})")
    return "\n".join(out)


def wal_position(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    return str(row[0])


def slot_confirmed(dsn: str, slot: str, target: str) -> bool:
    with psycopg.connect(dsn, connect_timeout=3) as conn:
        row = conn.execute(
            "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots "
            "WHERE slot_name = %s",
            (target, slot),
        ).fetchone()
    return bool(row and row[0])


@contextmanager
def edits_in_background(
    dsn: str, *, rate: float, duration: float, seed: int
) -> Iterator[list[Any]]:
    """``run_edits`` in a thread for ``duration`` seconds; yields the list its EditStats
    land in; joined on exit.  When the database goes away for longer than ``run_edits``
    reconnects (a PostgreSQL restart), the run is started again (next seed) for the
    time left, as a shop's back office would keep editing."""
    from pipeline.demo.edits import run_edits
    from pipeline.demo.errors import DemoError

    stop = threading.Event()
    out: list[Any] = []
    errors: list[BaseException] = []

    def work() -> None:
        deadline = time.monotonic() + duration
        attempt = 0
        while not stop.is_set() and (left := deadline - time.monotonic()) > 0.5:
            try:
                out.append(run_edits(dsn, rate=rate, duration=left, seed=seed + attempt, stop=stop))
            except DemoError as exc:
                log.warning("event=edits_restarted error=%r", str(exc))
                stop.wait(1.0)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the test
                errors.append(exc)
                return
            attempt += 1

    thread = threading.Thread(target=work, name="edits", daemon=True)
    thread.start()
    try:
        yield out
        thread.join(duration + 120)
    finally:
        stop.set()
        thread.join(30)
    if errors:
        raise errors[0]


def targeted_edits(dsn: str, tag: str) -> dict[str, Any]:
    """Edits that fan out or remove: a brand rename, a category move (a leaf category
    under another root of its store), a url-key change and a hard delete of a product.
    Returns what was changed (for the logs)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        brand = conn.execute("SELECT id FROM brands ORDER BY id LIMIT 1").fetchone()
        conn.execute("UPDATE brands SET name = name || %s WHERE id = %s", (f" {tag}", brand[0]))
        move = conn.execute(
            "SELECT c.id, r.id FROM categories c JOIN categories r ON r.store_id = c.store_id "
            "AND r.parent_id IS NULL AND r.id <> c.id AND r.id IS DISTINCT FROM c.parent_id "
            "WHERE c.parent_id IS NOT NULL "
            "AND NOT EXISTS (SELECT 1 FROM categories k WHERE k.parent_id = c.id) "
            "ORDER BY c.id, r.id LIMIT 1"
        ).fetchone()
        if move:
            conn.execute("UPDATE categories SET parent_id = %s WHERE id = %s", (move[1], move[0]))
        pid = conn.execute(
            "SELECT id FROM products WHERE deleted_at IS NULL ORDER BY id LIMIT 1"
        ).fetchone()
        if pid:
            conn.execute(
                "UPDATE products SET url_key = url_key || %s WHERE id = %s", (f"-{tag}", pid[0])
            )
        victim = conn.execute("SELECT id FROM products ORDER BY id DESC LIMIT 1").fetchone()
        if victim:
            conn.execute("DELETE FROM products WHERE id = %s", victim)
    return {"brand": brand, "category_moved": move, "url_key": pid, "deleted": victim}
