"""The search service's Update API rules, the data encoding, request splitting, the breaker.

Pure rules first (edge values of every type the seed names), then the sink against the
in-process contract server (no Kafka): 250 objects a request, the circuit breaker
after one server-side rejection, transient answers, local rejection.
"""

from __future__ import annotations

import json
import socket
import zlib
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from consumers.contract import SinkError, TransientSinkError
from consumers.search_service import mapping, rules
from consumers.search_service.client import UpdateApi, retry_after, status
from consumers.search_service.sink import SearchServiceSink, reset_breaker
from pipeline.documents.model import CategoryDocument, ProductDocument
from pipeline.documents.wire import DocumentMessage
from tests.contracts.search_service import Server, parse_form
from tests.unit.test_documents import category_data, product_data

KEY = "demo-private-key"
TYPES = rules.attribute_types(mapping.SCHEMA)

# --------------------------------------------------------------------------- values


@pytest.mark.parametrize(
    ("field", "value", "ok"),
    [
        ("quantity", 2**31 - 1, True),
        ("quantity", 2**31, False),
        ("quantity", -(2**31), True),
        ("quantity", -(2**31) - 1, False),
        ("quantity", True, False),
        ("quantity", 1.0, False),
        ("quantity", "3", False),
        ("id", 2**63 - 1, True),
        ("id", 2**63, False),
        ("id", -(2**63), True),
        ("id", "12", False),
        ("price", 12, True),
        ("price", 12.5, True),
        ("price", float("inf"), False),
        ("price", "12.50", False),
        ("price", False, False),
        ("list_price", 0, True),
        ("title", "", True),
        ("title", 5, False),
        ("title", None, False),
        ("link", "https://example.com/products/p1", True),
        ("link", "http://localhost:8080/p?id=1", True),
        ("link", "ftp://example.com/p", False),
        ("link", "https://", False),
        ("link", "/products/p1", False),
        ("link", "https://exa mple.com/p", False),
        ("link", "https://example.com:port/p", False),
        ("image_link", "https://cdn.example.com/a.jpg", True),
        ("image_link", "", False),
        ("category_ids", [1, 2, 2**31 - 1], True),
        ("category_ids", [1, 2**31], False),
        ("category_ids", ["1"], False),
        ("weight_kg", 0.5, True),
        ("weight_kg", [0.5, 1], True),
        ("categories", ["A", "B"], True),
        ("categories", ["A", 1], False),
        ("brand", None, False),
        ("undeclared_attr", "text by default", True),
        ("undeclared_attr", 3, False),
        ("bad-name", "x", False),
        ("a", "x", False),  # names need two characters: ^[a-zA-Z_][0-9a-zA-Z_]+$
    ],
)
def test_item_values(field: str, value: Any, ok: bool) -> None:
    item = {"id": 1, field: value}
    errors = rules.item_errors(item, TYPES)
    assert (errors == []) is ok, errors
    if not ok:
        assert errors[0].startswith(field), errors  # the field is named first


def test_item_needs_an_id_and_an_object() -> None:
    assert rules.item_errors({"title": "x"}, TYPES) == ["id: required"]
    assert rules.item_errors([1], TYPES)[0].startswith("expected an object")


def test_categories_and_pages() -> None:
    ok = {"id": 1, "parent_id": 0, "title": "C", "summary": "s", "link": "https://e.com/c"}
    assert rules.category_errors(ok) == []
    assert rules.category_errors({"title": "C"}) == ["id: required"]
    assert rules.category_errors({"id": 1, "parent_id": 2**63}) != []
    assert rules.category_errors({"id": 1, "status": "active"})[0].startswith("status: not a field")
    assert rules.category_errors({"id": 1, "image_link": "nope"})[0].startswith("image_link")
    assert rules.page_errors({"id": 1, "parent_id": 0, "title": "P"}) == []  # the seed's example


# --------------------------------------------------------------------------- schema

SEED_EXAMPLE_SCHEMA = [  # the seed's request example, as sent (bounds as strings)
    {"name": "title", "title": "Product name"},
    {
        "name": "price",
        "title": "Product Price",
        "facet": {
            "title": "Price",
            "type": "range",
            "ranges": [
                {"title": "from 0 to 150", "from": "0", "to": "150"},
                {"title": "from 150 to 800", "from": "150", "to": "800"},
            ],
        },
    },
    {
        "name": "categories",
        "title": "Product Categories",
        "type": "text",
        "facet": {"title": "Categories", "type": "select"},
    },
]


