"""The products sync API's field rules (consumers/storefront_api/rules.py), edge by edge.

The same checks run in the sink (before sending) and in the contract server, so these
tests pin both.  Each limit is tried at the boundary and one past it.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumers.storefront_api import mapping, rules
from pipeline.documents.model import ProductDocument
from tests.unit.test_documents import product_data


def valid(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "operation": "create",
        "reference": "PROD001",
        "name": "Professional Coffee Machine",
        "description": "High-end espresso machine",
        "price": 1299.99,
        "quantity": 50,
        "active": True,
        "categories": [5, 12],
        "ean13": "4006381333931",
        "weight": 4.25,
        "brand": {"name": "CoffeePro"},
        "images": [{"fileName": "front.jpg", "base64": base64.b64encode(b"\x89PNG").decode()}],
        "technical_data": [
            {"Gruppo": "Power", "Descrizione": "Rated power", "Valore": "1200", "Suffisso": "W"}
        ],
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not ...}


def fields(errors: list[rules.FieldError]) -> set[str]:
    return {e.field for e in errors}


def test_the_seed_example_is_valid() -> None:
    assert rules.check_product(valid()) == []
    minimal = {"operation": "update", "reference": "R", "name": "N", "price": 0, "quantity": 0}
    assert rules.check_product(minimal) == []


@pytest.mark.parametrize("field", ["operation", "reference", "name", "price", "quantity"])
def test_required_fields(field: str) -> None:
    errors = rules.check_product(valid(**{field: ...}))
    assert fields(errors) == {field} and errors[0].status == 400
    assert fields(rules.check_product(valid(**{field: None}))) == {field}


def test_operation() -> None:
    for op in ("create", "update"):
        assert rules.check_product(valid(operation=op)) == []
    bad: tuple[object, ...] = ("delete", "Create", "", 1)
    for wrong in bad:
        assert fields(rules.check_product(valid(operation=wrong))) == {"operation"}


@pytest.mark.parametrize(
    ("field", "lo", "hi"),
    [("reference", 1, 64), ("name", 1, 255), ("description", 0, 10_000)],
)
def test_string_lengths(field: str, lo: int, hi: int) -> None:
    assert rules.check_product(valid(**{field: "x" * hi})) == []
    assert rules.check_product(valid(**{field: "x" * max(lo, 1)})) == []
    too_long = rules.check_product(valid(**{field: "x" * (hi + 1)}))
    assert fields(too_long) == {field} and too_long[0].status == 422
    if lo:
        assert fields(rules.check_product(valid(**{field: ""}))) == {field}
    else:
        assert rules.check_product(valid(**{field: ""})) == []
    wrong = rules.check_product(valid(**{field: 12}))
    assert fields(wrong) == {field} and wrong[0].status == 400


def test_price() -> None:
    for ok in (0, 0.0, 0.01, 1299.99, 10**9):
        assert rules.check_product(valid(price=ok)) == [], ok
    negative = rules.check_product(valid(price=-0.01))
    assert fields(negative) == {"price"} and negative[0].status == 422
    for wrong in ("12.50", True, float("nan"), float("inf"), [1]):
        assert fields(rules.check_product(valid(price=wrong))) == {"price"}, wrong


def test_quantity() -> None:
    for ok in (0, 1, 50, 2**31, 3.0):
        assert rules.check_product(valid(quantity=ok)) == [], ok
    for bad in (-1, 1.5, "3", False):
        assert fields(rules.check_product(valid(quantity=bad))) == {"quantity"}, bad


def test_active_and_weight() -> None:
    assert rules.check_product(valid(active=False)) == []
    assert fields(rules.check_product(valid(active="yes"))) == {"active"}
    assert fields(rules.check_product(valid(active=1))) == {"active"}
    for ok in (0, 0.001, 95.0, None):
        assert rules.check_product(valid(weight=ok)) == [], ok
    assert fields(rules.check_product(valid(weight=-0.001))) == {"weight"}
    assert fields(rules.check_product(valid(weight="1kg"))) == {"weight"}


def test_ean13() -> None:
    assert rules.check_product(valid(ean13="")) == []
    assert rules.check_product(valid(ean13="1" * 13)) == []
    for bad in ("1" * 12, "1" * 14, "1"):
        errors = rules.check_product(valid(ean13=bad))
        assert fields(errors) == {"ean13"} and errors[0].status == 422, bad
    assert fields(rules.check_product(valid(ean13=4006381333931))) == {"ean13"}


def test_categories() -> None:
    assert rules.check_product(valid(categories=[])) == []
    assert fields(rules.check_product(valid(categories=[1, 0, -3, "4", 2.0]))) == {
        "categories[1]",
        "categories[2]",
        "categories[3]",
        "categories[4]",
    }
    assert fields(rules.check_product(valid(categories=5))) == {"categories"}


def test_brand() -> None:
    assert rules.check_product(valid(brand={"name": "X", "description": "d"})) == []
    assert rules.check_product(valid(brand=None)) == []
    assert fields(rules.check_product(valid(brand={}))) == {"brand.name"}
    assert fields(rules.check_product(valid(brand={"name": ""}))) == {"brand.name"}
    assert fields(rules.check_product(valid(brand={"name": "X", "logo": 1}))) == {"brand.logo"}
    assert fields(rules.check_product(valid(brand="X"))) == {"brand"}


def _image(name: str = "a.jpg", data: bytes = b"img") -> dict[str, str]:
    return {"fileName": name, "base64": base64.b64encode(data).decode()}


def test_image_count_and_extensions() -> None:
    assert rules.check_product(valid(images=[_image()] * 10)) == []
    assert fields(rules.check_product(valid(images=[_image()] * 11))) == {"images"}
    for ext in ("jpg", "jpeg", "png", "gif", "webp", "JPG", "Png"):
        assert rules.check_product(valid(images=[_image(f"x.{ext}")])) == [], ext
    for bad in ("x.bmp", "x.svg", "jpg", ".jpg", "x.jpg.exe", "x", ""):
        errors = rules.check_product(valid(images=[_image(bad)]))
        assert fields(errors) == {"images[0].fileName"}, bad
    assert fields(rules.check_product(valid(images=[{"base64": "aW1n"}]))) == {"images[0].fileName"}


def test_image_data() -> None:
    assert fields(rules.check_product(valid(images=[{"fileName": "a.png"}]))) == {
        "images[0].base64"
    }
    bad = valid(images=[{"fileName": "a.png", "base64": "not base64!"}])
    assert fields(rules.check_product(bad)) == {"images[0].base64"}
    # Without image data (the sink, before downloading): names and count only.
    before = valid(images=[{"fileName": "a.png", "url": "https://cdn/a.png"}])
    assert rules.check_product(before, image_data=False) == []
    assert fields(rules.check_product(before)) == {"images[0].url", "images[0].base64"}


def test_image_size_limit() -> None:
    limit = rules.MAX_IMAGE_BYTES
    assert limit == 10 * 1024 * 1024
    assert rules.check_image_bytes(0, limit) == []
    assert rules.check_image_bytes(0, 1) == []
    assert [e.field for e in rules.check_image_bytes(3, limit + 1)] == ["images[3].base64"]
    assert [e.field for e in rules.check_image_bytes(0, 0)] == ["images[0].base64"]
    # Through the whole body: exactly 10 MB passes, one byte more does not.
    assert rules.check_product(valid(images=[_image(data=b"\0" * limit)])) == []
    errors = rules.check_product(valid(images=[_image(data=b"\0" * (limit + 1))]))
    assert fields(errors) == {"images[0].base64"} and errors[0].status == 422


def _tech(**changes: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"Gruppo": "G", "Descrizione": "D", "Valore": "V"}
    item.update(changes)
    return {k: v for k, v in item.items() if v is not ...}


def test_technical_data() -> None:
    assert rules.check_product(valid(technical_data=[_tech()] * 100)) == []
    assert fields(rules.check_product(valid(technical_data=[_tech()] * 101))) == {"technical_data"}
    ok = _tech(Suffisso="W", PrintOrder=3)
    assert rules.check_product(valid(technical_data=[ok])) == []
    for key in ("Gruppo", "Descrizione", "Valore"):
        assert fields(rules.check_product(valid(technical_data=[_tech(**{key: ...})]))) == {
            f"technical_data[0].{key}"
        }
        assert fields(rules.check_product(valid(technical_data=[_tech(**{key: ""})]))) == {
            f"technical_data[0].{key}"
        }
    assert fields(rules.check_product(valid(technical_data=[_tech(PrintOrder=1.5)]))) == {
        "technical_data[0].PrintOrder"
    }
    assert fields(rules.check_product(valid(technical_data=[_tech(Unit="W")]))) == {
        "technical_data[0].Unit"
    }


def test_unknown_fields_and_non_objects() -> None:
    errors = rules.check_product(valid(sku="X"))
    assert fields(errors) == {"sku"} and errors[0].status == 400
    assert fields(rules.check_product(["not", "an", "object"])) == {""}


def test_every_error_is_reported_at_once() -> None:
    body = valid(reference="r" * 65, name="", price=-1, quantity=1.5, ean13="12")
    assert fields(rules.check_product(body)) == {"reference", "name", "price", "quantity", "ean13"}
    out = rules.error_body(rules.check_product(body))
    assert out["success"] is False and out["error"] == "Validation failed"
    assert {"field": "price", "message": "Price must be a positive number (>= 0)"} in out["details"]


def test_batch_envelope() -> None:
    one = valid()
    assert rules.check_batch({"products": [one]}) == []
    assert rules.check_batch({"products": [one] * 50}) == []
    too_many = rules.check_batch({"products": [one] * 51})
    assert fields(too_many) == {"products"} and too_many[0].status == 400
    assert fields(rules.check_batch({"products": []})) == {"products"}
    assert fields(rules.check_batch([one])) == {"products"}
    assert fields(rules.check_batch({"products": [one], "dryRun": True})) == {"dryRun"}


def test_rule_table_names_every_seed_field() -> None:
    assert [r.field for r in rules.RULES] == [
        "operation", "reference", "name", "description", "price", "quantity", "active",
        "categories", "ean13", "weight", "brand", "images", "technical_data",
    ]  # fmt: skip
    assert {r.field for r in rules.RULES if r.required} == {
        "operation", "reference", "name", "price", "quantity",
    }  # fmt: skip


def test_a_catalog_document_maps_to_a_valid_product() -> None:
    doc = ProductDocument.model_validate(product_data())
    body = {"operation": "create", **mapping.body(doc)}
    assert rules.check_product(body, image_data=False) == []
    assert (
        body["quantity"] == 7 and body["price"] == 129.9 and body["brand"] == {"name": "CoffeePro"}
    )
    assert body["technical_data"][0] == {
        "Gruppo": "Power", "Descrizione": "Rated power", "Valore": "1200", "Suffisso": "W",
        "PrintOrder": 0,
    }  # fmt: skip
    assert [i["fileName"] for i in body["images"]] == ["a.jpg", "b.jpg", "c.jpg"]
    assert mapping.image_urls(doc) == ["https://x/a.jpg", "https://x/b.jpg", "https://x/c.jpg"]


@given(st.text(max_size=80))
def test_reference_length_property(reference: str) -> None:
    errors = rules.check_product(valid(reference=reference))
    assert (errors == []) == (1 <= len(reference) <= rules.MAX_REFERENCE)
    assert all(e.field == "reference" for e in errors)


@given(st.integers(min_value=-5, max_value=120), st.integers(min_value=-5, max_value=15))
def test_counts_property(n_images: int, n_tech: int) -> None:
    images = [_image()] * max(0, n_images // 10)
    tech = [_tech()] * max(0, n_tech * 8)
    errors = fields(rules.check_product(valid(images=images, technical_data=tech)))
    assert ("images" in errors) == (len(images) > rules.MAX_IMAGES)
    assert ("technical_data" in errors) == (len(tech) > rules.MAX_TECHNICAL_DATA)


@given(
    st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(min_value=-(10**12), max_value=10**12),
    )
)
def test_price_property(price: float) -> None:
    ok = price == price and abs(price) != float("inf") and price >= 0
    assert (rules.check_product(valid(price=price)) == []) == ok
