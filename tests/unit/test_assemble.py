"""Assembler join logic (pipeline/assembler/assemble.py), fed synthetic change events.

No Kafka, no PostgreSQL: a :class:`Catalog` keeps the "database" rows as Python dicts
(values as the reader gives them: ``Decimal``, aware ``datetime``, ``dict`` for jsonb,
``list`` for ``text[]``), turns every change into a :class:`ChangeEvent` with an
increasing LSN, and runs one :class:`Batch` over an in-memory
:class:`AssemblerState` per :meth:`Catalog.poll`.  Documents are checked against ones
built straight from the rows (:func:`ref_product`, :func:`ref_category`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from pipeline.assembler.assemble import (
    Batch,
    Emission,
    KeyedCount,
    Output,
    key_from_row,
    row_key,
)
from pipeline.assembler.state import OWNED_TABLES, AssemblerState, StateError
from pipeline.codec import InMemorySchemaStore
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
from pipeline.documents.reference import comparable
from pipeline.documents.wire import DocumentCodec, headers_of
from pipeline.events import UNCHANGED_TOAST, ChangeEvent, Op, Row, Source
from pipeline.kafka import partition_for

T0 = datetime(2024, 5, 17, 12, 0, 0, tzinfo=UTC)
TS0 = 1_700_000_000_000
P = 2


def ts_of(lsn: int) -> int:
    """The commit time the harness gives the change at ``lsn``."""
    return TS0 + lsn


def ids_in(part: int, n: int, start: int = 1, partitions: int = P) -> list[int]:
    """The first ``n`` ids >= ``start`` whose partition is ``part``."""
    out: list[int] = []
    i = start
    while len(out) < n:
        if partition_for(i, partitions) == part:
            out.append(i)
        i += 1
    return out


# --------------------------------------------------------------------------- rows


def store_row(id: int = 1, code: str = "main") -> Row:
    return {
        "id": id,
        "code": code,
        "name": f"Store {code}",
        "currency": "EUR",
        "locale": "it_IT",
        "updated_at": T0,
    }


def brand_row(id: int, name: str, description: str | None = None) -> Row:
    return {"id": id, "name": name, "description": description, "updated_at": T0}


def category_row(
    id: int,
    name: str,
    parent_id: int | None = None,
    *,
    store_id: int = 1,
    url_key: str | None = None,
    position: int = 0,
    active: bool = True,
) -> Row:
    return {
        "id": id,
        "store_id": store_id,
        "parent_id": parent_id,
        "name": name,
        "url_key": url_key or f"cat-{id}",
        "position": position,
        "active": active,
        "updated_at": T0 + timedelta(minutes=id),
    }


def product_row(id: int, *, store_id: int = 1, brand_id: int | None = None, **kw: Any) -> Row:
    row: Row = {
        "id": id,
        "store_id": store_id,
        "reference": f"REF-{id}",
        "name": f"Product {id}",
        "description": f"Description of product {id}",
        "price": Decimal("19.90"),
        "list_price": None,
        "active": True,
        "url_key": f"product-{id}",
        "weight": None,
        "ean13": "",
        "brand_id": brand_id,
        "tags": [],
        "external_id": f"00000000-0000-0000-0000-{id:012d}",
        "created_at": T0,
        "updated_at": T0 + timedelta(seconds=id),
        "deleted_at": None,
    }
    row.update(kw)
    return row


def variant_row(
    id: int, product_id: int, *, quantity: int = 1, price: str = "19.90", **attrs: Any
) -> Row:
    return {
        "id": id,
        "product_id": product_id,
        "sku": f"SKU-{id}",
        "price": Decimal(price),
        "quantity": quantity,
        "attributes": attrs,
    }


def image_row(id: int, product_id: int, position: int = 0) -> Row:
    return {
        "id": id,
        "product_id": product_id,
        "file_name": f"img-{id}.jpg",
        "url": f"https://cdn.example.com/img-{id}.jpg",
        "position": position,
        "size_bytes": 1000 + id,
    }


def tech_row(id: int, product_id: int, print_order: int = 0, suffix: str | None = None) -> Row:
    return {
        "id": id,
        "product_id": product_id,
        "group_name": "Electrical",
        "description": f"Spec {id}",
        "value": str(id),
        "suffix": suffix,
        "print_order": print_order,
    }


def link_row(product_id: int, category_id: int, position: int = 0) -> Row:
    return {"product_id": product_id, "category_id": category_id, "position": position}


def key_of(table: str, row: Row) -> Row:
    if table == "product_categories":
        return {"product_id": row["product_id"], "category_id": row["category_id"]}
    return {"id": row["id"]}


Key = int | tuple[int, int]


def skey(table: str, key: Key) -> str:
    if isinstance(key, tuple):
        return row_key(table, {"product_id": key[0], "category_id": key[1]})
    return row_key(table, {"id": key})


# --------------------------------------------------------------------------- harness


class Catalog:
    """Source rows + assembler state; each change is one event, each poll one batch."""

    def __init__(
        self, partitions: int = P, owned: set[int] | None = None, *, loop_counts: bool = False
    ) -> None:
        self.state = AssemblerState(":memory:")
        self.partitions = partitions
        self.owned = set(range(partitions)) if owned is None else set(owned)
        self.loop_counts = loop_counts
        self.lsn = 1000
        self._pinned: int | None = None
        self.rows: dict[str, dict[str, Row]] = {}
        self.queue: list[tuple[str, int, ChangeEvent | KeyedCount]] = []
        self.sent: list[tuple[str, int, ChangeEvent | KeyedCount]] = []
        self.emitted: list[Emission] = []
        self.last: dict[tuple[str, int], Emission] = {}
        self.batch: Batch | None = None

    # -- producing events ------------------------------------------------------------

    def next_lsn(self) -> int:
        if self._pinned is not None:
            return self._pinned
        self.lsn += 16
        return self.lsn

    @contextmanager
    def tx(self) -> Iterator[int]:
        """Changes made inside share one commit LSN (as rows of one transaction do)."""
        self._pinned = self.next_lsn()
        try:
            yield self._pinned
        finally:
            self._pinned = None

    def part_of(self, table: str, row: Row) -> int:
        if table == "products":
            return partition_for(row["id"], self.partitions)
        if table in OWNED_TABLES:
            return partition_for(row["product_id"], self.partitions)
        return 0

    def event(
        self,
        op: Op,
        table: str,
        *,
        lsn: int,
        after: Row | None = None,
        key: Row | None = None,
        before: Row | None = None,
    ) -> ChangeEvent:
        return ChangeEvent(
            op=op,
            source=Source("catalog", "public", table, lsn, lsn // 16, ts_of(lsn)),
            ts_ms=ts_of(lsn) + 5,
            before=before,
            after=after,
            key=key,
        )

    def send(self, table: str, part: int, event: ChangeEvent) -> None:
        """Queue a raw event for the next poll (replays, out-of-order arrivals)."""
        self.queue.append((table, part, event))
        self.sent.append((table, part, event))

    def hold(self) -> tuple[str, int, ChangeEvent | KeyedCount]:
        """Take the last queued event back (to deliver it later: a topic that is behind)."""
        held = self.queue.pop()
        self.sent.remove(held)
        return held

    def insert(self, table: str, row: Row, *, op: Op = "c", lsn: int | None = None) -> ChangeEvent:
        lsn = self.next_lsn() if lsn is None else lsn
        key = key_of(table, row)
        self.rows.setdefault(table, {})[row_key(table, key)] = dict(row)
        ev = self.event(op, table, lsn=lsn, after=dict(row), key=key)
        self.send(table, self.part_of(table, row), ev)
        return ev

    def update(
        self, table: str, key: Key, *, lsn: int | None = None, **changes: Any
    ) -> ChangeEvent:
        """Update columns; a value ``UNCHANGED_TOAST`` is sent as such, the row keeps it."""
        lsn = self.next_lsn() if lsn is None else lsn
        old = self.rows[table][skey(table, key)]
        sent = {**old, **changes}
        self.rows[table][skey(table, key)] = {
            **old,
            **{c: v for c, v in changes.items() if v is not UNCHANGED_TOAST},
        }
        ev = self.event("u", table, lsn=lsn, after=sent, key=key_of(table, sent))
        self.send(table, self.part_of(table, sent), ev)
        return ev

    def delete(self, table: str, key: Key, *, lsn: int | None = None) -> ChangeEvent:
        lsn = self.next_lsn() if lsn is None else lsn
        old = self.rows[table].pop(skey(table, key))
        k = key_of(table, old)
        # Replica identity full for the product-owned tables (the reader sets it), so
        # `before` is the whole old row.
        ev = self.event("d", table, lsn=lsn, before=dict(old), key=k)
        self.send(table, self.part_of(table, old), ev)
        return ev

    def delete_product(self, pid: int, between: Callable[[], object] | None = None) -> None:
        """A hard delete, with the ON DELETE CASCADE deletes of its rows (one transaction).

        ``between`` runs after each event (a poll there cuts the transaction into batches).
        """
        with self.tx():
            self.delete("products", pid)
            for table in OWNED_TABLES[1:]:
                for k, row in list(self.rows.get(table, {}).items()):
                    if row["product_id"] == pid:
                        if between is not None:
                            between()
                        self.delete(table, _parse_key(table, k))

    def truncate(self, table: str, part: int, *, lsn: int | None = None) -> ChangeEvent:
        lsn = self.next_lsn() if lsn is None else lsn
        for k, row in list(self.rows.get(table, {}).items()):
            if self.part_of(table, row) == part:
                del self.rows[table][k]
        ev = self.event("t", table, lsn=lsn)
        self.send(table, part, ev)
        return ev

    def row(self, table: str, key: Key) -> Row:
        return self.rows[table][skey(table, key)]

    # -- running the assembler -------------------------------------------------------

    def poll(self, *, recheck: bool = False) -> Output:
        """One batch over everything queued (as the service does: one transaction)."""
        queue, self.queue = self.queue, []
        with self.state.transaction():
            batch = Batch(self.state, self.owned, self.partitions)
            if recheck:
                batch.recheck_categories()
            for table, part, item in queue:
                if table in OWNED_TABLES and part not in self.owned:
                    continue  # another instance of the group reads that partition
                if isinstance(item, KeyedCount):
                    batch.apply_count(item)
                else:
                    batch.apply(table, part, item)
            out = batch.finish()
        self.batch = batch
        for e in out.emissions:
            self.emitted.append(e)
            self.last[(e.kind, e.id)] = e
        if self.loop_counts:
            self.feed_counts(out.counts)
        return out

    def feed_counts(self, counts: list[KeyedCount]) -> None:
        """The counts this instance published, read back from the counts topic."""
        self.queue.extend(("_counts", c.part, c) for c in counts)

    def settle(self) -> Output:
        """Poll until nothing is queued (counts read back included); the last output."""
        out = self.poll()
        while self.queue:
            out = self.poll()
        return out


def _parse_key(table: str, k: str) -> Key:
    if table == "product_categories":
        a, b = k.split(":")
        return int(a), int(b)
    return int(k)


def emitted_keys(out: Output) -> set[tuple[str, int]]:
    return {(e.kind, e.id) for e in out.emissions}


def product_doc(out: Output, pid: int) -> ProductDocument:
    (e,) = [e for e in out.emissions if e.kind == "product" and e.id == pid]
    assert isinstance(e.doc, ProductDocument)
    return e.doc


def category_doc(out: Output, cid: int) -> CategoryDocument:
    (e,) = [e for e in out.emissions if e.kind == "category" and e.id == cid]
    assert isinstance(e.doc, CategoryDocument)
    return e.doc


# --------------------------------------------------------------------------- reference


def ref_path(cat: Catalog, cid: int) -> tuple[str, ...]:
    cats = cat.rows.get("categories", {})
    names: list[str] = []
    current: int | None = cid
    while current is not None:
        row = cats[str(current)]
        names.append(row["name"])
        current = row["parent_id"]
    return tuple(reversed(names))


def ref_product(cat: Catalog, pid: int) -> ProductDocument | None:
    """The product document the rows call for (version and source_ts_ms 0)."""
    p = cat.rows.get("products", {}).get(str(pid))
    if p is None or p["deleted_at"] is not None:
        return None

    def children(table: str) -> list[Row]:
        return [r for r in cat.rows.get(table, {}).values() if r["product_id"] == pid]

    cats = cat.rows.get("categories", {})
    store = cat.rows["stores"][str(p["store_id"])]
    links = sorted(children("product_categories"), key=lambda r: (r["position"], r["category_id"]))
    variants = [
        Variant(sku=v["sku"], price=v["price"], quantity=v["quantity"], attributes=v["attributes"])
        for v in sorted(children("product_variants"), key=lambda r: r["id"])
    ]
    return ProductDocument(
        id=pid,
        store=StoreRef(id=store["id"], code=store["code"]),
        reference=p["reference"],
        name=p["name"],
        description=p["description"],
        url_key=p["url_key"],
        price=p["price"],
        list_price=p["list_price"],
        active=p["active"],
        brand=None
        if p["brand_id"] is None
        else BrandRef(id=p["brand_id"], name=cat.rows["brands"][str(p["brand_id"])]["name"]),
        categories=tuple(
            CategoryRef(
                id=link["category_id"],
                name=cats[str(link["category_id"])]["name"],
                url_key=cats[str(link["category_id"])]["url_key"],
                path=ref_path(cat, link["category_id"]),
                position=link["position"],
            )
            for link in links
        ),
        variants=tuple(variants),
        total_quantity=sum(v.quantity for v in variants),
        images=tuple(
            Image(file_name=i["file_name"], url=i["url"], position=i["position"])
            for i in sorted(children("product_images"), key=lambda r: (r["position"], r["id"]))
        ),
        technical_data=tuple(
            TechnicalData(
                group=t["group_name"],
                description=t["description"],
                value=t["value"],
                suffix=t["suffix"],
                print_order=t["print_order"],
            )
            for t in sorted(children("technical_data"), key=lambda r: (r["print_order"], r["id"]))
        ),
        ean13=p["ean13"],
        weight=p["weight"],
        tags=normalize_tags(p["tags"]),
        updated_at=p["updated_at"],
        version=0,
        source_ts_ms=0,
    )


def ref_category(cat: Catalog, cid: int) -> CategoryDocument | None:
    c = cat.rows.get("categories", {}).get(str(cid))
    if c is None:
        return None
    store = cat.rows["stores"][str(c["store_id"])]
    products = cat.rows.get("products", {})
    count = sum(
        1
        for link in cat.rows.get("product_categories", {}).values()
        if link["category_id"] == cid
        and str(link["product_id"]) in products
        and products[str(link["product_id"])]["deleted_at"] is None
    )
    return CategoryDocument(
        id=cid,
        store=StoreRef(id=store["id"], code=store["code"]),
        parent_id=c["parent_id"],
        name=c["name"],
        url_key=c["url_key"],
        path=ref_path(cat, cid),
        position=c["position"],
        active=c["active"],
        product_count=count,
        updated_at=c["updated_at"],
        version=0,
        source_ts_ms=0,
    )


def same(doc: Document | None, ref: Document | None) -> bool:
    if doc is None or ref is None:
        return doc is ref
    return comparable(doc) == comparable(ref)


# --------------------------------------------------------------------------- fixtures


def base_catalog(**kw: Any) -> Catalog:
    """Store 1, brands 1-2, categories 10 > 11 > 12 and 20, products 1-4 (see below)."""
    cat = Catalog(**kw)
    cat.insert("stores", store_row(1, "main"), op="r")
    cat.insert("brands", brand_row(1, "Acme", "Acme makes things"), op="r")
    cat.insert("brands", brand_row(2, "Other"), op="r")
    cat.insert("categories", category_row(10, "Electronics"), op="r")
    cat.insert("categories", category_row(11, "Audio", 10), op="r")
    cat.insert("categories", category_row(12, "Headphones", 11), op="r")
    cat.insert("categories", category_row(20, "Sale"), op="r")
    for pid, brand in ((1, 1), (2, 1), (3, 2), (4, None)):
        cat.insert("products", product_row(pid, brand_id=brand), op="r")
        cat.insert("product_variants", variant_row(100 + pid, pid, quantity=pid), op="r")
    cat.insert("product_categories", link_row(1, 11), op="r")
    cat.insert("product_categories", link_row(2, 12), op="r")
    cat.insert("product_categories", link_row(3, 20), op="r")
    cat.insert("product_categories", link_row(4, 10), op="r")
    return cat


# --------------------------------------------------------------------------- 1. one document


def test_full_product_document_field_by_field() -> None:
    cat = Catalog()
    cat.insert("stores", store_row(1, "main"))
    cat.insert("brands", brand_row(7, "Acme"))
    cat.insert("categories", category_row(10, "Electronics", url_key="electronics"))
    cat.insert("categories", category_row(11, "Audio", 10, url_key="audio"))
    cat.insert("categories", category_row(20, "Sale", url_key="sale"))
    cat.insert("categories", category_row(5, "Gifts", url_key="gifts"))
    updated = datetime(2024, 6, 1, 8, 30, 15, 250000, tzinfo=UTC)
    cat.insert(
        "products",
        product_row(
            42,
            brand_id=7,
            reference="HP-42",
            name="Wireless headphones",
            description="Over-ear, 30 h battery",
            price=Decimal("129.90"),
            list_price=Decimal("149.00"),
            weight=Decimal("0.250"),
            ean13="8001234567890",
            tags=["audio", None, "wireless"],
            updated_at=updated,
        ),
    )
    # Arrival order differs from every ordering rule.
    cat.insert("product_categories", link_row(42, 20, position=1))
    cat.insert("product_categories", link_row(42, 11, position=0))
    cat.insert("product_categories", link_row(42, 5, position=1))
    cat.insert(
        "product_variants", variant_row(31, 42, quantity=4, price="139.90", color="red", size="L")
    )
    cat.insert(
        "product_variants",
        variant_row(30, 42, quantity=3, price="129.90", color="black", weight=Decimal("0.25")),
    )
    cat.insert("product_images", image_row(41, 42, position=1))
    cat.insert("product_images", image_row(42, 42, position=0))
    cat.insert("product_images", image_row(40, 42, position=1))
    cat.insert("technical_data", tech_row(51, 42, print_order=2, suffix="mAh"))
    cat.insert("technical_data", tech_row(52, 42, print_order=1, suffix="h"))
    cat.insert("technical_data", tech_row(50, 42, print_order=2))
    last = cat.lsn
    out = cat.poll()

    assert out.deferred == [] and out.dead_letters == []
    expected = ProductDocument(
        id=42,
        store=StoreRef(id=1, code="main"),
        reference="HP-42",
        name="Wireless headphones",
        description="Over-ear, 30 h battery",
        url_key="product-42",
        price=Decimal("129.90"),
        list_price=Decimal("149.00"),
        active=True,
        brand=BrandRef(id=7, name="Acme"),
        categories=(
            CategoryRef(
                id=11, name="Audio", url_key="audio", path=("Electronics", "Audio"), position=0
            ),
            CategoryRef(id=5, name="Gifts", url_key="gifts", path=("Gifts",), position=1),
            CategoryRef(id=20, name="Sale", url_key="sale", path=("Sale",), position=1),
        ),
        variants=(
            Variant(
                sku="SKU-30",
                price=Decimal("129.90"),
                quantity=3,
                attributes={"color": "black", "weight": Decimal("0.25")},
            ),
            Variant(
                sku="SKU-31",
                price=Decimal("139.90"),
                quantity=4,
                attributes={"color": "red", "size": "L"},
            ),
        ),
        total_quantity=7,
        images=(
            Image(file_name="img-42.jpg", url="https://cdn.example.com/img-42.jpg", position=0),
            Image(file_name="img-40.jpg", url="https://cdn.example.com/img-40.jpg", position=1),
            Image(file_name="img-41.jpg", url="https://cdn.example.com/img-41.jpg", position=1),
        ),
        technical_data=(
            TechnicalData(
                group="Electrical", description="Spec 52", value="52", suffix="h", print_order=1
            ),
            TechnicalData(
                group="Electrical", description="Spec 50", value="50", suffix=None, print_order=2
            ),
            TechnicalData(
                group="Electrical", description="Spec 51", value="51", suffix="mAh", print_order=2
            ),
        ),
        ean13="8001234567890",
        weight=Decimal("0.250"),
        tags=("audio", "wireless"),
        updated_at=updated,
        version=last,
        source_ts_ms=ts_of(last),
    )
    doc = product_doc(out, 42)
    for name in ProductDocument.model_fields:
        assert getattr(doc, name) == getattr(expected, name), name
    assert doc == expected
    # Exact decimals keep their scale (not just numerically equal).
    assert str(doc.price) == "129.90" and str(doc.weight) == "0.250"
    assert str(doc.variants[0].attributes["weight"]) == "0.25"
    assert same(doc, ref_product(cat, 42))
    # The batch also emits every category, with its path.
    assert emitted_keys(out) == {("product", 42)} | {("category", c) for c in (5, 10, 11, 20)}
    audio = category_doc(out, 11)
    assert audio.path == ("Electronics", "Audio") and audio.parent_id == 10
    assert audio.store == StoreRef(id=1, code="main")


# --------------------------------------------------------------------------- 2. one per batch


def test_many_changes_to_one_product_in_one_batch_give_one_emission() -> None:
    cat = base_catalog()
    cat.poll()
    cat.update("products", 1, name="Renamed")
    cat.update("products", 1, price=Decimal("5.00"))
    cat.insert("product_images", image_row(500, 1))
    cat.insert("technical_data", tech_row(600, 1))
    cat.update("product_categories", (1, 11), position=3)
    cat.update("products", 1, active=False)
    last = cat.update("product_variants", 101, quantity=9).source.lsn  # the highest LSN
    out = cat.poll()
    assert [(e.kind, e.id) for e in out.emissions] == [("product", 1)]
    (e,) = out.emissions
    assert e.version == last and e.source_ts_ms == ts_of(last)
    assert isinstance(e.doc, ProductDocument)
    assert e.doc.version == last and e.doc.source_ts_ms == ts_of(last)
    assert e.doc.name == "Renamed" and e.doc.price == Decimal("5.00") and not e.doc.active
    assert e.doc.total_quantity == 9 and len(e.doc.images) == 1
    assert same(e.doc, ref_product(cat, 1))


def test_a_change_that_does_not_alter_the_document_emits_nothing() -> None:
    cat = base_catalog()
    cat.poll()
    # Columns the document does not carry.
    cat.update("products", 1, external_id="11111111-1111-1111-1111-111111111111")
    cat.update("stores", 1, name="Main store")
    out = cat.poll()
    assert out.emissions == []
    # Same value written again.
    cat.update("products", 2, name="Product 2")
    assert cat.poll().emissions == []


# --------------------------------------------------------------------------- 3. fan-out


def test_fan_out_touches_exactly_the_affected_documents() -> None:
    cat = base_catalog()
    first = cat.poll()
    assert emitted_keys(first) == {("product", p) for p in (1, 2, 3, 4)} | {
        ("category", c) for c in (10, 11, 12, 20)
    }

    # Brand rename: exactly that brand's products.
    cat.update("brands", 1, name="Acme Corp")
    out = cat.poll()
    assert emitted_keys(out) == {("product", 1), ("product", 2)}
    assert all(product_doc(out, p).brand == BrandRef(id=1, name="Acme Corp") for p in (1, 2))

    # Brand description: not in any document.
    cat.update("brands", 1, description="New text")
    assert cat.poll().emissions == []

    # Category rename: its products, its descendants' products, the descendants' paths.
    cat.update("categories", 11, name="Sound")
    out = cat.poll()
    assert emitted_keys(out) == {("product", 1), ("product", 2), ("category", 11), ("category", 12)}
    assert category_doc(out, 12).path == ("Electronics", "Sound", "Headphones")
    assert category_doc(out, 11).path == ("Electronics", "Sound")
    assert product_doc(out, 2).categories[0].path == ("Electronics", "Sound", "Headphones")
    assert product_doc(out, 1).categories[0].name == "Sound"

    # Category position (or active): only that category's document.
    cat.update("categories", 20, position=5)
    out = cat.poll()
    assert emitted_keys(out) == {("category", 20)}
    assert category_doc(out, 20).position == 5
    cat.update("categories", 11, active=False)
    assert emitted_keys(cat.poll()) == {("category", 11)}

    # Category url key: that category and the products linked to it (not descendants).
    cat.update("categories", 10, url_key="electro")
    out = cat.poll()
    assert emitted_keys(out) == {("product", 4), ("category", 10)}
    assert product_doc(out, 4).categories[0].url_key == "electro"

    # Category moved under another parent: it, its descendants and their products.
    cat.update("categories", 11, parent_id=20)
    out = cat.poll()
    assert emitted_keys(out) == {("product", 1), ("product", 2), ("category", 11), ("category", 12)}
    assert category_doc(out, 12).path == ("Sale", "Sound", "Headphones")

    # Stock change: only its product.
    cat.update("product_variants", 103, quantity=50)
    out = cat.poll()
    assert emitted_keys(out) == {("product", 3)}
    assert product_doc(out, 3).total_quantity == 50

    # Store code: every product and category of the store.
    cat.update("stores", 1, code="shop")
    out = cat.poll()
    assert emitted_keys(out) == emitted_keys(first)
    assert all(e.doc is not None and e.doc.store.code == "shop" for e in out.emissions)

    for pid in (1, 2, 3, 4):
        assert same(cat.last[("product", pid)].doc, ref_product(cat, pid))


# --------------------------------------------------------------------------- 4. deletes


def test_hard_and_soft_deletes_tombstone_and_undelete_comes_back() -> None:
    cat = base_catalog()
    cat.poll()
    v1 = cat.last[("product", 1)].version

    cat.delete_product(1)
    out = cat.poll()
    (e,) = out.emissions
    assert (e.kind, e.id, e.doc) == ("product", 1, None)
    assert e.version == cat.lsn > v1

    when = T0 + timedelta(days=1)
    soft = cat.update("products", 2, deleted_at=when).source.lsn
    out = cat.poll()
    assert [(e.kind, e.id, e.doc, e.version) for e in out.emissions] == [("product", 2, None, soft)]

    # Already a tombstone: a further change to the deleted product, then a hard delete.
    cat.update("products", 2, name="Ghost")
    cat.update("product_variants", 102, quantity=77)
    assert cat.poll().emissions == []
    cat.delete_product(2)
    assert cat.poll().emissions == []

    # Un-soft-delete brings the document back with a higher version.
    cat.update("products", 3, deleted_at=when)
    cat.poll()
    gone = cat.last[("product", 3)]
    back = cat.update("products", 3, deleted_at=None).source.lsn
    out = cat.poll()
    doc = product_doc(out, 3)
    assert out.emissions[0].version == back > gone.version
    assert same(doc, ref_product(cat, 3))

    # Inactive products keep their document.
    cat.update("products", 4, active=False)
    out = cat.poll()
    doc = product_doc(out, 4)
    assert doc.active is False and same(doc, ref_product(cat, 4))


def test_deleted_category_is_a_tombstone_and_its_products_drop_it() -> None:
    cat = base_catalog()
    cat.poll()
    with cat.tx() as lsn:
        cat.delete("categories", 20)
        cat.delete("product_categories", (3, 20))
    out = cat.poll()
    assert emitted_keys(out) == {("category", 20), ("product", 3)}
    assert cat.last[("category", 20)].doc is None and cat.last[("category", 20)].version == lsn
    assert product_doc(out, 3).categories == ()


# --------------------------------------------------------------------------- 5. TOAST


def test_unchanged_toast_keeps_the_stored_description() -> None:
    cat = base_catalog()
    long_text = "x" * 5000
    cat.update("products", 1, description=long_text)
    cat.poll()
    cat.update("products", 1, description=UNCHANGED_TOAST, name="Renamed")
    out = cat.poll()
    doc = product_doc(out, 1)
    assert doc.description == long_text and doc.name == "Renamed"
    stored = cat.state.product(1)
    assert stored is not None and stored["description"] == long_text


def test_unchanged_toast_without_an_earlier_image_is_an_error() -> None:
    cat = Catalog()
    cat.insert("stores", store_row())
    cat.poll()
    ev = cat.event(
        "u", "products", lsn=5000, after=product_row(7, description=UNCHANGED_TOAST), key={"id": 7}
    )
    cat.send("products", cat.part_of("products", {"id": 7}), ev)
    with pytest.raises(StateError) as info:
        cat.poll()
    message = str(info.value)
    assert "products" in message and "key 7" in message and "'description'" in message
    # The batch was rolled back: nothing of it is in the state.
    assert cat.state.row("products", "7") is None


# --------------------------------------------------------------------------- 6. replays


def test_replayed_older_events_are_ignored() -> None:
    cat = base_catalog()
    cat.poll()
    old_name = cat.update("products", 1, name="First")
    cat.update("products", 1, name="Second")
    cat.poll()

    cat.send("products", cat.part_of("products", {"id": 1}), old_name)
    out = cat.poll()
    assert out.emissions == []
    assert cat.batch is not None and cat.batch.stale == 1 and cat.batch.applied == 0
    stored = cat.state.product(1)
    assert stored is not None and stored["name"] == "Second"

    # After deletes, replays of the rows' older events do not resurrect them.
    created_variant = cat.insert("product_variants", variant_row(900, 2, quantity=5))
    cat.poll()
    cat.delete("product_variants", 900)
    cat.delete_product(1)
    cat.poll()
    cat.send("product_variants", cat.part_of("products", {"id": 2}), created_variant)
    cat.send("products", cat.part_of("products", {"id": 1}), old_name)
    out = cat.poll()
    assert out.emissions == []
    assert cat.batch.stale == 2
    assert cat.state.product(1) is None
    assert [r["id"] for r in cat.state.children("product_variants", 2)] == [102]


def test_delete_of_a_row_never_seen_is_not_a_bare_key_error() -> None:
    """A delete whose insert the assembler never saw (raw-topic retention, a partial
    resnapshot): either a grave is written, or a StateError names the table and key."""
    cat = base_catalog()
    cat.poll()
    for table, key in (("product_variants", {"id": 777}), ("products", {"id": 778})):
        before = {**key, "product_id": 1} if table != "products" else key
        ev = cat.event("d", table, lsn=cat.next_lsn(), before=before, key=key)
        cat.send(table, partition_for(1 if table != "products" else 778, P), ev)
        try:
            cat.poll()
        except StateError as exc:
            assert table in str(exc) and str(key["id"]) in str(exc)
        else:
            found = cat.state.row(table, str(key["id"]))
            assert found is not None and found[1] is None  # a grave


# --------------------------------------------------------------------------- 7. versions


def test_versions_strictly_increase_when_an_older_lsn_arrives_later() -> None:
    cat = base_catalog()
    cat.poll()
    # Rows committed earlier whose topics are behind: they arrive in later batches.
    early = cat.insert("product_variants", variant_row(800, 1, quantity=2)).source.lsn
    late_variant = cat.hold()
    cat.insert("product_images", image_row(801, 1))
    late_image = cat.hold()
    newer = cat.update("products", 1, name="Newer").source.lsn
    cat.poll()
    assert cat.last[("product", 1)].version == newer

    cat.queue.append(late_variant)
    out = cat.poll()
    (e,) = out.emissions
    assert early < newer and e.version == newer + 1
    assert isinstance(e.doc, ProductDocument) and e.doc.version == newer + 1
    assert [v.sku for v in e.doc.variants] == ["SKU-101", "SKU-800"]

    cat.queue.append(late_image)
    assert [e.version for e in cat.poll().emissions] == [newer + 2]

    real = cat.update("products", 1, name="Newest").source.lsn
    assert [e.version for e in cat.poll().emissions] == [real]
    assert same(cat.last[("product", 1)].doc, ref_product(cat, 1))
    versions = [e.version for e in cat.emitted if e.kind == "product" and e.id == 1]
    assert versions == sorted(set(versions))


def test_a_column_no_document_shows_does_not_move_the_version() -> None:
    """version = the LSN of the newest change the document reflects (documents.py)."""
    cat = base_catalog()
    cat.poll()
    first = cat.last[("product", 1)].version
    late_lsn = cat.insert("product_images", image_row(5, 1)).source.lsn
    late = cat.hold()  # committed before the no-op change, its topic is behind
    noop = cat.update("products", 1, external_id="22222222-2222-2222-2222-222222222222")
    assert cat.poll().emissions == []
    cat.queue.append(late)
    (e,) = cat.poll().emissions
    assert first < e.version == late_lsn < noop.source.lsn


def test_a_rebuild_gives_the_versions_of_the_incremental_run() -> None:
    """Module docstring of assemble.py: 'a rebuild gives the same versions as the
    incremental run except after such a late arrival' (there is none here)."""
    cat = base_catalog()
    cat.poll()
    cat.update("products", 1, name="B")
    cat.poll()
    cat.update("products", 1, name="C")
    last = cat.update("products", 1, name="B").source.lsn  # the batch ends where it started
    # Same content, but a newer row version: emitted again (so the version is a
    # function of the rows, whatever the batching), once.
    (same_again,) = cat.poll().emissions
    assert same_again.version == last
    incremental = cat.last[("product", 1)]
    assert cat.poll().emissions == []

    fresh = Catalog()
    fresh.queue = list(cat.sent)
    rebuilt = fresh.poll()
    (again,) = [e for e in rebuilt.emissions if e.id == 1 and e.kind == "product"]
    assert same(again.doc, incremental.doc)
    assert again.version == incremental.version


