"""The documents the assembler emits: one per product, one per category.

Two top-level documents, pydantic v2 models (frozen, unknown fields forbidden):

* :class:`ProductDocument`, key = product id, topic ``{prefix}.doc.products``: the
  whole product as every sink needs it (product row + store + brand + categories +
  variants with price and stock + images + technical data).
* :class:`CategoryDocument`, key = category id, topic ``{prefix}.doc.categories``.

Only *non-deleted* products have a document (``products.deleted_at IS NULL``); a
deleted or soft-deleted product is a tombstone on the topic.  Inactive products keep
their document, with ``active=False``.

Ordering rules (every list in a document has one deterministic order, so two builds of
the same rows give equal documents):

==================  ==========================================================
list                order
==================  ==========================================================
``categories``      ``product_categories.position``, then category id
``variants``        ``product_variants.id``
``images``          ``product_images.position``, then image id
``technical_data``  ``technical_data.print_order``, then technical-data row id
``tags``            the order of the ``products.tags`` array
``path``            from the root category down to the category itself
==================  ==========================================================

The models check what the documents themselves show: ``categories`` sorted by
(``position``, ``id``), ``images`` by ``position``, ``technical_data`` by
``print_order``, ``total_quantity`` = the sum of the variant quantities, a path that
ends with the category's own name.  Ties broken by row ids that the documents do not
carry (variant, image and technical-data ids) are the builder's job.

Decisions:

* **path** is a list of category names, root first and the category itself last
  (``["Electronics", "Audio", "Headphones"]``): a breadcrumb.  A list, not a
  ``"/"``-joined string, because names may contain ``/``.
* **product_count** counts the non-deleted products linked *directly* to the category
  (not its descendants), inactive products included: the same set of products the
  sinks hold, so it changes only when a link is added or removed or a product is
  (un)deleted, never on an ``active`` toggle.
* **Money** (``price``, ``list_price``, variant ``price``) and ``weight`` are exact
  ``Decimal`` values, finite and ``>= 0``; a ``float`` is refused (it is not exact).  In
  JSON and Avro they are decimal strings (``"12.50"`` keeps its scale).
* **Datetimes** are aware and normalised to UTC; ISO 8601 in JSON, Avro
  ``timestamp-micros``.
* **attributes** (``product_variants.attributes``, a jsonb object) is parsed JSON with
  non-integral numbers as ``Decimal``, as the reader parses jsonb.  In JSON it stays an
  object (numbers written exactly); in Avro it is compact JSON text marked
  ``connect.name: io.debezium.data.Json``.
* **tags** are the non-NULL elements of ``products.tags`` in array order (a
  multi-dimensional array is flattened): see :func:`normalize_tags`.
* **updated_at** is the product's (category's) own ``updated_at`` column; a change to a
  child row (variant stock, image...) does not move it.  ``version`` orders documents.
* **version** is the source LSN of the newest change the document reflects (strictly
  increasing per key, identical on rebuild); **source_ts_ms** the commit time of that
  change, milliseconds since the epoch.  Both are 0 in documents built from SQL
  (:mod:`pipeline.documents.reference`).

Serialisation: :func:`to_json` / :func:`from_json` (JSON text) and :func:`to_avro` /
:func:`from_avro` (records for fastavro, schemas ``schemas/avro/product_document.avsc``
and ``schemas/avro/category_document.avsc``, see :func:`avro_schema`).  Both round trip
exactly: ``from_json(to_json(doc), type(doc)) == doc`` and ``from_avro(to_avro(doc)) ==
doc``.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Final, Self, TypeVar, cast, overload

from pydantic import AfterValidator, AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic import model_validator as _model_validator

from pipeline.codec.jsontext import json_dumps as _json_dumps
from pipeline.codec.jsontext import json_loads as _json_loads

__all__ = [
    "AVRO_SCHEMA_FILES",
    "MAX_VERSION",
    "BrandRef",
    "CategoryDocument",
    "CategoryRef",
    "Document",
    "Image",
    "ProductDocument",
    "StoreRef",
    "TechnicalData",
    "Variant",
    "avro_schema",
    "avro_schema_json",
    "from_avro",
    "from_json",
    "normalize_tags",
    "to_avro",
    "to_json",
]

MAX_VERSION: Final = 2**63 - 1
"""Largest ``version`` (an Avro ``long``; PostgreSQL LSNs stay far below it)."""


# --------------------------------------------------------------------------- field types


def _no_float(value: Any) -> Any:
    if isinstance(value, float):
        raise ValueError("a float is not an exact decimal: pass a Decimal, an int or a str")
    return value


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


Money = Annotated[Decimal, BeforeValidator(_no_float), Field(ge=0)]
"""Exact, finite, non-negative decimal (``NaN``/``Infinity`` refused)."""

UtcDatetime = Annotated[AwareDatetime, AfterValidator(_utc)]
"""Aware datetime, normalised to UTC."""

Name = Annotated[str, Field(min_length=1)]
Path = Annotated[tuple[Name, ...], Field(min_length=1)]
Version = Annotated[int, Field(ge=0, le=MAX_VERSION)]
Int32 = Annotated[int, Field(ge=-(2**31), le=2**31 - 1)]
"""A PostgreSQL ``integer`` (Avro ``int``)."""
Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
"""A PostgreSQL ``bigint`` (Avro ``long``)."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --------------------------------------------------------------------------- parts


