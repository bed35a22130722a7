"""The product index: template, mapping, alias and generations, and the indexed body.

The live index sits behind the alias ``{prefix}-products`` and is a *generation*
``{prefix}-products-{n}``; the template ``{prefix}-products`` gives every generation
the same settings and mapping (a rebuild writes a new generation and swaps the alias).
"""

from __future__ import annotations

from typing import Any

from pipeline.documents.model import ProductDocument

MONEY: dict[str, Any] = {"type": "scaled_float", "scaling_factor": 100}
KEYWORD: dict[str, Any] = {"type": "keyword"}
TEXT_KW: dict[str, Any] = {"type": "text", "fields": {"keyword": {"type": "keyword"}}}

MAPPING: dict[str, Any] = {
    "dynamic": "strict",
    "properties": {
        "id": {"type": "long"},
        "store": KEYWORD,
        "store_id": {"type": "integer"},
        "reference": KEYWORD,
        "name": TEXT_KW,
        "description": {"type": "text"},
        "url_key": KEYWORD,
        "price": MONEY,
        "list_price": MONEY,
        "on_sale": {"type": "boolean"},
        "active": {"type": "boolean"},
        "brand": {"properties": {"id": {"type": "integer"}, "name": TEXT_KW}},
        "categories": {
            "properties": {
                "id": {"type": "integer"},
                "name": KEYWORD,
                "url_key": KEYWORD,
                "path": KEYWORD,
            }
        },
        "category_paths": KEYWORD,
        "variants": {
            "type": "nested",
            "properties": {
                "sku": KEYWORD,
                "price": MONEY,
                "quantity": {"type": "integer"},
                "attributes": KEYWORD,
            },
        },
        "skus": KEYWORD,
        "total_quantity": {"type": "integer"},
        "in_stock": {"type": "boolean"},
        "images": {"type": "object", "enabled": False},
        "technical_data": {
            "properties": {"group": KEYWORD, "description": KEYWORD, "value": KEYWORD}
        },
        "ean13": KEYWORD,
        "tags": KEYWORD,
        "updated_at": {"type": "date"},
        "version": {"type": "long"},
        "content_hash": KEYWORD,
    },
}

SETTINGS: dict[str, Any] = {"number_of_shards": 1, "number_of_replicas": 0}


def alias(prefix: str) -> str:
    return f"{prefix}-products"


def generation(prefix: str, n: int) -> str:
    return f"{prefix}-products-{n}"


def template(prefix: str) -> dict[str, Any]:
    return {
        "index_patterns": [f"{prefix}-products-*"],
        "template": {"settings": SETTINGS, "mappings": MAPPING},
    }


def body(doc: ProductDocument) -> dict[str, Any]:
    """The indexed form of a product document (facets flattened for aggregations)."""
    return {
        "id": doc.id,
        "store": doc.store.code,
        "store_id": doc.store.id,
        "reference": doc.reference,
        "name": doc.name,
        "description": doc.description,
        "url_key": doc.url_key,
        # Numbers, not decimal strings: range queries and aggregations need them (the
        # local server does not coerce strings), and scaled_float keeps cents exact.
        "price": float(doc.price),
        "list_price": None if doc.list_price is None else float(doc.list_price),
        "on_sale": doc.list_price is not None and doc.list_price > doc.price,
        "active": doc.active,
        "brand": None if doc.brand is None else {"id": doc.brand.id, "name": doc.brand.name},
        "categories": [
            {"id": c.id, "name": c.name, "url_key": c.url_key, "path": " > ".join(c.path)}
            for c in doc.categories
        ],
        "category_paths": sorted(
            {" > ".join(c.path[: i + 1]) for c in doc.categories for i in range(len(c.path))}
        ),
        "variants": [
            {
                "sku": v.sku,
                "price": float(v.price),
                "quantity": v.quantity,
                "attributes": [f"{k}={val}" for k, val in sorted(v.attributes.items())],
            }
            for v in doc.variants
        ],
        "skus": [v.sku for v in doc.variants],
        "total_quantity": doc.total_quantity,
        "in_stock": doc.total_quantity > 0,
        "images": [{"url": i.url, "file_name": i.file_name} for i in doc.images],
        "technical_data": [
            {"group": t.group, "description": t.description, "value": t.value}
            for t in doc.technical_data
        ],
        "ean13": doc.ean13 or None,
        "tags": list(doc.tags),
        "updated_at": doc.updated_at.isoformat(),
        "version": doc.version,
    }