def _taken_over(cat: Catalog) -> Catalog:
    """A new owner of every partition: the previous owner's emitted versions and hashes
    read back (as the service does from the doc topic headers), the inputs read quietly."""
    new = Catalog()
    with new.state.transaction():
        for e in cat.last.values():
            new.state.set_doc(e.kind, e.id, e.version, e.digest)
        batch = Batch(new.state, new.owned, new.partitions, quiet=new.owned)
        for table, part, item in cat.sent:
            if isinstance(item, KeyedCount):
                batch.apply_count(item)
            else:
                batch.apply(table, part, item)
        out = batch.finish()
    assert out.emissions == [] and out.counts == []  # nothing while catching up
    return new


def _touch_everything(cat: Catalog, *, force: bool = False) -> Output:
    with cat.state.transaction():
        batch = Batch(cat.state, cat.owned, cat.partitions, force=force)
        batch.touch_all(cat.state.product_ids(cat.owned), cat.state.link_pairs(cat.owned), True)
        out = batch.finish()
    for e in out.emissions:
        cat.last[(e.kind, e.id)] = e
    return out


def test_a_takeover_goes_on_from_the_versions_the_previous_owner_emitted() -> None:
    cat = base_catalog()
    cat.poll()
    cat.insert("product_variants", variant_row(800, 1, quantity=2))
    late_variant = cat.hold()
    newer = cat.update("products", 1, name="Newer").source.lsn
    cat.poll()
    cat.queue.append(late_variant)
    cat.sent.append(late_variant)
    cat.poll()
    bumped = cat.last[("product", 1)]
    assert bumped.version == newer + 1  # a late arrival: above every row's LSN

    # The new owner has the same rows: nothing to emit, nothing goes back.
    new = _taken_over(cat)
    assert _touch_everything(new).emissions == []
    # A change it then makes lands above the previous owner's bump.
    change = cat.update("products", 1, name="N")
    cat.hold()  # (only the new owner sees it)
    cat.rows["products"][skey("products", 1)]["name"] = "Newer"
    with new.state.transaction():
        batch = Batch(new.state, new.owned, new.partitions)
        batch.apply("products", partition_for(1, P), change)
        (e,) = [e for e in batch.finish().emissions if e.id == 1]
    assert e.version == change.source.lsn > bumped.version

    # The end of a rebuild emits each document once, unchanged ones at their version.
    rebuilt = _taken_over(cat)
    out = _touch_everything(rebuilt, force=True)
    assert {(e.kind, e.id) for e in out.emissions} == set(cat.last)
    for e in out.emissions:
        assert e.version == cat.last[(e.kind, e.id)].version
        assert e.digest == cat.last[(e.kind, e.id)].digest
    (p1,) = [e for e in out.emissions if e.kind == "product" and e.id == 1]
    assert same(p1.doc, bumped.doc) and p1.doc is not None and p1.doc.version == bumped.version


