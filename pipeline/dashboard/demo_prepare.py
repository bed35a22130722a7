"""``prepare --run demoNNNN`` of ``make demo`` (:mod:`pipeline.dashboard.demo`).

An isolated run: its own database (created empty), replication slot, topic prefix (so
its own consumer groups and search index), the consumers' SQLite state files removed;
what earlier demo runs left (databases, slots, topics, groups, indices) is dropped;
prints the run's ``CATALOG_CDC_*`` variables as ``export`` lines (``eval`` them).
"""

from __future__ import annotations

import contextlib
import re
import shlex
import sys
from pathlib import Path

from pipeline.errors import CatalogCdcError
from pipeline.supervisor.config import RunConfig, load_config


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


def prepare(config_path: Path, run: str) -> int:
    """A fresh, isolated demo run ``run``: its own database (created empty), replication
    slot, topic prefix, consumer groups and index prefix; what earlier demo runs left
    (their databases, slots, topics, groups, indices) is removed, so nothing of them is
    re-read and the stack does not grow from demo to demo.  Prints the environment of
    the run as ``export`` lines for the shell."""
    import psycopg
    from confluent_kafka import KafkaException

    from consumers.contract import SinkError

    if not RUN_PATTERN.match(run):
        raise CatalogCdcError(f"a demo run id is 'demo' and 10-14 digits, not {run!r}")
    try:
        return _prepare_run(config_path, run)
    except psycopg.Error as exc:
        raise CatalogCdcError(f"preparing demo run {run}: PostgreSQL: {exc}") from exc
    except KafkaException as exc:
        raise CatalogCdcError(f"preparing demo run {run}: Kafka: {exc}") from exc
    except SinkError as exc:  # the search engine's errors (consumers.search.engine)
        raise CatalogCdcError(f"preparing demo run {run}: search engine: {exc}") from exc


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
        _drop_index_runs(conns.elasticsearch_url, conns.search_engine, run)
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


def _drop_index_runs(url: str, engine_name: str | None, run: str) -> None:
    """Delete the search indices and index templates of other demo runs (Elasticsearch
    or OpenSearch: the search consumer's engine client)."""
    from consumers.search.engine import connect

    engine = connect(url, engine_name)
    try:
        for name in engine.indices("demo*"):
            if not name.startswith(run + "-"):
                engine.delete_index(name)  # one already gone is no error
        for template in engine.index_templates("demo*"):
            if not template.startswith(run):
                engine.delete_index_template(template)
    finally:
        engine.close()
