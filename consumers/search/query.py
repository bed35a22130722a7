"""``catalog-cdc search QUERY``: a real query on the live alias, hits and facets."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from consumers.search import mapping
from consumers.search.engine import SearchEngine
from pipeline.errors import ConfigurationError

__all__ = ["parse_price", "search"]


def parse_price(text: str) -> tuple[Decimal | None, Decimal | None]:
    """``"10..50"``, ``"10.."`` or ``"..50"`` -> (min, max)."""
    low, sep, high = text.partition("..")
    if not sep:
        raise ConfigurationError(f"--price {text!r}: expected MIN..MAX, MIN.. or ..MAX")
    try:
        return (Decimal(low) if low else None, Decimal(high) if high else None)
    except InvalidOperation as exc:
        raise ConfigurationError(f"--price {text!r}: not a number") from exc


AGGREGATIONS: dict[str, Any] = {
    "brands": {"terms": {"field": "brand.name.keyword", "size": 10}},
    "categories": {"terms": {"field": "categories.name", "size": 10}},
    "prices": {
        "range": {
            "field": "price",
            "ranges": [
                {"to": 25},
                {"from": 25, "to": 100},
                {"from": 100, "to": 500},
                {"from": 500},
            ],
        }
    },
}
"""The facets, in the order they are shown."""


def search(
    engine: SearchEngine,
    index_prefix: str,
    query: str,
    *,
    brand: str | None = None,
    category: str | None = None,
    price: tuple[Decimal | None, Decimal | None] | None = None,
    size: int = 10,
    include_inactive: bool = False,
) -> dict[str, Any]:
    """Full text over name, description, brand, reference and SKUs, with filters and
    facets (brands, categories, price ranges).  Returns ``{total, hits, facets}``."""
    must: list[dict[str, Any]] = []
    if query:
        must.append(
            {
                "bool": {
                    "should": [
                        {
                            "multi_match": {
                                "query": query,
                                "fields": ["name^3", "brand.name^2", "description"],
                            }
                        },
                        {"term": {"reference": query}},
                        {"term": {"skus": query}},
                    ]
                }
            }
        )
    filters: list[dict[str, Any]] = []
    if not include_inactive:
        filters.append({"term": {"active": True}})
    if brand:
        filters.append({"term": {"brand.name.keyword": brand}})
    if category:
        filters.append({"term": {"categories.name": category}})
    if price is not None:
        bounds = {k: float(v) for k, v in zip(("gte", "lte"), price, strict=True) if v is not None}
        filters.append({"range": {"price": bounds}})
    response = engine.search(
        mapping.alias(index_prefix),
        {"bool": {"must": must or [{"match_all": {}}], "filter": filters}},
        size=size,
        aggs=AGGREGATIONS,
        source_excludes=["description", "images", "technical_data"],
    )
    return {
        "total": response.total,
        "hits": [{"id": int(h.id), "score": h.score, **h.source} for h in response.hits],
        "facets": {
            name: [
                {"key": b.get("key"), "count": b["doc_count"]}
                for b in response.aggregations[name]["buckets"]
            ]
            for name in AGGREGATIONS
        },
    }
