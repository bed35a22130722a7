"""Ad-hoc re-snapshot while streaming: the DBLog / Debezium incremental-snapshot algorithm.

Requested by inserting into the signal table (``catalog_cdc_signal``) a row of type
``execute-snapshot`` with data ``{"tables": ["public.products", ...]}`` (what
``catalog-cdc resnapshot`` does).  Each table is then read in key-ordered chunks,
interleaved with the live stream:

1. write a *low watermark* (signal row ``snapshot-window-open``), committed;
2. read the next chunk of rows (key > last key, ``LIMIT chunk``);
3. write a *high watermark* (``snapshot-window-close``), committed.

When the stream reaches the low watermark a window opens; every live change seen in
the window to a key of the chunk removes that key from the chunk (the live event is
newer than, or equal to, what the chunk read).  So does a change before the window of
a transaction the chunk's read did not see: in PostgreSQL a transaction's commit
record can precede the low watermark's in the WAL while it becomes visible only after
the read (commit order and visibility order differ), so the chunk is read in a
snapshot whose running transactions are remembered.  At the high watermark the rest of
the chunk is emitted as ``op='r'`` events (``snapshot='incremental'``).  So a stale
chunk row never overwrites a newer live change, and nothing is missed.

Resume: while a re-snapshot runs, the reader confirms nothing past the signal that
requested it, so after a crash the request is read again and the re-snapshot starts
over (duplicates, never loss).

What this needs of the reader is :class:`SnapshotHost` (the reader's translation layer
implements it); the rest -- connection, chunk size, signal table -- is given when
:class:`IncrementalSnapshot` is made.
"""

from __future__ import annotations

import logging
import uuid
from collections import deque
from collections.abc import Collection, Set
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from psycopg import sql
from psycopg.types.json import Jsonb

from pipeline.events import Row, TableSchema
from pipeline.reader.relations import RelationCache
from pipeline.reader.snapshot import TableShape, describe_table, read_chunk

if TYPE_CHECKING:
    import psycopg

    from pipeline.reader.pgoutput import Relation

log = logging.getLogger(__name__)

EXECUTE = "execute-snapshot"
OPEN = "snapshot-window-open"
CLOSE = "snapshot-window-close"


class SnapshotHost(Protocol):
    """What a re-snapshot needs of the reader whose stream it is interleaved with."""

    @property
    def captured_tables(self) -> Set[str]:
        """Schema-qualified names of the tables whose changes become events."""
        ...

    @property
    def transaction_xid(self) -> int | None:
        """The xid of the transaction being read (``None`` if it has none)."""
        ...

    def keyed_relation(self, rel: Relation) -> Relation:
        """``rel`` with key flags on its primary-key columns (events' keys)."""
        ...

    def primary_key(self, schema: TableSchema) -> tuple[str, ...]:
        """The table's primary-key columns, if the reader knows them (else ``()``)."""
        ...

    def emit_snapshot_rows(self, schema: TableSchema, rows: Collection[Row]) -> None:
        """Produce ``rows`` as ``op='r'`` events of the transaction being read."""
        ...


@dataclass(frozen=True)
class Seen:
    """The transactions a snapshot sees (``pg_current_snapshot()``), by 32-bit xid as
    pgoutput gives them: those committed before it that precede ``xmax`` and were not
    running when it was taken."""

    xmax: int
    running: frozenset[int]

    @classmethod
    def parse(cls, text: str) -> Seen:
        """From ``xmin:xmax:xip,...`` (64-bit, epoch included)."""
        _, xmax, xip = text.split(":")
        return cls(int(xmax) % 2**32, frozenset(int(x) % 2**32 for x in xip.split(",") if x))

    def saw(self, xid: int) -> bool:
        precedes = ((xid - self.xmax) % 2**32) >= 2**31  # xid < xmax, modulo wraparound
        return precedes and xid not in self.running


@dataclass
class _Chunk:
    id: str
    shape: TableShape
    schema: TableSchema
    rows: dict[tuple[Any, ...], Row]
    last_key: tuple[bytes | None, ...] | None
    size: int
    seen: Seen
    window_open: bool = False

    def stale_by(self, xid: int | None) -> bool:
        """Whether a change of transaction ``xid`` read now is newer than the chunk's
        rows: inside the window always; before it, if the chunk's read did not see it."""
        return self.window_open or (xid is not None and not self.seen.saw(xid))


@dataclass
class _Request:
    signal_id: str
    tables: deque[str] = field(default_factory=deque)


