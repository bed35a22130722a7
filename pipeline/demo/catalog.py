"""The demo catalog's schema: ``schemas/sql/catalog.sql``, applied idempotently."""

from __future__ import annotations

import importlib.resources
import logging
from typing import Any

import psycopg

from pipeline.demo.errors import DemoError

log = logging.getLogger(__name__)

#: Every table of the demo catalog, parents before children.
CATALOG_TABLES: tuple[str, ...] = (
    "stores",
    "brands",
    "categories",
    "products",
    "product_variants",
    "product_categories",
    "product_images",
    "technical_data",
    "cms_pages",
)


def schema_sql(name: str = "catalog.sql") -> str:
    """The text of ``schemas/sql/<name>`` (shipped as package data)."""
    return (importlib.resources.files("schemas") / "sql" / name).read_text(encoding="utf-8")


def _apply(conn: psycopg.Connection[Any], name: str) -> None:
    script = schema_sql(name)
    try:
        with conn.transaction(), conn.cursor() as cur:
            # No parameters: psycopg sends the script as one simple query.
            cur.execute(script.encode())
    except psycopg.Error as exc:
        raise DemoError(
            f"applying schemas/sql/{name} failed: {exc}; "
            "check that the role may create tables in schema public"
        ) from exc


def load_schema(conn: psycopg.Connection[Any]) -> None:
    """Create the demo catalog's tables, indexes and triggers if they are missing.

    Idempotent; runs in one transaction (a savepoint if the caller has one open),
    committed on return unless the caller's transaction is still open.
    """
    _apply(conn, "catalog.sql")
    log.info("event=catalog_schema_loaded tables=%d", len(CATALOG_TABLES))


def drop_schema(conn: psycopg.Connection[Any]) -> None:
    """Drop every table, trigger and function of the demo catalog (``drop.sql``)."""
    _apply(conn, "drop.sql")
    log.info("event=catalog_schema_dropped")


def missing_tables(conn: psycopg.Connection[Any]) -> list[str]:
    """The catalog tables that do not exist in schema ``public``."""
    rows = conn.execute(
        "SELECT t FROM unnest(%s::text[]) AS t WHERE to_regclass('public.' || t) IS NULL",
        (list(CATALOG_TABLES),),
    ).fetchall()
    return [str(r[0]) for r in rows]
