"""The assembler end to end: PostgreSQL -> reader -> raw topics -> assembler -> documents."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from pipeline.demo.seed import seed_catalog
from tests.integration.assembler_support import running_assembler, version_history, wait_in_sync
from tests.integration.reader_support import running_reader

pytestmark = pytest.mark.integration


def test_snapshot_and_edits_give_the_sql_documents(
    catalog_dsn: str, kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    seed_catalog(catalog_dsn, products=60, seed=3)
    with (
        running_reader(catalog_dsn, kafka_bootstrap, topic_prefix),
        running_assembler(kafka_bootstrap, topic_prefix, tmp_path / "a.sqlite"),
    ):
        wait_in_sync(catalog_dsn, kafka_bootstrap, topic_prefix)
        with psycopg.connect(catalog_dsn, autocommit=True) as conn:
            conn.execute("UPDATE products SET price = price + 1 WHERE id = 1")
            conn.execute("UPDATE product_variants SET quantity = quantity + 5 WHERE product_id = 2")
            conn.execute("UPDATE products SET deleted_at = now() WHERE id = 3")
            conn.execute("DELETE FROM products WHERE id = 4")
            conn.execute("UPDATE products SET active = false WHERE id = 5")
            conn.execute("UPDATE brands SET name = name || ' X' WHERE id = 1")
            conn.execute("UPDATE categories SET name = name || ' Y' WHERE parent_id IS NULL")
            conn.execute("UPDATE products SET description = repeat('long text ', 800) WHERE id = 6")
            conn.execute("UPDATE products SET price = 9.99 WHERE id = 6")
        wait_in_sync(catalog_dsn, kafka_bootstrap, topic_prefix)
    history = version_history(kafka_bootstrap, topic_prefix, "product")
    for key, versions in history.items():
        assert versions == sorted(set(versions)), f"product {key}: versions {versions}"
