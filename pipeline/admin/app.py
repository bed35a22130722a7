"""The admin HTTP API (FastAPI): search sync, replays and their jobs, status, metrics.

Endpoints (docs/admin-api.md; the OpenAPI document is served at ``/openapi.json``):

* ``POST /v1/products/search/sync/`` -- the search-sync seed, to the letter: admin
  token, 503 ``{"error": "Elasticsearch is not available"}`` when the target of the
  consumer it rebuilds (``AdminSettings.search_consumer``) does not answer (checked
  before accepting), else 200 ``{"message": "Product sync started. This may take a few
  minutes."}`` and a replay of that consumer in the background.
* ``POST /v1/replay/{consumer}`` (admin) -> 202 and a job; ``GET /v1/jobs``,
  ``GET /v1/jobs/{id}``, ``GET /v1/status`` (reader or admin).
* ``GET /metrics``, ``GET /healthz``, ``GET /openapi.json``: no token.

No consumer is singled out by name: the admin builds each consumer's sink through the
registry (:class:`~pipeline.admin.sinks.ConsumerSinks`) and asks it for its
capabilities -- a :class:`~consumers.capabilities.TargetProbe` says whether its target
answers (503 when it does not) and how much it holds (``product_count``).

Tokens: ``Authorization: Token <token>`` (the seed's scheme; ``Bearer`` works too).
No or an unknown token: 401 ``{"error": "Unauthorized"}``; a reader token on an
admin endpoint: 403 ``{"error": "Forbidden - Admin access required"}``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, Request, Response
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import APIKeyHeader
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipeline.admin.jobs import Job, JobConflict, JobManager, JobRequest, Runner
from pipeline.admin.models import (
    SYNC_MESSAGE,
    ErrorBody,
    Health,
    JobModel,
    ReplayRequest,
    StatusBody,
    SyncAccepted,
)
from pipeline.admin.sinks import ConsumerSinks
from pipeline.admin.status import KafkaUnavailable, StatusReader
from pipeline.admin.tokens import Role, Token, TokenStore
from pipeline.settings import ConnectionSettings

log = logging.getLogger(__name__)

__all__ = ["AdminContext", "AdminSettings", "create_app", "replay_runner"]

ES_UNAVAILABLE = "Elasticsearch is not available"  # the seed's words (its sync endpoint)
UNAUTHORIZED = "Unauthorized"
FORBIDDEN = "Forbidden - Admin access required"


class AdminSettings(BaseSettings):
    """``catalog-cdc admin``: every field is ``CATALOG_CDC_ADMIN_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="CATALOG_CDC_ADMIN_", extra="ignore")

    host: str = Field(default="127.0.0.1", description="address to bind (loopback by default)")
    port: int = Field(default=8080, ge=0, le=65535, description="port (0: any free one)")
    tokens_file: Path = Field(
        default=Path(".catalog-cdc/admin-tokens.json"), description="the hashed token file"
    )
    search_consumer: str = Field(
        default="search",
        description="the consumer POST /v1/products/search/sync/ rebuilds (a replay of it)",
    )
    consumer_options: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description="per consumer, the options its sink is built with here and its replays "
        'start from (JSON in the environment: {"NAME": {"key": "value"}}; on the command '
        "line: --option NAME.key=value)",
    )
    probe_timeout: float = Field(
        default=5.0,
        gt=0,
        description="seconds a target probe (available? how many documents?) may take",
    )
    kafka_timeout: float = Field(default=5.0, gt=0, description="seconds a Kafka query waits")
    grace: float = Field(
        default=30.0,
        ge=0,
        description="seconds a replay that swaps in a new target generation keeps the old one",
    )
    job_history: int = Field(default=100, ge=1, description="finished jobs kept in memory")


def target_unavailable(consumer: str) -> str:
    """The 503 of a replay whose consumer's target does not answer."""
    return f"the target of consumer {consumer!r} is not available"