class IncrementalSnapshot:
    """Drives re-snapshots for one reader (single-threaded, called from its loop)."""

    def __init__(
        self,
        host: SnapshotHost,
        conn: psycopg.Connection[tuple[Any, ...]],
        *,
        chunk_size: int,
        signal_table: tuple[str, str],
    ) -> None:
        self.host = host
        self.conn = conn
        self.chunk_size = chunk_size
        self.signal_table = signal_table
        """``(schema, table)`` of the signal table (requests and watermarks)."""
        self.cache = RelationCache()
        self.requests: deque[_Request] = deque()
        self.chunk: _Chunk | None = None
        self.after: tuple[bytes | None, ...] | None = None
        self.table_rows = 0
        self.confirm_ceiling: int | None = None
        """No confirmation past this LSN while a re-snapshot runs (its request LSN)."""
        self._signal_ids: list[str] = []

    # -- stream callbacks -----------------------------------------------------------

    def on_signal(self, row: Row, lsn: int) -> None:
        kind, data, sig_id = row.get("type"), row.get("data") or {}, str(row.get("id"))
        if kind == EXECUTE:
            tables = [str(t) for t in (data.get("tables") or [])] if isinstance(data, dict) else []
            captured = self.host.captured_tables
            unknown = [t for t in tables if _qualify(t) not in captured]
            if unknown:
                log.error(
                    "event=resnapshot_rejected signal=%s unknown_tables=%s captured=%s",
                    sig_id, unknown, sorted(captured),
                )  # fmt: skip
            wanted = [_qualify(t) for t in tables if _qualify(t) in captured] or (
                sorted(captured) if not tables else []
            )
            if wanted:
                if self.confirm_ceiling is None:
                    self.confirm_ceiling = lsn
                self.requests.append(_Request(sig_id, deque(wanted)))
                self._signal_ids.append(sig_id)
                log.info("event=resnapshot_requested signal=%s tables=%s", sig_id, wanted)
        elif kind == OPEN and self.chunk is not None and data.get("chunk") == self.chunk.id:
            self.chunk.window_open = True
        elif kind == CLOSE and self.chunk is not None and data.get("chunk") == self.chunk.id:
            self._emit_chunk()

    def watching(self, schema: TableSchema) -> bool:
        """True while changes of ``schema``'s table can make chunk rows stale (they must be
        passed to :meth:`on_change`): in its window, or from a transaction its read did
        not see."""
        chunk = self.chunk
        return (
            chunk is not None
            and bool(chunk.rows)
            and chunk.stale_by(self.host.transaction_xid)
            and (schema.schema, schema.table) == (chunk.schema.schema, chunk.schema.table)
        )

    def on_change(self, schema: TableSchema, before: Row | None, after: Row | None) -> None:
        """A live change newer than the chunk (see :meth:`watching`): its keys leave the
        chunk (the live event is newer).

        ``before``/``after`` need only hold the primary-key columns.
        """
        chunk = self.chunk
        if chunk is None or not self.watching(schema):
            return
        pk = self._pk(chunk.schema)
        for row in (before, after):
            if row is not None:
                chunk.rows.pop(tuple(row.get(k) for k in pk), None)

    # -- driving --------------------------------------------------------------------

    def step(self) -> None:
        """Start the next chunk when none is pending and a request is queued."""
        if self.chunk is not None:
            return
        while self.requests:
            req = self.requests[0]
            if not req.tables:
                self.requests.popleft()
                continue
            self._next_chunk(req.tables[0])
            return
        if self.confirm_ceiling is not None:
            self._finish()

    def _next_chunk(self, qualified: str) -> None:
        schema_name, _, table = qualified.rpartition(".")
        shape = describe_table(self.conn, schema_name, table)
        for t in shape.types:
            self.cache.apply_type(t)
        rel = self.host.keyed_relation(shape.relation)
        schema = self.cache.apply_relation(rel)
        chunk_id = uuid.uuid4().hex
        self._watermark(OPEN, chunk_id, qualified)
        size = self.chunk_size
        with self.conn.transaction():  # one snapshot: the one the rows are read in
            self.conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            snapshot = self.conn.execute("SELECT pg_current_snapshot()::text").fetchone()
            raw_rows = read_chunk(self.conn, shape, after=self.after, limit=size)
        assert snapshot is not None
        self._watermark(CLOSE, chunk_id, qualified)
        pk = self._pk(schema)
        rows: dict[tuple[Any, ...], Row] = {}
        for raw in raw_rows:
            row = self.cache.row(rel.relation_id, raw)
            rows[tuple(row.get(k) for k in pk)] = row
        last_key = tuple(_text(raw_rows[-1][i]) for i in shape.key_positions) if raw_rows else None
        self.chunk = _Chunk(
            chunk_id, shape, schema, rows, last_key, len(raw_rows), Seen.parse(str(snapshot[0]))
        )

    def _emit_chunk(self) -> None:
        """The rows left in the chunk, as of the high watermark: their ``source.lsn`` is
        its commit LSN, below that of every transaction committed after it (whose
        changes are newer than what the chunk read) and above that of every one
        committed before."""
        chunk = self.chunk
        assert chunk is not None
        self.host.emit_snapshot_rows(chunk.schema, chunk.rows.values())
        self.table_rows += len(chunk.rows)
        req = self.requests[0]
        table = req.tables[0]
        if chunk.size < self.chunk_size:
            log.info("event=resnapshot_table_done table=%s rows=%d", table, self.table_rows)
            req.tables.popleft()
            self.after = None
            self.table_rows = 0
        else:
            self.after = chunk.last_key
        self.chunk = None

    def _finish(self) -> None:
        log.info("event=resnapshot_done signals=%s", self._signal_ids)
        sig = sql.Identifier(*self.signal_table)
        self.conn.execute(
            sql.SQL("DELETE FROM {} WHERE id = ANY(%s) OR type IN (%s, %s)").format(sig),
            (self._signal_ids, OPEN, CLOSE),
        )
        self._signal_ids = []
        self.confirm_ceiling = None

    def _watermark(self, kind: str, chunk_id: str, table: str) -> None:
        sig = sql.Identifier(*self.signal_table)
        self.conn.execute(
            sql.SQL("INSERT INTO {} (id, type, data) VALUES (%s, %s, %s)").format(sig),
            (f"{chunk_id}-{kind}", kind, Jsonb({"chunk": chunk_id, "table": table})),
        )

    def _pk(self, schema: TableSchema) -> tuple[str, ...]:
        return self.host.primary_key(schema) or tuple(c.name for c in schema.key_columns)


def _text(value: object) -> bytes | None:
    """A key value of a chunk row, in its text form (chunks are read as text)."""
    assert value is None or isinstance(value, bytes)
    return value


def _qualify(table: str) -> str:
    return table if "." in table else f"public.{table}"