class StoreRef(_Frozen):
    """The store a product or category belongs to (``stores`` row)."""

    id: Int32
    """``stores.id``."""
    code: str
    """``stores.code``, e.g. ``main``: the ``{store}`` prefix of edge-KV keys."""


class BrandRef(_Frozen):
    """A product's brand (``brands`` row referenced by ``products.brand_id``)."""

    id: Int32
    """``brands.id``."""
    name: Name
    """``brands.name``."""


class CategoryRef(_Frozen):
    """One category a product is linked to (``product_categories`` + ``categories``)."""

    id: Int32
    """``categories.id``."""
    name: Name
    """``categories.name``."""
    url_key: str
    """``categories.url_key``."""
    path: Path
    """Category names from the root down to this category (its own name last)."""
    position: Int32
    """``product_categories.position``: the product's place within this category."""

    @_model_validator(mode="after")
    def _path_ends_with_name(self) -> Self:
        if self.path[-1] != self.name:
            raise ValueError(f"path {list(self.path)!r} must end with the name {self.name!r}")
        return self


class Variant(_Frozen):
    """One sellable variant (``product_variants`` row)."""

    sku: Name
    """``product_variants.sku`` (unique across the catalog)."""
    price: Money
    """``product_variants.price``."""
    quantity: Annotated[int, Field(ge=0, le=2**31 - 1)]
    """``product_variants.quantity``: units in stock."""
    attributes: dict[str, Any]
    """``product_variants.attributes`` (jsonb object, e.g. ``{"size": "M"}``);
    non-integral numbers are ``Decimal``."""


class Image(_Frozen):
    """One product image (``product_images`` row)."""

    file_name: Name
    """``product_images.file_name``."""
    url: str
    """``product_images.url``."""
    position: Int32
    """``product_images.position``: display order (ties broken by image id)."""


class TechnicalData(_Frozen):
    """One technical-data line: Gruppo / Descrizione / Valore / Suffisso / PrintOrder."""

    group: Name
    """``technical_data.group_name`` (Gruppo)."""
    description: Name
    """``technical_data.description`` (Descrizione)."""
    value: Name
    """``technical_data.value`` (Valore)."""
    suffix: str | None
    """``technical_data.suffix`` (Suffisso, a unit such as ``W``), or ``None``."""
    print_order: Int32
    """``technical_data.print_order`` (PrintOrder; ties broken by row id)."""


# --------------------------------------------------------------------------- documents


def _non_decreasing(keys: Iterable[Any], what: str) -> None:
    previous: Any = None
    for i, key in enumerate(keys):
        if previous is not None and key < previous:
            raise ValueError(f"{what} out of order at index {i}: {key!r} after {previous!r}")
        previous = key


