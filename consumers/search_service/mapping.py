"""Documents -> the Update API's objects: the schema, ``items`` (products), ``categories``.

See ``docs/search-service.md`` for the table.  Everything here is pure; the values
follow :mod:`consumers.search_service.rules` (numbers as JSON numbers, no ``null``:
a missing value leaves the field out, an empty list too).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final
from urllib.parse import quote, urlsplit

from pipeline.documents.model import CategoryDocument, ProductDocument

__all__ = ["SCHEMA", "SCHEMA_HASH", "Links", "category_item", "content_hash", "product_item"]


def _select(title: str, position: int) -> dict[str, Any]:
    return {"title": title, "type": "select", "position": position}


SCHEMA: Final[list[dict[str, Any]]] = [
    # standard attributes: only what the seed lets a schema change
    {"name": "title", "title": "Product name", "text_search": "Y", "weight": 100},
    {"name": "summary", "title": "Description", "text_search": "Y", "weight": 50},
    {"name": "product_code", "title": "Reference", "text_search": "Y", "weight": 100},
    {"name": "price", "title": "Price", "facet": {"title": "Price", "type": "slider"}},
    {"name": "list_price", "title": "List price"},
    {"name": "quantity", "title": "Quantity in stock"},
    # additional attributes
    {"name": "status", "title": "Status", "type": "text"},
    {"name": "store", "title": "Store", "type": "text"},
    {
        "name": "brand",
        "title": "Brand",
        "type": "text",
        "text_search": "Y",
        "weight": 60,
        "facet": _select("Brand", 10),
    },
    {
        "name": "categories",
        "title": "Categories",
        "type": "text",
        "text_search": "Y",
        "weight": 30,
        "facet": _select("Categories", 20),
    },
    {"name": "category_ids", "title": "Category ids", "type": "int", "sorting": "N"},
    {"name": "category_paths", "title": "Category paths", "type": "text"},
    {"name": "skus", "title": "Variant SKUs", "type": "text", "text_search": "Y", "weight": 100},
    {
        "name": "variant_options",
        "title": "Options",
        "type": "text",
        "facet": _select("Options", 30),
    },
    {
        "name": "tags",
        "title": "Tags",
        "type": "text",
        "text_search": "Y",
        "weight": 20,
        "facet": _select("Tags", 40),
    },
    {"name": "ean13", "title": "EAN-13", "type": "text", "text_search": "Y", "weight": 100},
    {"name": "images", "title": "Images", "type": "text"},
    {
        "name": "technical_data",
        "title": "Technical data",
        "type": "text",
        "text_search": "Y",
        "weight": 10,
    },
    {
        "name": "weight_kg",
        "title": "Weight (kg)",
        "type": "float",
        "facet": {"title": "Weight", "type": "slider", "position": 50},
    },
    {"name": "updated_at", "title": "Updated", "type": "text", "sorting": "Y"},
]
"""The attribute and filter settings sent first (and again only when this changes)."""


def content_hash(obj: Any) -> str:
    """SHA-1 of the canonical JSON of ``obj`` (what decides "unchanged")."""
    text = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


SCHEMA_HASH: Final = content_hash(SCHEMA)


@dataclass(frozen=True)
class Links:
    """URL templates of product and category pages: ``{store}`` (store code),
    ``{url_key}`` (URL-quoted) and ``{id}`` are replaced."""

    product: str = "https://shop.example.com/{store}/products/{url_key}"
    category: str = "https://shop.example.com/{store}/categories/{url_key}"

    def product_link(self, doc: ProductDocument) -> str:
        return self.product.format(
            store=quote(doc.store.code), url_key=quote(doc.url_key), id=doc.id
        )

    def category_link(self, doc: CategoryDocument) -> str:
        return self.category.format(
            store=quote(doc.store.code), url_key=quote(doc.url_key), id=doc.id
        )

    @property
    def store_url(self) -> str:
        """The ``header.id``: the store's URL (scheme and host of the product template)."""
        parts = urlsplit(self.product)
        return f"{parts.scheme}://{parts.netloc}/"


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, int | float | bool) or value is None:
        return json.dumps(value, default=str)
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def product_item(doc: ProductDocument, links: Links) -> dict[str, Any]:
    """The ``items`` object of a product (inactive ones too: ``status=disabled``)."""
    item: dict[str, Any] = {
        "id": doc.id,
        "title": doc.name,
        "link": links.product_link(doc),
        "price": float(doc.price),
        "quantity": doc.total_quantity,
        "product_code": doc.reference,
        "status": "active" if doc.active else "disabled",
        "store": doc.store.code,
        "updated_at": doc.updated_at.isoformat(),
    }
    if doc.description is not None:
        item["summary"] = doc.description
    if doc.list_price is not None:
        item["list_price"] = float(doc.list_price)
    if doc.images:
        item["image_link"] = doc.images[0].url
        item["images"] = [i.url for i in doc.images]
    if doc.brand is not None:
        item["brand"] = doc.brand.name
    if doc.categories:
        item["categories"] = [c.name for c in doc.categories]
        item["category_ids"] = [c.id for c in doc.categories]
        item["category_paths"] = [" > ".join(c.path) for c in doc.categories]
    if doc.variants:
        item["skus"] = [v.sku for v in doc.variants]
        options = sorted(
            {f"{k}={_text(val)}" for v in doc.variants for k, val in v.attributes.items()}
        )
        if options:
            item["variant_options"] = options
    if doc.tags:
        item["tags"] = list(doc.tags)
    if doc.ean13:
        item["ean13"] = doc.ean13
    if doc.technical_data:
        item["technical_data"] = [
            f"{t.group} / {t.description}: {t.value}{'' if t.suffix is None else ' ' + t.suffix}"
            for t in doc.technical_data
        ]
    if doc.weight is not None:
        item["weight_kg"] = float(doc.weight)
    return item


def category_item(doc: CategoryDocument, links: Links) -> dict[str, Any] | None:
    """The ``categories`` object of a category; ``None`` for an inactive one (the Update
    API has no status for categories: an inactive category is deleted there)."""
    if not doc.active:
        return None
    return {
        "id": doc.id,
        "parent_id": 0 if doc.parent_id is None else doc.parent_id,
        "title": doc.name,
        "link": links.category_link(doc),
        "summary": " > ".join(doc.path),
    }
