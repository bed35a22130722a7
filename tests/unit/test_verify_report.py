"""The comparison and report of ``catalog-cdc verify`` (pure: no services)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from consumers.edge_kv.verify import key_class
from pipeline.verify.base import repair_version
from pipeline.verify.report import (
    ABSENT,
    EXTRA,
    IN_SYNC,
    MISSING,
    OUT_OF_SYNC,
    Snapshot,
    compare,
    field_diffs,
    render,
    short,
    shown,
)


def _snap(cls: str, items: dict[Any, Any]) -> Snapshot:
    s = Snapshot()
    s.items[cls] = {}
    for k, v in items.items():
        s.put(cls, k, v)
    return s


def test_the_four_statuses_and_the_verdict() -> None:
    db = _snap("product", {1: {"name": "a", "price": 1.0}, 2: {"name": "b"}, 3: {"name": "c"}})
    sink = _snap("product", {1: {"name": "a", "price": 1.0}, 2: {"name": "B"}, 9: {"name": "x"}})
    report = compare("search", db, sink, ["product", "category"])
    c = report.classes["product"]
    assert (c.in_sync, c.out_of_sync, c.missing, c.extra) == (1, 1, 1, 1)
    assert report.classes["category"].ok  # asked for, none on either side
    assert not report.in_sync and report.verdict == OUT_OF_SYNC
    assert [(d.id, d.status) for d in report.differences] == [
        (2, OUT_OF_SYNC),
        (3, MISSING),
        (9, EXTRA),
    ]
    [field] = report.differences[0].fields
    assert (field.field, field.sink, field.db) == ("name", "B", "b")


def test_in_sync() -> None:
    db = _snap("product", {1: {"a": [1, 2]}})
    report = compare("search", db, _snap("product", {1: {"a": [1, 2]}}))
    assert report.in_sync and report.verdict == IN_SYNC and not report.differences
    assert report.as_json(10)["classes"] == {
        "product": {"in sync": 1, "out of sync": 0, "missing": 0, "extra": 0}
    }


def test_field_diffs() -> None:
    assert field_diffs({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 4}) == (
        field_diffs({"b": 2}, {"b": 3})[0],
        field_diffs({}, {"c": 4})[0],
    )
    [absent] = field_diffs({"brand": None}, {})
    assert (absent.sink, absent.db) == (None, ABSENT)
    assert short(ABSENT) == "(absent)" and short(None) == "null"
    assert [d.field for d in field_diffs([1], [2])] == ["value"]
    assert field_diffs("x", "x") == ()


def test_values_are_truncated() -> None:
    assert short("x" * 200, 20) == '"' + "x" * 16 + "..."
    assert len(short(list(range(100)), 30)) == 30
    assert short({"b": 1, "a": 2}) == '{"a":2,"b":1}'


def test_long_values_are_shown_where_they_differ() -> None:
    db = list(range(100))
    sink = [*range(60), -1, *range(61, 100)]
    a, b = shown(sink, db, 40)
    assert a.startswith("...") and "-1" in a and len(a) <= 40
    assert b.startswith("...") and ",60," in b and len(b) <= 40
    assert shown("a", "b") == ('"a"', '"b"')
    assert shown(ABSENT, {"x": 1}) == ("(absent)", '{"x":1}')


def test_render_lists_the_first_differences() -> None:
    db = _snap("product", {i: {"name": f"p{i}"} for i in range(10)})
    sink = _snap("product", {i: {"name": f"q{i}"} for i in range(10)})
    text = render(compare("search", db, sink), limit=3)
    assert text.splitlines()[0] == "search: out of sync"
    assert "in sync 0, out of sync 10, missing 0, extra 0" in text
    assert "differences (3 of 10):" in text
    assert 'product 0: out of sync; name: sink "q0" != db "p0"' in text
    assert "product 3:" not in text
    assert len(compare("search", db, sink).as_json(4)["differences"]) == 4


def test_string_and_int_ids_sort_together() -> None:
    db = _snap("product", {2: {}, 1: {}})
    sink = _snap("product", {"junk": {}, 1: {}})
    report = compare("search", db, sink)
    assert [d.id for d in report.differences] == [2, "junk"]


@given(
    st.dictionaries(st.integers(0, 20), st.integers(0, 3)),
    st.dictionaries(st.integers(0, 20), st.integers(0, 3)),
)
def test_counts_add_up(db: dict[int, int], sink: dict[int, int]) -> None:
    report = compare("x", _snap("c", db), _snap("c", sink))
    c = report.classes["c"]
    assert c.in_sync + c.out_of_sync + c.missing == len(db)
    assert c.in_sync + c.out_of_sync + c.extra == len(sink)
    assert len(report.differences) == c.out_of_sync + c.missing + c.extra
    assert report.in_sync == (db == sink)


def test_repair_version_is_above_the_sinks() -> None:
    assert repair_version(0, None) == 1
    assert repair_version(0, 500) == 501
    assert repair_version(900, 500) == 900


def test_edge_kv_key_classes() -> None:
    assert key_class("main:config") == "config"
    assert key_class("main:categories") == "category tree"
    assert key_class("main:product:a:b") == "product"
    assert key_class("main:products:category:4:page:2") == "listing page"
    assert key_class("main:cms:about") == "cms page"
    assert key_class("pulse") == "other" and key_class("main:what") == "other"
