"""Helpers of ``make demo`` (scripts/demo.sh), each a step of its own::

    python -m pipeline.dashboard.demo ports --config scripts/demo.toml
    python -m pipeline.dashboard.demo prepare --config scripts/demo.toml --run demo1202101530
    python -m pipeline.dashboard.demo wait-reader --config scripts/demo.toml
    python -m pipeline.dashboard.demo wait-groups --config scripts/demo.toml
    python -m pipeline.dashboard.demo proof --config scripts/demo.toml [--summary FILE]

``ports``: every port the config names (contract servers, metrics) is free on
loopback, else exit 1 naming the ones that are not.  ``prepare --run demoNNNN``: an
isolated run — its own database (created empty), replication slot, topic prefix (so
its own consumer groups and search index), the consumers' SQLite state files removed;
what earlier demo runs left is dropped; prints the run's ``CATALOG_CDC_*`` variables as
``export`` lines (``eval`` them).
``wait-reader``: until the reader has confirmed the server's current WAL position;
prints the UTC time.  ``wait-groups``: then until the assembler's consumer group has
committed the ends of the raw topics and each consumer's group the ends of the document
topics (committed offsets: each stage commits only what its output or sink confirmed).
``proof``: what each contract server accepted (``GET /_contract/state``) against the
database (:func:`pipeline.documents.reference.expected_documents`): counts, and per
product the fields the sink sends; exit 1 when one is out of sync.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shlex
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from pipeline.errors import CatalogCdcError
from pipeline.supervisor.config import RunConfig, build_services, load_config


def used_ports(config: RunConfig) -> list[tuple[int, str]]:
    """(port, what) of every enabled service: contract servers' ports, metrics ports,
    and a ``--port N`` on a service's command line (the admin API)."""
    out: list[tuple[int, str]] = []
    for spec in build_services(config):
        if spec.port is not None:
            out.append((spec.port, f"contract server {spec.name}"))
        elif "--port" in spec.argv[:-1]:
            value = spec.argv[spec.argv.index("--port") + 1]
            if value.isdigit() and int(value) > 0:
                out.append((int(value), f"service {spec.name}"))
        if spec.metrics_port is not None:
            out.append((spec.metrics_port, f"{spec.name} metrics"))
    return out


def taken(ports: Sequence[tuple[int, str]], host: str = "127.0.0.1") -> list[tuple[int, str]]:
    """The ones something already listens on (a bind test, as the services would do)."""
    busy = []
    for port, what in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                busy.append((port, what))
    return busy


def _ports(config_path: Path) -> int:
    busy = taken(used_ports(load_config(config_path)))
    for port, what in busy:
        print(
            f"demo: port {port} ({what}) is already in use on 127.0.0.1: stop what listens "
            f"there (`ss -ltnp 'sport = :{port}'`; a demo still running?) or change the port "
            f"in {config_path}",
            file=sys.stderr,
        )
    return 1 if busy else 0


# -- reset ----------------------------------------------------------------------------


def consumer_topics(name: str, prefix: str) -> list[str]:
    """The topics consumer ``name`` reads: the document topics of its sink's ``kinds``,
    the raw topics of its ``raw_tables`` (what the runtime subscribes to)."""
    from consumers.registry import load
    from pipeline.topics import doc_topic, raw_topic

    factory = load(name)
    sink = getattr(factory, "__self__", factory)  # the class of a `Sink.from_context`
    kinds = getattr(sink, "kinds", ("product", "category"))
    raw = getattr(sink, "raw_tables", ())
    return [doc_topic(prefix, k) for k in kinds] + [raw_topic(prefix, t) for t in raw]


def state_files(config: RunConfig, root: Path) -> list[Path]:
    """The consumers' SQLite files (options ``state``/``path``) inside ``root``."""
    files = []
    for consumer in config.consumers.values():
        for key in ("state", "path"):
            value = consumer.options.get(key)
            if not isinstance(value, str) or not value.endswith(".sqlite"):
                continue
            path = Path(value)
            if path.resolve().is_relative_to(root.resolve()):
                files.append(path)
    return files