def test_the_seed_example_and_our_schema_are_valid() -> None:
    assert rules.schema_errors(SEED_EXAMPLE_SCHEMA) == []
    assert rules.schema_errors(mapping.SCHEMA) == []


@pytest.mark.parametrize(
    ("attr", "fragment"),
    [
        ({"name": "1abc"}, "must match"),
        ({"name": "x"}, "must match"),
        ({"title": "no name"}, "required"),
        ({"name": "price", "type": "int"}, "cannot be changed for the standard attribute"),
        ({"name": "price", "facet": {"type": "select"}}, "only a range or slider"),
        ({"name": "title", "facet": {"type": "select"}}, "cannot be changed"),
        ({"name": "link", "weight": 5}, "cannot be changed"),
        ({"name": "id", "title": "Id", "sorting": "Y"}, "cannot be changed"),
        ({"name": "size", "type": "bool"}, "type: must be one of"),
        ({"name": "size", "type": "int", "text_search": "Y"}, "only for attributes with type=text"),
        ({"name": "size", "text_search": "yes"}, "'Y' or 'N'"),
        ({"name": "size", "sorting": True}, "'Y' or 'N'"),
        ({"name": "size", "weight": "10"}, "weight: expected an integer"),
        ({"name": "size", "colour": 1}, "not an attribute setting"),
        ({"name": "size", "facet": {"type": "range"}}, "needs an int or float"),
        ({"name": "nn", "type": "int", "facet": {"type": "menu"}}, "type: must be one of"),
        (
            {"name": "nn", "type": "int", "facet": {"type": "slider", "ranges": []}},
            "only for a filter of the range type",
        ),
        (
            {"name": "nn", "type": "int", "facet": {"ranges": [{"from": "a"}]}},
            "from: expected a number",
        ),
        (
            {"name": "nn", "type": "int", "facet": {"ranges": [{"to": 1, "step": 2}]}},
            "not a range setting",
        ),
        (
            {"name": "nn", "type": "float", "facet": {"position": 1.5}},
            "position: expected an integer",
        ),
    ],
)
def test_schema_rules(attr: dict[str, Any], fragment: str) -> None:
    errors = rules.schema_errors([attr])
    assert any(fragment in e for e in errors), errors


def test_schema_duplicates_and_shape() -> None:
    assert "appears twice" in rules.schema_errors([{"name": "ab"}, {"name": "ab"}])[0]
    assert rules.schema_errors({"name": "ab"})[0].startswith("schema: expected a list")


def test_data_limits_and_empty() -> None:
    items = [{"id": i} for i in range(250)]
    assert rules.data_errors({"items": items, "categories": items}, TYPES) == []
    errors = rules.data_errors({"items": [*items, {"id": 250}]}, TYPES)
    assert errors == ["items: 251 in one request, at most 250"]
    assert rules.data_errors({"categories": [{"id": i} for i in range(251)]}, TYPES) != []
    assert rules.is_empty({"header": {"id": "https://e.com/"}, "items": []})
    assert not rules.is_empty({"schema": [{"name": "ab"}]})
    assert rules.data_errors({"products": []}, TYPES) == ["data.products: not a data object"]
    assert "header.updated" in rules.data_errors({"header": {"updated": "yesterday"}}, {})[0]
    # A schema in the same request applies to its items.
    data = {"schema": [{"name": "size", "type": "int"}], "items": [{"id": 1, "size": 3}]}
    assert rules.data_errors(data, {}) == []
    assert rules.data_errors({"items": [{"id": 1, "size": 3}]}, {}) != []


# --------------------------------------------------------------------------- encoding


def test_zlib_round_trip() -> None:
    data = {"items": [{"id": 1, "title": "Café, ½ price", "link": "https://e.com/a/b"}]}
    raw = rules.encode_data(data)
    assert raw[:1] == b"\x78" and zlib.decompress(raw) == json.dumps(
        data, ensure_ascii=False, separators=(",", ":")
    ).encode("utf-8")
    assert rules.decode_data(raw) == data
    assert rules.decode_data(rules.encode_data(data, compress=False)) == data
    # Binary in a form body: percent-encoded, and back byte for byte.
    body = rules.form_body({"private_key": "k&=+ y", "data": raw})
    assert parse_form(body) == {b"private_key": [b"k&=+ y"], b"data": [raw]}