class ProductDocument(_Frozen):
    """The whole product, as every sink needs it.  Key: ``id``.

    Exists only for non-deleted products (``deleted_at IS NULL``); inactive ones have
    ``active=False``.  See the module docstring for the ordering rules.
    """

    id: Int64
    """``products.id``."""
    store: StoreRef
    """The product's store (``products.store_id``)."""
    reference: Name
    """``products.reference``: the merchant's product code (<= 64 chars)."""
    name: Name
    """``products.name``."""
    description: str | None
    """``products.description`` (may be long; ``None`` when NULL)."""
    url_key: str
    """``products.url_key``: the ``{urlKey}`` of storefront URLs and edge-KV keys."""
    price: Money
    """``products.price``: the selling price."""
    list_price: Money | None
    """``products.list_price``: the "was" price, or ``None``."""
    active: bool
    """``products.active``: inactive products are kept, sinks decide what to show."""
    brand: BrandRef | None
    """The brand, or ``None`` when ``products.brand_id`` is NULL."""
    categories: tuple[CategoryRef, ...]
    """Linked categories, by ``product_categories.position`` then category id."""
    variants: tuple[Variant, ...]
    """Variants, by variant id."""
    total_quantity: Annotated[int, Field(ge=0, le=2**63 - 1)]
    """Sum of the variants' ``quantity`` (0 without variants)."""
    images: tuple[Image, ...]
    """Images, by ``position`` then image id."""
    technical_data: tuple[TechnicalData, ...]
    """Technical data, by ``print_order`` then row id."""
    ean13: str
    """``products.ean13``: 13 digits, or ``""``."""
    weight: Money | None
    """``products.weight`` in kg, exact, or ``None``."""
    tags: tuple[str, ...]
    """The non-NULL elements of ``products.tags``, in array order."""
    updated_at: UtcDatetime
    """``products.updated_at`` (UTC)."""
    version: Version
    """Source LSN of the newest change reflected (0 when built from SQL)."""
    source_ts_ms: Annotated[int, Field(ge=0, le=2**63 - 1)]
    """Commit time of that change, ms since the epoch (0 when built from SQL)."""

    @_model_validator(mode="after")
    def _check(self) -> Self:
        _non_decreasing(((c.position, c.id) for c in self.categories), "categories")
        ids = [c.id for c in self.categories]
        if len(set(ids)) != len(ids):
            raise ValueError(f"a category appears twice in categories: {ids}")
        skus = [v.sku for v in self.variants]
        if len(set(skus)) != len(skus):
            raise ValueError(f"a sku appears twice in variants: {skus}")
        _non_decreasing((i.position for i in self.images), "images")
        _non_decreasing((t.print_order for t in self.technical_data), "technical_data")
        total = sum(v.quantity for v in self.variants)
        if self.total_quantity != total:
            raise ValueError(
                f"total_quantity {self.total_quantity} is not the sum of the variant "
                f"quantities ({total})"
            )
        return self


class CategoryDocument(_Frozen):
    """One category of a store's tree.  Key: ``id``."""

    id: Int32
    """``categories.id``."""
    store: StoreRef
    """The category's store (``categories.store_id``)."""
    parent_id: Int32 | None
    """``categories.parent_id``; ``None`` for a root category."""
    name: Name
    """``categories.name``."""
    url_key: str
    """``categories.url_key``."""
    path: Path
    """Category names from the root down to this category (its own name last)."""
    position: Int32
    """``categories.position``: order among its siblings."""
    active: bool
    """``categories.active``."""
    product_count: Annotated[int, Field(ge=0, le=2**63 - 1)]
    """Non-deleted products linked directly to this category (not to descendants),
    inactive products included."""
    updated_at: UtcDatetime
    """``categories.updated_at`` (UTC)."""
    version: Version
    """Source LSN of the newest change reflected (0 when built from SQL)."""
    source_ts_ms: Annotated[int, Field(ge=0, le=2**63 - 1)]
    """Commit time of that change, ms since the epoch (0 when built from SQL)."""

    @_model_validator(mode="after")
    def _check(self) -> Self:
        if self.path[-1] != self.name:
            raise ValueError(f"path {list(self.path)!r} must end with the name {self.name!r}")
        if (self.parent_id is None) != (len(self.path) == 1):
            raise ValueError(
                f"a root category (parent_id None) has a one-name path and only it; "
                f"got parent_id={self.parent_id} path={list(self.path)!r}"
            )
        return self


Document = ProductDocument | CategoryDocument
D = TypeVar("D", ProductDocument, CategoryDocument)


def normalize_tags(value: Any) -> tuple[str, ...]:
    """``products.tags`` as a document holds it: non-NULL elements, flattened, in order.

    Accepts what the reader emits for a ``text[]`` (a list, nested for more dimensions).
    """
    if value is None:
        return ()
    out: list[str] = []

    def walk(v: Any) -> None:
        if isinstance(v, list | tuple):
            for item in v:
                walk(item)
        elif v is not None:
            out.append(str(v))

    walk(value)
    return tuple(out)


# --------------------------------------------------------------------------- JSON