RUN_PATTERN = re.compile(r"^demo\d{10,14}$")
"""A demo run's id: database, replication slot, topic prefix and index prefix at once."""


def _prepare(config_path: Path, run: str) -> int:
    """A fresh, isolated demo run ``run``: its own database (created empty), replication
    slot, topic prefix, consumer groups and index prefix; what earlier demo runs left
    (their databases, slots, topics, groups, indices) is removed, so nothing of them is
    re-read and the stack does not grow from demo to demo.  Prints the environment of
    the run as ``export`` lines for the shell."""
    import psycopg
    from confluent_kafka import KafkaException
    from elastic_transport import TransportError
    from elasticsearch import ApiError

    if not RUN_PATTERN.match(run):
        raise CatalogCdcError(f"a demo run id is 'demo' and 10-14 digits, not {run!r}")
    try:
        return _prepare_run(config_path, run)
    except psycopg.Error as exc:
        raise CatalogCdcError(f"preparing demo run {run}: PostgreSQL: {exc}") from exc
    except KafkaException as exc:
        raise CatalogCdcError(f"preparing demo run {run}: Kafka: {exc}") from exc
    except (ApiError, TransportError) as exc:
        raise CatalogCdcError(f"preparing demo run {run}: Elasticsearch: {exc}") from exc


def _prepare_run(config_path: Path, run: str) -> int:
    import psycopg
    from psycopg import sql

    from pipeline.settings import load_connections

    config = load_config(config_path)
    conns = load_connections()
    admin_dsn = conns.require("postgres_dsn")
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        slots = conn.execute(
            "SELECT slot_name, active FROM pg_replication_slots WHERE slot_name ~ '^demo[0-9]+$'"
        ).fetchall()
        for slot, active in slots:
            if active:
                raise CatalogCdcError(
                    f"the replication slot {slot} of an earlier demo is in use: is a demo "
                    "still running? (stop it, or `catalog-cdc stack down`)"
                )
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        dbs = conn.execute(
            "SELECT datname FROM pg_database WHERE datname ~ '^demo[0-9]+$'"
        ).fetchall()
        for (db,) in dbs:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(db)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(run)))
    old = [db for (db,) in dbs] + [slot for slot, _ in slots]
    for path in state_files(config, Path(".stack")):
        # The file, its -wal/-shm/-journal, and the files a sink keeps beside it
        # (edge-kv's `.state`).
        for stale in path.parent.glob(f"{path.name}*"):
            stale.unlink(missing_ok=True)
        path.parent.mkdir(parents=True, exist_ok=True)
    _drop_kafka_runs(conns.require("kafka_bootstrap"), run)
    if conns.elasticsearch_url:
        _drop_index_runs(conns.elasticsearch_url, run)
    dsn = psycopg.conninfo.make_conninfo(admin_dsn, dbname=run)
    env = {
        "CATALOG_CDC_POSTGRES_DSN": dsn,
        "CATALOG_CDC_TOPIC_PREFIX": run,
        "CATALOG_CDC_READER_SLOT": run,
    }
    for key, value in env.items():
        print(f"export {key}={shlex.quote(value)}")
    print(
        f"demo: run {run} (earlier runs removed: {len(set(old))})",
        file=sys.stderr,
    )
    return 0


