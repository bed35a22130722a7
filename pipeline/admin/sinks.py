"""The consumers' sinks as the admin API sees them: built through the registry, asked
for their capabilities, never singled out by name.

:class:`ConsumerSinks` builds a consumer's sink the way ``catalog-cdc consume`` does
(:func:`consumers.registry.load` with a :class:`~consumers.registry.SinkContext` of the
admin's connection settings and the options ``AdminSettings.consumer_options`` gives
that consumer), once per consumer, and closes them all on shutdown.  A sink is built
but never opened: the admin only asks it questions.

What the admin asks is :class:`~consumers.capabilities.TargetProbe`: whether the
target answers (a request that needs it gets 503) and how much it holds
(``product_count`` of ``GET /v1/status``).  Every probe runs in a small thread pool
and is given ``timeout`` seconds: a target that hangs counts as not answering, and
an HTTP request never waits longer than that for it.

A sink that cannot be built with the admin's settings (a missing option, a consumer
that is not installed) has no capabilities here: the reason is logged once, and the
answer is "cannot tell" (``None``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import TypeVar

from consumers.capabilities import TargetProbe
from consumers.contract import Sink
from consumers.registry import SinkContext, SinkFactory, load
from pipeline.errors import CatalogCdcError
from pipeline.settings import ConnectionSettings

log = logging.getLogger(__name__)

__all__ = ["ConsumerSinks"]

T = TypeVar("T")


@dataclass
class _Built:
    sink: Sink | None
    reason: str = ""
    lock: threading.Lock | None = None


class ConsumerSinks:
    """Per consumer, its sink built once (or why it cannot be); safe to share between
    the API's threads."""

    def __init__(
        self,
        connections: ConnectionSettings,
        options: Mapping[str, Mapping[str, str]],
        *,
        timeout: float = 5.0,
        loader: Callable[[str], SinkFactory] = load,
        workers: int = 4,
    ) -> None:
        self.connections = connections
        self.options = {name: dict(opts) for name, opts in options.items()}
        self.timeout = timeout
        self._load = loader
        self._lock = threading.Lock()
        self._built: dict[str, _Built] = {}
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="admin-probe")
        self._closed = False

    def options_for(self, name: str) -> dict[str, str]:
        """The options the admin gives consumer ``name`` (its sink here, its replays)."""
        return dict(self.options.get(name, {}))

    # -- building -------------------------------------------------------------------------

    def _entry(self, name: str) -> _Built:
        with self._lock:
            if self._closed:
                return _Built(None, "the admin API is shutting down")
            found = self._built.get(name)
            if found is None:
                found = self._build(name)
                self._built[name] = found
            return found

    def _build(self, name: str) -> _Built:
        """Callers hold the lock: one build per consumer, however many requests ask."""
        context = SinkContext(self.connections, self.options_for(name))
        try:
            sink = self._load(name)(context)
        except CatalogCdcError as exc:
            log.info(
                "event=admin_sink_not_built consumer=%s reason=%r effect=%s",
                name,
                str(exc),
                "no target probe; status counts from the document topics",
            )
            return _Built(None, str(exc))
        log.info(
            "event=admin_sink_built consumer=%s sink=%s target_probe=%s",
            name,
            type(sink).__name__,
            isinstance(sink, TargetProbe),
        )
        return _Built(sink, lock=threading.Lock())

    def get(self, name: str) -> Sink | None:
        """Consumer ``name``'s sink (``None``: it cannot be built with these settings)."""
        return self._entry(name).sink

    def reason(self, name: str) -> str:
        """Why consumer ``name``'s sink cannot be built ("" when it is)."""
        return self._entry(name).reason

    def probe(self, name: str) -> TargetProbe | None:
        """The sink of ``name`` when it is a :class:`TargetProbe`."""
        sink = self.get(name)
        if sink is None or not isinstance(sink, TargetProbe):
            return None
        return sink

    # -- asking -----------------------------------------------------------------------------

    def _ask(self, name: str, question: Callable[[TargetProbe], T]) -> Future[T] | None:
        """``question(probe)`` in the pool, one at a time per sink (a probe need not be
        thread-safe); ``None`` when ``name``'s sink is no probe."""
        entry = self._entry(name)
        sink, lock = entry.sink, entry.lock
        if sink is None or lock is None or not isinstance(sink, TargetProbe):
            return None
        probe = sink
        timeout = self.timeout

        def run() -> T:
            if not lock.acquire(timeout=timeout):
                raise FutureTimeout(f"an earlier probe of {name!r} still waits for its target")
            try:
                return question(probe)
            finally:
                lock.release()

        return self._pool.submit(run)

    def _answer(
        self, name: str, future: Future[T], what: str, timeout: float | None = None
    ) -> T | None:
        try:
            return future.result(self.timeout if timeout is None else timeout)
        except FutureTimeout:
            future.cancel()
            log.warning(
                "event=admin_target_probe_timeout consumer=%s question=%s timeout_s=%g",
                name,
                what,
                self.timeout,
            )
        except CatalogCdcError as exc:
            log.warning(
                "event=admin_target_probe_failed consumer=%s question=%s error=%s",
                name,
                what,
                exc,
            )
        return None

    def available(self, name: str) -> bool | None:
        """Whether consumer ``name``'s target answers: ``True`` also for a sink that is no
        :class:`TargetProbe` (nothing says it does not); ``None`` when the sink cannot be
        built (the reason is logged)."""
        if self.get(name) is None:
            return None
        future = self._ask(name, lambda p: p.target_available())
        if future is None:
            return True
        answer = self._answer(name, future, "target_available") is True
        if not answer:
            log.warning("event=admin_target_unavailable consumer=%s", name)
        return answer

    def counts(self, names: Iterable[str]) -> dict[str, int | None]:
        """``target_count()`` of every consumer in ``names`` whose sink is a
        :class:`TargetProbe`, asked at once (``None``: it cannot tell, or did not answer
        within the timeout); the others are left out."""
        asked = {n: f for n in names if (f := self._ask(n, lambda p: p.target_count()))}
        deadline = time.monotonic() + self.timeout  # one wait for all of them
        return {
            n: self._answer(n, f, "target_count", max(0.0, deadline - time.monotonic()))
            for n, f in asked.items()
        }

    # -- shutdown ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close every sink built (each once; one that fails to close is logged)."""
        with self._lock:
            self._closed = True
            built, self._built = self._built, {}
        self._pool.shutdown(wait=False, cancel_futures=True)
        for name, entry in built.items():
            if entry.sink is None:
                continue
            try:
                entry.sink.close()
            except (CatalogCdcError, OSError) as exc:
                log.warning("event=admin_sink_close_failed consumer=%s error=%s", name, exc)
