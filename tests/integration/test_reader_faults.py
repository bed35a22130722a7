"""The reader under load and crashes: nothing committed is ever missing from Kafka.

Ground truth comes from the database itself: an audit trigger records, in the same
transactions as the edits, every row change with its transaction id.  After the run
every audited change must be on its topic (with the same transaction id), each key's
events must follow commit order, and every topic's final state must equal its table.
"""

from __future__ import annotations

import json
import random
import signal
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from pipeline.demo.edits import run_edits
from pipeline.demo.seed import seed_catalog
from pipeline.reader.state import ReaderStateStore
from tests.integration.reader_support import (
    TABLE_KEYS,
    assert_topic_matches_table,
    key_of,
    read_events,
    reader_process,
    running_reader,
    wait_for,
)

pytestmark = pytest.mark.integration

AUDIT_SQL = """
CREATE TABLE audit_log (seq bigserial PRIMARY KEY, tbl text, pk jsonb, op text, txid bigint);
CREATE FUNCTION audit() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE r jsonb := to_jsonb(CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END);
BEGIN
  INSERT INTO audit_log (tbl, pk, op, txid) VALUES (
    TG_TABLE_NAME,
    CASE WHEN TG_TABLE_NAME = 'product_categories'
         THEN jsonb_build_object('category_id', r->'category_id', 'product_id', r->'product_id')
         ELSE jsonb_build_object('id', r->'id') END,
    TG_OP, txid_current());
  RETURN NULL;
END $$;
"""


def _install_audit(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute(AUDIT_SQL)
        for table in TABLE_KEYS:
            conn.execute(
                f"CREATE TRIGGER audit_{table} AFTER INSERT OR UPDATE OR DELETE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION audit()"
            )


def _confirmed_caught_up(dsn: str, slot: str, target: str) -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots WHERE slot_name = %s",
            (target, slot),
        ).fetchone()
    return bool(row and row[0])


