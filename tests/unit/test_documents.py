"""Assembler documents: validation, ordering rules, JSON and Avro round trips."""

from __future__ import annotations

import io
import json
import types
import typing
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pydantic
import pytest
from fastavro import schemaless_reader, schemaless_writer
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.codec.avro_schema import DECIMAL_MARK, JSON_MARK
from pipeline.documents.model import (
    BrandRef,
    CategoryDocument,
    CategoryRef,
    Image,
    ProductDocument,
    StoreRef,
    TechnicalData,
    Variant,
    avro_schema,
    avro_schema_json,
    from_avro,
    from_json,
    normalize_tags,
    to_avro,
    to_json,
)
from pipeline.documents.reference import comparable

T0 = datetime(2024, 5, 17, 12, 30, 1, 123456, tzinfo=UTC)

# --------------------------------------------------------------------------- strategies

texts = st.text(st.characters(codec="utf-8"), max_size=20)
names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=20)
int32 = st.integers(-(2**31), 2**31 - 1)
money = st.decimals(min_value=0, max_value=10**10, places=2, allow_nan=False)
weights = st.decimals(min_value=0, max_value=10**7, places=3, allow_nan=False)
aware = st.datetimes(
    min_value=datetime(1970, 1, 1),
    max_value=datetime(2200, 1, 1),
    timezones=st.sampled_from(
        [UTC, timezone(timedelta(hours=2)), timezone(-timedelta(hours=5, minutes=30))]
    ),
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.decimals(allow_nan=False, allow_infinity=False, places=3)
    | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
stores = st.builds(StoreRef, id=int32, code=names)


@st.composite
def category_refs(draw: st.DrawFn) -> tuple[CategoryRef, ...]:
    ids = draw(st.lists(int32, unique=True, max_size=4))
    keyed = sorted((draw(int32), cid) for cid in ids)
    refs = []
    for position, cid in keyed:
        path = draw(st.lists(names, min_size=1, max_size=3))
        refs.append(
            CategoryRef(
                id=cid, name=path[-1], url_key=draw(texts), path=tuple(path), position=position
            )
        )
    return tuple(refs)


@st.composite
def products(draw: st.DrawFn) -> ProductDocument:
    skus = draw(st.lists(names, unique=True, max_size=4))
    variants = tuple(
        Variant(
            sku=sku,
            price=draw(money),
            quantity=draw(st.integers(0, 2**31 - 1)),
            attributes=draw(st.dictionaries(texts, json_values, max_size=3)),
        )
        for sku in skus
    )
    images = sorted(
        draw(st.lists(st.builds(Image, file_name=names, url=texts, position=int32), max_size=4)),
        key=lambda i: i.position,
    )
    specs = sorted(
        draw(
            st.lists(
                st.builds(
                    TechnicalData,
                    group=names,
                    description=names,
                    value=names,
                    suffix=st.none() | texts,
                    print_order=int32,
                ),
                max_size=4,
            )
        ),
        key=lambda t: t.print_order,
    )
    return ProductDocument(
        id=draw(st.integers(1, 2**63 - 1)),
        store=draw(stores),
        reference=draw(names),
        name=draw(names),
        description=draw(st.none() | texts),
        url_key=draw(texts),
        price=draw(money),
        list_price=draw(st.none() | money),
        active=draw(st.booleans()),
        brand=draw(st.none() | st.builds(BrandRef, id=int32, name=names)),
        categories=draw(category_refs()),
        variants=variants,
        total_quantity=sum(v.quantity for v in variants),
        images=tuple(images),
        technical_data=tuple(specs),
        ean13=draw(st.sampled_from(["", "4006381333931"])),
        weight=draw(st.none() | weights),
        tags=tuple(draw(st.lists(texts, max_size=4))),
        updated_at=draw(aware),
        version=draw(st.integers(0, 2**63 - 1)),
        source_ts_ms=draw(st.integers(0, 2**63 - 1)),
    )


@st.composite
def categories(draw: st.DrawFn) -> CategoryDocument:
    path = draw(st.lists(names, min_size=1, max_size=4))
    return CategoryDocument(
        id=draw(int32),
        store=draw(stores),
        parent_id=None if len(path) == 1 else draw(int32),
        name=path[-1],
        url_key=draw(texts),
        path=tuple(path),
        position=draw(int32),
        active=draw(st.booleans()),
        product_count=draw(st.integers(0, 2**63 - 1)),
        updated_at=draw(aware),
        version=draw(st.integers(0, 2**63 - 1)),
        source_ts_ms=draw(st.integers(0, 2**63 - 1)),
    )


# --------------------------------------------------------------------------- helpers


def product_data(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": 7,
        "store": {"id": 1, "code": "main"},
        "reference": "KIT-000007",
        "name": "Barista Coffee Machine",
        "description": "Makes coffee.",
        "url_key": "barista-coffee-machine-7",
        "price": Decimal("129.90"),
        "list_price": None,
        "active": True,
        "brand": {"id": 3, "name": "CoffeePro"},
        "categories": [
            {
                "id": 9,
                "name": "Coffee",
                "url_key": "coffee",
                "path": ["Kitchen", "Coffee"],
                "position": 0,
            },
            {"id": 4, "name": "Kitchen", "url_key": "kitchen", "path": ["Kitchen"], "position": 10},
            {"id": 5, "name": "Sale", "url_key": "sale", "path": ["Sale"], "position": 10},
        ],
        "variants": [
            {
                "sku": "KIT-7-0",
                "price": Decimal("129.90"),
                "quantity": 3,
                "attributes": {"color": "red"},
            },
            {
                "sku": "KIT-7-1",
                "price": "139.90",
                "quantity": 4,
                "attributes": {"w": Decimal("1.5")},
            },
        ],
        "total_quantity": 7,
        "images": [
            {"file_name": "a.jpg", "url": "https://x/a.jpg", "position": 0},
            {"file_name": "b.jpg", "url": "https://x/b.jpg", "position": 0},
            {"file_name": "c.jpg", "url": "https://x/c.jpg", "position": 2},
        ],
        "technical_data": [
            {
                "group": "Power",
                "description": "Rated power",
                "value": "1200",
                "suffix": "W",
                "print_order": 0,
            },
            {
                "group": "Power",
                "description": "Voltage",
                "value": "230",
                "suffix": "V",
                "print_order": 1,
            },
        ],
        "ean13": "4006381333931",
        "weight": Decimal("4.250"),
        "tags": ["kitchen", "coffee"],
        "updated_at": T0,
        "version": 123456,
        "source_ts_ms": 1715949001123,
    }
    data.update(changes)
    return data


def category_data(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": 9,
        "store": {"id": 1, "code": "main"},
        "parent_id": 4,
        "name": "Coffee",
        "url_key": "coffee",
        "path": ["Kitchen", "Coffee"],
        "position": 0,
        "active": True,
        "product_count": 12,
        "updated_at": T0,
        "version": 99,
        "source_ts_ms": 1715949001123,
    }
    data.update(changes)
    return data


def avro_round_trip(doc: ProductDocument | CategoryDocument) -> dict[str, Any]:
    schema = avro_schema(type(doc))
    buf = io.BytesIO()
    schemaless_writer(buf, schema, to_avro(doc))
    buf.seek(0)
    record = typing.cast(dict[str, Any], schemaless_reader(buf, schema, schema))
    assert buf.read() == b""
    return record


def named_records(schema: Any, out: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Every named record of a schema (JSON form), by short name."""
    out = {} if out is None else out
    if isinstance(schema, dict):
        if schema.get("type") == "record":
            out[schema["name"]] = schema
            for f in schema["fields"]:
                named_records(f["type"], out)
        elif schema.get("type") == "array":
            named_records(schema["items"], out)
    elif isinstance(schema, list):
        for branch in schema:
            named_records(branch, out)
    return out


def nullable(annotation: Any) -> bool:
    return types.NoneType in typing.get_args(annotation)


def avro_nullable(avro_type: Any) -> bool:
    return isinstance(avro_type, list) and "null" in avro_type


# --------------------------------------------------------------------------- validation


def test_valid_product_document() -> None:
    doc = ProductDocument.model_validate(product_data())
    assert doc.price == Decimal("129.90") and str(doc.variants[1].price) == "139.90"
    assert doc.categories[0].path == ("Kitchen", "Coffee")
    assert doc.total_quantity == 7
    assert doc.variants[1].attributes == {"w": Decimal("1.5")}


def test_models_are_frozen_and_closed() -> None:
    doc = ProductDocument.model_validate(product_data())
    with pytest.raises(pydantic.ValidationError):
        doc.name = "other"
    with pytest.raises(pydantic.ValidationError, match="extra"):
        ProductDocument.model_validate(product_data(colour="red"))
    with pytest.raises(pydantic.ValidationError, match="extra"):
        CategoryDocument.model_validate(category_data(depth=2))
    with pytest.raises(pydantic.ValidationError, match="extra"):
        ProductDocument.model_validate(product_data(brand={"id": 1, "name": "x", "logo": "y"}))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"price": 1.1}, "float is not an exact decimal"),
        ({"price": Decimal("NaN")}, "finite"),
        ({"price": "Infinity"}, "finite"),
        ({"price": Decimal("-0.01")}, "greater than or equal to 0"),
        ({"list_price": Decimal("-1")}, "greater than or equal to 0"),
        ({"weight": 0.5}, "float is not an exact decimal"),
        ({"updated_at": datetime(2024, 1, 1)}, "timezone"),
        ({"total_quantity": 8}, "total_quantity 8 is not the sum"),
        ({"name": ""}, "at least 1 character"),
        ({"id": 2**63}, "less than or equal"),
        ({"version": -1}, "greater than or equal to 0"),
        ({"store": {"id": 2**31, "code": "main"}}, "less than or equal"),
    ],
)
def test_product_field_rules(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        ProductDocument.model_validate(product_data(**changes))


def test_datetimes_are_normalised_to_utc() -> None:
    local = T0.astimezone(timezone(timedelta(hours=2)))
    doc = ProductDocument.model_validate(product_data(updated_at=local))
    assert doc.updated_at.utcoffset() == timedelta(0) and doc.updated_at == T0
    cat = CategoryDocument.model_validate(category_data(updated_at=local.isoformat()))
    assert cat.updated_at.tzinfo is UTC and cat.updated_at == T0


def test_categories_ordered_by_position_then_id() -> None:
    data = product_data()
    swapped = [data["categories"][0], data["categories"][2], data["categories"][1]]
    with pytest.raises(pydantic.ValidationError, match="categories out of order at index 2"):
        ProductDocument.model_validate(product_data(categories=swapped))
    reversed_cats = list(reversed(data["categories"]))
    with pytest.raises(pydantic.ValidationError, match="categories out of order"):
        ProductDocument.model_validate(product_data(categories=reversed_cats))
    dup = [data["categories"][0], {**data["categories"][0], "position": 5}]
    with pytest.raises(pydantic.ValidationError, match="category appears twice"):
        ProductDocument.model_validate(product_data(categories=dup))


def test_images_and_technical_data_ordering() -> None:
    data = product_data()
    with pytest.raises(pydantic.ValidationError, match="images out of order"):
        ProductDocument.model_validate(product_data(images=list(reversed(data["images"]))))
    with pytest.raises(pydantic.ValidationError, match="technical_data out of order"):
        ProductDocument.model_validate(
            product_data(technical_data=list(reversed(data["technical_data"])))
        )
    # Equal keys are allowed: the row id (not in the document) breaks the tie.
    same = [{**t, "print_order": 3} for t in data["technical_data"]]
    assert (
        len(ProductDocument.model_validate(product_data(technical_data=same)).technical_data) == 2
    )


def test_variants_have_unique_skus() -> None:
    v = product_data()["variants"][0]
    with pytest.raises(pydantic.ValidationError, match="sku appears twice"):
        ProductDocument.model_validate(product_data(variants=[v, v], total_quantity=6))
    with pytest.raises(pydantic.ValidationError, match="greater than or equal to 0"):
        ProductDocument.model_validate(
            product_data(variants=[{**v, "quantity": -1}], total_quantity=-1)
        )


def test_empty_product() -> None:
    doc = ProductDocument.model_validate(
        product_data(
            brand=None,
            categories=[],
            variants=[],
            total_quantity=0,
            images=[],
            technical_data=[],
            tags=[],
            weight=None,
            description=None,
            ean13="",
        )
    )
    assert doc.total_quantity == 0 and doc.brand is None


def test_category_paths() -> None:
    with pytest.raises(pydantic.ValidationError, match="must end with the name"):
        CategoryDocument.model_validate(category_data(path=["Kitchen", "Tea"]))
    with pytest.raises(pydantic.ValidationError, match="root category"):
        CategoryDocument.model_validate(category_data(parent_id=None))
    with pytest.raises(pydantic.ValidationError, match="root category"):
        CategoryDocument.model_validate(category_data(path=["Coffee"]))
    with pytest.raises(pydantic.ValidationError, match="at least 1 item"):
        CategoryDocument.model_validate(category_data(path=[]))
    root = CategoryDocument.model_validate(category_data(parent_id=None, path=["Coffee"]))
    assert root.path == ("Coffee",)
    # A name with "/" stays one path element.
    cat = CategoryDocument.model_validate(category_data(name="A/B", path=["Kitchen", "A/B"]))
    assert cat.path == ("Kitchen", "A/B")
    bad_ref = product_data()["categories"][0] | {"path": ["Kitchen"]}
    with pytest.raises(pydantic.ValidationError, match="must end with the name"):
        ProductDocument.model_validate(product_data(categories=[bad_ref]))


def test_normalize_tags() -> None:
    assert normalize_tags(None) == ()
    assert normalize_tags(["a", None, "b"]) == ("a", "b")
    assert normalize_tags([["a", "b"], [None, "c"]]) == ("a", "b", "c")


def test_comparable_drops_wal_fields() -> None:
    a = ProductDocument.model_validate(product_data())
    b = ProductDocument.model_validate(product_data(version=1, source_ts_ms=0))
    assert a != b and comparable(a) == comparable(b)
    assert "version" not in comparable(a) and "source_ts_ms" not in comparable(a)
    c = ProductDocument.model_validate(product_data(version=1, price=Decimal("1.00")))
    assert comparable(a) != comparable(c)


# --------------------------------------------------------------------------- JSON


def test_json_form() -> None:
    doc = ProductDocument.model_validate(product_data())
    data = json.loads(to_json(doc))
    assert data["price"] == "129.90" and data["weight"] == "4.250" and data["list_price"] is None
    assert data["variants"][1]["price"] == "139.90"
    assert data["updated_at"] == "2024-05-17T12:30:01.123456Z"
    assert data["categories"][0]["path"] == ["Kitchen", "Coffee"]
    # jsonb numbers stay JSON numbers, exact.
    assert '"attributes":{"w":1.5}' in to_json(doc)
    assert from_json(to_json(doc), ProductDocument) == doc
    assert from_json(to_json(doc).encode(), ProductDocument) == doc


@settings(max_examples=150, deadline=None)
@given(doc=products())
def test_product_json_round_trip(doc: ProductDocument) -> None:
    back = from_json(to_json(doc), ProductDocument)
    assert back == doc
    assert [str(v.price) for v in back.variants] == [str(v.price) for v in doc.variants]


@settings(max_examples=100, deadline=None)
@given(doc=categories())
def test_category_json_round_trip(doc: CategoryDocument) -> None:
    assert from_json(to_json(doc), CategoryDocument) == doc


# --------------------------------------------------------------------------- Avro


@pytest.mark.parametrize(
    "model, top, parts",
    [
        (
            ProductDocument,
            "ProductDocument",
            {
                "store": (StoreRef, "Store"),
                "brand": (BrandRef, "Brand"),
                "categories": (CategoryRef, "ProductCategory"),
                "variants": (Variant, "Variant"),
                "images": (Image, "Image"),
                "technical_data": (TechnicalData, "TechnicalData"),
            },
        ),
        (CategoryDocument, "CategoryDocument", {"store": (StoreRef, "Store")}),
    ],
)
def test_every_model_field_is_in_the_schema(
    model: type[pydantic.BaseModel],
    top: str,
    parts: dict[str, tuple[type[pydantic.BaseModel], str]],
) -> None:
    schema = avro_schema_json(model)
    assert schema["namespace"] == "catalog_cdc.doc" and schema["name"] == top
    records = named_records(schema)
    pairs = [(model, top), *parts.values()]
    assert set(records) == {name for _, name in pairs}
    for cls, name in pairs:
        fields = {f["name"]: f for f in records[name]["fields"]}
        assert set(fields) == set(cls.model_fields), name
        for fname, info in cls.model_fields.items():
            assert nullable(info.annotation) == avro_nullable(fields[fname]["type"]), (name, fname)
            if avro_nullable(fields[fname]["type"]):
                assert fields[fname]["type"][0] == "null" and fields[fname]["default"] is None
    # Every model field that holds a nested model maps to the record named above.
    for fname, (cls, _) in parts.items():
        annotation = model.model_fields[fname].annotation
        assert cls in (annotation, *typing.get_args(annotation)), fname


def _leaf_types(schema: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, record in named_records(schema).items():
        for f in record["fields"]:
            t = f["type"]
            if isinstance(t, list):
                t = t[-1]
            out[f"{name}.{f['name']}"] = t
    return out


def test_schema_types_follow_the_codec() -> None:
    product = _leaf_types(avro_schema_json(ProductDocument))
    decimal = {"type": "string", "connect.name": DECIMAL_MARK}
    for field in (
        "ProductDocument.price",
        "ProductDocument.list_price",
        "ProductDocument.weight",
        "Variant.price",
    ):
        assert product[field] == decimal, field
    assert product["Variant.attributes"] == {"type": "string", "connect.name": JSON_MARK}
    micros = {"type": "long", "logicalType": "timestamp-micros"}
    assert product["ProductDocument.updated_at"] == micros
    assert _leaf_types(avro_schema_json(CategoryDocument))["CategoryDocument.updated_at"] == micros
    for field in ("ProductDocument.id", "ProductDocument.version", "ProductDocument.source_ts_ms"):
        assert product[field] == "long"


def test_avro_record_form() -> None:
    doc = ProductDocument.model_validate(product_data())
    record = avro_round_trip(doc)
    assert record["price"] == "129.90" and record["weight"] == "4.250"
    assert record["variants"][1]["attributes"] == '{"w":1.5}'
    assert record["updated_at"] == T0
    assert from_avro(record) == doc
    assert from_avro(record, ProductDocument) == doc
    cat = CategoryDocument.model_validate(category_data())
    assert from_avro(avro_round_trip(cat)) == cat


@settings(max_examples=150, deadline=None)
@given(doc=products())
def test_product_avro_round_trip(doc: ProductDocument) -> None:
    back = from_avro(avro_round_trip(doc), ProductDocument)
    assert back == doc
    assert str(back.price) == str(doc.price)
    assert [v.attributes for v in back.variants] == [v.attributes for v in doc.variants]


@settings(max_examples=100, deadline=None)
@given(doc=categories())
def test_category_avro_round_trip(doc: CategoryDocument) -> None:
    back = from_avro(avro_round_trip(doc))
    assert isinstance(back, CategoryDocument) and back == doc
