"""Reference documents straight from SQL: the ground truth the assembler is checked against."""

from __future__ import annotations

import random
from collections import defaultdict
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg import IsolationLevel

from pipeline.demo.seed import seed_catalog
from pipeline.documents.model import CategoryDocument, ProductDocument
from pipeline.documents.reference import comparable, expected_documents

pytestmark = pytest.mark.integration

Docs = tuple[dict[int, ProductDocument], dict[int, CategoryDocument]]


def rows(conn: psycopg.Connection[Any], query: str, *params: Any) -> list[tuple[Any, ...]]:
    return conn.execute(query, params).fetchall()


def changed(before: dict[int, Any], after: dict[int, Any]) -> set[int]:
    assert before.keys() == after.keys()
    return {k for k in before if comparable(before[k]) != comparable(after[k])}


@pytest.fixture
def seeded(catalog_dsn: str) -> str:
    counts = seed_catalog(catalog_dsn, products=50, seed=11)
    assert counts.products == 50
    return catalog_dsn


def test_documents_match_the_rows(seeded: str) -> None:
    with psycopg.connect(seeded, autocommit=True) as conn:
        # Make sure there is a soft-deleted, an inactive and tie-breaking rows to see.
        conn.execute("UPDATE products SET deleted_at = now() WHERE id IN (3, 17)")
        conn.execute("UPDATE products SET active = false WHERE id = 5")
        conn.execute(
            "UPDATE products SET tags = ARRAY['b', NULL, 'a'], list_price = 10.50, "
            "weight = 1.250 WHERE id = 8"
        )
        # Images and technical data with equal positions (the row id breaks the tie),
        # variants inserted with ids out of sku order, jsonb with exact decimals.
        conn.execute("DELETE FROM product_images WHERE product_id = 8")
        conn.execute("DELETE FROM technical_data WHERE product_id = 8")
        conn.execute("DELETE FROM product_variants WHERE product_id = 8")
        conn.execute(
            "INSERT INTO product_images (id, product_id, file_name, url, position, size_bytes) "
            "VALUES (9003, 8, 'c.jpg', 'u/c', 1, 10), (9001, 8, 'a.jpg', 'u/a', 1, 10), "
            "(9002, 8, 'b.png', 'u/b', 0, 10)"
        )
        conn.execute(
            "INSERT INTO technical_data (id, product_id, group_name, description, value, suffix, print_order) "
            "VALUES (9002, 8, 'G', 'second', '2', NULL, 5), (9001, 8, 'G', 'first', '1', 'W', 5), "
            "(9003, 8, 'G', 'zeroth', '0', NULL, -1)"
        )
        conn.execute(
            "INSERT INTO product_variants (id, product_id, sku, price, quantity, attributes) "
            "VALUES (9002, 8, 'SKU-A', 5.00, 2, '{\"size\": \"M\"}'), "
            '(9001, 8, \'SKU-Z\', 6.10, 3, \'{"w": 1.50, "n": 3, "x": [1.0, null]}\')'
        )
        products, categories = expected_documents(conn)

        # One document per non-deleted product; soft-deleted ones have none.
        live = {r[0] for r in rows(conn, "SELECT id FROM products WHERE deleted_at IS NULL")}
        assert set(products) == live and len(live) == 50 - len(
            rows(conn, "SELECT 1 FROM products WHERE deleted_at IS NOT NULL")
        )
        assert 3 not in products and 17 not in products
        assert products[5].active is False
        assert {pid for pid, d in products.items() if not d.active} == {
            r[0]
            for r in rows(conn, "SELECT id FROM products WHERE NOT active AND deleted_at IS NULL")
        }
        assert set(categories) == {r[0] for r in rows(conn, "SELECT id FROM categories")}

        # The tie-breaking product.
        p8 = products[8]
        assert [i.file_name for i in p8.images] == ["b.png", "a.jpg", "c.jpg"]
        assert [t.description for t in p8.technical_data] == ["zeroth", "first", "second"]
        assert [v.sku for v in p8.variants] == ["SKU-Z", "SKU-A"]
        assert p8.variants[0].attributes == {
            "w": Decimal("1.50"),
            "n": 3,
            "x": [Decimal("1.0"), None],
        }
        assert str(p8.variants[0].price) == "6.10"
        assert p8.total_quantity == 5
        assert p8.tags == ("b", "a")
        assert str(p8.list_price) == "10.50" and str(p8.weight) == "1.250"

        # Every product against its rows, fetched in random order and sorted here.
        product_rows = {
            r[0]: r
            for r in rows(
                conn,
                "SELECT p.id, p.store_id, s.code, p.reference, p.name, p.description, p.url_key, "
                "p.price, p.list_price, p.active, p.brand_id, b.name, p.ean13, p.weight, p.updated_at "
                "FROM products p JOIN stores s ON s.id = p.store_id "
                "LEFT JOIN brands b ON b.id = p.brand_id",
            )
        }
        children: dict[str, dict[int, list[tuple[Any, ...]]]] = {}
        for name, query in {
            "links": "SELECT product_id, position, category_id FROM product_categories ORDER BY random()",
            "variants": "SELECT product_id, id, sku, price, quantity FROM product_variants ORDER BY random()",
            "images": "SELECT product_id, position, id, file_name, url FROM product_images ORDER BY random()",
            "specs": "SELECT product_id, print_order, id, group_name, description, value, suffix "
            "FROM technical_data ORDER BY random()",
        }.items():
            grouped: dict[int, list[tuple[Any, ...]]] = defaultdict(list)
            for r in rows(conn, query):
                grouped[r[0]].append(r[1:])
            children[name] = grouped
        cat_rows = {
            r[0]: r
            for r in rows(conn, "SELECT id, parent_id, name, url_key, store_id FROM categories")
        }
        some_brand = False
        for pid, doc in products.items():
            (_, store_id, code, reference, name, description, url_key, price, list_price,
             active, brand_id, brand_name, ean13, weight, updated_at) = product_rows[pid]  # fmt: skip
            assert (doc.store.id, doc.store.code) == (store_id, code)
            assert (doc.reference, doc.name, doc.description, doc.url_key) == (
                reference, name, description, url_key,
            )  # fmt: skip
            assert (doc.price, doc.list_price, doc.active, doc.ean13, doc.weight) == (
                price, list_price, active, ean13, weight,
            )  # fmt: skip
            assert doc.updated_at == updated_at and doc.updated_at.utcoffset() is not None
            if brand_id is None:
                assert doc.brand is None
            else:
                some_brand = True
                assert doc.brand is not None and (doc.brand.id, doc.brand.name) == (
                    brand_id,
                    brand_name,
                )
            links = sorted(children["links"][pid])
            assert [(c.position, c.id) for c in doc.categories] == links
            for c in doc.categories:
                assert (c.name, c.url_key, c.path) == (
                    cat_rows[c.id][2], cat_rows[c.id][3], categories[c.id].path,
                )  # fmt: skip
            variants = sorted(children["variants"][pid])
            assert [(v.sku, v.price, v.quantity) for v in doc.variants] == [
                r[1:4] for r in variants
            ]
            assert doc.total_quantity == sum(r[3] for r in variants)
            images = sorted(children["images"][pid])
            assert [(i.position, i.file_name, i.url) for i in doc.images] == [
                (r[0], r[2], r[3]) for r in images
            ]
            specs = sorted(children["specs"][pid])
            assert [
                (t.print_order, t.group, t.description, t.value, t.suffix)
                for t in doc.technical_data
            ] == [(r[0], *r[2:]) for r in specs]
            assert doc.version == 0 and doc.source_ts_ms == 0
        assert some_brand
        assert any(len(d.categories) > 1 for d in products.values())
        assert any(len(d.images) > 1 for d in products.values())

        # Category paths: root first, the category itself last, 3 levels.
        depths: dict[int, int] = defaultdict(int)
        for cid, cat in categories.items():
            parent = cat_rows[cid][1]
            assert cat.parent_id == parent and cat.store.id == cat_rows[cid][4]
            if parent is None:
                assert cat.path == (cat.name,)
            else:
                assert cat.path == (*categories[parent].path, cat.name)
                assert categories[parent].store == cat.store
            depths[len(cat.path)] += 1
        assert set(depths) == {1, 2, 3}
        leaf = next(c for c in categories.values() if len(c.path) == 3)
        assert leaf.parent_id is not None
        mid = categories[leaf.parent_id]
        assert mid.parent_id is not None
        root = categories[mid.parent_id]
        assert leaf.path == (root.name, mid.name, leaf.name)

        # product_count: non-deleted products linked directly, inactive included.
        count: dict[int, int] = defaultdict(int)
        for pid in live:
            for _, cid in children["links"][pid]:
                count[cid] += 1
        assert {cid: c.product_count for cid, c in categories.items()} == {
            cid: count.get(cid, 0) for cid in categories
        }
        assert any(c.product_count > 0 for c in categories.values())
        inactive_cats = {cid for _, cid in children["links"][5]}
        assert inactive_cats and all(categories[c].product_count >= 1 for c in inactive_cats)

        # Built twice from the same rows: equal.
        assert expected_documents(conn) == (products, categories)


