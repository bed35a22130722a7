"""A sink's SQLite state file ("ledger"), opened and written one way everywhere.

The policy, and why:

* **WAL journal, ``synchronous=FULL``.**  A sink's state is what proves that a write
  was confirmed by the target (what was sent, at which version, what is still to
  deliver); the runtime commits Kafka offsets once a flush that recorded it returned.
  With ``FULL`` a transaction that returned is on disk even if the machine loses
  power right after, so the state is never behind an offset already committed.
  (``NORMAL`` in WAL mode may lose the last transactions on power loss: a confirmed
  write forgotten, a delivery repeated or — worse — an outbox entry lost.)  WAL lets
  readers (``status`` commands, ``catalog-cdc kv get``) read while the sink writes.
* **Busy timeout of** :data:`BUSY_TIMEOUT` **seconds.**  Another process holding the
  write lock (a reader tool, a second consumer by mistake) is waited for that long
  before :class:`sqlite3.OperationalError` ("database is locked").
* **Explicit transactions only.**  The connection is in autocommit mode
  (``isolation_level=None``); :func:`transaction` opens ``BEGIN IMMEDIATE`` — the write
  lock is taken at the start, so a busy database fails (or waits) there, before any
  statement ran, never half-way — and commits, or rolls back on any exception
  (``KeyboardInterrupt`` included) and re-raises it.
* **Threads as the owner says.**  By default the connection may be used only by the
  thread that opened it (sqlite3's own check).  ``shared=True`` lifts the check for an
  owner that serializes the use itself (a lock, or one thread at a time); pass that
  lock to :func:`transaction` to hold it for the whole transaction.

The schema and the file format are the owner's: :func:`open_ledger` runs the owner's
``CREATE ... IF NOT EXISTS`` script and changes nothing else, so existing state files
open as they are.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, Final

__all__ = ["BUSY_TIMEOUT", "open_ledger", "open_read_only", "rows", "transaction"]

BUSY_TIMEOUT: Final = 10.0
"""Seconds to wait for another connection's write lock."""


def open_ledger(path: Path | str, schema: str = "", *, shared: bool = False) -> sqlite3.Connection:
    """Open (creating it and its folder if needed) the state database at ``path``
    with the policy of this module, then run ``schema`` (idempotent DDL) if given.

    ``shared``: the connection may be used from other threads than this one (the
    caller serializes the use)."""
    if str(path) != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(
        path, isolation_level=None, timeout=BUSY_TIMEOUT, check_same_thread=not shared
    )
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        if schema:
            db.executescript(schema)
    except BaseException:
        db.close()
        raise
    return db


def open_read_only(path: Path | str) -> sqlite3.Connection:
    """Open an existing state database read-only (a status command); it is never
    created nor changed, and a writer is not disturbed (WAL)."""
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT)


@contextmanager
def transaction(
    db: sqlite3.Connection,
    *,
    lock: AbstractContextManager[Any] | None = None,
    busy: Callable[[sqlite3.OperationalError], BaseException] | None = None,
) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` and re-raise on any exception).

    Guarantee: when the block returned, its writes are committed and durable; when it
    raised, none of them is.  ``lock`` is held from ``BEGIN`` to the end.  ``busy``:
    what to raise (from the error) when the write lock cannot be had within the busy
    timeout, instead of the :class:`sqlite3.OperationalError` itself."""
    with lock if lock is not None else nullcontext():
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if busy is None:
                raise
            raise busy(exc) from exc
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")


def rows(db: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """The rows of a query as dicts keyed by column name."""
    cur = db.execute(sql, params)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
