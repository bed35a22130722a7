"""The documents the database says should exist: the ground truth for the assembler.

:func:`expected_documents` builds every :class:`~pipeline.documents.model.ProductDocument`
and :class:`~pipeline.documents.model.CategoryDocument` straight from the catalog
tables with SQL joins, one consistent snapshot (``REPEATABLE READ``), following the
rules of :mod:`pipeline.documents.model`: one document per non-deleted product
(``deleted_at IS NULL``; inactive products included with ``active=False``) and per
category.  Tests, and a ``verify`` command, compare the assembler's output with it
through :func:`comparable`.

``version`` and ``source_ts_ms`` are not in the tables: they are 0 here, and
:func:`comparable` leaves them out.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import IsolationLevel

from pipeline.codec.jsontext import json_loads as _json_loads
from pipeline.documents.model import (
    BrandRef,
    CategoryDocument,
    CategoryRef,
    Document,
    Image,
    ProductDocument,
    StoreRef,
    TechnicalData,
    Variant,
    normalize_tags,
)

__all__ = ["COMPARABLE_EXCLUDE", "comparable", "expected_documents"]

COMPARABLE_EXCLUDE: frozenset[str] = frozenset({"version", "source_ts_ms"})
"""The fields :func:`comparable` drops: they come from the WAL, not from the tables."""

# Category names from the root down, for every category.  The no-cycle trigger and the
# same-store parent key make every category reachable from exactly one root.
_CATEGORIES = """
WITH RECURSIVE tree (id, path) AS (
    SELECT c.id, ARRAY[c.name::text] FROM categories c WHERE c.parent_id IS NULL
    UNION ALL
    SELECT c.id, t.path || c.name::text FROM categories c JOIN tree t ON c.parent_id = t.id
)
SELECT c.id, c.store_id, s.code, c.parent_id, c.name, c.url_key, t.path, c.position,
       c.active, c.updated_at,
       (SELECT count(*) FROM product_categories pc
          JOIN products p ON p.id = pc.product_id AND p.deleted_at IS NULL
         WHERE pc.category_id = c.id) AS product_count
FROM categories c
JOIN stores s ON s.id = c.store_id
LEFT JOIN tree t ON t.id = c.id
ORDER BY c.id
"""

_PRODUCTS = """
SELECT p.id, p.store_id, s.code, p.reference, p.name, p.description, p.url_key, p.price,
       p.list_price, p.active, p.brand_id, b.name, p.ean13, p.weight,
       ARRAY(SELECT t.tag FROM unnest(p.tags) WITH ORDINALITY AS t (tag, n)
             WHERE t.tag IS NOT NULL ORDER BY t.n) AS tags,
       p.updated_at
