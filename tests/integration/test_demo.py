"""The demo catalog on a real PostgreSQL: schema, deterministic seeding, live edits."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import fields
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pipeline.demo.catalog import CATALOG_TABLES, load_schema, missing_tables
from pipeline.demo.editor import ROLLBACK_MARKER
from pipeline.demo.edits import EditStats, run_edits
from pipeline.demo.errors import DemoError
from pipeline.demo.seed import SeedCounts, seed_catalog
from pipeline.errors import CatalogCdcError

pytestmark = pytest.mark.integration

_ORDER = {"product_categories": "product_id, category_id"}
_EDIT_KINDS = (
    "price_changes",
    "stock_changes",
    "new_products",
    "product_edits",
    "soft_deletes",
    "hard_deletes",
    "category_moves",
    "category_renames",
    "brand_renames",
    "image_reorders",
    "technical_data_edits",
    "multi_table",
)


@pytest.fixture
def second_dsn(pg_dsn: str) -> Iterator[str]:
    """Another fresh database on the same server, dropped after the test."""
    name = f"{conninfo_to_dict(pg_dsn)['dbname']}_b{uuid.uuid4().hex[:4]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    params = conninfo_to_dict(pg_dsn)
    params["dbname"] = name
    try:
        yield make_conninfo("", **params)
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _counts(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        out = {}
        for table in CATALOG_TABLES:
            row = conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
            ).fetchone()
            assert row is not None
            out[table] = int(row[0])
        return out


def _content_hash(dsn: str) -> dict[str, str]:
    """md5 of every catalog table's rows, in primary-key order."""
    with psycopg.connect(dsn) as conn:
        out = {}
        for table in CATALOG_TABLES:
            query = sql.SQL(
                "SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY {o}), '')) FROM {t} t"
            )
            row = conn.execute(
                query.format(o=sql.SQL(_ORDER.get(table, "id")), t=sql.Identifier(table))
            ).fetchone()
            assert row is not None
            out[table] = str(row[0])
        return out


def _scalar(conn: psycopg.Connection[Any], query: str) -> Any:
    row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


def _assert_invariants(conn: psycopg.Connection[Any]) -> None:
    """The seed's rules and referential integrity hold (whatever the constraints say)."""
    checks = {
        "negative product price": "SELECT count(*) FROM products WHERE price < 0 OR list_price < 0",
        "negative variant price/quantity": (
            "SELECT count(*) FROM product_variants WHERE price < 0 OR quantity < 0"
        ),
        "bad ean13": "SELECT count(*) FROM products WHERE ean13 !~ '^([0-9]{13})?$'",
        "reference over 64": "SELECT count(*) FROM products WHERE char_length(reference) > 64",
        "description over 10000": (
            "SELECT count(*) FROM products WHERE char_length(description) > 10000"
        ),
        "orphan variants": (
            "SELECT count(*) FROM product_variants v "
            "WHERE NOT EXISTS (SELECT 1 FROM products p WHERE p.id = v.product_id)"
        ),
        "orphan images": (
            "SELECT count(*) FROM product_images i "
            "WHERE NOT EXISTS (SELECT 1 FROM products p WHERE p.id = i.product_id)"
        ),
        "orphan technical data": (
            "SELECT count(*) FROM technical_data d "
            "WHERE NOT EXISTS (SELECT 1 FROM products p WHERE p.id = d.product_id)"
        ),
        "orphan product categories": (
            "SELECT count(*) FROM product_categories pc "
            "WHERE NOT EXISTS (SELECT 1 FROM products p WHERE p.id = pc.product_id) "
            "OR NOT EXISTS (SELECT 1 FROM categories c WHERE c.id = pc.category_id)"
        ),
        "category parent in another store": (
            "SELECT count(*) FROM categories c JOIN categories p ON p.id = c.parent_id "
            "WHERE p.store_id <> c.store_id"
        ),
        "bad image extension": (
            "SELECT count(*) FROM product_images WHERE file_name !~* '\\.(jpg|jpeg|png|gif|webp)$'"
        ),
        "more than 10 images": (
            "SELECT count(*) FROM (SELECT product_id FROM product_images "
            "GROUP BY product_id HAVING count(*) > 10) x"
        ),
    }
    for what, query in checks.items():
        assert _scalar(conn, query) == 0, what
    # the category tree has no cycle: every category reaches a root
    unreachable = _scalar(
        conn,
        "WITH RECURSIVE tree(id) AS (SELECT id FROM categories WHERE parent_id IS NULL "
        "UNION ALL SELECT c.id FROM categories c JOIN tree t ON c.parent_id = t.id) "
        "SELECT (SELECT count(*) FROM categories) - (SELECT count(*) FROM tree)",
    )
    assert unreachable == 0


