"""The edge KV layout and its incremental rewrites (consumers/edge_kv), without services.

The real sink (:class:`EdgeKvSink`, its SQLite state in memory) runs against a
dict-backed :class:`KvBackend` that records every write and delete, so the tests see
exactly what would be sent to a store.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumers.contract import RawRecord, Rejected, TransientSinkError
from consumers.edge_kv.layout import PULSE, Catalog, CmsRow, StoreRow, full_layout
from consumers.edge_kv.sink import EdgeKvSink
from pipeline.documents.model import CategoryDocument, ProductDocument
from pipeline.documents.wire import DocumentMessage
from pipeline.events import ChangeEvent, Source
from tests.unit.test_documents import category_data, product_data

CATEGORIES = {  # id: (parent, name, position)
    1: (None, "Kitchen", 0),
    2: (1, "Coffee", 0),
    3: (1, "Tea", 1),
    4: (None, "Sale", 1),
}


class MemoryBackend:
    """A KV backend in a dict, recording every call."""

    name = "memory"

    def __init__(self) -> None:
        self.kv: dict[str, str] = {}
        self.calls: list[tuple[dict[str, str], set[str]]] = []
        self.fail = 0

    def open(self) -> None:
        pass

    def apply(self, writes: Mapping[str, str], deletes: Collection[str]) -> None:
        if self.fail:
            self.fail -= 1
            raise TransientSinkError("down")
        self.calls.append((dict(writes), set(deletes)))
        for k in deletes:
            self.kv.pop(k, None)
        self.kv.update(writes)

    def get(self, key: str) -> str | None:
        return self.kv.get(key)

    def list(self, prefix: str) -> list[str]:
        return sorted(k for k in self.kv if k.startswith(prefix))

    def close(self) -> None:
        pass

    @property
    def last(self) -> tuple[dict[str, str], set[str]]:
        return self.calls[-1]


def category(cid: int, active: bool = True, **changes: Any) -> CategoryDocument:
    parent, name, position = CATEGORIES[cid]
    path = [name] if parent is None else [CATEGORIES[parent][1], name]
    return CategoryDocument.model_validate(
        category_data(
            id=cid,
            parent_id=parent,
            name=name,
            url_key=name.lower(),
            path=path,
            position=position,
            active=active,
            **changes,
        )
    )


def product(
    pid: int,
    cats: dict[int, int] | None = None,
    price: str = "10.00",
    url_key: str | None = None,
    active: bool = True,
    version: int = 1,
) -> ProductDocument:
    """Product ``pid`` linked to ``cats`` ({category id: position})."""
    cats = {2: pid} if cats is None else cats
    refs = []
    for cid, pos in sorted(cats.items(), key=lambda kv: (kv[1], kv[0])):
        parent, name, _ = CATEGORIES[cid]
        path = [name] if parent is None else [CATEGORIES[parent][1], name]
        refs.append(
            {"id": cid, "name": name, "url_key": name.lower(), "path": path, "position": pos}
        )
    return ProductDocument.model_validate(
        product_data(
            id=pid,
            url_key=url_key or f"product-{pid}",
            reference=f"REF-{pid}",
            price=Decimal(price),
            active=active,
            categories=refs,
            version=version,
        )
    )


def msg(doc: ProductDocument | CategoryDocument | None, pid: int, version: int) -> DocumentMessage:
    kind = "category" if isinstance(doc, CategoryDocument) else "product"
    return DocumentMessage(kind, pid, doc, version, version)


def raw(table: str, ident: int, row: dict[str, Any] | None, lsn: int) -> RawRecord:
    event = ChangeEvent(
        op="d" if row is None else "u",
        source=Source("catalog", "public", table, lsn, 1, lsn),
        ts_ms=lsn,
        before=None,
        after=row,
        key={"id": ident},
    )
    return RawRecord(table, str(ident), event, 0, lsn)


def make_sink(page_size: int = 2) -> tuple[EdgeKvSink, MemoryBackend]:
    backend = MemoryBackend()
    sink = EdgeKvSink(backend, Path(":memory:"), page_size=page_size)
    sink.open()
    return sink, backend


def apply(sink: EdgeKvSink, *records: DocumentMessage | RawRecord) -> list[Rejected]:
    sink.add([r for r in records if isinstance(r, DocumentMessage)])
    sink.add_raw([r for r in records if isinstance(r, RawRecord)])
    return sink.flush()


def seeded(page_size: int = 2, products: int = 5) -> tuple[EdgeKvSink, MemoryBackend]:
    """Categories 1-4, products 1..n in category 2 (position = id), product 1 also in 4."""
    sink, backend = make_sink(page_size)
    recs: list[DocumentMessage | RawRecord] = [msg(category(c), c, 1) for c in CATEGORIES]
    for pid in range(1, products + 1):
        recs.append(msg(product(pid, {2: pid, 4: 0} if pid == 1 else None), pid, 1))
    recs.append(raw("stores", 1, STORE, 1))
    recs.append(raw("cms_pages", 1, CMS, 1))
    assert apply(sink, *recs) == []
    return sink, backend


STORE = {"id": 1, "code": "main", "name": "Main store", "currency": "EUR", "locale": "it_IT"}
CMS = {
    "id": 1,
    "store_id": 1,
    "identifier": "about-us",
    "title": "About us",
    "content": "<p>Hi</p>",
    "active": True,
    "updated_at": "2024-05-17T12:30:01+00:00",
}


def page_ids(backend: MemoryBackend, cid: int, n: int) -> list[int]:
    value = backend.kv[f"main:products:category:{cid}:page:{n}"]
    return [p["id"] for p in json.loads(value)["products"]]


# -- the layout ------------------------------------------------------------------------


def test_layout_keys_and_values() -> None:
    sink, backend = seeded()
    keys = set(backend.kv)
    assert {
        "main:config",
        "main:categories",
        "main:cms:about-us",
        "main:product:product-1",
        "main:products:category:2:page:1",
        "main:products:category:2:page:3",
        "main:products:category:4:page:1",
        PULSE,
    } <= keys
    assert "main:products:category:2:page:4" not in keys  # 5 products, 2 a page
    assert "main:products:category:1:page:1" not in keys  # no product linked directly
    assert json.loads(backend.kv["main:config"]) == {
        "id": 1, "code": "main", "name": "Main store", "currency": "EUR", "locale": "it_IT"
    }  # fmt: skip
    tree = json.loads(backend.kv["main:categories"])
    assert [(n["id"], n["product_count"]) for n in tree] == [(1, 0), (4, 1)]
    assert [(n["id"], n["product_count"]) for n in tree[0]["children"]] == [(2, 5), (3, 0)]
    assert page_ids(backend, 2, 1) == [1, 2] and page_ids(backend, 2, 3) == [5]
    doc = json.loads(backend.kv["main:product:product-1"])
    assert doc["id"] == 1 and doc["price"] == "10.00" and "version" not in doc
    page = json.loads(backend.kv["main:products:category:2:page:1"])
    assert page["page"] == 1 and page["page_size"] == 2 and page["category_id"] == 2
    assert page["products"][0] == {
        "id": 1, "url_key": "product-1", "name": "Barista Coffee Machine", "price": "10.00",
        "list_price": None, "brand": "CoffeePro", "image": "https://x/a.jpg", "in_stock": True,
    }  # fmt: skip
    assert json.loads(backend.kv["main:cms:about-us"])["title"] == "About us"
    # the incremental result is the from-scratch layout of the final state
    assert {k: v for k, v in backend.kv.items() if k != PULSE} == full_layout(sink.catalog)


def test_listing_order_by_position_then_id() -> None:
    sink, backend = seeded(page_size=10, products=3)
    apply(sink, msg(product(3, {2: 0}), 3, 2), msg(product(2, {2: 0}), 2, 2))
    assert page_ids(backend, 2, 1) == [2, 3, 1]  # position 0, 0 (by id), then 1


def test_price_change_rewrites_the_product_and_its_pages_only() -> None:
    sink, backend = seeded()
    before = backend.kv[PULSE]
    apply(sink, msg(product(1, {2: 1, 4: 0}, price="12.50"), 1, 2))
    writes, deletes = backend.last
    assert set(writes) == {
        "main:product:product-1",
        "main:products:category:2:page:1",
        "main:products:category:4:page:1",
        PULSE,
    }
    assert deletes == set()
    assert backend.kv[PULSE] != before
    assert json.loads(backend.kv["main:product:product-1"])["price"] == "12.50"


def test_url_key_rename_deletes_the_old_key() -> None:
    sink, backend = seeded()
    apply(sink, msg(product(3, url_key="renamed-3"), 3, 2))
    writes, deletes = backend.last
    assert deletes == {"main:product:product-3"}
    assert "main:product:renamed-3" in writes
    assert "main:products:category:2:page:2" in writes  # the page shows the url key
    assert "main:product:product-3" not in backend.kv


def test_delete_shifts_later_pages_and_drops_empty_ones() -> None:
    sink, backend = seeded()  # category 2: [1,2] [3,4] [5]
    apply(sink, msg(None, 2, 2))
    writes, deletes = backend.last
    assert set(writes) == {
        "main:products:category:2:page:1",
        "main:products:category:2:page:2",
        "main:categories",  # the count
        PULSE,
    }
    assert deletes == {"main:product:product-2", "main:products:category:2:page:3"}
    assert page_ids(backend, 2, 1) == [1, 3] and page_ids(backend, 2, 2) == [4, 5]


def test_delete_keeps_the_pages_before_it() -> None:
    sink, backend = seeded()
    apply(sink, msg(product(5, active=False), 5, 2))  # deactivated: as good as deleted
    writes, deletes = backend.last
    assert set(writes) == {"main:categories", PULSE}
    assert deletes == {"main:product:product-5", "main:products:category:2:page:3"}


def test_category_deactivation_hides_its_subtree() -> None:
    sink, backend = seeded()
    apply(sink, msg(category(1, active=False), 1, 2))
    assert not any(k.startswith("main:products:category:2:") for k in backend.kv)
    assert [n["id"] for n in json.loads(backend.kv["main:categories"])] == [4]
    assert "main:product:product-2" in backend.kv  # products stay readable
    apply(sink, msg(category(1, active=True), 1, 3))
    assert page_ids(backend, 2, 1) == [1, 2]


def test_pulse_changes_iff_content_changed() -> None:
    sink, backend = seeded()
    pulse, calls = backend.kv[PULSE], len(backend.calls)
    # redelivery (same versions), an older version, an unchanged store row
    apply(sink, msg(product(1, {2: 1, 4: 0}), 1, 1), msg(product(2, price="99.00"), 2, 0))
    apply(sink, raw("stores", 1, STORE, 2))
    assert len(backend.calls) == calls and backend.kv[PULSE] == pulse
    # a new version with the same content: nothing written either
    apply(sink, msg(product(4), 4, 7))
    assert len(backend.calls) == calls and backend.kv[PULSE] == pulse
    apply(sink, msg(product(4, price="1.00"), 4, 8))
    assert backend.kv[PULSE] != pulse
    second = backend.kv[PULSE]
    apply(sink, msg(product(4), 4, 9))  # back to the first content: still a new pulse
    assert backend.kv[PULSE] not in (pulse, second)


def test_raw_rows_config_and_cms() -> None:
    sink, backend = seeded()
    apply(sink, raw("stores", 1, {**STORE, "name": "Renamed"}, 5))
    assert set(backend.last[0]) == {"main:config", PULSE}
    apply(sink, raw("cms_pages", 1, {**CMS, "active": False}, 6))
    assert backend.last[1] == {"main:cms:about-us"}
    apply(sink, raw("cms_pages", 2, {**CMS, "id": 2, "identifier": "faq"}, 7))
    assert "main:cms:faq" in backend.kv
    apply(sink, raw("cms_pages", 2, None, 8))
    assert "main:cms:faq" not in backend.kv


def test_bad_rows_are_rejected_naming_record_and_field() -> None:
    sink, backend = seeded()
    bad = raw("stores", 2, {**STORE, "id": 2, "code": None}, 9)
    rejected = apply(sink, bad)
    assert [r.record for r in rejected] == [bad]
    assert "stores row id=2" in rejected[0].reason and "'code'" in rejected[0].reason
    long_key = product(9, url_key="x" * 600)
    rejected = apply(sink, msg(long_key, 9, 3))
    assert len(rejected) == 1 and "product 9" in rejected[0].reason
    assert "url_key" in rejected[0].reason
    assert not any("x" * 600 in k for k in backend.kv)


def test_transient_failure_undoes_and_retries_the_same_changes() -> None:
    sink, backend = seeded()
    sink.add([msg(product(1, {2: 1, 4: 0}, price="5.00"), 1, 2)])
    backend.fail = 1
    with pytest.raises(TransientSinkError):
        sink.flush()
    assert json.loads(backend.kv["main:product:product-1"])["price"] == "10.00"
    sink.flush()  # the runtime's retry: the same pending records
    assert json.loads(backend.kv["main:product:product-1"])["price"] == "5.00"
    assert {k: v for k, v in backend.kv.items() if k != PULSE} == full_layout(sink.catalog)


def restarted(
    backend: MemoryBackend,
    state: Path,
    *records: DocumentMessage | RawRecord,
    meanwhile: Callable[[Path], None] | None = None,
) -> EdgeKvSink:
    """A sink on the state file ``state`` that took ``records`` and stopped, then (after
    ``meanwhile(state)``) a new sink opened on the same file: a restart."""
    sink = EdgeKvSink(backend, state, page_size=2)
    sink.open()
    apply(sink, *records)
    sink.close()
    if meanwhile is not None:
        meanwhile(state)
    again = EdgeKvSink(backend, state, page_size=2)
    again.open()
    return again


def test_state_survives_a_restart(tmp_path: Path) -> None:
    backend = MemoryBackend()
    recs = [msg(category(c), c, 1) for c in CATEGORIES]
    again = restarted(backend, tmp_path / "state", *recs, msg(product(1), 1, 1))
    calls = len(backend.calls)
    apply(again, msg(product(1), 1, 1))  # redelivered after the restart
    assert len(backend.calls) == calls
    apply(again, msg(product(1, url_key="moved"), 1, 2))
    assert backend.last[1] == {"main:product:product-1"}
    again.close()


def test_only_facts_stay_in_memory_and_documents_are_read_back(tmp_path: Path) -> None:
    backend = MemoryBackend()
    recs = [msg(category(c), c, 1) for c in CATEGORIES] + [msg(product(p), p, 1) for p in (1, 2)]
    again = restarted(backend, tmp_path / "state", *recs, raw("stores", 1, STORE, 1))
    assert again.catalog.documents_held == 0  # loaded: only the facts
    assert sorted(again.catalog.products) == [1, 2]
    # Product 2's price changes: the listing page is rebuilt from product 1's facts, the
    # product key from the new document; every key still equals a from-scratch layout,
    # whose product keys are read back from the state.
    apply(again, msg(product(2, price="7.00"), 2, 2))
    assert backend.last[0].keys() == {
        "main:product:product-2",
        "main:products:category:2:page:1",
        PULSE,
    }
    assert [
        p["price"] for p in json.loads(backend.kv["main:products:category:2:page:1"])["products"]
    ] == ["10.00", "7.00"]
    assert again.catalog.documents_held == 0  # saved: the new document is let go too
    assert {k: v for k, v in backend.kv.items() if k != PULSE} == full_layout(again.catalog)
    again.close()


def test_a_state_file_without_facts_is_upgraded(tmp_path: Path) -> None:
    """A state file written before the ``facts`` column existed."""
    import sqlite3

    def drop_facts(state: Path) -> None:
        with sqlite3.connect(state) as db:
            db.execute("ALTER TABLE entities DROP COLUMN facts")

    backend = MemoryBackend()
    recs = [msg(category(c), c, 1) for c in CATEGORIES]
    again = restarted(
        backend, tmp_path / "state", *recs, msg(product(1), 1, 1), meanwhile=drop_facts
    )
    calls = len(backend.calls)
    apply(again, msg(product(1), 1, 1))  # redelivered: nothing to write
    assert len(backend.calls) == calls
    assert {k: v for k, v in backend.kv.items() if k != PULSE} == full_layout(again.catalog)
    again.close()
    with sqlite3.connect(tmp_path / "state") as db:
        (facts,) = db.execute("SELECT facts FROM entities WHERE kind = 'product'").fetchone()
    assert json.loads(facts)[1] == "product-1"  # filled in by the upgrade


# -- random edit sequences ---------------------------------------------------------------

edits = st.lists(
    st.one_of(
        st.tuples(
            st.just("product"),
            st.integers(1, 6),  # id
            st.booleans(),  # deleted
            st.booleans(),  # active
            st.sampled_from(["1.00", "2.00", "3.50"]),
            st.integers(0, 2),  # url key variant
            st.dictionaries(st.sampled_from([1, 2, 3, 4]), st.integers(0, 3), max_size=3),
        ),
        st.tuples(st.just("category"), st.sampled_from([1, 2, 3, 4]), st.booleans()),
        st.tuples(st.just("cms"), st.integers(1, 3), st.booleans(), st.booleans()),
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=edits, page_size=st.integers(1, 3), batch=st.integers(1, 4))
def test_incremental_equals_from_scratch(
    edits: list[tuple[Any, ...]], page_size: int, batch: int
) -> None:
    sink, backend = make_sink(page_size)
    apply(sink, *(msg(category(c), c, 1) for c in CATEGORIES), raw("stores", 1, STORE, 1))
    version = 10
    pending: list[DocumentMessage | RawRecord] = []
    final: dict[tuple[str, int], Any] = {("category", c): category(c) for c in CATEGORIES}
    for edit in edits:
        version += 1
        if edit[0] == "product":
            _, pid, deleted, active, price, variant, cats = edit
            doc = (
                None
                if deleted
                else product(pid, cats, price, url_key=f"p{pid}-{variant}", active=active)
            )
            pending.append(msg(doc, pid, version))
            final[("product", pid)] = doc
        elif edit[0] == "category":
            pending.append(msg(category(edit[1], active=edit[2]), edit[1], version))
            final[("category", edit[1])] = category(edit[1], active=edit[2])
        else:
            _, page, gone, active = edit
            row = (
                None
                if gone
                else {**CMS, "id": page, "identifier": f"page-{page}", "active": active}
            )
            pending.append(raw("cms_pages", page, row, version))
            final[("cms", page)] = None if row is None else CmsRow(**row)
        if len(pending) >= batch:
            before = dict(backend.kv)
            apply(sink, *pending)
            pending = []
            content_changed = {k: v for k, v in backend.kv.items() if k != PULSE} != {
                k: v for k, v in before.items() if k != PULSE
            }
            assert (backend.kv.get(PULSE) != before.get(PULSE)) == content_changed
    apply(sink, *pending)
    # the same final state built from scratch
    fresh = Catalog(page_size)
    fresh.put("store", 1, StoreRow(**STORE))
    for (kind, ident), value in final.items():
        if value is not None:
            fresh.put(kind, ident, value)  # type: ignore[arg-type]
    assert {k: v for k, v in backend.kv.items() if k != PULSE} == full_layout(fresh)
