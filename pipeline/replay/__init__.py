"""Rebuild any sink from the document topics (``catalog-cdc replay``).

:func:`replay` is the one entry point (the CLI and the admin API call it): it builds
the consumer's sink for a replay, picks its :class:`~pipeline.replay.driver.ReplayPlan`
(the search index: a new generation swapped in by alias; the hosted search service: a
full import; every other consumer: everything re-sent as idempotent upserts) and runs
the :class:`~pipeline.replay.driver.Replayer`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from pipeline.replay.driver import (
    Replayer,
    ReplayError,
    ReplayPlan,
    ReplayProgress,
    ReplayResult,
    UpsertPlan,
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
    from consumers.registry import SinkContext, load
    from pipeline.documents.reading import document_codec

    stop = stop or threading.Event()
    state_path = state_path or default_state_path(consumer, connections.topic_prefix)
    opts = dict(options or {})
    kv_index: Path | None = None
    if consumer == "edge-kv" and "state" not in opts:
        # A write index of its own: every key is written again (and pulse moves at the
        # end), whatever the live consumer's index says.
        kv_index = state_path.with_suffix(".kv-index")
        opts["state"] = str(kv_index)
    context = SinkContext(connections, opts, replay=True)
    sink = load(consumer)(context)
    plan: ReplayPlan = UpsertPlan()
    if consumer == "search":
        from consumers.search.replay import SearchReplayPlan

        plan = SearchReplayPlan.for_sink(sink, grace=grace, stop=stop)
    elif consumer == "search-service":
        return _full_import(sink, connections, dry_run, progress)
    bootstrap = connections.require("kafka_bootstrap")
    replayer = Replayer(
        sink,
        plan,
        bootstrap=bootstrap,
        codec=document_codec(bootstrap, connections.topic_prefix, connections.schema_registry_url),
        topic_prefix=connections.topic_prefix,
        state_path=state_path,
        from_time=from_time,
        progress=progress,
        stop=stop,
        batch_size=batch_size,
    )
    if dry_run:
        return replayer.dry_run()
    result = replayer.run()
    if kv_index is not None and not result.detail.get("interrupted"):
        kv_index.unlink(missing_ok=True)
    return result


def _full_import(
    sink: Any,
    connections: ConnectionSettings,
    dry_run: bool,
    progress: Callable[[ReplayProgress], None] | None,
) -> ReplayResult:
    """The hosted search service's own rebuild protocol: ``full_import=start``, every
    current document, ``done`` (the service swaps its index at ``done``).  Not resumable
    (the protocol starts over); the latest document per key is read from the topics."""
    import time

    from pipeline.documents.reading import latest_documents

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
    sink.open()
    try:
        rejected = sink.full_import(records)
    finally:
        sink.close()
    seconds = time.monotonic() - started
    if progress is not None:
        rate = len(records) / max(seconds, 1e-9)
        progress(ReplayProgress(sink.name, "done", len(records), len(records), rate, 0.0))
    return ReplayResult(
        sink.name, len(records), len(rejected), seconds, detail={"full_import": "done"}
    )
