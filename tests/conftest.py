"""Test fixtures: real services from the local stack, isolated per test.

The stack is started once per session (``catalog-cdc stack up`` semantics; whatever
was already running is reused, and only what this session started is stopped at the
end).  Set ``CATALOG_CDC_POSTGRES_DSN``, ``CATALOG_CDC_KAFKA_BOOTSTRAP``,
``CATALOG_CDC_KAFKA_BOOTSTRAP_ALT``, ``CATALOG_CDC_ELASTICSEARCH_URL`` (and
``CATALOG_CDC_REDIS_URL``) to run the suite against other services instead.

Isolation: every test gets its own database (``pg_dsn``), topic prefix
(``topic_prefix``) and index prefix (``index_prefix``).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Endpoints:
    postgres_admin_dsn: str
    kafka_bootstrap: str
    kafka_bootstrap_alt: str | None
    elasticsearch_url: str
    redis_url: str | None = None
    kafka_bootstrap_apache: str | None = None
    """The local stack's Apache Kafka (``CATALOG_CDC_KAFKA_BOOTSTRAP_APACHE``)."""
    opensearch_url: str | None = None
    """The local stack's OpenSearch (``CATALOG_CDC_TEST_OPENSEARCH_URL`` wins)."""


def _with_dbname(dsn: str, dbname: str) -> str:
    params = conninfo_to_dict(dsn)
    params["dbname"] = dbname
    return make_conninfo(**params)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def stack() -> Iterator[Endpoints]:
    """Endpoints of real services: from the environment, else the local stack."""
    names = ("postgres_dsn", "kafka_bootstrap", "kafka_bootstrap_alt", "elasticsearch_url")
    env = {k: os.environ.get(f"CATALOG_CDC_{k.upper()}") for k in names}
    if env["postgres_dsn"] and env["kafka_bootstrap"] and env["elasticsearch_url"]:
        yield Endpoints(
            postgres_admin_dsn=_with_dbname(env["postgres_dsn"], "postgres"),
            kafka_bootstrap=env["kafka_bootstrap"],
            kafka_bootstrap_alt=env["kafka_bootstrap_alt"],
            elasticsearch_url=env["elasticsearch_url"],
            redis_url=os.environ.get("CATALOG_CDC_REDIS_URL"),
            kafka_bootstrap_apache=os.environ.get("CATALOG_CDC_KAFKA_BOOTSTRAP_APACHE"),
        )
        return

    from pipeline.settings import default_stack_dir
    from pipeline.stack.manager import Stack

    stack_dir = Path(os.environ.get("CATALOG_CDC_STACK_DIR") or default_stack_dir())
    st = Stack(stack_dir)
    before = st.status()
    started = {n for n, s in before["services"].items() if not (s["running"] and s.get("answers"))}
    st.up()
    endpoints = st.status()
    yield Endpoints(
        postgres_admin_dsn=_with_dbname(endpoints["postgres_dsn"], "postgres"),
        kafka_bootstrap=endpoints["kafka_bootstrap"],
        kafka_bootstrap_alt=endpoints["kafka_bootstrap_alt"],
        elasticsearch_url=endpoints["elasticsearch_url"],
        redis_url=endpoints.get("redis_url"),
        kafka_bootstrap_apache=endpoints.get("kafka_bootstrap_apache"),
        opensearch_url=endpoints.get("opensearch_url"),
    )
    if started == set(before["services"]) and not os.environ.get("CATALOG_CDC_KEEP_STACK"):
        st.down()


def _drop_database(admin_dsn: str, name: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        # Replication slots pin a database: end their walsenders, then drop them.
        conn.execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
            "WHERE database = %s AND active_pid IS NOT NULL",
            (name,),
        )
        for _ in range(50):
            rows = conn.execute(
                "SELECT slot_name, active FROM pg_replication_slots WHERE database = %s", (name,)
            ).fetchall()
            if not any(active for _, active in rows):
                break
            conn.execute("SELECT pg_sleep(0.1)")
        for slot, _active in rows:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture
def pg_dsn(stack: Endpoints) -> Iterator[str]:
    """DSN of a fresh, empty database (superuser; replication allowed), dropped after."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(stack.postgres_admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield _with_dbname(stack.postgres_admin_dsn, name)
    finally:
        _drop_database(stack.postgres_admin_dsn, name)


@pytest.fixture
def catalog_dsn(pg_dsn: str) -> str:
    """A fresh database with the demo catalog's schema loaded (no rows)."""
    from pipeline.demo.catalog import load_schema

    with psycopg.connect(pg_dsn) as conn:
        load_schema(conn)
    return pg_dsn


@pytest.fixture
def topic_prefix() -> str:
    """A topic prefix no other test uses."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def index_prefix() -> str:
    """An Elasticsearch index prefix no other test uses."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def kafka_bootstrap(stack: Endpoints) -> str:
    """The main Kafka-protocol broker (noida-db, or CATALOG_CDC_KAFKA_BOOTSTRAP)."""
    return stack.kafka_bootstrap


@pytest.fixture
def es_url(stack: Endpoints) -> str:
    return stack.elasticsearch_url


@pytest.fixture
def redis_url(stack: Endpoints) -> str:
    """The stack's Redis (or CATALOG_CDC_REDIS_URL)."""
    if not stack.redis_url:
        pytest.fail("no Redis: set CATALOG_CDC_REDIS_URL or use the stack (`catalog-cdc stack up`)")
    return stack.redis_url


@pytest.fixture(params=["apache-kafka", "noida", "tansu"])
def broker_bootstrap(request: pytest.FixtureRequest, stack: Endpoints) -> str:
    """Each broker of the stack in turn, for tests marked ``broker_matrix``: Apache
    Kafka, and two independent implementations of its protocol (noida-db, Tansu)."""
    if request.param == "noida":
        return stack.kafka_bootstrap
    if request.param == "apache-kafka":
        if not stack.kafka_bootstrap_apache:
            pytest.fail("no Apache Kafka: set CATALOG_CDC_KAFKA_BOOTSTRAP_APACHE or use the stack")
        return stack.kafka_bootstrap_apache
    if not stack.kafka_bootstrap_alt:
        pytest.fail("no second broker: set CATALOG_CDC_KAFKA_BOOTSTRAP_ALT or use the stack")
    return stack.kafka_bootstrap_alt


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Anything touching the stack is an integration test, marked or not.
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & {
            "stack",
            "pg_dsn",
            "catalog_dsn",
            "kafka_bootstrap",
            "es_url",
            "redis_url",
            "broker_bootstrap",
        }:
            item.add_marker(pytest.mark.integration)
