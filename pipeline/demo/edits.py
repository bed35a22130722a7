"""Realistic live edits of the demo catalog, at a steady rate.

``run_edits(dsn, rate=R, duration=S)`` applies about ``R`` edits a second for ``S``
seconds, each one a real transaction: price and stock changes, new products,
name and description edits (some descriptions over 4 kB, so out-of-line TOAST),
soft and hard deletes, (de)activations, category moves and renames, brand
renames, image reorders, technical-data edits, transactions touching several
tables at once, and transactions that are rolled back (and leave no trace).

Rows are picked from the database, never assumed from the seed, so the edits work
on any catalog with the schema of ``schemas/sql/catalog.sql``.  Serialization
failures and deadlocks retry the transaction; other database errors are counted
and logged, and the run goes on.  The connection is in autocommit mode and every
edit is a ``BEGIN … COMMIT``/``ROLLBACK`` block: no transaction is ever left open.

The edit kinds themselves are the methods of :class:`pipeline.demo.editor.Editor`;
this module draws, schedules and runs them, and counts what they did.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields

import psycopg

from pipeline.demo.catalog import missing_tables
from pipeline.demo.editor import Conn, Editor, Rollback
from pipeline.demo.errors import DemoError

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]

_MAX_ATTEMPTS = 5  # per edit, on serialization failure / deadlock
_MAX_LAG_S = 1.0  # further behind schedule than this, the schedule is re-based
_RECONNECTS = 3


@dataclass
class EditStats:
    """What :func:`run_edits` did.  Kind counters count committed edits only."""

    price_changes: int = 0
    stock_changes: int = 0
    new_products: int = 0
    product_edits: int = 0
    long_descriptions: int = 0  # descriptions over 4 kB written (new or edited products)
    soft_deletes: int = 0
    hard_deletes: int = 0
    reactivations: int = 0
    deactivations: int = 0
    category_moves: int = 0
    category_renames: int = 0
    brand_renames: int = 0
    image_reorders: int = 0
    technical_data_edits: int = 0
    multi_table: int = 0
    committed: int = 0  # transactions committed
    rolled_back: int = 0  # transactions rolled back on purpose
    retries: int = 0  # transactions retried after a serialization failure or deadlock
    errors: int = 0  # edits abandoned on a database error
    skipped: int = 0  # edits with nothing to edit (e.g. no product with 2 images)
    elapsed_s: float = 0.0

    def add(self, name: str, n: int = 1) -> None:
        setattr(self, name, getattr(self, name) + n)


_KINDS: tuple[tuple[str, float], ...] = (
    ("stock_change", 30),
    ("price_change", 15),
    ("product_edit", 10),
    ("new_product", 8),
    ("technical_data_edit", 6),
    ("multi_table", 6),
    ("image_reorder", 5),
    ("activation", 4),
    ("rolled_back", 4),
    ("soft_delete", 3),
    ("hard_delete", 2),
    ("category_move", 1.5),
    ("category_rename", 1.5),
    ("brand_rename", 1.5),
)


def _connect(dsn: str) -> Conn:
    try:
        return psycopg.connect(dsn, autocommit=True, application_name="catalog-cdc-demo-edits")
    except psycopg.Error as exc:
        raise DemoError(f"cannot connect to the catalog database: {exc}") from exc


def run_edits(
    dsn: str,
    *,
    rate: float,
    duration: float,
    seed: int | None = None,
    stop: threading.Event | None = None,
    progress: Progress | None = None,
) -> EditStats:
    """Apply about ``rate`` edits a second for ``duration`` seconds; return what was done.

    Each edit is one transaction.  The first edits go once through every kind (in
    random order), so even a short run exercises all of them; after that kinds are
    drawn by weight (stock and price changes most often).  Edits are scheduled at
    ``start + n / rate`` on the monotonic clock, so the rate does not drift; a run
    that falls more than a second behind (slow database) re-bases its schedule
    instead of bursting.  Setting ``stop`` ends the run after the current edit.
    ``progress(done, total)`` is called after every edit.
    """
    if rate <= 0:
        raise DemoError(f"rate must be > 0 edits/s, got {rate}")
    if duration < 0:
        raise DemoError(f"duration must be >= 0 s, got {duration}")
    rng = random.Random(seed)
    editor = Editor(rng)
    stats = EditStats()
    total = max(1, round(rate * duration))
    names = [k for k, _ in _KINDS]
    weights = [w for _, w in _KINDS]
    first_round = names[:]
    rng.shuffle(first_round)

    conn = _connect(dsn)
    try:
        missing = missing_tables(conn)
        if missing:
            raise DemoError(
                f"the catalog schema is missing (no table {', '.join(missing)}); "
                "create and seed it first: catalog-cdc demo seed"
            )
        interval = 1.0 / rate
        start = time.monotonic()
        deadline = start + duration
        base, done = start, 0
        while not (stop is not None and stop.is_set()):
            now = time.monotonic()
            if now >= deadline:
                break
            due = base + done * interval
            if due > now:
                pause = min(due, deadline) - now
                if stop is not None:
                    stop.wait(pause)
                else:
                    time.sleep(pause)
                continue
            if now - due > _MAX_LAG_S:
                log.warning("event=edits_behind_schedule lag_s=%.2f", now - due)
                base = now - done * interval
            kind = first_round[done] if done < len(first_round) else rng.choices(names, weights)[0]
            conn = _apply(conn, dsn, editor, kind, stats)
            done += 1
            if progress is not None:
                progress(min(done, total), total)
        stats.elapsed_s = round(time.monotonic() - start, 3)
    finally:
        conn.close()
    log.info(
        "event=edits_done %s",
        " ".join(f"{f.name}={getattr(stats, f.name)}" for f in fields(stats)),
    )
    return stats


def _apply(conn: Conn, dsn: str, editor: Editor, kind: str, stats: EditStats) -> Conn:
    """Run one edit as a transaction, retrying on serialization failure or deadlock.

    Returns the connection to use next (a new one if this one broke).
    """
    edit: Callable[[Conn], list[str]] = getattr(editor, kind)
    for attempt in range(1, _MAX_ATTEMPTS + 1):
        try:
            with conn.transaction():
                bumps = edit(conn)
        except Rollback:
            stats.rolled_back += 1
            log.debug("event=edit_rolled_back kind=%s", kind)
            return conn
        except (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected) as exc:
            stats.retries += 1
            log.info("event=edit_retry kind=%s attempt=%d error=%r", kind, attempt, str(exc))
            time.sleep(min(0.5, 0.01 * 2**attempt) * (0.5 + editor.rng.random()))
            continue
        except psycopg.Error as exc:
            stats.errors += 1
            log.warning("event=edit_failed kind=%s error=%r", kind, str(exc))
            if conn.closed or conn.broken:
                return _reconnect(dsn)
            return conn
        if bumps:
            stats.committed += 1
            for name in bumps:
                stats.add(name)
        else:
            stats.skipped += 1
        return conn
    stats.errors += 1
    log.warning("event=edit_gave_up kind=%s attempts=%d", kind, _MAX_ATTEMPTS)
    return conn


def _reconnect(dsn: str) -> Conn:
    last: DemoError | None = None
    for attempt in range(_RECONNECTS):
        try:
            return _connect(dsn)
        except DemoError as exc:
            last = exc
            time.sleep(0.5 * (attempt + 1))
    raise DemoError(f"lost the catalog database and could not reconnect: {last}") from last
