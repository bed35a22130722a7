"""The logical replication protocol on psycopg 3's low-level ``pq`` connection.

psycopg 3 has no replication API, so this module drives the walsender itself on a
``replication=database`` connection: replication commands go through the simple
query protocol (``PQexec``), and ``START_REPLICATION`` opens a CopyBoth stream read
with ``get_copy_data`` and written with ``put_copy_data``:

- ``w`` XLogData: start LSN, server WAL end, send time (3 x u64), then the payload;
- ``k`` primary keepalive: WAL end, send time, reply-requested flag;
- ``r`` standby status update (ours): written, flushed, applied LSN, time, reply flag.

The flushed LSN we report is what the server may discard: callers pass only an LSN
whose every event is durable downstream.
"""

from __future__ import annotations

import logging
import select
import struct
import time
from dataclasses import dataclass

import psycopg
from psycopg import pq

from pipeline.reader.errors import ReaderError

log = logging.getLogger(__name__)

PG_EPOCH_OFFSET_US = 946_684_800_000_000  # 2000-01-01 in microseconds since 1970-01-01

_XLOG_HEADER = struct.Struct("!QQQ")
_KEEPALIVE = struct.Struct("!QQB")
_STATUS = struct.Struct("!cQQQQB")
_U64 = struct.Struct("!Q").unpack_from
_U64_U64 = struct.Struct("!QQ").unpack_from