def _drop_kafka_runs(bootstrap: str, run: str) -> None:
    """Delete the topics and consumer groups of other demo runs."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})

    def other(name: str) -> bool:
        head = re.split(r"[.\-]", name, maxsplit=1)[0]
        return bool(RUN_PATTERN.match(head)) and head != run

    topics = [t for t in admin.list_topics(timeout=15).topics if other(t)]
    if topics:
        for future in admin.delete_topics(topics, operation_timeout=30).values():
            with contextlib.suppress(KafkaException):
                future.result()
    groups = [g.group_id for g in admin.list_consumer_groups(request_timeout=15).result().valid]
    stale = [g for g in groups if other(g)]
    if stale:
        for future in admin.delete_consumer_groups(stale, request_timeout=15).values():
            with contextlib.suppress(KafkaException):
                future.result()  # a group that still lists a member stays: harmless


def _drop_index_runs(url: str, run: str) -> None:
    """Delete the search indices and index templates of other demo runs."""
    from elasticsearch import Elasticsearch, NotFoundError

    es = Elasticsearch(url, request_timeout=60)
    try:
        names = [n for n in es.indices.get(index="demo*", expand_wildcards="all")]
        for name in names:
            if not name.startswith(run + "-"):
                with contextlib.suppress(NotFoundError):
                    es.indices.delete(index=name)
        templates = es.indices.get_index_template(name="demo*").get("index_templates", [])
        for t in templates:
            if not t["name"].startswith(run):
                with contextlib.suppress(NotFoundError):
                    es.indices.delete_index_template(name=t["name"])
    except NotFoundError:
        pass
    finally:
        es.close()


# -- wait-reader ----------------------------------------------------------------------


def _wait_reader(config_path: Path, timeout: float) -> int:
    """Until the reader has confirmed the server's current WAL position (read and had
    Kafka acknowledge everything committed so far); print the UTC time it did."""
    import time
    from datetime import UTC, datetime

    import psycopg

    from pipeline.dashboard.model import parse_metrics, total
    from pipeline.settings import load_connections

    config = load_config(config_path)
    port = config.reader.metrics_port
    if port is None:
        raise CatalogCdcError(f"{config_path}: [reader] has no metrics_port")
    with psycopg.connect(load_connections().require("postgres_dsn"), autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()
    target = int(row[0]) if row is not None else 0
    deadline = time.monotonic() + timeout
    confirmed = None
    while time.monotonic() < deadline:
        try:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=3).text
            confirmed = total(parse_metrics(text)[0], "catalog_cdc_reader_confirmed_lsn")
        except (httpx.HTTPError, ValueError):
            confirmed = None
        if confirmed is not None and confirmed >= target:
            print(datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z")
            return 0
        time.sleep(0.3)
    print(
        f"demo: the reader did not reach WAL position {target} within {timeout:g}s "
        f"(confirmed: {confirmed})",
        file=sys.stderr,
    )
    return 1


# -- wait-groups ----------------------------------------------------------------------


def _group_of(args: Sequence[str], default: str) -> str:
    for i, arg in enumerate(args):
        if arg == "--group" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--group="):
            return arg.partition("=")[2]
    return default


def group_lag(
    admin: Any, probe: Any, group: str, partitions: Sequence[Any], only_committed: bool = False
) -> int:
    """Messages between ``group``'s committed offsets and the ends of ``partitions`` (a
    partition the group never committed counts from its low watermark).

    ``only_committed``: only the topics the group committed to count — the assembler
    reads the global tables (brands, categories, stores, CMS pages) without committing
    (their positions are in its state file), so they cannot be checked this way."""
    from confluent_kafka import ConsumerGroupTopicPartitions

    request = [ConsumerGroupTopicPartitions(group, list(partitions))]
    (future,) = admin.list_consumer_group_offsets(request, request_timeout=15).values()
    committed = future.result().topic_partitions
    used = {tp.topic for tp in committed if tp.offset >= 0}
    lag = 0
    for tp in committed:
        if only_committed and tp.topic not in used:
            continue
        low, high = probe.get_watermark_offsets(tp, timeout=15)
        lag += max(0, high - max(low, tp.offset if tp.offset >= 0 else low))
    return lag


def assembler_catching_up(port: int, host: str = "127.0.0.1") -> bool:
    """The assembler's ``catalog_cdc_assembler_catching_up`` gauge is not 0, or its
    metrics do not answer (it is starting or restarting): not done yet."""
    import urllib.request

    from pipeline.dashboard.model import parse_metrics, total

    try:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as resp:
            samples, _ = parse_metrics(resp.read().decode("utf-8", "replace"))
    except (OSError, ValueError):
        return True
    return total(samples, "catalog_cdc_assembler_catching_up") != 0


def _wait_groups(config_path: Path, timeout: float) -> int:
    """Until the assembler's group has committed the ends of the raw topics, then every
    consumer's group the ends of the document topics as they were then: every change
    the reader had produced is in every sink (each commits only after its sink
    confirmed). Call it after ``wait-reader``."""
    import time

    from confluent_kafka import Consumer, TopicPartition
    from confluent_kafka.admin import AdminClient

    from pipeline.settings import load_connections
    from pipeline.topics import is_raw_topic

    config = load_config(config_path)
    conns = load_connections()
    prefix = conns.topic_prefix
    admin = AdminClient({"bootstrap.servers": conns.require("kafka_bootstrap")})
    deadline = time.monotonic() + timeout
    stages: list[tuple[str, str, list[str] | None]] = [
        ("assembler", _group_of(config.assembler.args, f"{prefix}-assembler"), None)
    ]
    stages += [
        (name, _group_of(c.args, f"{prefix}-{name}"), consumer_topics(name, prefix))
        for name, c in config.consumers.items()
        if c.enabled
    ]
    probe = Consumer(
        {"bootstrap.servers": conns.require("kafka_bootstrap"), "group.id": "catalog-cdc-probe"}
    )
    try:
        topics = probe.list_topics(timeout=15).topics
        for name, group, wanted in stages:
            # The assembler's input is the raw topics; each consumer must reach the ends
            # its topics have once the assembler is done.
            partitions = [
                TopicPartition(t, p)
                for t, meta in sorted(topics.items())
                if (is_raw_topic(prefix, t) if wanted is None else t in wanted)
                for p in meta.partitions
            ]
            only = wanted is None
            if name == "assembler" and config.assembler.metrics_port is not None:
                # A fresh assembler commits its inputs while it catches up and emits the
                # documents only at the end: until then the consumers look caught up.
                while assembler_catching_up(config.assembler.metrics_port):
                    if time.monotonic() > deadline:
                        print(f"demo: the assembler is still catching up after {timeout:g}s",
                              file=sys.stderr)  # fmt: skip
                        return 1
                    time.sleep(0.5)
            while (lag := group_lag(admin, probe, group, partitions, only)) > 0:
                if time.monotonic() > deadline:
                    print(
                        f"demo: {name} (group {group}) is still {lag} messages behind after "
                        f"{timeout:g}s",
                        file=sys.stderr,
                    )
                    return 1
                time.sleep(0.5)
    finally:
        probe.close()
    # The webhooks consumer commits once an event is in its durable outbox; delivering
    # it comes after: wait for its outbox to empty as well.
    webhooks = config.consumers.get("webhooks")
    state = None if webhooks is None or not webhooks.enabled else webhooks.options.get("state")
    if isinstance(state, str):
        while (pending := outbox_pending(Path(state))) > 0:
            if time.monotonic() > deadline:
                print(
                    f"demo: webhooks still has {pending} events to deliver after {timeout:g}s",
                    file=sys.stderr,
                )
                return 1
            time.sleep(0.5)
    return 0


def outbox_pending(path: Path) -> int:
    """Events in the webhooks outbox ``path`` still to deliver (0 when there is none)."""
    import sqlite3

    if not path.exists():
        return 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        row = db.execute("SELECT count(*) FROM outbox").fetchone()
    except sqlite3.OperationalError:
        return 0  # not created yet
    finally:
        db.close()
    return int(row[0]) if row else 0


# -- proof ----------------------------------------------------------------------------


@dataclass
class SinkProof:
    """One sink against the database: counts, and the products that differ."""

    name: str
    lines: list[str] = field(default_factory=list)
    """``what: sink N vs database M`` lines."""
    differences: list[str] = field(default_factory=list)
    """``product 7: price 12.00 != 12.50`` (first ones)."""
    difference_count: int = 0

    @property
    def in_sync(self) -> bool:
        return self.difference_count == 0

    def differ(self, text: str) -> None:
        self.difference_count += 1
        if len(self.differences) < 5:
            self.differences.append(text)

    def count(self, what: str, sink: int, db: int) -> None:
        mark = "" if sink == db else "   <-- differs"
        self.lines.append(f"{what}: {sink:,} received vs {db:,} in the database{mark}")
        if sink != db:
            self.difference_count += 1


@dataclass(frozen=True)
class Expected:
    """From the database: per live product (not soft-deleted, not hard-deleted) the
    fields the sinks carry."""

    products: Mapping[int, Mapping[str, Any]]
    live_sql: int
    """``SELECT count(*) FROM products WHERE deleted_at IS NULL``."""


def expected_from_db(dsn: str) -> Expected:
    import psycopg

    from pipeline.documents.reference import expected_documents

    with psycopg.connect(dsn) as conn:
        products, _ = expected_documents(conn)
        row = conn.execute("SELECT count(*) FROM products WHERE deleted_at IS NULL").fetchone()
    live = int(row[0]) if row is not None else 0
    return Expected(
        {
            pid: {
                "reference": d.reference,
                "name": d.name,
                "price": Decimal(str(d.price)),
                "active": d.active,
                "quantity": d.total_quantity,
            }
            for pid, d in products.items()
        },
        live,
    )


def _same_price(a: Any, b: Decimal) -> bool:
    try:
        return Decimal(str(a)) == b
    except ArithmeticError:
        return False


def prove_storefront(state: Mapping[str, Any], db: Expected) -> SinkProof:
    """The shop keeps every product it got; deleted ones deactivated (docs/storefront-api.md)."""
    proof = SinkProof("storefront-api")
    shop: Mapping[str, Mapping[str, Any]] = state["products"]
    active = {ref for ref, p in shop.items() if p.get("active")}
    db_active = {p["reference"] for p in db.products.values() if p["active"]}
    proof.count("active products", len(active), len(db_active))
    proof.lines.append(
        f"products in the shop: {len(shop):,} (deleted and inactive ones stay, inactive); "
        f"syncs {len(state['syncs']):,}, logins {state['logins']}"
    )
    for pid, p in sorted(db.products.items()):
        got = shop.get(p["reference"])
        if got is None:
            proof.differ(f"product {pid} ({p['reference']}): not in the shop")
            continue
        wrong = [
            f"{k} {got.get(k)!r} != {p[k]!r}"
            for k in ("name", "active", "quantity")
            if got.get(k) != p[k]
        ]
        if not _same_price(got.get("price"), p["price"]):
            wrong.append(f"price {got.get('price')!r} != {p['price']}")
        if wrong:
            proof.differ(f"product {pid}: " + "; ".join(wrong))
    live_refs = {p["reference"] for p in db.products.values()}
    for ref in sorted(active - live_refs):
        proof.differ(f"{ref}: active in the shop, deleted in the database")
    return proof


def prove_search_service(state: Mapping[str, Any], db: Expected) -> SinkProof:
    """Every live product is an item (inactive ones with status "disabled")."""
    proof = SinkProof("search-service")
    items: Mapping[str, Mapping[str, Any]] = state["items"]
    proof.count("items in the hosted index", len(items), len(db.products))
    proof.lines.append(
        f"service status {state['status']!r}, full import {state['full_import']!r}, "
        f"malformed requests {state['malformed']['total']}, blocked {state['blocked']}"
    )
    for pid, p in sorted(db.products.items()):
        item = items.get(str(pid))
        if item is None:
            proof.differ(f"product {pid}: not in the index")
            continue
        status = "active" if p["active"] else "disabled"
        wrong = (
            [f"title {item.get('title')!r} != {p['name']!r}"]
            if item.get("title") != (p["name"])
            else []
        )
        if item.get("status") != status:
            wrong.append(f"status {item.get('status')!r} != {status!r}")
        if not _same_price(item.get("price"), p["price"]):
            wrong.append(f"price {item.get('price')!r} != {p['price']}")
        if wrong:
            proof.differ(f"product {pid}: " + "; ".join(wrong))
    for ident in sorted(set(items) - {str(pid) for pid in db.products}, key=int):
        proof.differ(f"product {ident}: in the index, deleted in the database")
    return proof


def prove_webhooks(state: Mapping[str, Any], db: Expected) -> SinkProof:
    """Per product the last event received tells the receiver the product's state."""
    proof = SinkProof("webhooks")
    products: Mapping[str, Mapping[str, Any]] = state["products"]
    alive = {int(k): v for k, v in products.items() if v.get("event_type") != "product.deleted"}
    proof.lines.append(
        f"events received: {len(state['events']):,} for {len(products):,} distinct products; "
        f"out of order {len(state['out_of_order'])}, duplicates {len(state['duplicates'])}, "
        f"refused {len(state['refused'])}"
    )
    proof.count("products whose last event is not product.deleted", len(alive), len(db.products))
    for pid, p in sorted(db.products.items()):
        last = alive.get(pid)
        if last is None:
            proof.differ(f"product {pid}: no event, or its last event is product.deleted")
            continue
        body = last.get("product") or {}
        wrong = [
            f"{k} {body.get(k2)!r} != {p[k]!r}"
            for k, k2 in (("name", "name"), ("active", "is_active"), ("quantity", "total_quantity"))
            if body.get(k2) != p[k]
        ]
        if not _same_price(body.get("price"), p["price"]):
            wrong.append(f"price {body.get('price')!r} != {p['price']}")
        if wrong:
            proof.differ(f"product {pid}: " + "; ".join(wrong))
    for pid in sorted(set(alive) - set(db.products)):
        proof.differ(f"product {pid}: last event not product.deleted, deleted in the database")
    if state["out_of_order"]:
        proof.differ(f"{len(state['out_of_order'])} events out of order")
    return proof


