"""The admin API's request and response bodies (they make its OpenAPI document)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

SYNC_MESSAGE = "Product sync started. This may take a few minutes."
"""The seed's answer of an accepted search sync."""


class ErrorBody(BaseModel):
    error: str = Field(description="what went wrong")
    job_id: str | None = Field(default=None, description="the conflicting job (409 only)")
    detail: list[dict[str, Any]] | None = Field(
        default=None, description="the validation errors (422 only)"
    )


class SyncAccepted(BaseModel):
    message: str = Field(examples=[SYNC_MESSAGE])


class ReplayRequest(BaseModel):
    """Optional body of ``POST /v1/replay/{consumer}``."""

    model_config = ConfigDict(extra="forbid")

    from_time: datetime | None = Field(
        default=None,
        description="replay only messages written at or after this ISO-8601 time "
        "(no zone: UTC); default: from the beginning of the topics",
    )
    dry_run: bool = Field(default=False, description="only count what a replay would send")
    options: dict[str, str] = Field(
        default_factory=dict, description="the consumer's options (as `--option key=value`)"
    )

    @field_validator("from_time")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class JobProgress(BaseModel):
    phase: str = Field(description="queued, replaying, switching, catching up, done")
    done: int
    total: int
    docs_per_s: float
    eta_s: float | None


class JobResult(BaseModel):
    records: int
    rejected: int
    seconds: float
    dry_run: bool
    detail: dict[str, Any]


class JobModel(BaseModel):
    id: str
    kind: Literal["replay", "search_sync"]
    consumer: str
    state: Literal["queued", "running", "done", "failed"]
    dry_run: bool
    from_time: str | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    progress: JobProgress
    result: JobResult | None
    error: str | None


class JobRef(BaseModel):
    id: str
    state: Literal["queued", "running", "done", "failed"]


class TopicLag(BaseModel):
    lag: int
    committed: int = Field(description="sum of the group's committed offsets on the topic")


class ConsumerStatus(BaseModel):
    status: Literal["none", "normal", "update", "updating", "error"]
    full_import: Literal["start", "done"]
    product_count: int | None
    group: str
    lag: int
    topics: dict[str, TopicLag]
    consuming: bool = Field(description="the consumer group has members")
    job: JobRef | None = Field(description="the consumer's newest job")


class StatusBody(BaseModel):
    topic_prefix: str
    consumers: dict[str, ConsumerStatus]
    jobs: list[JobModel] = Field(description="queued and running jobs")


class Health(BaseModel):
    status: Literal["ok"]


# -- wiring ---------------------------------------------------------------------------------