def test_decode_refuses_bombs_and_garbage() -> None:
    bomb = zlib.compress(b" " * (rules.MAX_DATA_BYTES + 10))
    with pytest.raises(rules.DataTooLarge):
        rules.decode_data(bomb)
    with pytest.raises(ValueError):
        rules.decode_data(b"x\x9cnot zlib")
    with pytest.raises(ValueError):
        rules.decode_data(zlib.compress(b'{"items": []}')[:-4])  # truncated
    with pytest.raises(ValueError):
        rules.decode_data(b"{not json")


def test_retry_after() -> None:
    assert retry_after("7") == 7.0
    assert retry_after(None) is None
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    assert retry_after("soon") is None


# --------------------------------------------------------------------------- the sink


def _product(pid: int, version: int, **changes: Any) -> DocumentMessage:
    doc = ProductDocument.model_validate(
        product_data(id=pid, version=version, source_ts_ms=version, **changes)
    )
    return DocumentMessage("product", pid, doc, version, version)


def _category(cid: int, version: int, **changes: Any) -> DocumentMessage:
    data = category_data(id=cid, version=version, **changes)
    return DocumentMessage("category", cid, CategoryDocument.model_validate(data), version, 0)


@pytest.fixture
def server() -> Iterator[Server]:
    with Server() as s:
        yield s  # type: ignore[misc]


Maker = Callable[..., SearchServiceSink]


@pytest.fixture
def make(server: Server, tmp_path: Path) -> Iterator[Callable[..., SearchServiceSink]]:
    """Opened sinks on ``server`` (state file under tmp_path), closed after the test."""
    made: list[SearchServiceSink] = []

    def make(state: str = "ss.sqlite", key: str = KEY, **kwargs: Any) -> SearchServiceSink:
        sink = SearchServiceSink(UpdateApi(server.url, key, timeout=5), tmp_path / state, **kwargs)
        made.append(sink)
        return sink

    yield make
    for sink in made:
        sink.close()


def _sink(make: Maker, **kwargs: Any) -> SearchServiceSink:
    sink = make(**kwargs)
    sink.open()
    return sink


def _data_requests(server: Server) -> list[dict[str, Any]]:
    return [r for r in server.state()["requests"] if r["endpoint"] == "items/update"]


def test_requests_are_split_at_250(server: Server, make: Maker, tmp_path: Path) -> None:
    sink = _sink(make)
    sink.add([_product(i, 10) for i in range(1, 602)] + [_category(i, 5) for i in range(1, 252)])
    assert sink.flush() == []
    sizes = [
        (len(r.get("items", [])), len(r.get("categories", []))) for r in _data_requests(server)
    ]
    assert sizes == [(0, 0), (0, 250), (0, 1), (250, 0), (250, 0), (101, 0)]  # schema first
    assert all(r["compressed"] and r["status"] == 200 for r in _data_requests(server))
    assert len(server.state()["items"]) == 601 and len(server.state()["categories"]) == 251
    # By bytes too: a small budget gives more, smaller requests; nothing lost.
    small = _sink(make, state="small.sqlite", max_data_bytes=20_000)
    small.add([_product(i, 20, name=f"v20 {i}") for i in range(1, 101)])
    assert small.flush() == []
    last = _data_requests(server)[7:]
    assert len(last) > 1 and sum(len(r["items"]) for r in last) == 100


def test_versions_hashes_and_deletes(server: Server, make: Maker, tmp_path: Path) -> None:
    sink = _sink(make)
    sink.add([_product(1, 10), _product(2, 10), _category(9, 10)])
    sink.flush()
    before = len(server.state()["requests"])
    sink.add([_product(1, 9, name="older"), _product(2, 11)])  # older; same content
    sink.flush()
    assert len(server.state()["requests"]) == before
    assert sink.stats["skipped_old"] == 1 and sink.stats["skipped_unchanged"] == 1
    sink.add([DocumentMessage("product", 2, None, 12, 0), _category(9, 11, active=False)])
    sink.flush()
    state = server.state()
    assert list(state["items"]) == ["1"] and state["categories"] == {}
    assert [r["endpoint"] for r in state["requests"][before:]] == [
        "items/delete",
        "categories/delete",
    ]
    sink.add([DocumentMessage("product", 2, None, 12, 0)])  # redelivered delete: nothing sent
    sink.flush()
    assert len(server.state()["requests"]) == before + 2


