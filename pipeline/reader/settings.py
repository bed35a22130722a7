"""Reader settings (environment prefix ``CATALOG_CDC_READER_``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEMO_TABLES = (
    "public.stores",
    "public.brands",
    "public.categories",
    "public.products",
    "public.product_variants",
    "public.product_categories",
    "public.product_images",
    "public.technical_data",
    "public.cms_pages",
)

# Product-owned tables go to the partition of their product, so all of a product's
# rows share one partition (what lets the assembler scale out by partition).
DEFAULT_PARTITION_COLUMNS = {
    "public.products": "id",
    "public.product_variants": "product_id",
    "public.product_images": "product_id",
    "public.technical_data": "product_id",
    "public.product_categories": "product_id",
}

SIGNAL_TABLE = "catalog_cdc_signal"
HEARTBEAT_PREFIX = "catalog_cdc.heartbeat"


class ReaderSettings(BaseSettings):
    """How the reader captures changes.  Each field is ``CATALOG_CDC_READER_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="CATALOG_CDC_READER_", extra="ignore")

    slot: str = Field(default="catalog_cdc", description="logical replication slot name")
    publication: str = Field(default="catalog_cdc", description="publication name")
    tables: list[str] = Field(
        default_factory=lambda: list(DEMO_TABLES),
        description="schema-qualified tables to capture (default: the demo catalog)",
    )
    partitions: int = Field(default=6, ge=1, description="partitions of each new raw topic")
    replication_factor: int = Field(default=1, description="replication factor of new topics")
    partition_columns: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_PARTITION_COLUMNS),
        description="table -> column whose value picks the partition (default: primary key)",
    )
    snapshot_mode: Literal["initial", "never"] = Field(
        default="initial", description="initial: snapshot every table when the slot is new"
    )
    snapshot_chunk_size: int = Field(default=5000, ge=1, description="rows per snapshot chunk")
    heartbeat_interval: float = Field(
        default=10.0, ge=0, description="seconds between heartbeat messages (0 = off)"
    )
    status_interval: float = Field(
        default=1.0, gt=0, description="seconds between standby status updates"
    )
    metrics_port: int | None = Field(
        default=None, description="serve Prometheus metrics on this port (unset = off)"
    )
    signal_table: str = Field(default=f"public.{SIGNAL_TABLE}", description="signal table")