class ApiError(Exception):
    def __init__(
        self, status: int, error: str, headers: Mapping[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(error)
        self.status, self.error, self.headers, self.extra = (
            status,
            error,
            dict(headers or {}),
            extra,
        )


@dataclass
class AdminContext:
    settings: AdminSettings
    connections: ConnectionSettings
    tokens: TokenStore
    jobs: JobManager
    status: StatusReader
    sinks: ConsumerSinks
    """Each consumer's sink, built through the registry with the admin's settings."""
    consumers: Callable[[], Mapping[str, str]]
    metrics: Metrics

    def close(self) -> None:
        """Stop the jobs (they keep their positions), then close the clients and sinks."""
        self.jobs.shutdown()
        self.status.close()
        self.sinks.close()


class Metrics:
    """The API's own metrics, in a registry of its own (no module globals)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "catalog_cdc_admin_requests_total",
            "HTTP requests by route, method and status",
            ["method", "path", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "catalog_cdc_admin_request_seconds",
            "HTTP request duration by route",
            ["path"],
            registry=self.registry,
        )
        self.jobs_started = Counter(
            "catalog_cdc_admin_jobs_started_total",
            "jobs started by consumer and kind",
            ["consumer", "kind"],
            registry=self.registry,
        )
        self.jobs_finished = Counter(
            "catalog_cdc_admin_jobs_finished_total",
            "jobs finished by consumer, kind and state",
            ["consumer", "kind", "state"],
            registry=self.registry,
        )
        self.jobs_running = Gauge(
            "catalog_cdc_admin_jobs_active", "jobs queued or running", registry=self.registry
        )

    def finished(self, job: Job) -> None:
        self.jobs_finished.labels(job.consumer, job.request.kind, job.state).inc()


def replay_runner(connections: ConnectionSettings, grace: float) -> Runner:
    """The real job: :func:`pipeline.replay.replay`."""

    def run(req: JobRequest, progress: Any, stop: Any) -> Any:
        from pipeline.replay import replay

        return replay(
            req.consumer,
            connections=connections,
            options=req.options,
            from_time=req.from_time,
            dry_run=req.dry_run,
            grace=grace,
            progress=progress,
            stop=stop,
        )

    return run


def build_context(
    settings: AdminSettings,
    connections: ConnectionSettings,
    *,
    runner: Runner | None = None,
    consumers: Callable[[], Mapping[str, str]] | None = None,
) -> AdminContext:
    """Everything the app needs, from the settings (Kafka clients; the consumers' sinks
    are built when first asked about)."""
    from consumers.registry import available

    metrics = Metrics()
    jobs = JobManager(
        runner or replay_runner(connections, settings.grace),
        history=settings.job_history,
        on_finish=metrics.finished,
    )
    metrics.jobs_running.set_function(lambda: sum(1 for j in jobs.all() if j.active))
    status = StatusReader(
        connections.require("kafka_bootstrap"),
        connections.topic_prefix,
        timeout=settings.kafka_timeout,
    )
    sinks = ConsumerSinks(connections, settings.consumer_options, timeout=settings.probe_timeout)
    installed = consumers or available
    for name in sorted({settings.search_consumer, *settings.consumer_options} - set(installed())):
        log.warning(
            "event=admin_consumer_not_installed consumer=%s installed=%s hint=%s",
            name,
            ",".join(sorted(installed())) or "none",
            "check CATALOG_CDC_ADMIN_SEARCH_CONSUMER / CONSUMER_OPTIONS",
        )
    return AdminContext(
        settings,
        connections,
        TokenStore(settings.tokens_file),
        jobs,
        status,
        sinks,
        installed,
        metrics,
    )


_token_header = APIKeyHeader(
    name="Authorization",
    scheme_name="token",
    description="`Token <token>` (as the search-sync seed) or `Bearer <token>`; tokens are "
    "made by `catalog-cdc admin token add NAME --role admin|reader`",
    auto_error=False,
)


def _ctx(request: Request) -> AdminContext:
    ctx: AdminContext = request.app.state.ctx
    return ctx


def _authorize(request: Request, header: str | None, role: Role) -> Token:
    scheme, _, value = (header or "").strip().partition(" ")
    token = None
    if scheme.lower() in ("token", "bearer") and value.strip():
        token = _ctx(request).tokens.verify(value.strip())
    if token is None:
        raise ApiError(401, UNAUTHORIZED, {"WWW-Authenticate": 'Token realm="catalog-cdc admin"'})
    if role == "admin" and token.role != "admin":
        raise ApiError(403, FORBIDDEN)
    request.state.token = token.name
    return token


def admin_token(
    request: Request, authorization: Annotated[str | None, Depends(_token_header)]
) -> Token:
    return _authorize(request, authorization, "admin")


def reader_token(
    request: Request, authorization: Annotated[str | None, Depends(_token_header)]
) -> Token:
    return _authorize(request, authorization, "reader")


AdminToken = Annotated[Token, Depends(admin_token)]
ReaderToken = Annotated[Token, Depends(reader_token)]


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    words = {
        401: "no token, or an unknown one",
        403: "the token is not an admin token",
        404: "not found",
        409: "a replay of this consumer is running",
        422: "invalid request",
        503: "a service this needs does not answer",
    }
    return {c: {"model": ErrorBody, "description": words[c]} for c in codes}


def create_app(ctx: AdminContext) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        ctx.close()

    app = FastAPI(
        title="catalog-cdc admin API",
        version="1",
        description="Rebuild sinks from the document topics (search sync, replays), follow "
        "the jobs, see each consumer's state and lag. See docs/admin-api.md.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.ctx = ctx

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        body = {"error": exc.error, **{k: v for k, v in exc.extra.items() if v is not None}}
        return JSONResponse(body, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg")), "type": str(e.get("type"))}
            for e in exc.errors()
        ]
        first = errors[0] if errors else {"loc": [], "msg": "invalid"}
        where = ".".join(str(p) for p in first["loc"])
        return JSONResponse(
            {"error": f"invalid request: {where}: {first['msg']}", "detail": errors},
            status_code=422,
        )

    @app.middleware("http")
    async def _count(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        t0 = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        seconds = time.perf_counter() - t0
        ctx.metrics.requests.labels(request.method, path, str(response.status_code)).inc()
        ctx.metrics.latency.labels(path).observe(seconds)
        log.info(
            "event=admin_request method=%s path=%s status=%d ms=%.1f token=%s",
            request.method,
            request.url.path,
            response.status_code,
            seconds * 1000,
            getattr(request.state, "token", "-"),
        )
        return response

    def installed(consumer: str) -> None:
        names = ctx.consumers()
        if consumer not in names:
            known = ", ".join(sorted(names)) or "none"
            raise ApiError(404, f"no consumer named {consumer!r} (installed: {known})")

    def start(request: JobRequest) -> Job:
        try:
            job = ctx.jobs.start(request)
        except JobConflict as exc:
            raise ApiError(409, str(exc), job_id=exc.job.id) from exc
        ctx.metrics.jobs_started.labels(request.consumer, request.kind).inc()
        return job

    @app.post(
        "/v1/products/search/sync/",
        summary="Sync products to Elasticsearch (a full search replay, in the background)",
        description="Rebuilds the search index from the document topics (a replay of the "
        "consumer CATALOG_CDC_ADMIN_SEARCH_CONSUMER names): a new index generation, swapped "
        "in by alias when caught up. Responds at once; progress is in the logs and at the "
        "job (headers Location and X-Job-Id). A sync already running is not started twice: "
        "the answer is the same, naming that job.",
        response_model=SyncAccepted,
        responses=_errors(401, 403, 503),
        tags=["search"],
    )
    def search_sync(_token: AdminToken, response: Response) -> SyncAccepted:
        consumer = ctx.settings.search_consumer
        # Nothing is started unless the consumer's sink can be built and its target
        # answers (a sink that is no TargetProbe: nothing says it does not).
        if consumer not in ctx.consumers() or not ctx.sinks.available(consumer):
            log.warning(
                "event=search_sync_refused consumer=%s reason=%r",
                consumer,
                ctx.sinks.reason(consumer) or "its target does not answer",
            )
            raise ApiError(503, ES_UNAVAILABLE)
        job = ctx.jobs.active(consumer)
        if job is None:
            options = ctx.sinks.options_for(consumer)
            with contextlib.suppress(ApiError):  # another request started one meanwhile
                job = start(JobRequest(consumer, kind="search_sync", options=options))
            job = job or ctx.jobs.active(consumer)
        if job is not None:
            response.headers["Location"] = f"/v1/jobs/{job.id}"
            response.headers["X-Job-Id"] = job.id
        log.info("event=search_sync_accepted consumer=%s job=%s", consumer, job.id if job else "-")
        return SyncAccepted(message=SYNC_MESSAGE)

    @app.post(
        "/v1/replay/{consumer}",
        status_code=202,
        summary="Replay a consumer: rebuild its sink from the document topics",
        description="Starts a replay job (one per consumer at a time) and answers with it; "
        "poll GET /v1/jobs/{id}. What a replay does is the consumer's replay plan (e.g. a "
        "new index generation swapped in by alias, a full import); without one, everything "
        "is re-sent as upserts. 503 when the consumer's sink probes its target and it does "
        "not answer.",
        response_model=JobModel,
        responses=_errors(401, 403, 404, 409, 422, 503),
        tags=["jobs"],
    )
    def replay(
        _token: AdminToken,
        response: Response,
        # A default, not Annotated: the examples are known only here (annotations are strings).
        consumer: str = PathParam(
            description="an installed consumer", examples=sorted(ctx.consumers())
        ),
        body: Annotated[ReplayRequest | None, Body()] = None,
    ) -> JobModel:
        installed(consumer)
        body = body or ReplayRequest()
        running = ctx.jobs.active(consumer)
        if running is not None:  # before probing the target: the cheaper answer
            raise ApiError(409, str(JobConflict(running)), job_id=running.id)
        # False only for a TargetProbe that does not answer; a sink that cannot be built
        # with the admin's options (None) is left to the replay, whose error the job shows.
        if ctx.sinks.available(consumer) is False:
            raise ApiError(503, target_unavailable(consumer))
        options = {**ctx.sinks.options_for(consumer), **body.options}
        job = start(
            JobRequest(consumer, from_time=body.from_time, dry_run=body.dry_run, options=options)
        )
        response.headers["Location"] = f"/v1/jobs/{job.id}"
        return JobModel.model_validate(job.to_json())

    @app.get(
        "/v1/jobs",
        summary="The jobs (newest last)",
        response_model=list[JobModel],
        responses=_errors(401),
        tags=["jobs"],
    )
    def jobs(_token: ReaderToken) -> list[JobModel]:
        return [JobModel.model_validate(j.to_json()) for j in ctx.jobs.all()]

    @app.get(
        "/v1/jobs/{job_id}",
        summary="One job: state, progress, result or error",
        response_model=JobModel,
        responses=_errors(401, 404),
        tags=["jobs"],
    )
    def job(job_id: str, _token: ReaderToken) -> JobModel:
        found = ctx.jobs.get(job_id)
        if found is None:
            raise ApiError(
                404, f"no job {job_id!r} (jobs are kept in memory while the server runs)"
            )
        return JobModel.model_validate(found.to_json())

    @app.get(
        "/v1/status",
        summary="Each consumer's state (the hosted search service's words), lag, running jobs",
        description="status: none | normal | update | updating | error; full_import: start | "
        "done; product_count; lag per topic of the consumer group {prefix}-{name}. See "
        "docs/admin-api.md for how they are derived.",
        response_model=StatusBody,
        responses=_errors(401, 503),
        tags=["status"],
    )
    def status(_token: ReaderToken) -> StatusBody:
        names = sorted(ctx.consumers())
        try:
            body = ctx.status.status(names, ctx.jobs, ctx.sinks.counts(names))
        except KafkaUnavailable as exc:
            raise ApiError(503, f"Kafka is not available: {exc}") from exc
        return StatusBody.model_validate(body)

    @app.get(
        "/metrics",
        summary="Prometheus metrics of this API",
        response_class=PlainTextResponse,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
        tags=["ops"],
    )
    def metrics() -> Response:
        return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", summary="Liveness: the API answers", response_model=Health, tags=["ops"])
    def healthz() -> Health:
        return Health(status="ok")

    return app
