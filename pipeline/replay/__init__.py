"""Rebuild any sink from the document topics (``catalog-cdc replay``).

:func:`replay` is the one entry point (the CLI and the admin API call it): it builds
the consumer's sink for a replay and asks it what it can do
(:mod:`consumers.capabilities`): a :class:`~consumers.capabilities.FullImport` sink
rebuilds through its target's own protocol; a
:class:`~consumers.capabilities.Replayable` one gives the
:class:`~consumers.capabilities.ReplayPlan` (e.g. a new index generation swapped in by
alias); every other sink gets everything re-sent as idempotent upserts.  The
:class:`~pipeline.replay.driver.Replayer` then drives it.  No consumer is named here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path

from consumers.capabilities import FullImport, ReplayPlan
from consumers.contract import Sink
from pipeline.replay.driver import (
    Replayer,
    ReplayError,
    ReplayProgress,
    ReplayResult,
    terminal_progress,
)
from pipeline.settings import ConnectionSettings

__all__ = [
    "ReplayError",
    "ReplayProgress",
    "ReplayResult",
    "default_state_path",
    "replay",
    "terminal_progress",
]


def default_state_path(consumer: str, prefix: str) -> Path:
    """Where an unfinished replay keeps its positions (resumed from there)."""
    from pipeline.settings import default_stack_dir

    return default_stack_dir() / "replay" / f"{prefix}-{consumer}.json"


def replay(
    consumer: str,
    *,
    connections: ConnectionSettings,
    options: Mapping[str, str] | None = None,
    from_time: datetime | None = None,
    dry_run: bool = False,
    grace: float = 30.0,
    state_path: Path | None = None,
    progress: Callable[[ReplayProgress], None] | None = None,
    stop: threading.Event | None = None,
    batch_size: int = 2000,
) -> ReplayResult:
    """Rebuild ``consumer``'s target from the document topics; see the module docstring.

    ``options`` are the consumer's ``--option``s (as for ``catalog-cdc consume``);
    ``grace``: seconds the search replay keeps the old index generation after the swap.
    An interrupted replay (``stop`` set, or a crash) resumes from ``state_path``.
    """
    from consumers.capabilities import FullImport, Replayable, ReplayRequest, UpsertPlan
    from consumers.registry import SinkContext, load

    stop = stop or threading.Event()
    state_path = state_path or default_state_path(consumer, connections.topic_prefix)
    context = SinkContext(connections, dict(options or {}), replay=True, replay_state=state_path)
    sink = load(consumer)(context)
    if isinstance(sink, FullImport):
        return _full_import(sink, connections, dry_run, progress, stop)
    plan: ReplayPlan = (
        sink.replay_plan(ReplayRequest(state_path, grace, stop))
        if isinstance(sink, Replayable)
        else UpsertPlan()
    )
    bootstrap = connections.require("kafka_bootstrap")
    replayer = Replayer(
        sink,
        plan,
        bootstrap=bootstrap,
        topic_prefix=connections.topic_prefix,
        schema_registry_url=connections.schema_registry_url,
        state_path=state_path,
        from_time=from_time,
        progress=progress,
        stop=stop,
        batch_size=batch_size,
    )
    if dry_run:
        return replayer.dry_run()
    return replayer.run()


def _full_import(
    sink: Sink,
    connections: ConnectionSettings,
    dry_run: bool,
    progress: Callable[[ReplayProgress], None] | None,
    stop: threading.Event,
) -> ReplayResult:
    """A target with a rebuild protocol of its own (e.g. the hosted search service's
    ``full_import=start``, every current document, ``done``): not resumable (the
    protocol starts over); the latest document per key is read from the topics.  What
    the target refuses goes to the consumer's dead-letter topic, as in live consuming."""
    import time

    from consumers.driver import SinkDriver
    from pipeline.documents.reading import latest_documents

    assert isinstance(sink, FullImport)
    started = time.monotonic()
    bootstrap = connections.require("kafka_bootstrap")
    records = [
        m
        for kind in sink.kinds
        for m in latest_documents(
            bootstrap, connections.topic_prefix, kind,
            schema_registry_url=connections.schema_registry_url,
        ).values()
    ]  # fmt: skip
    if dry_run:
        return ReplayResult(sink.name, len(records), 0, 0.0, dry_run=True)
    if progress is not None:
        progress(ReplayProgress(sink.name, "replaying", 0, len(records), 0.0, None))
    driver = SinkDriver(
        sink,
        bootstrap=bootstrap,
        topic_prefix=connections.topic_prefix,
        wait=stop.wait,
        schema_registry_url=connections.schema_registry_url,
    )
    if not driver.open():
        return ReplayResult(sink.name, 0, 0, time.monotonic() - started,
                            detail={"interrupted": True})  # fmt: skip
    try:
        letters = driver.dead_letter_records(sink.full_import(records))
    finally:
        sink.close()
        driver.close()
    seconds = time.monotonic() - started
    if progress is not None:
        rate = len(records) / max(seconds, 1e-9)
        progress(ReplayProgress(sink.name, "done", len(records), len(records), rate, 0.0))
    return ReplayResult(sink.name, len(records), letters, seconds, detail={"full_import": "done"})
