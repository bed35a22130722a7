"""Rebuilding a sink from the document topics, beside the live consumer.

A replay reads the compacted document topics ``{prefix}.doc.products`` /
``.categories`` with its own assignment (no consumer group: the live consumer's
offsets are not touched) from the beginning, or from ``--from-time``, and hands the
records to a sink built for the replay (``SinkContext.options["replay"] = "1"``: a
sink re-sends what its own bookkeeping would skip).  A :class:`ReplayPlan` adapts
this per consumer: the search plan writes into a new index generation and swaps the
alias at the end; the default plan re-sends everything as idempotent upserts.

Passes: the first reads to the end offsets seen at start; then the plan's
``switch`` (e.g. the alias swap); then a last pass reads whatever arrived meanwhile
(the live consumer may have written it to the old target only).  Everything a pass
wrote is durable (the sink flushed) before the positions are saved.

Resume: the positions, the pass and the plan's own state are saved atomically to a
JSON state file after every flushed batch; an interrupted replay started again with
the same state file resumes where it stopped.

Guarantee: at-least-once into the new target; writes are idempotent (versions), so a
resumed replay re-writing a batch changes nothing.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from consumers.capabilities import ReplayPlan
from consumers.contract import Sink
from consumers.driver import Backoff, Decoded, SinkDriver, Written
from pipeline.errors import CatalogCdcError
from pipeline.kafka import consumer_config

log = logging.getLogger(__name__)

_SWITCH_INTERVAL_S = 0.0005

T = TypeVar("T")

__all__ = ["ReplayError", "ReplayProgress", "ReplayResult", "Replayer"]


class ReplayError(CatalogCdcError):
    """A replay cannot go on."""


@dataclass(frozen=True)
class ReplayProgress:
    consumer: str
    phase: str  # "replaying", "switching", "catching up", "done"
    done: int
    total: int
    docs_per_s: float
    eta_s: float | None


@dataclass
class ReplayResult:
    consumer: str
    records: int
    rejected: int
    seconds: float
    dry_run: bool = False
    detail: dict[str, Any] = field(default_factory=dict)


Positions = dict[str, dict[int, int]]  # topic -> partition -> next offset


class Replayer:
    """Runs one replay (see the module docstring)."""

    def __init__(
        self,
        sink: Sink,
        plan: ReplayPlan,
        *,
        bootstrap: str,
        topic_prefix: str,
        state_path: Path,
        schema_registry_url: str | None = None,
        from_time: datetime | None = None,
        batch_size: int = 2000,
        progress: Callable[[ReplayProgress], None] | None = None,
        stop: threading.Event | None = None,
        backoff_max: float = 30.0,
    ) -> None:
        self.sink = sink
        self.plan = plan
        self.bootstrap = bootstrap
        self.prefix = topic_prefix
        self.state_path = state_path
        self.from_time = from_time
        self.batch_size = batch_size
        self.progress = progress
        self.stop = stop or threading.Event()
        # The live consumer's driver: the same decoding, retries and dead letters
        # (``{prefix}.dlq.{consumer}``); a replay waits out an outage on its stop event.
        self.driver = SinkDriver(
            sink,
            bootstrap=bootstrap,
            topic_prefix=topic_prefix,
            wait=self.stop.wait,
            schema_registry_url=schema_registry_url,
            backoff=Backoff(maximum=backoff_max),
        )
        self.topics = self.driver.topics
        self.records = 0
        self.rejected = 0
        """Records dead-lettered (refused by the target, or undecodable)."""
        self._consumer = Consumer(consumer_config(bootstrap, f"{topic_prefix}-replay-tool"))

    # -- offsets ---------------------------------------------------------------------------

    def _ends(self) -> Positions:
        ends: Positions = {}
        for topic in self.topics:
            meta = self._consumer.list_topics(topic, timeout=10).topics.get(topic)
            if meta is None or meta.error is not None or not meta.partitions:
                raise ReplayError(
                    f"topic {topic!r} does not exist (has `catalog-cdc assembler` run?)"
                )
            ends[topic] = {
                p: self._consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in sorted(meta.partitions)
            }
        return ends

    def _starts(self, ends: Positions) -> Positions:
        starts: Positions = {}
        for topic, parts in ends.items():
            if self.from_time is None:
                starts[topic] = {
                    p: self._consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[0]
                    for p in parts
                }
                continue
            ms = int(self.from_time.timestamp() * 1000)
            found = self._consumer.offsets_for_times(
                [TopicPartition(topic, p, ms) for p in parts], timeout=10
            )
            starts[topic] = {
                tp.partition: (tp.offset if tp.offset >= 0 else parts[tp.partition]) for tp in found
            }
        return starts

    @staticmethod
    def _remaining(pos: Positions, ends: Positions) -> int:
        return sum(
            max(0, end - pos.get(t, {}).get(p, 0))
            for t, parts in ends.items()
            for p, end in parts.items()
        )

    # -- state -----------------------------------------------------------------------------

    def _load(self) -> dict[str, Any] | None:
        if not self.state_path.exists():
            return None
        data: dict[str, Any] = json.loads(self.state_path.read_text())
        data["positions"] = {
            t: {int(p): o for p, o in ps.items()} for t, ps in data["positions"].items()
        }
        data["ends"] = {t: {int(p): o for p, o in ps.items()} for t, ps in data["ends"].items()}
        return data

    def _save(self, state: dict[str, Any]) -> None:
        """Atomically: write a temporary file, fsync, rename."""
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(self.state_path.suffix + ".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            json.dump(state, f)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.state_path)

    # -- running ---------------------------------------------------------------------------

    def dry_run(self) -> ReplayResult:
        ends = self._ends()
        total = self._remaining(self._starts(ends), ends)
        self._consumer.close()
        return ReplayResult(
            self.sink.name,
            total,
            0,
            0.0,
            dry_run=True,
            detail={"topics": {t: sum(ps.values()) for t, ps in ends.items()}},
        )

    def run(self) -> ReplayResult:
        started = time.monotonic()
        state = self._load()
        if state is None:
            ends = self._ends()
            state = {"pass": "first", "positions": self._starts(ends), "ends": ends, "plan": {}}
            log.info(
                "event=replay_started consumer=%s messages=%d",
                self.sink.name,
                self._remaining(state["positions"], ends),
            )
        else:
            log.info(
                "event=replay_resumed consumer=%s pass=%s remaining=%d",
                self.sink.name,
                state["pass"],
                self._remaining(state["positions"], state["ends"]),
            )
        # Every call into the sink runs on one worker thread (a sink may hold objects,
        # such as SQLite connections, that belong to the thread that opened them), so
        # the main thread can read and decode the next batch meanwhile.
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"replay-{self.sink.name}")
        # The decoding thread is busy the whole time; a thread back from the network
        # (the sink's requests) waits for the GIL up to the switch interval, several
        # times a request.  5 ms -> 0.5 ms made a search replay 25 % faster (measured).
        switch = sys.getswitchinterval()
        sys.setswitchinterval(min(switch, _SWITCH_INTERVAL_S))
        if not self._on_sink(self.driver.open):
            self._pool.shutdown()
            sys.setswitchinterval(switch)
            self._consumer.close()
            return ReplayResult(
                self.sink.name,
                0,
                0,
                time.monotonic() - started,
                detail={"pass": state["pass"], "interrupted": True},
            )
        try:
            state["plan"] = self._on_sink(lambda: self.plan.prepare(self.sink, state["plan"]))
            self._save(state)
            if state["pass"] == "first":
                self._pass(state, "replaying")
                if self.stop.is_set():
                    return self._result(started, state, interrupted=True)
                state["plan"] = self._on_sink(lambda: self.plan.switch(self.sink, state["plan"]))
                state["pass"] = "last"
                state["ends"] = self._ends()
                self._save(state)
            if state["pass"] == "last":
                self._pass(state, "catching up")
                if self.stop.is_set():
                    return self._result(started, state, interrupted=True)
                state["plan"] = self._on_sink(lambda: self.plan.finish(self.sink, state["plan"]))
                state["pass"] = "done"
                self._save(state)
            self._report("done", 0, 0, started)
            return self._result(started, state)
        finally:
            self._consumer.close()
            self._on_sink(self.sink.close)
            self._on_sink(self.driver.close)
            self._pool.shutdown()
            sys.setswitchinterval(switch)

    def _on_sink(self, call: Callable[[], T]) -> T:
        return self._pool.submit(call).result()

    def _result(
        self, started: float, state: dict[str, Any], interrupted: bool = False
    ) -> ReplayResult:
        detail = {"pass": state["pass"], **state["plan"]}
        if interrupted:
            detail["interrupted"] = True
        result = ReplayResult(
            self.sink.name,
            self.records,
            self.rejected,
            time.monotonic() - started,
            detail=detail,
        )
        if not interrupted and state["pass"] == "done":
            self.state_path.unlink(missing_ok=True)
        log.info(
            "event=replay_%s consumer=%s records=%d rejected=%d seconds=%.1f",
            "interrupted" if interrupted else "done",
            self.sink.name,
            result.records,
            result.rejected,
            result.seconds,
        )
        return result

    def _pass(self, state: dict[str, Any], phase: str) -> None:
        """Read to ``state["ends"]``; batch k is written (a worker thread: the driver's
        add + flush + dead letters) while batch k+1 is read and decoded, and its
        positions are saved only once the driver reported it written."""
        pos: Positions = state["positions"]
        ends: Positions = state["ends"]
        total = self._remaining(pos, ends)
        progress = [0]
        t0 = time.monotonic()
        self._report(phase, 0, total, t0)

        def complete(job: Future[Written | None], batch: Decoded) -> bool:
            written = job.result()
            if written is None:
                return False  # stopping
            self.rejected += written.dead_letters
            for (topic, part), offset in batch.positions.items():
                pos.setdefault(topic, {})[part] = offset
            self.records += len(batch)
            progress[0] += len(batch)
            self._save(state)
            self._report(phase, progress[0], total, t0)
            return not self.stop.is_set()

        pending: tuple[Future[Written | None], Decoded] | None = None
        for msgs in self._batches(pos, ends):
            batch = self.driver.decode(msgs)
            if pending is not None and not complete(*pending):
                return
            pending = (self._pool.submit(self.driver.write, batch), batch)
        if pending is not None:
            complete(*pending)

    def _batches(self, pos: Positions, ends: Positions) -> Iterator[list[Message]]:
        """The messages up to ``ends``, in batches of up to ``batch_size``."""
        todo = [
            TopicPartition(t, p, pos.get(t, {}).get(p, OFFSET_BEGINNING))
            for t, parts in ends.items()
            for p, end in parts.items()
            if end > pos.get(t, {}).get(p, 0)
        ]
        if not todo:
            return
        self._consumer.assign(todo)
        left = {(tp.topic, tp.partition) for tp in todo}
        batch: list[Message] = []
        idle_since = time.monotonic()
        while left and not self.stop.is_set():
            msgs = self._consumer.consume(self.batch_size, 0.5)
            if not msgs and time.monotonic() - idle_since > 60:
                raise ReplayError(f"no messages for 60 s with {sorted(left)} not at their end")
            for msg in msgs:
                if msg.error():
                    raise ReplayError(f"reading {msg.topic()}[{msg.partition()}]: {msg.error()}")
                topic, part, offset = msg.topic() or "", msg.partition() or 0, msg.offset() or 0
                if (topic, part) not in left:
                    continue
                idle_since = time.monotonic()
                if offset >= ends[topic][part]:
                    left.discard((topic, part))
                    self._consumer.pause([TopicPartition(topic, part)])
                    continue
                batch.append(msg)
                if offset + 1 >= ends[topic][part]:
                    left.discard((topic, part))
            if batch and (len(batch) >= self.batch_size or not left or not msgs):
                yield batch
                batch = []
        if batch and not self.stop.is_set():
            yield batch
        self._consumer.unassign()

    def _report(self, phase: str, done: int, total: int, t0: float) -> None:
        if self.progress is None:
            return
        elapsed = max(time.monotonic() - t0, 1e-9)
        rate = done / elapsed
        eta = (total - done) / rate if rate > 0 and total > done else (0.0 if done else None)
        self.progress(ReplayProgress(self.sink.name, phase, done, total, rate, eta))


def terminal_progress(stream: Any = None) -> Callable[[ReplayProgress], None]:
    """A progress bar on a terminal (one line, redrawn), else a line every 5 s."""
    out = stream or sys.stderr
    tty = out.isatty()
    last = [0.0]

    def show(p: ReplayProgress) -> None:
        now = time.monotonic()
        final = p.phase == "done" or (p.total and p.done >= p.total)
        if not tty and not final and now - last[0] < 5:
            return
        last[0] = now
        width = 30
        frac = p.done / p.total if p.total else 1.0
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        eta = "-" if p.eta_s is None else f"{p.eta_s:,.0f} s"
        line = (
            f"{p.consumer} {p.phase:<11} [{bar}] {p.done:,}/{p.total:,} "
            f"{p.docs_per_s:,.0f} docs/s ETA {eta}"
        )
        out.write(("\r" + line + ("\n" if final else "")) if tty else line + "\n")
        out.flush()

    return show