def lsn_to_int(text: str) -> int:
    """``'16/B374D848'`` -> integer LSN."""
    hi, _, lo = text.partition("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def lsn_to_str(lsn: int) -> str:
    """Integer LSN -> ``'16/B374D848'``."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def _now_pg_us() -> int:
    return int(time.time() * 1_000_000) - PG_EPOCH_OFFSET_US


@dataclass(frozen=True, slots=True)
class XLogData:
    """One ``w`` message: a pgoutput payload and where it sits in the WAL."""

    data_start: int
    wal_end: int
    send_time_us: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class CreatedSlot:
    name: str
    consistent_point: int
    snapshot_name: str | None


class ReplicationError(ReaderError):
    """The replication connection failed or the server ended the stream."""


class ReplicationConnection:
    """A ``replication=database`` connection to one database's walsender."""

    def __init__(self, dsn: str, *, status_interval: float = 1.0) -> None:
        try:
            self._conn = psycopg.Connection.connect(dsn, autocommit=True, replication="database")
        except psycopg.Error as exc:
            raise ReplicationError(f"cannot open a replication connection: {exc}") from exc
        self._pg = self._conn.pgconn
        self.status_interval = status_interval
        self.received_lsn = 0
        """Highest WAL position received (XLogData end or keepalive WAL end)."""
        self.flushed_lsn = 0
        """Highest position reported as flushed (durable downstream)."""
        self.reported_lsn = 0
        """The flushed LSN of the last status update sent."""
        self._last_status = 0.0
        self._streaming = False

    # -- commands --------------------------------------------------------------------

    def command(self, sql: str) -> list[tuple[str | None, ...]]:
        """Run one replication command; return its rows as text tuples."""
        res = self._pg.exec_(sql.encode())
        if res.status not in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK):
            msg = (res.error_message or b"").decode(errors="replace").strip()
            raise ReplicationError(f"{sql.split()[0]} failed: {msg}")
        rows = []
        for r in range(res.ntuples):
            row = []
            for c in range(res.nfields):
                v = res.get_value(r, c)
                row.append(None if v is None else bytes(v).decode())
            rows.append(tuple(row))
        return rows

    def identify_system(self) -> tuple[str, int, int, str]:
        """(system id, timeline, current WAL flush LSN, database name)."""
        sysid, tli, xlogpos, dbname = self.command("IDENTIFY_SYSTEM")[0]
        return str(sysid), int(tli or 0), lsn_to_int(str(xlogpos)), str(dbname)

    def create_slot(self, name: str, *, export_snapshot: bool) -> CreatedSlot:
        """Create a ``pgoutput`` logical slot; with an exported snapshot if asked.

        An exported snapshot stays valid until this connection runs its next command:
        import it (``SET TRANSACTION SNAPSHOT``) before calling anything else here.
        """
        mode = "EXPORT_SNAPSHOT" if export_snapshot else "NOEXPORT_SNAPSHOT"
        row = self.command(f'CREATE_REPLICATION_SLOT "{name}" LOGICAL pgoutput {mode}')[0]
        return CreatedSlot(
            name=str(row[0]),
            consistent_point=lsn_to_int(str(row[1])),
            snapshot_name=row[2],
        )

    def start(
        self,
        slot: str,
        publication: str,
        *,
        start_lsn: int = 0,
        proto_version: int = 1,
        messages: bool = True,
    ) -> None:
        """``START_REPLICATION``; from the slot's confirmed position when start_lsn is 0."""
        opts = f"proto_version '{proto_version}', publication_names '{publication}'"
        if messages:
            opts += ", messages 'true'"
        sql = f'START_REPLICATION SLOT "{slot}" LOGICAL {lsn_to_str(start_lsn)} ({opts})'
        self._pg.send_query(sql.encode())
        res = self._pg.get_result()
        if res is None or res.status != pq.ExecStatus.COPY_BOTH:
            err = "" if res is None else (res.error_message or b"").decode(errors="replace")
            raise ReplicationError(f"START_REPLICATION on slot {slot} failed: {err.strip()}")
        self._streaming = True
        self.received_lsn = max(self.received_lsn, start_lsn)
        log.info("event=replication_started slot=%s from=%s", slot, lsn_to_str(start_lsn))

    # -- the stream ------------------------------------------------------------------

    def read(self, timeout: float) -> XLogData | None:
        """The next XLogData, or None after ``timeout`` seconds without one.

        Keepalives are handled here: a reply-requested keepalive is answered at once,
        and a status update goes out every ``status_interval`` seconds regardless.
        """
        buf = self._next_xlog(timeout)
        if buf is None:
            return None
        start, end, sent = _XLOG_HEADER.unpack_from(buf, 1)
        return XLogData(start, end, sent, bytes(buf[25:]))

    def read_raw(self, timeout: float) -> tuple[int, bytes] | None:
        """:meth:`read` as ``(data_start, payload)``: the reader's hot path."""
        got = self._pg.get_copy_data(1)
        buf = got[1]
        if got[0] > 0 and buf[0] == 0x77:  # 'w' already buffered: the usual case
            start, end = _U64_U64(buf, 1)
            if end > self.received_lsn:
                self.received_lsn = end
            return start, bytes(buf[25:])
        xlog = self._next_xlog(timeout, got)
        if xlog is None:
            return None
        return _U64(xlog, 1)[0], bytes(xlog[25:])

    def _next_xlog(
        self, timeout: float, got: tuple[int, memoryview] | None = None
    ) -> memoryview | None:
        """The next ``w`` CopyData message (whole, from its type byte), or None.

        ``got``: what ``get_copy_data`` already returned (not a ``w``), to handle first.
        """
        deadline = 0.0
        pg = self._pg
        while True:
            n, buf = got if got is not None else pg.get_copy_data(1)
            got = None
            if n > 0:
                kind = buf[0]
                if kind == 0x77:  # 'w'
                    (end,) = _U64(buf, 9)
                    if end > self.received_lsn:
                        self.received_lsn = end
                    return buf
                if kind == 0x6B:  # 'k'
                    wal_end, _, reply = _KEEPALIVE.unpack_from(buf, 1)
                    if wal_end > self.received_lsn:
                        self.received_lsn = wal_end
                    if reply:
                        self.send_status(force=True)
                    continue
                raise ReplicationError(f"unexpected CopyData message type {chr(kind)!r}")
            if n == 0:
                self.maybe_send_status()
                now = time.monotonic()
                if not deadline:
                    deadline = now + timeout
                remaining = deadline - now
                if remaining <= 0:
                    return None
                ready, _, _ = select.select(
                    [pg.socket], [], [], min(remaining, self.status_interval)
                )
                if ready:
                    pg.consume_input()
                continue
            self._streaming = False
            res = pg.get_result()
            err = "" if res is None else (res.error_message or b"").decode(errors="replace")
            raise ReplicationError(f"the server ended the replication stream: {err.strip() or n}")

    def confirm(self, lsn: int) -> None:
        """Record that everything up to ``lsn`` is durable downstream (sent on the next update)."""
        if lsn > self.flushed_lsn:
            self.flushed_lsn = lsn

    def maybe_send_status(self, interval: float | None = None) -> None:
        """A status update if the last one is ``interval`` (default ``status_interval``)
        seconds old."""
        wait = self.status_interval if interval is None else interval
        if time.monotonic() - self._last_status >= wait:
            self.send_status()

    def send_status(self, *, force: bool = False) -> None:
        """Standby status update: written = received, flushed = applied = confirmed."""
        if not self._streaming:
            return
        written = max(self.received_lsn, self.flushed_lsn)
        msg = _STATUS.pack(b"r", written, self.flushed_lsn, self.flushed_lsn, _now_pg_us(), 0)
        if self._pg.put_copy_data(msg) != 1:
            raise ReplicationError("could not send a standby status update")
        self._pg.flush()
        self._last_status = time.monotonic()
        self.reported_lsn = self.flushed_lsn
        if force:
            log.debug("event=status_update flushed=%s", lsn_to_str(self.flushed_lsn))

    def close(self) -> None:
        if self._streaming:
            try:
                self.send_status()
                self._pg.put_copy_end()
                self._pg.flush()
            except psycopg.Error:
                pass
            self._streaming = False
        self._conn.close()