PROVERS = {
    "storefront-api": prove_storefront,
    "search-service": prove_search_service,
    "webhooks": prove_webhooks,
}


def contract_state(port: int, host: str = "127.0.0.1") -> Any:
    try:
        response = httpx.get(f"http://{host}:{port}/_contract/state", timeout=30)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise CatalogCdcError(f"contract server on port {port}: {exc}") from exc
    return response.json()


def _proof(config_path: Path, summary: Path | None) -> int:
    from pipeline.settings import load_connections

    config = load_config(config_path)
    db = expected_from_db(load_connections().require("postgres_dsn"))
    print(
        f"database: {db.live_sql:,} products not deleted "
        "(SELECT count(*) FROM products WHERE deleted_at IS NULL), "
        f"{sum(1 for p in db.products.values() if p['active']):,} of them active"
    )
    proofs = []
    for name, server in config.contract_servers.items():
        if not server.enabled or name not in PROVERS:
            continue
        consumer = config.consumers.get(name)
        if consumer is None or not consumer.enabled:
            continue
        proof = PROVERS[name](contract_state(server.port, server.host), db)
        proofs.append(proof)
        verdict = "in sync" if proof.in_sync else f"OUT OF SYNC ({proof.difference_count})"
        print(f"\n{name} (contract server :{server.port}): {verdict}")
        for line in proof.lines:
            print(f"  {line}")
        for text in proof.differences:
            print(f"  differs: {text}")
    if summary is not None:
        with summary.open("a") as out:
            for p in proofs:
                out.write(json.dumps({"sink": p.name, "in_sync": p.in_sync, "lines": p.lines}))
                out.write("\n")
    return 0 if all(p.in_sync for p in proofs) else 1


def main(argv: Sequence[str] | None = None) -> int:
    from pipeline import logs

    parser = argparse.ArgumentParser(prog="python -m pipeline.dashboard.demo")
    parser.add_argument("step", choices=["ports", "prepare", "wait-reader", "wait-groups", "proof"])
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--summary", type=Path, help="proof: append one JSON line per sink")
    parser.add_argument("--timeout", type=float, default=240, help="wait-reader: seconds")
    parser.add_argument("--run", help="prepare: the run id (demo + 10-14 digits)")
    args = parser.parse_args(argv)
    logs.configure("warning", "kv")
    try:
        if args.step == "ports":
            return _ports(args.config)
        if args.step == "prepare":
            if not args.run:
                parser.error("prepare needs --run")
            return _prepare(args.config, args.run)
        if args.step == "wait-reader":
            return _wait_reader(args.config, args.timeout)
        if args.step == "wait-groups":
            return _wait_groups(args.config, args.timeout)
        return _proof(args.config, args.summary)
    except CatalogCdcError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