# --------------------------------------------------------------------------- 8. counts


def test_category_counts_per_partition_and_product_count() -> None:
    a, b = ids_in(0, 2)
    (c,) = ids_in(1, 1)
    cat = Catalog()
    cat.insert("stores", store_row())
    cat.insert("categories", category_row(10, "Shoes"))
    cat.insert("categories", category_row(11, "Boots", 10))
    for pid in (a, b, c):
        cat.insert("products", product_row(pid))
    l1 = cat.insert("product_categories", link_row(a, 10)).source.lsn
    l2 = cat.insert("product_categories", link_row(c, 10)).source.lsn
    l3 = cat.insert("product_categories", link_row(c, 11)).source.lsn
    out = cat.poll()
    assert out.counts == [
        KeyedCount(10, 0, 1, l1, ts_of(l1)),
        KeyedCount(10, 1, 1, l2, ts_of(l2)),
        KeyedCount(11, 1, 1, l3, ts_of(l3)),
    ]
    # Before the counts are read back, the documents say 0.
    assert category_doc(out, 10).product_count == 0

    def counted(expected: dict[tuple[int, int], int], totals: dict[int, int]) -> None:
        out = cat.poll()
        assert {(k.category_id, k.part): k.count for k in out.counts} == expected
        cat.feed_counts(out.counts)
        back = cat.poll()
        for cid, total in totals.items():
            assert category_doc(back, cid).product_count == total
        assert {e.id for e in back.emissions} == set(totals)

    cat.feed_counts(out.counts)
    back = cat.poll()
    assert category_doc(back, 10).product_count == 2
    assert category_doc(back, 11).product_count == 1
    assert back.emissions[0].version == l2  # the newest count's LSN (counts of 10)

    cat.insert("product_categories", link_row(b, 10))
    counted({(10, 0): 2}, {10: 3})
    cat.delete("product_categories", (c, 10))
    counted({(10, 1): 0}, {10: 2})
    cat.update("products", a, deleted_at=T0)
    counted({(10, 0): 1}, {10: 1})
    # Inactive products count; an active toggle publishes nothing.
    cat.update("products", b, active=False)
    out = cat.poll()
    assert out.counts == [] and emitted_keys(out) == {("product", b)}
    cat.update("products", a, deleted_at=None)
    counted({(10, 0): 2}, {10: 2})
    cat.delete_product(c)
    counted({(11, 1): 0}, {11: 0})
    cat.delete_product(b)
    counted({(10, 0): 1}, {10: 1})
    for cid in (10, 11):
        assert same(cat.last[("category", cid)].doc, ref_category(cat, cid))


