"""Connection settings shared by every service and tool.

Each setting comes, in this order, from an environment variable (prefix
``CATALOG_CDC_``), or else from the local stack's state file (``.stack/state.json``,
written by ``catalog-cdc stack up``).  So the same code runs against production
services (set the variables) and against the local stack (set nothing).

Settings are loaded in ``main()`` (see :func:`load_connections`), never at import time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.errors import ConfigurationError

ENV_PREFIX = "CATALOG_CDC_"


def default_stack_dir() -> Path:
    """Where the local stack keeps its state.

    ``CATALOG_CDC_STACK_DIR`` wins; otherwise the ``.stack`` directory of the nearest
    enclosing checkout (a directory holding ``pyproject.toml`` and ``pipeline/``),
    falling back to ``./.stack``.
    """
    env = os.environ.get(f"{ENV_PREFIX}STACK_DIR")
    if env:
        return Path(env).resolve()
    here = Path.cwd().resolve()
    for candidate in (here, *here.parents):
        if (candidate / "pyproject.toml").is_file() and (candidate / "pipeline").is_dir():
            return candidate / ".stack"
    return here / ".stack"


class ConnectionSettings(BaseSettings):
    """Where the services are.  Every field is ``CATALOG_CDC_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", populate_by_name=True)

    postgres_dsn: str | None = Field(
        default=None, description="libpq DSN of the catalog database (needs REPLICATION)."
    )
    kafka_bootstrap: str | None = Field(default=None, description="Kafka bootstrap servers.")
    kafka_bootstrap_alt: str | None = Field(
        default=None, description="A second, independent Kafka-protocol broker (tests only)."
    )
    elasticsearch_url: str | None = Field(
        default=None,
        # The preferred name first; the field's own name stays usable in code.
        validation_alias=AliasChoices(f"{ENV_PREFIX}SEARCH_URL", f"{ENV_PREFIX}ELASTICSEARCH_URL"),
        description="Search engine (Elasticsearch or OpenSearch) base URL: "
        "CATALOG_CDC_SEARCH_URL, or the older name CATALOG_CDC_ELASTICSEARCH_URL.",
    )
    search_engine: Literal["elasticsearch", "opensearch"] | None = Field(
        default=None,
        description="The engine at the search URL; unset: asked of the server (GET /).",
    )
    redis_url: str | None = Field(
        default=None, description="Redis URL (redis://host:port/db) for the edge KV consumer."
    )
    schema_registry_url: str | None = Field(
        default=None,
        description="Confluent Schema Registry URL; unset = Avro single-object encoding.",
    )
    topic_prefix: str = Field(default="catalog", description="Prefix of every Kafka topic.")

    def require(self, name: str) -> str:
        """Return setting ``name`` or raise an error saying how to provide it."""
        value: Any = getattr(self, name)
        if not value:
            raise ConfigurationError(
                f"{name} is not set: export {ENV_PREFIX}{name.upper()}, "
                "or start the local stack with `catalog-cdc stack up`"
            )
        return str(value)


def load_connections(stack_dir: Path | None = None) -> ConnectionSettings:
    """Settings from the environment, with gaps filled from the local stack's state."""
    settings = ConnectionSettings()
    from pipeline.stack.state import read_state  # local: avoid an import cycle

    state = read_state(stack_dir or default_stack_dir())
    if state is None:
        return settings
    endpoints = state.endpoints()
    updates = {
        field: value
        for field, value in endpoints.items()
        if getattr(settings, field, None) in (None, "") and value
    }
    return settings.model_copy(update=updates)


def metrics_address() -> str:
    """The address the services serve Prometheus ``/metrics`` on:
    ``CATALOG_CDC_METRICS_ADDR``, default ``127.0.0.1`` (``0.0.0.0`` in containers, so
    that Prometheus in another container can scrape them)."""
    return os.environ.get(f"{ENV_PREFIX}METRICS_ADDR", "127.0.0.1")


def parse_options(items: list[str]) -> dict[str, str]:
    """``--option KEY=VALUE`` arguments as a dict (every command that takes them)."""
    options: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigurationError(f"--option {item!r}: expected KEY=VALUE")
        options[key.strip()] = value
    return options
