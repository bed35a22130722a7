"""The reader's set-up in the database: signal table, publication, replica identities, slot.

:func:`setup_database` makes sure the signal table exists, that every captured table is
in the publication (created or extended, never narrowed) and that a table routed by a
non-key partition column logs whole old rows (``REPLICA IDENTITY FULL``: a delete only
carries the replica identity).  :func:`find_slot` and :func:`wait_slot_free` read the
replication slot's state; what is done with it is :mod:`pipeline.reader.slot`'s.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from pipeline.reader.errors import ReaderError
from pipeline.reader.settings import ReaderSettings
from pipeline.reader.snapshot import TableShape, describe_table

log = logging.getLogger("pipeline.reader.service")
"""The reader's log lines keep the logger name they had before service.py was split."""

Connection = psycopg.Connection[tuple[Any, ...]]


def split_table(qualified: str) -> tuple[str, str]:
    """``(schema, table)`` of ``schema.table``; a bare name is in ``public``."""
    schema, _, table = qualified.rpartition(".")
    return (schema or "public"), table


@dataclass
class CapturedTables:
    """What :func:`setup_database` found: the captured tables and their primary keys."""

    shapes: dict[str, TableShape] = field(default_factory=dict)
    """Schema-qualified name -> the table's shape (after any replica identity change)."""
    primary_keys: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    """``(schema, table)`` -> primary-key column names, in index order."""


def setup_database(
    conn: Connection, settings: ReaderSettings, signal: tuple[str, str]
) -> CapturedTables:
    """Signal table, publication, replica identities; returns the captured tables."""
    sig = sql.Identifier(*signal)
    conn.execute(
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (id text PRIMARY KEY, type text NOT NULL, "
            "data jsonb, created_at timestamptz NOT NULL DEFAULT now())"
        ).format(sig)
    )
    captured = CapturedTables()
    shapes = captured.shapes
    for qualified in settings.tables:
        schema, table = split_table(qualified)
        shape = describe_table(conn, schema, table)
        pcol = settings.partition_columns.get(f"{schema}.{table}")
        names = {c.name for c in shape.relation.columns}
        if pcol and pcol not in names:
            raise ReaderError(
                f"partition column {pcol!r} of {schema}.{table} does not exist "
                "(CATALOG_CDC_READER_PARTITION_COLUMNS)"
            )
        keys = {shape.relation.columns[i].name for i in shape.key_positions}
        if pcol and pcol not in keys and shape.relation.replica_identity != "f":
            # A delete only carries the replica identity: to route it to the
            # partition column's partition, the old row must be logged whole.
            log.info(
                "event=replica_identity_full table=%s.%s reason=partition_column", schema, table
            )
            conn.execute(
                sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(
                    sql.Identifier(schema, table)
                )
            )
            shape = describe_table(conn, schema, table)
        shapes[f"{schema}.{table}"] = shape
        captured.primary_keys[(schema, table)] = tuple(
            shape.relation.columns[i].name for i in shape.key_positions
        )
    tables = [sql.Identifier(*split_table(q)) for q in shapes] + [sig]
    pub = sql.Identifier(settings.publication)
    exists = conn.execute(
        "SELECT 1 FROM pg_publication WHERE pubname = %s", (settings.publication,)
    ).fetchone()
    if not exists:
        conn.execute(
            sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(pub, sql.SQL(", ").join(tables))
        )
        log.info(
            "event=publication_created publication=%s tables=%d",
            settings.publication,
            len(tables),
        )
    else:
        have = {
            (str(r[0]), str(r[1]))
            for r in conn.execute(
                "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s",
                (settings.publication,),
            )
        }
        for q in [*shapes, f"{signal[0]}.{signal[1]}"]:
            if split_table(q) not in have:
                conn.execute(
                    sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
                        pub, sql.Identifier(*split_table(q))
                    )
                )
                log.info("event=publication_table_added table=%s", q)
    return captured


def find_slot(conn: Connection, slot: str) -> tuple[Any, ...] | None:
    """``(confirmed_flush_lsn, active_pid, database, plugin)`` of ``slot``, if it exists."""
    return conn.execute(
        "SELECT confirmed_flush_lsn::text, active_pid, database, plugin "
        "FROM pg_replication_slots WHERE slot_name = %s",
        (slot,),
    ).fetchone()


def wait_slot_free(
    conn: Connection, slot: str, pid: int, timeout: float = 30.0
) -> tuple[Any, ...] | None:
    """A crashed reader's walsender may hold the slot for a moment: wait, then fail."""
    log.warning("event=slot_busy slot=%s pid=%s action=wait", slot, pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.5)
        found = find_slot(conn, slot)
        if found is None or found[1] is None:
            return found
    raise ReaderError(
        f"replication slot {slot!r} is still in use by backend pid {pid} "
        f"after {timeout:.0f}s: is another reader running? One reader per slot."
    )