def test_counts_from_another_instance_add_up() -> None:
    cat = Catalog(owned={0})
    cat.insert("stores", store_row())
    (cid,) = [i for i in range(1, 50) if partition_for(i, P) == 0][:1]
    cat.insert("categories", category_row(cid, "Shoes"))
    cat.poll()
    lsn = cat.next_lsn()
    cat.feed_counts([KeyedCount(cid, 1, 4, lsn, ts_of(lsn)), KeyedCount(cid, 0, 3, lsn, 0)])
    out = cat.poll()
    assert category_doc(out, cid).product_count == 7
    # The same count again changes nothing.
    cat.feed_counts([KeyedCount(cid, 1, 4, lsn + 16, 0)])
    assert cat.poll().emissions == []


# --------------------------------------------------------------------------- 9. ownership


def test_only_owned_partitions_and_categories_are_emitted() -> None:
    (p0,) = ids_in(0, 1)
    (p1,) = ids_in(1, 1)
    c0, c1 = ids_in(0, 1, start=10)[0], ids_in(1, 1, start=10)[0]
    cat = Catalog()
    cat.insert("stores", store_row())
    cat.insert("brands", brand_row(1, "Acme"))
    cat.insert("categories", category_row(c0, "Zero"))
    cat.insert("categories", category_row(c1, "One"))
    for pid in (p0, p1):
        cat.insert("products", product_row(pid, brand_id=1))
        cat.insert("product_categories", link_row(pid, c0))
        cat.insert("product_categories", link_row(pid, c1))
    out = cat.poll()
    assert emitted_keys(out) == {
        ("product", p0),
        ("product", p1),
        ("category", c0),
        ("category", c1),
    }

    cat.owned = {0}  # a rebalance gave partition 1 to another instance
    cat.update("brands", 1, name="Acme Corp")
    assert emitted_keys(cat.poll()) == {("product", p0)}
    renamed = cat.update("categories", c1, name="Uno").source.lsn
    out = cat.poll()
    assert emitted_keys(out) == {("product", p0)}
    assert {c.id: c.name for c in product_doc(out, p0).categories}[c1] == "Uno"
    cat.update("categories", c0, name="Zero!")
    assert emitted_keys(cat.poll()) == {("product", p0), ("category", c0)}

    # Partition 1 comes back: a recheck brings its categories up to date, once.
    cat.owned = {0, 1}
    out = cat.poll(recheck=True)
    assert emitted_keys(out) == {("category", c1)}
    assert category_doc(out, c1).name == "Uno" and out.emissions[0].version == renamed
    assert cat.poll(recheck=True).emissions == []


