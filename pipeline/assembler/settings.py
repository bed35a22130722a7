"""Assembler settings (environment prefix ``CATALOG_CDC_ASSEMBLER_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class AssemblerSettings(BaseSettings):
    """How the assembler runs.  Each field is ``CATALOG_CDC_ASSEMBLER_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="CATALOG_CDC_ASSEMBLER_", extra="ignore")

    state_path: Path | None = Field(
        default=None,
        description="SQLite state file (default: <stack dir>/assembler/<prefix>.sqlite)",
    )
    group: str | None = Field(
        default=None, description="consumer group (default: <prefix>-assembler)"
    )
    instance_id: str | None = Field(
        default=None,
        description="static group member id (default: host name + state file path)",
    )
    static_membership: bool = Field(
        default=True,
        description=(
            "join the group as a static member (group.instance.id): a restarted instance "
            "takes its partitions back at once, without a rebalance"
        ),
    )
    batch_size: int = Field(
        default=20000,
        ge=1,
        description=(
            "messages per poll batch (at most): a batch takes what has arrived, so under "
            "load batches grow and the edits of one product in a batch make one document; "
            "5,000 capped the batch below what 5,000 edits/s bring in a cycle (bench: p99 "
            "6.4-8.3 s, 20,000: 4.6 s)"
        ),
    )
    poll_timeout: float = Field(default=0.05, gt=0, description="seconds a poll waits")
    idle_pause: float = Field(
        default=0.15,
        ge=0,
        description=(
            "seconds to stop fetching after an empty poll (0 = never): spares the CPU an "
            "idle consumer burns on brokers that answer empty fetches at once (noida-db)"
        ),
    )
    fetch_wait: float = Field(
        default=0.05,
        ge=0,
        description=(
            "at the live edge, seconds at least from a poll to the next fetch, and no "
            "fetching while the batch is built (0 = fetch all the time): noida-db answers "
            "every fetch at once, so the fetchers spun beside the build, burning the "
            "broker's CPU and their own; Kafka holds fetches itself (fetch.wait.max.ms)"
        ),
    )
    catch_up_slack: int = Field(
        default=4000,
        ge=0,
        description=(
            "a catch-up (new or rebuilt state) emits once it has read to the inputs' ends "
            "and they grew by at most this many messages over catch_up_window seconds; "
            "more (the reader still snapshotting) and it reads on, quietly, to the new ends"
        ),
    )
    catch_up_window: float = Field(
        default=2.0,
        ge=0,
        description=(
            "seconds over which a catch-up measures that growth: a snapshot that is only "
            "starting (a few rows of the small tables read in milliseconds) must not look "
            "settled"
        ),
    )
    metrics_port: int | None = Field(
        default=None, description="serve Prometheus metrics on this port (unset = off)"
    )
    doc_partitions: int = Field(default=6, ge=1, description="partitions of new document topics")

    def state_path_for(self, prefix: str) -> Path:
        if self.state_path is not None:
            return self.state_path
        from pipeline.settings import default_stack_dir

        return default_stack_dir() / "assembler" / f"{prefix}.sqlite"

    def instance_id_for(self, state_path: Path) -> str | None:
        if not self.static_membership:
            return None
        if self.instance_id:
            return self.instance_id
        import hashlib
        import socket

        digest = hashlib.sha1(str(state_path.resolve()).encode()).hexdigest()[:12]
        return f"{socket.gethostname()}-{digest}"

    def group_for(self, prefix: str) -> str:
        return self.group or f"{prefix}-assembler"