def test_edits_change_exactly_the_affected_documents(seeded: str) -> None:
    with psycopg.connect(seeded) as conn:
        products, categories = expected_documents(conn)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert conn.isolation_level is None and conn.read_only is None

        # Brand rename: exactly its products change, and only their brand name.
        brand_id = next(d.brand.id for d in products.values() if d.brand is not None)
        conn.execute("UPDATE brands SET name = 'Renamed Brand' WHERE id = %s", (brand_id,))
        conn.commit()
        after, after_cats = expected_documents(conn)
        with_brand = {p for p, d in products.items() if d.brand and d.brand.id == brand_id}
        assert changed(products, after) == with_brand and with_brand
        for pid in with_brand:
            brand = after[pid].brand
            assert brand is not None and brand.name == "Renamed Brand"
            assert after[pid].model_copy(update={"brand": products[pid].brand}) == products[pid]
        assert after_cats == categories
        products = after

        # Rename a mid-level category: its products and its children's products change
        # (paths), and so do the category and its descendants' documents.
        mid = next(
            c for c in categories.values()
            if c.parent_id is not None and len(c.path) == 2
            and any(k.parent_id == c.id and k.product_count for k in categories.values())
        )  # fmt: skip
        subtree = {mid.id} | {k.id for k in categories.values() if k.parent_id == mid.id}
        conn.execute("UPDATE categories SET name = 'Renamed Mid' WHERE id = %s", (mid.id,))
        conn.commit()
        after, after_cats = expected_documents(conn)
        assert changed(categories, after_cats) == subtree
        for cid in subtree:
            assert after_cats[cid].path[1] == "Renamed Mid"
        assert after_cats[mid.id].name == "Renamed Mid"
        in_subtree = {p for p, d in products.items() if any(c.id in subtree for c in d.categories)}
        assert changed(products, after) == in_subtree and in_subtree
        leaf_product = next(
            p
            for p, d in after.items()
            if any(c.id != mid.id and c.id in subtree for c in d.categories)
        )
        ref = next(c for c in after[leaf_product].categories if c.id in subtree and c.id != mid.id)
        assert ref.path[1] == "Renamed Mid" and ref.name == after_cats[ref.id].name
        products, categories = after, after_cats

        # Stock change on one variant: that product only; total follows.
        pid = next(p for p, d in products.items() if len(d.variants) > 1)
        sku = products[pid].variants[1].sku
        conn.execute("UPDATE product_variants SET quantity = quantity + 7 WHERE sku = %s", (sku,))
        conn.commit()
        after, after_cats = expected_documents(conn)
        assert changed(products, after) == {pid}
        assert after[pid].variants[1].quantity == products[pid].variants[1].quantity + 7
        assert after[pid].total_quantity == products[pid].total_quantity + 7
        assert after_cats == categories
        products = after

        # Soft delete: the document goes, the counts of its categories drop by one.
        pid = next(p for p, d in products.items() if d.categories)
        conn.execute("UPDATE products SET deleted_at = now() WHERE id = %s", (pid,))
        conn.commit()
        after, after_cats = expected_documents(conn)
        assert pid not in after and set(after) == set(products) - {pid}
        linked = {c.id for c in products[pid].categories}
        assert changed(categories, after_cats) == linked
        for cid in linked:
            assert after_cats[cid].product_count == categories[cid].product_count - 1
        products, categories = after, after_cats

        # Deactivating a product keeps it (active=False) and leaves the counts alone.
        pid = next(p for p, d in products.items() if d.active and d.categories)
        conn.execute("UPDATE products SET active = false WHERE id = %s", (pid,))
        conn.commit()
        after, after_cats = expected_documents(conn)
        assert changed(products, after) == {pid} and after[pid].active is False
        assert after_cats == categories

        # Moving a category re-roots its subtree's paths.
        leaf = next(c for c in categories.values() if len(c.path) == 3)
        conn.execute("UPDATE categories SET parent_id = NULL WHERE id = %s", (leaf.id,))
        conn.commit()
        _, moved = expected_documents(conn)
        assert moved[leaf.id].path == (leaf.name,) and moved[leaf.id].parent_id is None


def test_uses_the_callers_transaction(seeded: str) -> None:
    with psycopg.connect(seeded) as conn:
        conn.isolation_level = IsolationLevel.SERIALIZABLE
        baseline, _ = expected_documents(conn)
        assert conn.isolation_level == IsolationLevel.SERIALIZABLE
        pid = random.Random(3).choice(sorted(baseline))
        conn.execute("UPDATE products SET name = 'Uncommitted' WHERE id = %s", (pid,))
        inside, _ = expected_documents(conn)  # sees the caller's own uncommitted change
        assert inside[pid].name == "Uncommitted"
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        conn.rollback()
        again, _ = expected_documents(conn)
        assert again == baseline