def test_categories_of_unowned_partitions_wait_for_a_recheck() -> None:
    c0 = ids_in(0, 2, start=10)
    c1 = ids_in(1, 2, start=10)
    cat = Catalog(owned={0})
    cat.insert("stores", store_row())
    lsns = {
        cid: cat.insert("categories", category_row(cid, f"C{cid}")).source.lsn for cid in c0 + c1
    }
    out = cat.poll()
    assert emitted_keys(out) == {("category", c) for c in c0}
    assert out.deferred == []
    assert cat.poll(recheck=True).emissions == []
    cat.owned = {0, 1}
    out = cat.poll(recheck=True)
    assert {(e.id, e.version) for e in out.emissions} == {(c, lsns[c]) for c in c1}


def test_a_variant_moved_across_partitions_leaves_its_old_product() -> None:
    a = base_catalog(owned={0})  # two instances of the group, one per partition
    b = Catalog(owned={1})

    def poll_both() -> None:
        b.queue.extend(a.queue)
        a.poll()
        b.poll()

    poll_both()
    assert partition_for(1, P) == 1 and partition_for(4, P) == 0
    assert [v.sku for v in product_doc_of(b, 1).variants] == ["SKU-101"]
    # UPDATE product_variants SET product_id = 4: the reader sends it as a delete on the
    # old product's partition and a create on the new one's (the partition column moved).
    moved = {**a.row("product_variants", 101), "product_id": 4}
    with a.tx():
        a.delete("product_variants", 101)
        a.insert("product_variants", moved)
    poll_both()
    assert [v.sku for v in product_doc_of(a, 4).variants] == ["SKU-101", "SKU-104"]
    assert [v.sku for v in product_doc_of(b, 1).variants] == []