FROM products p
JOIN stores s ON s.id = p.store_id
LEFT JOIN brands b ON b.id = p.brand_id
WHERE p.deleted_at IS NULL
ORDER BY p.id
"""

_LINKS = """
SELECT pc.product_id, pc.category_id, pc.position
FROM product_categories pc
JOIN products p ON p.id = pc.product_id AND p.deleted_at IS NULL
ORDER BY pc.product_id, pc.position, pc.category_id
"""

# jsonb as text, parsed like the reader parses it (non-integral numbers as Decimal).
_VARIANTS = """
SELECT v.product_id, v.sku, v.price, v.quantity, v.attributes::text
FROM product_variants v
JOIN products p ON p.id = v.product_id AND p.deleted_at IS NULL
ORDER BY v.product_id, v.id
"""

_IMAGES = """
SELECT i.product_id, i.file_name, i.url, i.position
FROM product_images i
JOIN products p ON p.id = i.product_id AND p.deleted_at IS NULL
ORDER BY i.product_id, i.position, i.id
"""

_TECHNICAL_DATA = """
SELECT t.product_id, t.group_name, t.description, t.value, t.suffix, t.print_order
FROM technical_data t
JOIN products p ON p.id = t.product_id AND p.deleted_at IS NULL
ORDER BY t.product_id, t.print_order, t.id
"""


@contextmanager
def _snapshot(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """One consistent, read-only snapshot for every query.

    An idle connection gets a ``REPEATABLE READ READ ONLY`` transaction (its settings
    restored after); inside a transaction the caller's snapshot is used as it is.
    """
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        with conn.transaction():
            yield
        return
    isolation, read_only = conn.isolation_level, conn.read_only
    conn.isolation_level, conn.read_only = IsolationLevel.REPEATABLE_READ, True
    try:
        with conn.transaction():
            yield
    finally:
        conn.isolation_level, conn.read_only = isolation, read_only


def expected_documents(
    conn: psycopg.Connection[Any],
) -> tuple[dict[int, ProductDocument], dict[int, CategoryDocument]]:
    """Every product and category document the catalog's rows call for, keyed by id.

    Products with ``deleted_at`` set have no document (the assembler emits a tombstone
    for them); inactive products do, with ``active=False``.  ``version`` and
    ``source_ts_ms`` are 0.  Read in one snapshot; works on any connection (an open
    transaction of the caller's is used as is, in a savepoint).
    """
    with _snapshot(conn), conn.cursor() as cur:
        cur.execute(_CATEGORIES)
        category_rows = cur.fetchall()
        cur.execute(_PRODUCTS)
        product_rows = cur.fetchall()
        links: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for product_id, category_id, position in cur.execute(_LINKS):
            links[product_id].append((category_id, position))
        variants: dict[int, list[Variant]] = defaultdict(list)
        for product_id, sku, price, quantity, attributes in cur.execute(_VARIANTS):
            variants[product_id].append(
                Variant(sku=sku, price=price, quantity=quantity, attributes=_json_loads(attributes))
            )
        images: dict[int, list[Image]] = defaultdict(list)
        for product_id, file_name, url, position in cur.execute(_IMAGES):
            images[product_id].append(Image(file_name=file_name, url=url, position=position))
        specs: dict[int, list[TechnicalData]] = defaultdict(list)
        for product_id, group, description, value, suffix, order in cur.execute(_TECHNICAL_DATA):
            specs[product_id].append(
                TechnicalData(
                    group=group,
                    description=description,
                    value=value,
                    suffix=suffix,
                    print_order=order,
                )
            )

    categories: dict[int, CategoryDocument] = {}
    for (
        cid,
        store_id,
        store_code,
        parent_id,
        name,
        url_key,
        path,
        position,
        active,
        updated_at,
        product_count,
    ) in category_rows:
        if path is None:
            raise ValueError(f"category {cid} is not reachable from a root category (a cycle?)")
        categories[cid] = CategoryDocument(
            id=cid,
            store=StoreRef(id=store_id, code=store_code),
            parent_id=parent_id,
            name=name,
            url_key=url_key,
            path=tuple(path),
            position=position,
            active=active,
            product_count=product_count,
            updated_at=updated_at,
            version=0,
            source_ts_ms=0,
        )

    products: dict[int, ProductDocument] = {}
    for (
        pid,
        store_id,
        store_code,
        reference,
        name,
        description,
        url_key,
        price,
        list_price,
        active,
        brand_id,
        brand_name,
        ean13,
        weight,
        tags,
        updated_at,
    ) in product_rows:
        product_variants = variants.get(pid, [])
        products[pid] = ProductDocument(
            id=pid,
            store=StoreRef(id=store_id, code=store_code),
            reference=reference,
            name=name,
            description=description,
            url_key=url_key,
            price=price,
            list_price=list_price,
            active=active,
            brand=None if brand_id is None else BrandRef(id=brand_id, name=brand_name),
            categories=tuple(
                CategoryRef(
                    id=cat_id,
                    name=categories[cat_id].name,
                    url_key=categories[cat_id].url_key,
                    path=categories[cat_id].path,
                    position=position,
                )
                for cat_id, position in links.get(pid, [])
            ),
            variants=tuple(product_variants),
            total_quantity=sum(v.quantity for v in product_variants),
            images=tuple(images.get(pid, [])),
            technical_data=tuple(specs.get(pid, [])),
            ean13=ean13,
            weight=weight,
            tags=normalize_tags(tags),
            updated_at=updated_at,
            version=0,
            source_ts_ms=0,
        )
    return products, categories


def comparable(doc: Document) -> dict[str, Any]:
    """``doc`` as a plain dict without ``version`` and ``source_ts_ms``, for comparisons.

    Two documents built from the same rows (by the assembler, or by
    :func:`expected_documents`) give equal dicts whatever WAL position they came from.
    """
    return doc.model_dump(mode="python", exclude=set(COMPARABLE_EXCLUDE))
