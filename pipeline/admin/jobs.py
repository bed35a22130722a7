"""Background jobs of the admin API: one replay per consumer at a time, in a thread.

A :class:`Job` holds its request, its state (``queued`` -> ``running`` -> ``done`` or
``failed``), the last :class:`~pipeline.replay.ReplayProgress` and the result or the
error, and a :class:`threading.Event` that stops it.  Progress goes to the log
(``event=admin_job_progress``, at most every ``log_every`` seconds and at each phase).

A stopped job (the server shutting down) ends ``failed`` with ``interrupted``; the
replay keeps its positions, so the next replay of that consumer resumes from them.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from pipeline.errors import CatalogCdcError
from pipeline.replay import ReplayProgress, ReplayResult

log = logging.getLogger(__name__)

__all__ = ["Job", "JobConflict", "JobManager", "JobRequest", "Runner"]

JobState = Literal["queued", "running", "done", "failed"]


class JobConflict(CatalogCdcError):
    """A replay of this consumer is already queued or running."""

    def __init__(self, job: Job) -> None:
        super().__init__(f"a replay of {job.consumer!r} is already {job.state} (job {job.id})")
        self.job = job


@dataclass(frozen=True)
class JobRequest:
    consumer: str
    kind: str = "replay"  # "replay" or "search_sync" (POST /v1/products/search/sync/)
    from_time: datetime | None = None
    dry_run: bool = False
    options: Mapping[str, str] = field(default_factory=dict)


Runner = Callable[[JobRequest, Callable[[ReplayProgress], None], threading.Event], ReplayResult]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass
class Job:
    id: str
    request: JobRequest
    state: JobState = "queued"
    created_at: str = field(default_factory=_now)
    started_at: str | None = None
    finished_at: str | None = None
    progress: ReplayProgress | None = None
    result: ReplayResult | None = None
    error: str | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    @property
    def consumer(self) -> str:
        return self.request.consumer

    @property
    def active(self) -> bool:
        return self.state in ("queued", "running")

    def to_json(self) -> dict[str, Any]:
        p = self.progress
        r = self.result
        return {
            "id": self.id,
            "kind": self.request.kind,
            "consumer": self.consumer,
            "state": self.state,
            "dry_run": self.request.dry_run,
            "from_time": self.request.from_time.isoformat() if self.request.from_time else None,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "progress": {
                "phase": p.phase if p else "queued",
                "done": p.done if p else 0,
                "total": p.total if p else 0,
                "docs_per_s": round(p.docs_per_s, 1) if p else 0.0,
                "eta_s": round(p.eta_s, 1) if p and p.eta_s is not None else None,
            },
            "result": None
            if r is None
            else {
                "records": r.records,
                "rejected": r.rejected,
                "seconds": round(r.seconds, 3),
                "dry_run": r.dry_run,
                "detail": r.detail,
            },
            "error": self.error,
        }


class JobManager:
    """Starts, tracks and stops jobs; keeps the last ``history`` finished ones."""

    def __init__(
        self,
        runner: Runner,
        *,
        history: int = 100,
        log_every: float = 2.0,
        on_finish: Callable[[Job], None] | None = None,
    ) -> None:
        self.runner = runner
        self.history = history
        self.log_every = log_every
        self.on_finish = on_finish
        self._lock = threading.Lock()
        self._jobs: OrderedDict[str, Job] = OrderedDict()

    def start(self, request: JobRequest) -> Job:
        """Queue ``request`` and start its thread; :class:`JobConflict` if one is active."""
        with self._lock:
            for job in self._jobs.values():
                if job.consumer == request.consumer and job.active:
                    raise JobConflict(job)
            job = Job(id=uuid.uuid4().hex, request=request)
            self._jobs[job.id] = job
            self._trim()
            job.thread = threading.Thread(
                target=self._run, args=(job,), name=f"admin-job-{request.consumer}", daemon=True
            )
        log.info(
            "event=admin_job_queued job=%s kind=%s consumer=%s dry_run=%s from_time=%s",
            job.id,
            request.kind,
            request.consumer,
            request.dry_run,
            request.from_time.isoformat() if request.from_time else "-",
        )
        job.thread.start()
        return job

    def active(self, consumer: str, *, dry_runs: bool = True) -> Job | None:
        """The queued or running job of ``consumer`` (with ``dry_runs=False``: a real one)."""
        with self._lock:
            for job in self._jobs.values():
                if (
                    job.consumer == consumer
                    and job.active
                    and (dry_runs or not job.request.dry_run)
                ):
                    return job
        return None

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def all(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def last(self, consumer: str, *, dry_runs: bool = True) -> Job | None:
        """The newest job of ``consumer`` (any state; ``dry_runs=False``: a real one)."""
        with self._lock:
            for job in reversed(self._jobs.values()):
                if job.consumer == consumer and (dry_runs or not job.request.dry_run):
                    return job
        return None

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop every active job and wait for them (the replays save their positions)."""
        jobs = [j for j in self.all() if j.active]
        for job in jobs:
            job.stop.set()
        deadline = time.monotonic() + timeout
        for job in jobs:
            if job.thread is not None:
                job.thread.join(max(0.0, deadline - time.monotonic()))
            if job.active:
                log.warning(
                    "event=admin_job_still_running job=%s consumer=%s", job.id, job.consumer
                )

    def _trim(self) -> None:
        finished = [j.id for j in self._jobs.values() if not j.active]
        for job_id in finished[: max(0, len(self._jobs) - self.history)]:
            del self._jobs[job_id]

    def _run(self, job: Job) -> None:
        req = job.request
        last_at, last_phase = 0.0, ""

        def progress(p: ReplayProgress) -> None:
            nonlocal last_at, last_phase
            job.progress = p
            now = time.monotonic()
            finished = p.total > 0 and p.done >= p.total
            if p.phase != last_phase or finished or now - last_at >= self.log_every:
                last_at, last_phase = now, p.phase
                eta = "-" if p.eta_s is None else f"{p.eta_s:.0f}"
                log.info(
                    "event=admin_job_progress job=%s consumer=%s phase=%s indexed=%d/%d "
                    "docs_per_s=%.0f eta_s=%s",
                    job.id,
                    req.consumer,
                    p.phase,
                    p.done,
                    p.total,
                    p.docs_per_s,
                    eta,
                )

        job.state, job.started_at = "running", _now()
        log.info(
            "event=admin_job_started job=%s kind=%s consumer=%s", job.id, req.kind, req.consumer
        )
        try:
            result = self.runner(req, progress, job.stop)
        except CatalogCdcError as exc:
            self._finish(job, error=str(exc))
        except Exception as exc:  # a job thread reports, never dies silently
            log.exception("event=admin_job_crashed job=%s consumer=%s", job.id, req.consumer)
            self._finish(job, error=f"{type(exc).__name__}: {exc}")
        else:
            if result.detail.get("interrupted"):
                self._finish(job, result=result, error="interrupted (the next replay resumes)")
            else:
                self._finish(job, result=result)

    def _finish(
        self, job: Job, *, result: ReplayResult | None = None, error: str | None = None
    ) -> None:
        job.result, job.error, job.finished_at = result, error, _now()
        if result is not None and job.progress is None:  # a dry run reports no progress
            job.progress = ReplayProgress(job.consumer, "done", result.records, result.records,
                                          0.0, 0.0)  # fmt: skip
        job.state = "failed" if error else "done"
        if error:
            log.error(
                "event=admin_job_failed job=%s consumer=%s error=%s", job.id, job.consumer, error
            )
        else:
            assert result is not None
            log.info(
                "event=admin_job_done job=%s kind=%s consumer=%s records=%d rejected=%d "
                "seconds=%.1f dry_run=%s",
                job.id,
                job.request.kind,
                job.consumer,
                result.records,
                result.rejected,
                result.seconds,
                result.dry_run,
            )
        if self.on_finish is not None:
            self.on_finish(job)