def product_doc_of(cat: Catalog, pid: int) -> ProductDocument:
    doc = cat.last[("product", pid)].doc
    assert isinstance(doc, ProductDocument)
    return doc


# --------------------------------------------------------------------------- 10. deferral


def test_documents_wait_for_rows_of_other_topics() -> None:
    cat = Catalog()
    cat.insert("stores", store_row(1))
    cat.insert("products", product_row(1, brand_id=7))
    out = cat.poll()
    assert out.emissions == []
    assert [(k, i) for k, i, _ in out.deferred] == [("product", 1)]
    assert "brand 7" in out.deferred[0][2]
    brand = cat.insert("brands", brand_row(7, "Acme")).source.lsn
    out = cat.poll()
    assert out.deferred == [] and out.emissions[0].version == brand
    assert product_doc(out, 1).brand == BrandRef(id=7, name="Acme")

    # A category whose parent has not arrived: both the category and its product wait.
    cat.insert("categories", category_row(31, "Child", 30))
    cat.insert("products", product_row(2))
    cat.insert("product_categories", link_row(2, 31))
    out = cat.poll()
    assert out.emissions == []
    assert sorted((k, i) for k, i, _ in out.deferred) == [("category", 31), ("product", 2)]
    cat.insert("categories", category_row(30, "Parent"))
    out = cat.poll()
    assert emitted_keys(out) == {("product", 2), ("category", 30), ("category", 31)}
    assert product_doc(out, 2).categories[0].path == ("Parent", "Child")

    # A missing store; the row that arrives late was committed earlier (older LSN):
    # the document keeps the product's own, newer LSN.
    early = cat.next_lsn()
    pending = cat.insert("products", product_row(3, store_id=2)).source.lsn
    out = cat.poll()
    assert [(k, i) for k, i, _ in out.deferred] == [("product", 3)]
    assert "store 2" in out.deferred[0][2]
    cat.insert("stores", store_row(2, "outlet"), lsn=early)
    out = cat.poll()
    assert [(e.id, e.version) for e in out.emissions] == [(3, pending)]
    assert product_doc(out, 3).store == StoreRef(id=2, code="outlet")
    for pid in (1, 2, 3):
        assert same(cat.last[("product", pid)].doc, ref_product(cat, pid))


# --------------------------------------------------------------------------- 11. truncate


def test_truncate_tombstones_the_products_of_its_partition() -> None:
    cat = base_catalog()
    cat.poll()
    in1 = [p for p in (1, 2, 3, 4) if partition_for(p, P) == 1]
    in0 = [p for p in (1, 2, 3, 4) if partition_for(p, P) == 0]
    assert in0 and in1
    with cat.tx() as lsn:  # TRUNCATE products CASCADE: one 't' per table and partition
        for table in OWNED_TABLES:
            cat.truncate(table, 1)
    out = cat.poll()
    assert [(e.kind, e.id, e.doc, e.version) for e in out.emissions] == [
        ("product", p, None, lsn) for p in sorted(in1)
    ]
    links = {(11, 1), (12, 1), (20, 1)}
    assert {(k.category_id, k.part): k.count for k in out.counts} == dict.fromkeys(links, 0)
    assert cat.state.product(in0[0]) is not None

    # A replay of an event from before the truncate does not resurrect the row.
    cat.send(
        "products",
        1,
        cat.event("c", "products", lsn=lsn - 1, after=product_row(in1[0]), key={"id": in1[0]}),
    )
    assert cat.poll().emissions == []

    with cat.tx():
        for table in OWNED_TABLES:
            cat.truncate(table, 0)
    assert [(e.id, e.doc) for e in cat.poll().emissions] == [(p, None) for p in sorted(in0)]


