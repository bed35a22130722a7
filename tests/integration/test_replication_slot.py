"""A logical replication slot created and streamed on the stack's PostgreSQL.

Drives START_REPLICATION and the CopyBoth stream on psycopg's low-level ``pq``
connection, as the reader does, and checks that standby status updates move the
slot's confirmed_flush_lsn.
"""

from __future__ import annotations

import select
import struct
import time

import psycopg
import pytest
from psycopg import pq

pytestmark = pytest.mark.integration

PG_EPOCH_US = 946_684_800_000_000


def _lsn_int(text: str) -> int:
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def test_wal_level_is_logical(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        settings = dict(
            conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN "
                "('wal_level', 'max_replication_slots', 'max_wal_senders')"
            ).fetchall()
        )
    assert settings["wal_level"] == "logical"
    assert int(settings["max_replication_slots"]) >= 10
    assert int(settings["max_wal_senders"]) >= 10


def test_slot_stream_and_confirm(pg_dsn: str) -> None:
    rows = 500
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id bigint PRIMARY KEY, name text)")
        conn.execute("CREATE PUBLICATION pub FOR TABLE items")
        # In its own statement: a slot cannot be created in a transaction that wrote.
        conn.execute("SELECT pg_create_logical_replication_slot('s1', 'pgoutput')")
        with conn.transaction():
            conn.cursor().executemany(
                "INSERT INTO items VALUES (%s, %s)", [(i, f"item {i}") for i in range(rows)]
            )
        start_flush = conn.execute(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 's1'"
        ).fetchone()

    repl = psycopg.Connection.connect(pg_dsn, autocommit=True, replication="database")
    try:
        pgconn = repl.pgconn
        pgconn.send_query(
            b"START_REPLICATION SLOT s1 LOGICAL 0/0 (proto_version '1', publication_names 'pub')"
        )
        result = pgconn.get_result()
        assert result is not None and result.status == pq.ExecStatus.COPY_BOTH

        inserts = 0
        commit_end = 0
        deadline = time.monotonic() + 30
        while (inserts < rows or not commit_end) and time.monotonic() < deadline:
            n, buf = pgconn.get_copy_data(1)
            if n == 0:
                select.select([pgconn.socket], [], [], 1.0)
                pgconn.consume_input()
                continue
            assert n > 0, "stream ended"
            data = bytes(buf)
            if data[:1] == b"w":
                payload = data[25:]
                if payload[:1] == b"I":
                    inserts += 1
                elif payload[:1] == b"C":
                    commit_end = struct.unpack_from("!Q", payload, 10)[0]
        assert inserts == rows
        assert commit_end > _lsn_int(start_flush[0]) if start_flush else commit_end > 0

        now_us = int(time.time() * 1_000_000) - PG_EPOCH_US
        status = b"r" + struct.pack("!QQQQB", commit_end, commit_end, commit_end, now_us, 1)
        assert pgconn.put_copy_data(status) == 1
        pgconn.flush()

        with psycopg.connect(pg_dsn) as conn:
            confirmed = 0
            deadline = time.monotonic() + 15
            while confirmed < commit_end and time.monotonic() < deadline:
                # Keep the stream moving so the walsender reads our reply.
                pgconn.consume_input()
                while pgconn.get_copy_data(1)[0] > 0:
                    pass
                row = conn.execute(
                    "SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
                    "WHERE slot_name = 's1'"
                ).fetchone()
                conn.rollback()
                assert row is not None
                confirmed = _lsn_int(row[0])
                time.sleep(0.1)
        assert confirmed >= commit_end
    finally:
        repl.close()
