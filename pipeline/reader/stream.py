"""The reader's stream loop: read the replication stream, produce, confirm, heartbeat.

Messages are read in bursts (up to 2,000, without waiting once one arrived); between
bursts the producer's delivery reports are served, and the slot is confirmed up to the
end of the newest transaction whose every event, and every event before it, Kafka has
acknowledged (:class:`~pipeline.reader.acks.AckTracker`; never past a running
re-snapshot's request).  A delivery failure stops the reader without confirming
anything more.  Heartbeats (a logical message every ``heartbeat_interval``) keep an
idle slot's position moving.  On stop, every produced event is waited for, confirmed
and reported to the server.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from pipeline.reader import pgoutput as po
from pipeline.reader.emit import now_ms
from pipeline.reader.errors import ReaderError
from pipeline.reader.replication import ReplicationConnection, XLogData, lsn_to_int, lsn_to_str
from pipeline.reader.settings import HEARTBEAT_PREFIX
from pipeline.reader.translate import Translation

log = logging.getLogger("pipeline.reader.service")
"""The reader's log lines keep the logger name they had before service.py was split."""

_PROMPT_STATUS_S = 0.1
"""Least seconds between two status updates sent because the confirmed LSN advanced."""


class Streaming(Translation):
    """The stream loop (see the module docstring)."""

    def _stream(self, repl: ReplicationConnection, stop: threading.Event) -> None:
        handlers: dict[type, Callable[[Any, XLogData], None]] = {
            po.Begin: self._on_begin,
            po.Commit: self._on_commit,
            po.Relation: self._on_relation,
            po.Type: self._on_type,
            po.Insert: self._on_insert,
            po.Update: self._on_update,
            po.Delete: self._on_delete,
            po.Truncate: self._on_truncate,
            po.Message: self._on_message,
            po.Origin: lambda m, x: None,
        }
        decode = po.decode_message
        read = repl.read_raw
        insert = self._insert
        producer = self.producer
        tracker = self.tracker
        while not stop.is_set():
            burst = 0
            # Waiting on the socket: briefly while acknowledgements are due (they are
            # handled between bursts) or a confirmation is still to be sent, longer
            # when nothing is pending.
            pending = tracker.in_flight or repl.flushed_lsn > repl.reported_lsn
            idle_wait = 0.01 if pending else 0.2
            self._ts_ms = now_ms()
            while burst < 2000:
                got = read(0.0 if burst else idle_wait)
                if got is None:
                    break
                lsn, payload = got
                if payload[0] == 0x49:  # 'I': the hot path, no message object
                    insert(payload, lsn)
                else:
                    msg = decode(payload)
                    handler = handlers.get(type(msg))
                    if handler is None:
                        raise ReaderError(
                            f"unexpected pgoutput message {type(msg).__name__} (protocol v1)"
                        )
                    handler(msg, XLogData(lsn, lsn, 0, payload))
                burst += 1
                if burst & 0xFF == 0:
                    self._ts_ms = now_ms()
            producer.poll(0)
            self._count_hot()
            self.metrics.flush_counts()
            self._confirm(repl)
            self._maybe_heartbeat()
            assert self.incremental is not None
            self.incremental.step()
        # Drain: wait for every produced event, confirm, tell the server.
        self._count_hot()
        self.metrics.flush_counts()
        log.info("event=draining in_flight=%d", self.tracker.in_flight)
        self.producer.flush(60)
        self._confirm(repl)
        repl.send_status(force=True)
        log.info(
            "event=stopped confirmed=%s queue_full_waits=%d",
            lsn_to_str(repl.flushed_lsn), self.queue_full_waits,
        )  # fmt: skip

    def _check_failed(self) -> None:
        if self.tracker.failed:
            raise ReaderError(
                f"Kafka delivery failed ({self.tracker.failed}); stopping without confirming: "
                "a restart resumes from the slot's last confirmed position"
            )

    def _confirm(self, repl: ReplicationConnection) -> None:
        self._check_failed()
        if self._tx is None and self.tracker.in_flight == 0:
            self.tracker.idle(repl.received_lsn)
        lsn = self.tracker.confirmable
        if self.incremental is not None and self.incremental.confirm_ceiling is not None:
            lsn = min(lsn, self.incremental.confirm_ceiling)
        if lsn > repl.flushed_lsn:
            repl.confirm(lsn)
            self.metrics.confirmed_lsn.set(lsn)
        if repl.flushed_lsn > repl.reported_lsn:
            # Tell the server soon (at most 10 times a second), not only every
            # status_interval: the slot's WAL is released and its lag reads true sooner.
            repl.maybe_send_status(_PROMPT_STATUS_S)
        self.metrics.in_flight.set(self.tracker.in_flight)

    def _maybe_heartbeat(self) -> None:
        interval = self.settings.heartbeat_interval
        if not interval or time.monotonic() - self._last_heartbeat < interval:
            return
        self._last_heartbeat = time.monotonic()
        row = self.conn.execute(
            "SELECT pg_logical_emit_message(true, %s, now()::text)::text, "
            "pg_current_wal_lsn()::text",
            (HEARTBEAT_PREFIX,),
        ).fetchone()
        if row is not None:
            self.metrics.server_wal_lsn.set(lsn_to_int(str(row[1])))