# --------------------------------------------------------------------------- 12. random


class RandomCatalog:
    """Random but valid change sequences (foreign keys and cascades respected)."""

    PRODUCTS = (1, 2, 3, 4, 5)
    BRANDS = (1, 2, 3)

    def __init__(self, rng: random.Random, cat: Catalog, split: float) -> None:
        self.rng = rng
        self.cat = cat
        self.split = split
        self.replays = 0
        self.next_id = 1000
        self.seen_products: set[int] = set()
        self.seen_categories: set[int] = set()
        cat.insert("stores", store_row(1, "main"), op="r")
        for b in self.BRANDS:
            cat.insert("brands", brand_row(b, f"Brand {b}"), op="r")
        for cid, parent in ((10, None), (11, 10), (12, 11), (20, None), (21, 20)):
            self.add_category(cid, parent)

    def rows(self, table: str) -> dict[str, Row]:
        return self.cat.rows.setdefault(table, {})

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def add_category(self, cid: int, parent: int | None) -> None:
        self.seen_categories.add(cid)
        self.cat.insert(
            "categories", category_row(cid, f"Cat {cid}", parent, position=self.rng.randint(0, 3))
        )

    def maybe_poll(self) -> None:
        """A poll batch may end anywhere, inside a transaction too."""
        if self.rng.random() < self.split:
            self.cat.poll()

    def replay(self) -> None:
        """Send an earlier event again, one that a later change of its row superseded."""
        sent = [(t, p, e) for t, p, e in self.cat.sent if isinstance(e, ChangeEvent) and e.key]
        if not sent:
            return
        i = self.rng.randrange(len(sent))
        table, part, ev = sent[i]
        assert ev.key is not None
        key = row_key(table, ev.key)
        if any(
            t == table and e.key and row_key(t, e.key) == key and e.source.lsn > ev.source.lsn
            for t, _, e in sent[i + 1 :]
        ):
            self.cat.queue.append((table, part, ev))
            self.replays += 1

    def descendants(self, cid: int) -> set[int]:
        out: set[int] = set()
        todo = [cid]
        while todo:
            cur = todo.pop()
            for k, row in self.rows("categories").items():
                if row["parent_id"] == cur and int(k) not in out:
                    out.add(int(k))
                    todo.append(int(k))
        return out

    def step(self) -> None:
        rng, cat = self.rng, self.cat
        products = [int(k) for k in self.rows("products")]
        categories = [int(k) for k in self.rows("categories")]
        kind = rng.choice(
            ["product"] * 4
            + ["variant"] * 3
            + ["image", "tech", "brand", "store"]
            + ["link"] * 3
            + ["category"] * 2
            + ["replay"]
        )
        if kind == "replay":
            self.replay()
        elif kind == "product":
            pid = rng.choice(self.PRODUCTS)
            if str(pid) not in self.rows("products"):
                self.seen_products.add(pid)
                cat.insert(
                    "products",
                    product_row(pid, brand_id=rng.choice([None, *self.BRANDS]), tags=["a", None]),
                )
                return
            what = rng.choice(["name", "price", "active", "brand", "soft", "hard", "desc", "tags"])
            p = cat.row("products", pid)
            if what == "name":
                cat.update("products", pid, name=f"P{pid}-{rng.randint(0, 3)}")
            elif what == "price":
                cat.update("products", pid, price=Decimal(rng.choice(["1.00", "2.50", "10"])))
            elif what == "active":
                cat.update("products", pid, active=not p["active"])
            elif what == "brand":
                cat.update("products", pid, brand_id=rng.choice([None, *self.BRANDS]))
            elif what == "soft":
                when = None if p["deleted_at"] is not None else T0 + timedelta(hours=1)
                cat.update("products", pid, deleted_at=when)
            elif what == "desc":
                cat.update("products", pid, description=UNCHANGED_TOAST, ean13="1234567890123")
            elif what == "tags":
                cat.update("products", pid, tags=rng.choice([[], ["x"], [["y", None], ["z", "w"]]]))
            else:
                cat.delete_product(pid, self.maybe_poll)
        elif kind in ("variant", "image", "tech"):
            table = {
                "variant": "product_variants",
                "image": "product_images",
                "tech": "technical_data",
            }[kind]
            rows = self.rows(table)
            if rows and rng.random() < 0.6:
                k = int(rng.choice(list(rows)))
                if rng.random() < 0.3:
                    cat.delete(table, k)
                elif table == "product_variants":
                    cat.update(table, k, quantity=rng.randint(0, 9))
                elif table == "product_images":
                    cat.update(table, k, position=rng.randint(0, 2))
                else:
                    cat.update(table, k, print_order=rng.randint(0, 2))
            elif products:
                pid = rng.choice(products)
                vid = self.new_id()
                if table == "product_variants":
                    row = variant_row(vid, pid, quantity=rng.randint(0, 9), size=rng.choice("SML"))
                elif table == "product_images":
                    row = image_row(vid, pid, rng.randint(0, 2))
                else:
                    row = tech_row(vid, pid, rng.randint(0, 2), rng.choice([None, "W"]))
                cat.insert(table, row)
        elif kind == "link":
            links = self.rows("product_categories")
            if links and rng.random() < 0.5:
                link_key = _parse_key("product_categories", rng.choice(list(links)))
                if rng.random() < 0.5:
                    cat.delete("product_categories", link_key)
                else:
                    cat.update("product_categories", link_key, position=rng.randint(0, 2))
            elif products and categories:
                pid, cid = rng.choice(products), rng.choice(categories)
                if f"{pid}:{cid}" not in links:
                    cat.insert("product_categories", link_row(pid, cid, rng.randint(0, 2)))
        elif kind == "brand":
            b = rng.choice(self.BRANDS)
            if rng.random() < 0.5:
                cat.update("brands", b, name=f"Brand {b}-{rng.randint(0, 3)}")
            else:
                cat.update("brands", b, description=f"text {rng.randint(0, 9)}")
        elif kind == "store":
            cat.update("stores", 1, code=rng.choice(["main", "shop", "it"]))
        else:
            what = rng.choice(["name", "url", "position", "active", "move", "add", "delete"])
            if what == "add" or not categories:
                self.add_category(self.new_id(), rng.choice([None, *categories]))
                return
            cid = rng.choice(categories)
            if what == "name":
                cat.update("categories", cid, name=f"Cat {cid}-{rng.randint(0, 3)}")
            elif what == "url":
                cat.update("categories", cid, url_key=f"c-{cid}-{rng.randint(0, 3)}")
            elif what == "position":
                cat.update("categories", cid, position=rng.randint(0, 3))
            elif what == "active":
                cat.update("categories", cid, active=not cat.row("categories", cid)["active"])
            elif what == "move":
                allowed = [None, *(c for c in categories if c not in self.descendants(cid) | {cid})]
                cat.update("categories", cid, parent_id=rng.choice(allowed))
            else:
                # ON DELETE CASCADE: the subtree and its links, in one transaction.
                with cat.tx():
                    for c in sorted(self.descendants(cid) | {cid}):
                        cat.delete("categories", c)
                        for lk, link in list(self.rows("product_categories").items()):
                            if link["category_id"] == c:
                                self.maybe_poll()
                                cat.delete(
                                    "product_categories", _parse_key("product_categories", lk)
                                )