def _check_everything(dsn: str, bootstrap: str, prefix: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        audit = conn.execute("SELECT tbl, pk, op, txid FROM audit_log ORDER BY seq").fetchall()
    by_table: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for row in audit:
        by_table[str(row[0])].append(row)
    counts: dict[str, int] = {}
    for table, key in TABLE_KEYS.items():
        events = read_events(bootstrap, prefix, f"{prefix}.public.{table}")
        seen: set[tuple[str, int]] = set()
        per_key: dict[str, list[int]] = defaultdict(list)
        for key_row, event, _, _ in events:
            if event is None or key_row is None or event.source.tx_id is None:
                continue
            k = key_of(key_row)
            seen.add((k, event.source.tx_id % 2**32))
            per_key[k].append(event.source.lsn)
        # Every committed change is there (tx ids compared modulo 2^32: xid vs txid).
        missing = [
            (pk, op, txid)
            for _, pk, op, txid in by_table.get(table, [])
            if (key_of(pk), int(txid) % 2**32) not in seen
        ]
        assert not missing, f"{table}: {len(missing)} committed changes missing, e.g. {missing[:3]}"
        # Per key, commit order (first occurrences; a replay after a crash repeats a tail).
        for k, lsns in per_key.items():
            first: list[int] = []
            for lsn in lsns:
                if lsn not in first:
                    first.append(lsn)
            assert first == sorted(first), f"{table} key {k}: events out of commit order {first}"
        assert_topic_matches_table(bootstrap, prefix, dsn, table, key)
        counts[table] = len(by_table.get(table, []))
    return counts


def test_kill9_at_random_moments_under_edits(
    catalog_dsn: str, kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    seed_catalog(catalog_dsn, products=150, seed=11)
    _install_audit(catalog_dsn)
    rng = random.Random(20261122)
    log = tmp_path / "reader.log"
    slot = f"s_{topic_prefix}"
    stop_edits = threading.Event()
    stats: list[Any] = []
    edits = threading.Thread(
        target=lambda: stats.append(
            run_edits(catalog_dsn, rate=80, duration=25, seed=5, stop=stop_edits)
        ),
        daemon=True,
    )
    proc = reader_process(catalog_dsn, kafka_bootstrap, topic_prefix, log)
    kills = 0
    mark = 0
    try:
        wait_for(lambda: "replication_started" in log.read_text(), 60, "first streaming")
        edits.start()
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(1.0, 4.0))
            proc.kill()  # SIGKILL: no drain, no final status update
            proc.wait(10)
            kills += 1
            mark = len(log.read_text())
            proc = reader_process(catalog_dsn, kafka_bootstrap, topic_prefix, log)
        edits.join(60)
        assert not edits.is_alive()
        wait_for(lambda: "replication_started" in log.read_text()[mark:], 60, "last restart")
        with psycopg.connect(catalog_dsn) as conn:
            target = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert target is not None
        wait_for(lambda: _confirmed_caught_up(catalog_dsn, slot, str(target[0])), 90, "catch-up")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        stop_edits.set()
        if proc.poll() is None:
            proc.kill()
    assert kills >= 5
    assert stats and stats[0].committed > 100, stats
    counts = _check_everything(catalog_dsn, kafka_bootstrap, topic_prefix)
    assert sum(counts.values()) > 300, counts
    print(json.dumps({"kills": kills, "audited_changes": counts}))


def test_snapshot_with_concurrent_edits_converges(
    catalog_dsn: str, kafka_bootstrap: str, topic_prefix: str
) -> None:
    """Edits running while the initial snapshot reads: final per-key state == tables."""
    seed_catalog(catalog_dsn, products=1500, seed=12)
    stop_edits = threading.Event()
    edits = threading.Thread(
        target=lambda: run_edits(catalog_dsn, rate=150, duration=12, seed=6, stop=stop_edits),
        daemon=True,
    )
    edits.start()
    time.sleep(0.5)
    try:
        # Small chunks make the snapshot long enough to overlap many edits.
        with running_reader(
            catalog_dsn, kafka_bootstrap, topic_prefix, snapshot_chunk_size=200
        ) as reader:
            edits.join(60)
            with psycopg.connect(catalog_dsn) as conn:
                target = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
            assert target is not None
            wait_for(
                lambda: _confirmed_caught_up(catalog_dsn, reader.settings.slot, str(target[0])),
                90,
                "catch-up",
            )
    finally:
        stop_edits.set()
    for table, key in TABLE_KEYS.items():
        assert_topic_matches_table(kafka_bootstrap, topic_prefix, catalog_dsn, table, key)


def test_crash_during_initial_snapshot_restarts_it_cleanly(
    catalog_dsn: str, kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    seed_catalog(catalog_dsn, products=1500, seed=13)
    log = tmp_path / "reader.log"
    slot = f"s_{topic_prefix}"
    # Tiny chunks: the snapshot takes long enough to be killed in the middle of it.
    env = {"CATALOG_CDC_READER_SNAPSHOT_CHUNK_SIZE": "20"}
    proc = reader_process(catalog_dsn, kafka_bootstrap, topic_prefix, log, **env)
    try:
        wait_for(
            lambda: "event=snapshot_table table=public.products" in log.read_text(),
            120,
            "mid-snapshot",
        )
        assert "snapshot_done" not in log.read_text()
        # What a new assembler waits on: the reader's record says a snapshot is running.
        state = ReaderStateStore(kafka_bootstrap, topic_prefix)
        key = f"{conninfo_to_dict(catalog_dsn)['dbname']}/{slot}"
        assert state.load_all() == {key: {"snapshot_done": False}}
        proc.kill()
        proc.wait(10)
        with psycopg.connect(catalog_dsn) as conn:
            conn.execute("UPDATE products SET price = price + 10 WHERE id <= 50")
        mark = len(log.read_text())
        proc = reader_process(catalog_dsn, kafka_bootstrap, topic_prefix, log, **env)
        wait_for(lambda: "replication_started" in log.read_text()[mark:], 180, "second snapshot")
        assert "event=snapshot_incomplete" in log.read_text()[mark:]
        with psycopg.connect(catalog_dsn) as conn:
            target = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert target is not None
        wait_for(lambda: _confirmed_caught_up(catalog_dsn, slot, str(target[0])), 60, "catch-up")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert state.load(key) == {"snapshot_done": True, "consistent_point": ANY}
    finally:
        if proc.poll() is None:
            proc.kill()
    for table, key in TABLE_KEYS.items():
        assert_topic_matches_table(kafka_bootstrap, topic_prefix, catalog_dsn, table, key)
