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
    batch_size: int = Field(default=5000, ge=1, description="messages per poll batch")
    poll_timeout: float = Field(default=0.2, gt=0, description="seconds a poll waits")
    doc_partitions: int = Field(default=6, ge=1, description="partitions of new document topics")

    def state_path_for(self, prefix: str) -> Path:
        if self.state_path is not None:
            return self.state_path
        from pipeline.settings import default_stack_dir

        return default_stack_dir() / "assembler" / f"{prefix}.sqlite"

    def group_for(self, prefix: str) -> str:
        return self.group or f"{prefix}-assembler"