def test_random_histories_end_with_the_documents_of_the_final_rows() -> None:
    cases = replays = 0
    for seed in range(240):
        rng = random.Random(seed)
        cat = Catalog(loop_counts=True)
        gen = RandomCatalog(rng, cat, split=rng.choice([0.05, 0.2, 0.5, 1.0]))
        for _ in range(rng.randint(10, 45)):
            gen.step()
            gen.maybe_poll()
        out = cat.settle()
        replays += gen.replays
        assert out.deferred == [] and out.dead_letters == [], seed
        for pid in gen.seen_products:
            last = cat.last.get(("product", pid))
            expected = ref_product(cat, pid)
            assert last is not None or expected is None, (seed, pid)
            if last is not None:
                assert same(last.doc, expected), (seed, pid)
        for cid in gen.seen_categories:
            last = cat.last.get(("category", cid))
            expected_category = ref_category(cat, cid)
            assert last is not None or expected_category is None, (seed, cid)
            if last is not None:
                assert same(last.doc, expected_category), (seed, cid)
        versions: dict[tuple[str, int], int] = {}
        for e in cat.emitted:
            assert e.version > versions.get((e.kind, e.id), 0), (seed, e)
            versions[(e.kind, e.id)] = e.version
            assert e.doc is None or (e.doc.version, e.doc.source_ts_ms) == (
                e.version,
                e.source_ts_ms,
            )
        cases += 1
    assert cases == 240 and replays > 50


# --------------------------------------------------------------------------- codec


def test_document_codec_round_trips_and_tombstone_headers() -> None:
    cat = base_catalog()
    cat.update("product_variants", 101, attributes={"size": "M", "w": Decimal("0.125")})
    out = cat.poll()
    product = product_doc(out, 1)
    category = category_doc(out, 12)
    codec = DocumentCodec(store=InMemorySchemaStore(), topic_prefix="cdc")

    data = codec.encode(product)
    assert data[:2] == b"\xc3\x01"
    back = codec.decode(data, ProductDocument)
    assert back == product
    assert back.variants[0].attributes == {"size": "M", "w": Decimal("0.125")}
    assert codec.decode(codec.encode(category), CategoryDocument) == category

    msg = codec.decode_message("product", b"1", data, headers_of("product", 1, 2))
    assert (msg.kind, msg.id, msg.doc, msg.version) == ("product", 1, product, product.version)

    tomb = codec.decode_message(
        "product", b"7", None, headers_of("product", 123456789, 1700000000123), 3, 44
    )
    assert (tomb.id, tomb.doc, tomb.version, tomb.source_ts_ms) == (
        7,
        None,
        123456789,
        1700000000123,
    )
    assert (tomb.partition, tomb.offset) == (3, 44)
    as_dict = codec.decode_message("category", b"9", None, {"version": b"55"})
    assert (as_dict.doc, as_dict.version, as_dict.source_ts_ms) == (None, 55, 0)


def test_a_document_of_an_older_schema_is_resolved_to_the_current_one() -> None:
    """A value whose writer schema is not the current one (here: written before
    ``weight`` existed) is read through Avro schema resolution; one of the current
    schema is read as it is.  Both give the document."""
    import io

    from fastavro import parse_schema, schemaless_writer

    from pipeline.codec.single_object import MAGIC
    from pipeline.documents.model import avro_schema_json, to_avro

    store = InMemorySchemaStore()
    codec = DocumentCodec(store=store, topic_prefix="cdc")
    product = ProductDocument.model_validate(
        {
            "id": 5, "store": {"id": 1, "code": "us"}, "reference": "R-5", "name": "Lamp",
            "description": None, "url_key": "lamp-5", "price": "19.90", "list_price": None,
            "active": True, "brand": None, "categories": [], "variants": [], "total_quantity": 0,
            "images": [], "technical_data": [], "ean13": "", "weight": "1.25", "tags": [],
            "updated_at": T0, "version": 77, "source_ts_ms": TS0,
        }
    )  # fmt: skip
    current = codec.encode(product)
    assert codec.decode(current, ProductDocument) == product

    old_schema = dict(avro_schema_json(ProductDocument))
    old_schema["fields"] = [f for f in old_schema["fields"] if f["name"] != "weight"]
    fp = store.register(old_schema)
    record = {k: v for k, v in to_avro(product).items() if k != "weight"}
    out = io.BytesIO()
    out.write(MAGIC + fp)
    schemaless_writer(out, parse_schema(old_schema), record)
    back = codec.decode(out.getvalue(), ProductDocument)
    assert back.weight is None  # the reader's default
    assert back == product.model_copy(update={"weight": None})


def test_a_sink_takes_each_document_as_it_is_built_and_the_output_holds_none() -> None:
    """The service encodes and produces every document as soon as it is built (a batch's
    documents are not all kept alive until its end): the same emissions, in the same
    order, as a batch that holds them in its output."""
    twins = [base_catalog(), base_catalog()]
    for cat in twins:
        cat.poll()
        for pid in (1, 2):
            cat.update("products", pid, name=f"Renamed {pid}")
        cat.update("product_variants", 101, quantity=7)
    held, streamed = twins
    expected = held.poll().emissions
    assert expected, "the edits touch documents"
    seen: list[Emission] = []
    with streamed.state.transaction():
        batch = Batch(streamed.state, streamed.owned, streamed.partitions)
        for table, part, item in streamed.queue:
            assert not isinstance(item, KeyedCount)
            batch.apply(table, part, item)
        streamed.queue = []
        out = batch.finish(sink=seen.append)
    assert out.emissions == []
    assert [(e.kind, e.id, e.version, e.digest) for e in seen] == [
        (e.kind, e.id, e.version, e.digest) for e in expected
    ]
    assert [e.doc for e in seen] == [e.doc for e in expected]


def test_a_stored_row_is_updated_in_place_or_replaced_and_its_indexes_follow() -> None:
    # put() after row() updates a row in place when its indexed columns stay (the
    # indexes untouched) and replaces it when one of them changes: either way the
    # product's rows are found by the new product id and no longer by the old one.
    st = AssemblerState(":memory:")

    def put(pid: int, qty: int, lsn: int) -> None:
        st.row("product_variants", "7")
        data = f'{{"id": 7, "product_id": {pid}, "sku": "S7", "quantity": {qty}}}'
        st.put("product_variants", "7", lsn, data, relevant=(lsn, lsn), product_id=pid, part=pid)

    with st.transaction():
        put(1, 5, 10)
        put(1, 6, 11)  # same product: in place
        assert [v["quantity"] for v in st.product_rows(1)[0]["product_variants"]] == [6]
        assert st.product_rows(1)[1] == (11, 11)
        put(2, 7, 12)  # moved to product 2: replaced, the index entry moves
        put(2, 8, 13)
    assert st.product_rows(1)[0]["product_variants"] == []
    assert [v["quantity"] for v in st.product_rows(2)[0]["product_variants"]] == [8]
    assert st.row("product_variants", "7") == (13, {"id": 7, "product_id": 2, "sku": "S7",
                                                    "quantity": 8})  # fmt: skip
    assert st.db.execute("SELECT part FROM rows WHERE key = '7'").fetchone() == (2,)


def test_the_key_comes_from_the_row_image_and_is_none_when_the_image_lacks_it() -> None:
    src = Source("catalog", "public", "product_variants", 10, 1, 1)
    after = {"id": 7, "product_id": 3, "sku": "A"}
    assert key_from_row("product_variants", ChangeEvent("u", src, 1, after=after)) == {"id": 7}
    # a delete: the before image (its key columns at least) gives the key
    gone = ChangeEvent("d", src, 1, before={"id": 7, "product_id": None})
    assert key_from_row("product_variants", gone) == {"id": 7}
    link = {"product_id": 3, "category_id": 9, "position": 1}
    assert key_from_row("product_categories", ChangeEvent("c", src, 1, after=link)) == {
        "product_id": 3,
        "category_id": 9,
    }
    # no image, a key column missing or NULL, or an unchanged TOAST marker: decode the key
    assert key_from_row("products", ChangeEvent("t", src, 1)) is None
    half = ChangeEvent("c", src, 1, after={"product_id": 3})
    assert key_from_row("product_categories", half) is None
    assert key_from_row("products", ChangeEvent("d", src, 1, before={"id": None})) is None
    toast = ChangeEvent("u", src, 1, after={"id": UNCHANGED_TOAST})
    assert key_from_row("products", toast) is None
