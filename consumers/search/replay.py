"""Replaying the search index: a new generation built beside the live one, swapped in.

While the replay's first pass writes every document into ``{prefix}-products-{n+1}``,
searches and the live consumer keep using the alias ``{prefix}-products`` (the old
generation).  Then one ``_aliases`` request moves the alias atomically; the replay's
last pass writes what arrived meanwhile (documents the live consumer may have put
into the old generation only), and after a grace period the old generation is
deleted.  Searches never see a missing index (tested while queries run).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from typing import Any

from consumers.contract import Sink
from consumers.search import mapping
from consumers.search.engine import SearchEngine
from consumers.search.sink import SearchSink
from pipeline.errors import CatalogCdcError

log = logging.getLogger(__name__)


class SearchReplayPlan:
    """Implements :class:`~consumers.capabilities.ReplayPlan` on either engine.

    ``engine``: the sink's engine, asked for at each step (the sink connects on first
    use, so a plan can be made while the engine does not answer yet)."""

    def __init__(
        self,
        engine: Callable[[], SearchEngine],
        prefix: str,
        grace: float,
        stop: threading.Event,
    ) -> None:
        self._engine = engine
        self.prefix = prefix
        self.alias = mapping.alias(prefix)
        self.grace = grace
        self.stop = stop

    @property
    def engine(self) -> SearchEngine:
        return self._engine()

    def _generations(self) -> dict[int, str]:
        pattern = re.compile(rf"^{re.escape(self.prefix)}-products-(\d+)$")
        names = self.engine.indices(f"{self.prefix}-products-*")
        return {int(m.group(1)): n for n in names if (m := pattern.match(n))}

    def _live(self) -> list[str]:
        return self.engine.alias_indices(self.alias)

    def prepare(self, sink: Sink, saved: dict[str, Any]) -> dict[str, Any]:
        search = _search_sink(sink)
        if "target" not in saved:
            generations = self._generations()
            n = max(generations, default=0) + 1
            target = mapping.generation(self.prefix, n)
            self.engine.create_index(target)  # the template gives mapping and settings
            saved = {"target": target, "old": self._live()}
            log.info("event=search_replay_generation target=%s live=%s", target, saved["old"])
        search.target_index = saved["target"]
        return saved

    def switch(self, sink: Sink, saved: dict[str, Any]) -> dict[str, Any]:
        target = saved["target"]
        live = self._live()
        actions: list[dict[str, Any]] = [
            {"remove": {"index": old, "alias": self.alias}} for old in live if old != target
        ]
        actions.append({"add": {"index": target, "alias": self.alias}})
        self.engine.update_aliases(actions)
        log.info("event=search_alias_swapped alias=%s to=%s from=%s", self.alias, target, live)
        return {**saved, "old": sorted(set(saved.get("old", [])) | set(live) - {target}),
                "swapped": True}  # fmt: skip

    def finish(self, sink: Sink, saved: dict[str, Any]) -> dict[str, Any]:
        old = [n for n in saved.get("old", []) if n != saved["target"]]
        if old and self.grace > 0:
            log.info("event=search_replay_grace seconds=%.0f old=%s", self.grace, old)
            if self.stop.wait(self.grace):
                return saved  # interrupted: the next run deletes them
        for name in old:
            self.engine.delete_index(name)  # one already gone is no error
        log.info("event=search_old_generations_deleted indices=%s", old)
        return {**saved, "deleted": old}


def _search_sink(sink: Sink) -> SearchSink:
    found: object = sink
    if not isinstance(found, SearchSink):
        raise CatalogCdcError(f"the search replay needs the search sink, not {type(found)!r}")
    return found