def to_json(doc: Document) -> str:
    """Compact JSON text of ``doc``: decimals as exact strings, datetimes ISO 8601 (UTC).

    Variant ``attributes`` stay JSON objects with their numbers written exactly.
    """
    if isinstance(doc, ProductDocument):
        data = doc.model_dump(mode="json", exclude={"variants": {"__all__": {"attributes"}}})
        for out, variant in zip(data["variants"], doc.variants, strict=True):
            out["attributes"] = variant.attributes
    else:
        data = doc.model_dump(mode="json")
    return _json_dumps(data)


def from_json(text: str | bytes, cls: type[D]) -> D:
    """The ``cls`` document of JSON ``text`` (as :func:`to_json` writes it)."""
    return cls.model_validate(_json_loads(text if isinstance(text, str) else text.decode()))


# --------------------------------------------------------------------------- Avro

AVRO_SCHEMA_FILES: Final[Mapping[type[BaseModel], str]] = {
    ProductDocument: "product_document.avsc",
    CategoryDocument: "category_document.avsc",
}
"""The ``schemas/avro/`` file of each document's Avro schema."""


@functools.cache
def avro_schema_json(cls: type[BaseModel]) -> dict[str, Any]:
    """The Avro schema of document class ``cls``, as read from ``schemas/avro/``."""
    name = AVRO_SCHEMA_FILES[cls]
    text = (importlib.resources.files("schemas") / "avro" / name).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@functools.cache
def avro_schema(cls: type[BaseModel]) -> dict[str, Any]:
    """The parsed (``fastavro.parse_schema``) Avro schema of document class ``cls``."""
    from fastavro import parse_schema

    return cast(dict[str, Any], parse_schema(avro_schema_json(cls)))


def _dec(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _store(store: StoreRef) -> dict[str, Any]:
    return {"id": store.id, "code": store.code}


def to_avro(doc: Document) -> dict[str, Any]:
    """The Avro record of ``doc`` for fastavro's writers (schema: :func:`avro_schema`)."""
    if isinstance(doc, CategoryDocument):
        return {
            "id": doc.id,
            "store": _store(doc.store),
            "parent_id": doc.parent_id,
            "name": doc.name,
            "url_key": doc.url_key,
            "path": list(doc.path),
            "position": doc.position,
            "active": doc.active,
            "product_count": doc.product_count,
            "updated_at": doc.updated_at,
            "version": doc.version,
            "source_ts_ms": doc.source_ts_ms,
        }
    return {
        "id": doc.id,
        "store": _store(doc.store),
        "reference": doc.reference,
        "name": doc.name,
        "description": doc.description,
        "url_key": doc.url_key,
        "price": str(doc.price),
        "list_price": _dec(doc.list_price),
        "active": doc.active,
        "brand": None if doc.brand is None else {"id": doc.brand.id, "name": doc.brand.name},
        "categories": [
            {
                "id": c.id,
                "name": c.name,
                "url_key": c.url_key,
                "path": list(c.path),
                "position": c.position,
            }
            for c in doc.categories
        ],
        "variants": [
            {
                "sku": v.sku,
                "price": str(v.price),
                "quantity": v.quantity,
                "attributes": _json_dumps(v.attributes),
            }
            for v in doc.variants
        ],
        "total_quantity": doc.total_quantity,
        "images": [
            {"file_name": i.file_name, "url": i.url, "position": i.position} for i in doc.images
        ],
        "technical_data": [
            {
                "group": t.group,
                "description": t.description,
                "value": t.value,
                "suffix": t.suffix,
                "print_order": t.print_order,
            }
            for t in doc.technical_data
        ],
        "ean13": doc.ean13,
        "weight": _dec(doc.weight),
        "tags": list(doc.tags),
        "updated_at": doc.updated_at,
        "version": doc.version,
        "source_ts_ms": doc.source_ts_ms,
    }


@overload
def from_avro(record: Mapping[str, Any], cls: type[D]) -> D: ...
@overload
def from_avro(record: Mapping[str, Any], cls: None = None) -> Document: ...
def from_avro(record: Mapping[str, Any], cls: type[D] | None = None) -> Document:
    """The document of an Avro record read with :func:`avro_schema`.

    Without ``cls`` the kind is told from the record (a product has ``variants``).
    """
    if cls is None:
        kind: type[Document] = ProductDocument if "variants" in record else CategoryDocument
    else:
        kind = cls
    if kind is CategoryDocument:
        return CategoryDocument.model_validate(record)
    data = dict(record)
    data["variants"] = [
        {**v, "attributes": _json_loads(v["attributes"])} for v in record["variants"]
    ]
    return ProductDocument.model_validate(data)
