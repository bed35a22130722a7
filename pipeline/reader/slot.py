"""The slot/snapshot state machine: from "is there a slot?" to the LSN streaming starts at.

- **No slot** (or one whose initial snapshot never finished, per the reader's state
  record: it is dropped): the topics are set up first, ``{"snapshot_done": false}`` is
  saved, the slot is created with an exported snapshot, the snapshot is read, then
  ``{"snapshot_done": true}`` is saved; streaming starts at the slot's consistent point.
- **A slot whose snapshot finished** (or snapshots off): streaming resumes at its
  confirmed flush position; the topics are set up after START_REPLICATION, while the
  walsender decodes its first transaction, so a restart streams sooner.
- A slot of another database or plugin is an error; one still held by a crashed
  reader's walsender is waited for (:func:`~pipeline.reader.setup.wait_slot_free`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from pipeline.reader.errors import ReaderError
from pipeline.reader.replication import ReplicationConnection, lsn_to_int, lsn_to_str
from pipeline.reader.settings import ReaderSettings
from pipeline.reader.setup import Connection, find_slot, wait_slot_free
from pipeline.reader.state import ReaderStateStore

log = logging.getLogger("pipeline.reader.service")
"""The reader's log lines keep the logger name they had before service.py was split."""


def open_slot(
    repl: ReplicationConnection,
    conn: Connection,
    settings: ReaderSettings,
    db: str,
    *,
    state_store: Callable[[], ReaderStateStore],
    setup_topics: Callable[[], None],
    snapshot: Callable[[str, int], None],
    stop: threading.Event,
) -> int | None:
    """Find or create the slot (snapshotting a new one), start replication on ``repl``.

    Returns the LSN streaming starts at (confirmed on ``repl``, topics set up), or
    ``None`` when ``stop`` was set during the snapshot.  ``state_store`` makes the
    reader's state store (called at most once, only when the state matters);
    ``snapshot(name, consistent_point)`` reads the exported snapshot.
    """
    state_key = f"{db}/{settings.slot}"
    slot = find_slot(conn, settings.slot)
    if slot is not None and (slot[2] != db or slot[3] != "pgoutput"):
        raise ReaderError(
            f"replication slot {settings.slot!r} already exists for database "
            f"{slot[2]!r} (plugin {slot[3]}): slot names are cluster-wide; pick another "
            "with CATALOG_CDC_READER_SLOT or --slot"
        )
    if slot is not None and slot[1] is not None:
        slot = wait_slot_free(conn, settings.slot, slot[1])
    # The reader's state says whether an existing slot's snapshot finished: read it
    # only where that matters (a slot exists and snapshots are on).
    store: ReaderStateStore | None = None
    state: dict[str, Any] = {}
    if slot is not None and settings.snapshot_mode == "initial":
        store = state_store()
        state = store.load(state_key) or {}
    if slot is not None and not state.get("snapshot_done") and settings.snapshot_mode == "initial":
        log.warning("event=snapshot_incomplete slot=%s action=drop_and_redo", settings.slot)
        conn.execute("SELECT pg_drop_replication_slot(%s)", (settings.slot,))
        slot = None
    start_lsn = 0
    topics_ready = False
    if slot is None:
        # Topics before the slot: the snapshot (if any) produces to them, and an
        # exported snapshot must be imported before anything else happens.
        setup_topics()
        topics_ready = True
        if settings.snapshot_mode == "initial":
            # Acknowledged before the snapshot's first event: an assembler that
            # catches up waits for the "done" record (and a stale one from an
            # earlier slot no longer says done).
            if store is None:
                store = state_store()
            store.save(state_key, {"snapshot_done": False})
        created = repl.create_slot(
            settings.slot, export_snapshot=settings.snapshot_mode == "initial"
        )
        log.info(
            "event=slot_created slot=%s consistent_point=%s snapshot=%s",
            created.name, lsn_to_str(created.consistent_point), created.snapshot_name,
        )  # fmt: skip
        if settings.snapshot_mode == "initial" and created.snapshot_name:
            snapshot(created.snapshot_name, created.consistent_point)
            if stop.is_set():
                return None
        if store is None:
            store = state_store()
        store.save(
            state_key,
            {
                "snapshot_done": True,
                "consistent_point": lsn_to_str(created.consistent_point),
            },
        )
        start_lsn = created.consistent_point
    else:
        log.info("event=resume slot=%s confirmed_flush=%s", settings.slot, slot[0])
        start_lsn = lsn_to_int(str(slot[0])) if slot[0] else 0
    repl.start(settings.slot, settings.publication, start_lsn=start_lsn)
    repl.confirm(start_lsn)
    if not topics_ready:
        setup_topics()
    return start_lsn