def test_schema_loads_twice_and_every_table_has_a_primary_key(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        assert missing_tables(conn) == list(CATALOG_TABLES)
        load_schema(conn)
        load_schema(conn)
        conn.commit()
        assert missing_tables(conn) == []
        without_pk = conn.execute(
            "SELECT t FROM unnest(%s::text[]) t WHERE NOT EXISTS (SELECT 1 FROM pg_constraint c "
            "WHERE c.conrelid = ('public.' || t)::regclass AND c.contype = 'p')",
            (list(CATALOG_TABLES),),
        ).fetchall()
        assert without_pk == []
    # and once more on the loaded schema, from a fresh session
    with psycopg.connect(pg_dsn) as conn:
        load_schema(conn)


def test_schema_rejects_rule_breaking_rows(pg_dsn: str) -> None:
    seed_catalog(pg_dsn, products=3, seed=1)
    bad_updates = [
        "UPDATE products SET price = -1 WHERE id = 1",
        "UPDATE products SET ean13 = '123' WHERE id = 1",
        "UPDATE products SET reference = repeat('x', 65) WHERE id = 1",
        "UPDATE product_variants SET quantity = -1 WHERE id = 1",
        "UPDATE product_images SET file_name = 'a.exe' WHERE id = (SELECT min(id) FROM product_images)",
        "UPDATE categories SET parent_id = (SELECT max(id) FROM categories WHERE parent_id IN "
        "(SELECT id FROM categories WHERE parent_id = 1)) WHERE id = 1",  # a cycle
    ]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for statement in bad_updates:
            with pytest.raises((psycopg.errors.IntegrityError, psycopg.errors.DataError)):
                conn.execute(statement)
        # a hard delete of a product removes its rows everywhere
        conn.execute("DELETE FROM products WHERE id = 1")
        for table in ("product_variants", "product_categories", "product_images", "technical_data"):
            q = sql.SQL("SELECT count(*) FROM {} WHERE product_id = 1").format(
                sql.Identifier(table)
            )
            row = conn.execute(q).fetchone()
            assert row == (0,), table


def test_seed_loads_n_products_with_realistic_related_rows(pg_dsn: str) -> None:
    seen: list[tuple[int, int]] = []
    counts = seed_catalog(
        pg_dsn, products=500, seed=42, stores=2, progress=lambda d, t: seen.append((d, t))
    )
    assert isinstance(counts, SeedCounts)
    assert seen and seen[-1] == (500, 500)
    actual = _counts(pg_dsn)
    assert actual == {t: getattr(counts, t) for t in CATALOG_TABLES}
    assert actual["products"] == 500
    assert actual["stores"] == 2
    assert 25 <= actual["brands"] <= 35
    assert actual["categories"] == 80  # 40 per store
    assert 500 * 1.5 <= actual["product_variants"] <= 500 * 5
    assert 500 <= actual["product_categories"] <= 500 * 3
    assert 500 * 1 <= actual["product_images"] <= 500 * 6
    assert 500 * 3 <= actual["technical_data"] <= 500 * 12
    assert 8 <= actual["cms_pages"] <= 12

    with psycopg.connect(pg_dsn) as conn:
        per_product = conn.execute(
            "SELECT min(v), max(v), min(c), max(c), min(i), max(i), min(d), max(d) FROM ("
            " SELECT p.id,"
            "  (SELECT count(*) FROM product_variants x WHERE x.product_id = p.id) v,"
            "  (SELECT count(*) FROM product_categories x WHERE x.product_id = p.id) c,"
            "  (SELECT count(*) FROM product_images x WHERE x.product_id = p.id) i,"
            "  (SELECT count(*) FROM technical_data x WHERE x.product_id = p.id) d"
            " FROM products p) s"
        ).fetchone()
        assert per_product is not None
        vmin, vmax, cmin, cmax, imin, imax, dmin, dmax = per_product
        assert (vmin, cmin, imin, dmin) == (1, 1, 0, 0)
        assert 4 <= vmax <= 5 and 2 <= cmax <= 3 and 5 <= imax <= 6 and 10 <= dmax <= 12
        # three levels per store, every product in categories of its own store
        depth = _scalar(
            conn,
            "WITH RECURSIVE t(id, depth) AS (SELECT id, 1 FROM categories WHERE parent_id IS NULL "
            "UNION ALL SELECT c.id, t.depth + 1 FROM categories c JOIN t ON c.parent_id = t.id) "
            "SELECT max(depth) FROM t",
        )
        assert depth == 3
        assert (
            _scalar(
                conn,
                "SELECT count(*) FROM product_categories pc JOIN products p ON p.id = pc.product_id "
                "JOIN categories c ON c.id = pc.category_id WHERE c.store_id <> p.store_id",
            )
            == 0
        )
        # some long (TOASTed) descriptions, some inactive, some soft-deleted
        long = _scalar(conn, "SELECT count(*) FROM products WHERE char_length(description) > 4096")
        assert long == counts.long_descriptions and 3 <= int(long) <= 40
        toast_bytes = _scalar(
            conn,
            "SELECT pg_relation_size(reltoastrelid) FROM pg_class WHERE oid = 'products'::regclass",
        )
        assert int(toast_bytes) > 0
        assert _scalar(conn, "SELECT count(*) FROM products WHERE NOT active") == (
            counts.inactive_products
        )
        assert counts.inactive_products > 0
        soft = _scalar(conn, "SELECT count(*) FROM products WHERE deleted_at IS NOT NULL")
        assert soft == counts.soft_deleted_products and counts.soft_deleted_products > 0
        # realistic content
        names = [r[0] for r in conn.execute("SELECT name FROM products ORDER BY id LIMIT 50")]
        assert len(set(names)) > 30
        assert all(2 <= len(str(n).split()) <= 6 for n in names)
        attrs = _scalar(conn, "SELECT count(*) FROM product_variants WHERE attributes = '{}'")
        assert attrs == 0
        assert _scalar(conn, "SELECT count(*) FROM products WHERE ean13 = ''") != 500
        _assert_invariants(conn)
        # sequences were moved past the loaded ids
        new_id = conn.execute(
            "INSERT INTO products (store_id, reference, name, price, url_key) "
            "VALUES (1, 'NEW-1', 'Fresh Product', 1.00, 'fresh-product') RETURNING id"
        ).fetchone()
        assert new_id == (501,)
        conn.rollback()


def test_same_seed_gives_identical_rows_and_another_seed_does_not(
    pg_dsn: str, second_dsn: str
) -> None:
    a = seed_catalog(pg_dsn, products=150, seed=7)
    b = seed_catalog(second_dsn, products=150, seed=7)
    assert a == b
    first = _content_hash(pg_dsn)
    assert first == _content_hash(second_dsn)

    seed_catalog(second_dsn, products=150, seed=8, replace=True)
    other = _content_hash(second_dsn)
    assert other["products"] != first["products"]
    assert other["product_variants"] != first["product_variants"]


def test_seeding_a_non_empty_catalog_needs_replace(pg_dsn: str) -> None:
    seed_catalog(pg_dsn, products=20, seed=1)
    with pytest.raises(DemoError, match=r"not empty.*replace") as info:
        seed_catalog(pg_dsn, products=30, seed=2)
    assert isinstance(info.value, CatalogCdcError)
    assert _counts(pg_dsn)["products"] == 20  # untouched

    counts = seed_catalog(pg_dsn, products=30, seed=2, replace=True)
    assert counts.products == 30
    assert _counts(pg_dsn)["products"] == 30
    with psycopg.connect(pg_dsn) as conn:
        assert _scalar(conn, "SELECT min(id) FROM products") == 1  # identities restarted


def test_seed_with_a_connection(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        counts = seed_catalog(conn, products=10, seed=3, stores=1)
    assert counts.stores == 1
    assert _counts(pg_dsn)["products"] == 10


def test_run_edits_applies_every_kind_and_leaves_no_trace_of_rollbacks(pg_dsn: str) -> None:
    seed_catalog(pg_dsn, products=300, seed=5)
    before = _counts(pg_dsn)
    ticks: list[tuple[int, int]] = []
    started = time.monotonic()
    stats = run_edits(
        pg_dsn, rate=40, duration=3, seed=11, progress=lambda d, t: ticks.append((d, t))
    )
    elapsed = time.monotonic() - started

    assert isinstance(stats, EditStats)
    # It runs for its duration (paced by the clock); the upper bound only catches a hang.
    assert 2.9 <= elapsed < 60
    attempted = stats.committed + stats.rolled_back + stats.skipped + stats.errors
    assert 100 <= attempted <= 121  # ~ rate x duration, paced
    assert ticks[-1][1] == 120
    for kind in _EDIT_KINDS:
        assert getattr(stats, kind) >= 1, kind
    assert stats.reactivations + stats.deactivations >= 1
    assert stats.rolled_back >= 1
    assert stats.errors == 0
    assert stats.committed >= 90

    after = _counts(pg_dsn)
    assert after != before
    with psycopg.connect(pg_dsn) as conn:
        marker = ROLLBACK_MARKER + "%"
        for table, column in (("products", "reference"), ("product_variants", "sku")):
            q = sql.SQL("SELECT count(*) FROM {} WHERE {} LIKE %s").format(
                sql.Identifier(table), sql.Identifier(column)
            )
            assert conn.execute(q, (marker,)).fetchone() == (0,), table
        _assert_invariants(conn)
        assert (
            int(
                _scalar(conn, "SELECT count(*) FROM products WHERE char_length(description) > 4096")
            )
            > 0
        )
        # no session of the edits is left, let alone one inside a transaction
        left = _scalar(
            conn,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'catalog-cdc-demo-edits'",
        )
        assert left == 0


def test_run_edits_stops_on_request_and_works_on_an_empty_catalog(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        load_schema(conn)
    stop = threading.Event()
    timer = threading.Timer(0.5, stop.set)
    timer.start()
    started = time.monotonic()
    try:
        stats = run_edits(pg_dsn, rate=20, duration=30, seed=1, stop=stop)
    finally:
        timer.cancel()
    assert time.monotonic() - started < 3
    # nothing to edit: every edit skipped, new products need a store
    assert stats.errors == 0
    assert stats.committed == 0
    assert stats.skipped + stats.rolled_back >= 5
    assert {f.name for f in fields(stats)} >= set(_EDIT_KINDS)


def test_run_edits_without_schema_raises_a_clear_error(pg_dsn: str) -> None:
    with pytest.raises(DemoError, match="catalog-cdc demo seed"):
        run_edits(pg_dsn, rate=10, duration=0.2)
    with pytest.raises(DemoError, match="rate"):
        run_edits(pg_dsn, rate=0, duration=1)