def test_locally_invalid_is_rejected_and_never_sent(server: Server, make: Maker) -> None:
    big = 2**31 - 1
    variants = [
        {"sku": f"BIG-{i}", "price": Decimal("1.00"), "quantity": big, "attributes": {}}
        for i in range(2)
    ]
    images = [{"file_name": "a.jpg", "url": "images/a.jpg", "position": 0}]
    sink = _sink(make)
    sink.add([
        _product(7, 3, variants=variants, total_quantity=2 * big),
        _product(8, 3, images=images),
        _product(9, 3),
    ])  # fmt: skip
    rejected = sink.flush()
    reasons = {r.record.id: r.reason for r in rejected}
    assert sorted(reasons) == [7, 8]
    assert "product 7" in reasons[7] and "quantity: 4294967294 is outside int" in reasons[7]
    assert "product 8" in reasons[8] and "image_link" in reasons[8]
    assert list(server.state()["items"]) == ["9"]
    assert all(7 not in r.get("items", []) for r in server.state()["requests"])
    assert server.state()["malformed"]["total"] == 0


def test_breaker_opens_after_one_rejection(server: Server, make: Maker, tmp_path: Path) -> None:
    sink = _sink(make)
    server.refuse_next(1, "cannot process this data")
    sink.add([_product(1, 10), _product(2, 10)])
    with pytest.raises(SinkError) as info:
        sink.flush()
    message = str(info.value)
    assert not isinstance(info.value, TransientSinkError)
    for part in ("circuit breaker", "cannot process this data", "items/update with 2 items (ids 1, 2)",
                 "five malformed requests", "reset-breaker --state"):  # fmt: skip
        assert part in message, message
    assert KEY not in message
    requests = len(server.state()["requests"])
    with pytest.raises(SinkError, match="circuit breaker is open"):
        sink.flush()  # never resent automatically
    sink.close()
    again = make()
    with pytest.raises(SinkError, match="circuit breaker is open"):
        again.open()  # a restart does not resend either
    assert len(server.state()["requests"]) == requests
    assert server.state()["malformed"]["total"] == 1 and not server.state()["blocked"]
    was = reset_breaker(tmp_path / "ss.sqlite")
    assert was is not None and was["status"] == 400
    again.open()
    again.add([_product(1, 10), _product(2, 10)])
    assert again.flush() == []
    assert sorted(server.state()["items"]) == ["1", "2"]


def test_transient_answers_keep_the_records(server: Server, make: Maker, tmp_path: Path) -> None:
    sink = _sink(make)
    sink.add([_product(1, 10), DocumentMessage("product", 5, None, 3, 0)])
    server.fail_next(1, 503)
    with pytest.raises(TransientSinkError, match="CLOSED;"):
        sink.flush()
    server.fail_next(1, 429, retry_after=7)
    with pytest.raises(TransientSinkError) as info:
        sink.flush()
    assert info.value.retry_after == 7.0
    server.fail_next(1, 500)
    with pytest.raises(TransientSinkError, match="error_internal_error"):
        sink.flush()
    assert sink.flush() == []
    assert list(server.state()["items"]) == ["1"]
    with socket.socket() as sock:  # a port nobody listens on: a connection error
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    closed = SearchServiceSink(UpdateApi(f"http://127.0.0.1:{port}", KEY, 2), tmp_path / "c.sqlite")
    with pytest.raises(TransientSinkError):
        closed.open()
    closed.close()


def test_wrong_key_stops_without_the_breaker(server: Server, make: Maker) -> None:
    sink = make(key="wrong-key")
    with pytest.raises(SinkError, match="error_invalid_private_key") as info:
        sink.open()
    assert "wrong-key" not in str(info.value) and "CATALOG_CDC_SEARCH_SERVICE_PRIVATE_KEY" in str(
        info.value
    )
    assert sink.state.breaker is None
    with pytest.raises(SinkError, match="error_invalid_private_key"):
        status(server.url, "wrong-key")


def test_status_vocabulary(server: Server, make: Maker) -> None:
    assert status(server.url, KEY) == {
        "status": "none",
        "full_import": "done",
        "product_count": "0",
    }
    sink = _sink(make)
    sink.add([_product(1, 1)])
    sink.flush()
    assert status(server.url, KEY) == {
        "status": "normal",
        "full_import": "done",
        "product_count": "1",
    }
