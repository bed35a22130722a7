"""Joining raw row changes into documents: the assembler's logic, without Kafka.

:class:`Batch` applies the change events of one poll batch to the
:class:`~pipeline.assembler.state.AssemblerState`, collects which documents they touch
(fan-out), then builds each touched document once and says what to emit.  The service
(:mod:`pipeline.assembler.service`) feeds it from Kafka and writes what it returns;
unit tests feed it directly.

Fan-out
=======

==========================  ===========================================================
change                      documents touched
==========================  ===========================================================
products row                the product; the counts of its categories when it (un)dies
variant / image / tech row  its product
product_categories row      its product; the product count of the category
brands row (name changed)   every product of the brand
stores row (code changed)   every product and category of the store
categories row              the category; when its name or parent changed, its
                            descendants (their paths) and every product linked to any
                            of them; when its url key changed, the products linked to it
==========================  ===========================================================

Only products of the partitions this instance owns are touched; a category document
is built by the owner of partition ``partition_for(category id)``.  A touched document
is emitted only when its content changed (compared by hash), so "exactly the affected
documents" are re-emitted, and many changes to one product in a batch give one
document.

Versions
========

A document's ``version`` is the LSN of the newest change it reflects: every touch
raises the document's *pending* LSN to the change's LSN, and an emission takes
``max(pending, last emitted version + 1)``.  Per key, versions therefore strictly
increase; the ``+ 1`` only happens when a change from another topic arrives after a
newer one was already emitted (cross-topic order is not global), and is far below the
next real LSN (every WAL record is longer than one byte).  Events are applied in LSN
order within a batch, so a rebuild gives the same versions as the incremental run
except after such a late arrival.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from pipeline.assembler.documents import (
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
    to_json,
)
from pipeline.assembler.state import (
    GLOBAL_TABLES,
    OWNED_TABLES,
    TOMBSTONE,
    AssemblerState,
    StateError,
    serialize_row,
)
from pipeline.codec.avro_schema import _json_loads
from pipeline.events import ChangeEvent
from pipeline.kafka import partition_for

log = logging.getLogger(__name__)

__all__ = ["Batch", "Emission", "KeyedCount", "row_key"]


def row_key(table: str, key: dict[str, Any]) -> str:
    """The state key of a row: its id, or ``product_id:category_id`` for a link."""
    if table == "product_categories":
        return f"{key['product_id']}:{key['category_id']}"
    return str(key["id"])


@dataclass(frozen=True)
class Emission:
    """One message for a document topic (``doc`` ``None``: tombstone)."""

    kind: str
    id: int
    doc: Document | None
    version: int
    source_ts_ms: int


@dataclass(frozen=True)
class KeyedCount:
    """One message for the counts topic: live products of a category in one partition."""

    category_id: int
    part: int
    count: int
    lsn: int
    ts_ms: int

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "category_id": self.category_id,
                "partition": self.part,
                "count": self.count,
                "lsn": self.lsn,
                "ts_ms": self.ts_ms,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> KeyedCount:
        obj = json.loads(data)
        return cls(obj["category_id"], obj["partition"], obj["count"], obj["lsn"], obj["ts_ms"])


@dataclass(frozen=True)
class DeadLetter:
    """A document that could not be built (the record and the error)."""

    kind: str
    id: int
    error: str
    rows: dict[str, Any]


@dataclass
class Output:
    emissions: list[Emission] = field(default_factory=list)
    counts: list[KeyedCount] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    deferred: list[tuple[str, int, str]] = field(default_factory=list)


def _bump(touched: dict[Any, tuple[int, int]], key: Any, lsn: int, ts: int) -> None:
    old = touched.get(key)
    if old is None or lsn > old[0]:
        touched[key] = (lsn, ts)


class Batch:
    """The changes of one poll batch (apply them in LSN order, then :meth:`finish`).

    ``owned`` is the set of product partitions this instance owns, ``partitions`` the
    partition count of the product-owned raw topics (for category ownership).
    """

    def __init__(self, state: AssemblerState, owned: Iterable[int], partitions: int) -> None:
        self.state = state
        self.owned = frozenset(owned)
        self.partitions = partitions
        self.products: dict[int, tuple[int, int]] = {}
        self.categories: dict[int, tuple[int, int]] = {}
        self.counts: dict[tuple[int, int], tuple[int, int]] = {}
        self.applied = 0
        self.stale = 0

    # -- applying ------------------------------------------------------------------------

    def owns_category(self, category_id: int) -> bool:
        return partition_for(category_id, self.partitions) in self.owned

    def apply(self, table: str, part: int, event: ChangeEvent) -> None:
        """Apply one raw change event of ``table`` read from partition ``part``."""
        lsn, ts = event.source.lsn, event.source.ts_ms
        if event.op == "t":
            self._truncate(table, part, lsn, ts)
            return
        if event.key is None:
            raise StateError(f"a {event.op!r} event of {table} without a key (lsn {lsn})")
        key = row_key(table, event.key)
        stored = self.state.row(table, key)
        if stored is not None and stored[0] > lsn:
            # A replay of an older change (the reader re-sends after a crash): the row
            # already reflects a newer one.
            self.stale += 1
            return
        old = stored[1] if stored is not None else None
        new_row = event.after if event.op != "d" else None
        data = None if new_row is None else serialize_row(table, key, new_row, old)
        new = None if data is None else json.loads(data)
        self.applied += 1
        if table in OWNED_TABLES:
            source = new or old or {}
            pid = int(source["id"] if table == "products" else source["product_id"])
            extra: dict[str, Any] = {"product_id": pid, "part": part}
            if table == "products":
                extra["ref"] = None if new is None else new.get("brand_id")
                extra["store_id"] = None if new is None else new.get("store_id")
                extra["live"] = new is not None and new.get("deleted_at") is None
            elif table == "product_categories":
                extra["ref"] = int(source["category_id"])
            self.state.put(table, key, lsn, data, **extra)
            self._owned_effects(table, part, pid, old, new, lsn, ts)
        elif table in GLOBAL_TABLES:
            self.state.put(table, key, lsn, data)
            self._global_effects(table, int(key), old, new, lsn, ts)
        # Other tables (cms_pages, the signal table) are not part of any document.

    def apply_count(self, count: KeyedCount) -> None:
        """A category count read back from the counts topic."""
        if self.state.set_count(count.category_id, count.part, count.count, count.lsn):
            _bump(self.categories, count.category_id, count.lsn, count.ts_ms)

    def _owned_effects(
        self,
        table: str,
        part: int,
        pid: int,
        old: dict[str, Any] | None,
        new: dict[str, Any] | None,
        lsn: int,
        ts: int,
    ) -> None:
        _bump(self.products, pid, lsn, ts)
        if table == "products":
            was = old is not None and old.get("deleted_at") is None
            now = new is not None and new.get("deleted_at") is None
            if was != now:
                for cid in self.state.category_links(pid):
                    _bump(self.counts, (cid, part), lsn, ts)
        elif table == "product_categories":
            for row in (old, new):
                if row is not None:
                    _bump(self.counts, (int(row["category_id"]), part), lsn, ts)
        if old is not None and new is not None and table != "products":
            old_pid = int(old["product_id"])
            if old_pid != pid:  # a child row moved to another product
                _bump(self.products, old_pid, lsn, ts)

    def _global_effects(
        self,
        table: str,
        row_id: int,
        old: dict[str, Any] | None,
        new: dict[str, Any] | None,
        lsn: int,
        ts: int,
    ) -> None:
        def changed(*columns: str) -> bool:
            if (old is None) != (new is None):
                return True
            assert old is not None and new is not None
            return any(old.get(c) != new.get(c) for c in columns)

        parts = self.owned
        if table == "brands":
            if changed("name"):
                for pid in self.state.products_where("ref", [row_id], parts):
                    _bump(self.products, pid, lsn, ts)
        elif table == "stores":
            if changed("code"):
                for pid in self.state.products_where("store_id", [row_id], parts):
                    _bump(self.products, pid, lsn, ts)
                for cid, cat in self.state.globals["categories"].items():
                    if cat.get("store_id") == row_id:
                        _bump(self.categories, cid, lsn, ts)
        elif table == "categories":
            _bump(self.categories, row_id, lsn, ts)
            affected: set[int] = set()
            if changed("name", "parent_id"):
                affected = self._descendants(row_id) | {row_id}
                for cid in affected:
                    _bump(self.categories, cid, lsn, ts)
            elif changed("url_key"):
                affected = {row_id}
            for pid in self.state.products_in_categories(affected, parts):
                _bump(self.products, pid, lsn, ts)

    def _descendants(self, category_id: int) -> set[int]:
        children: dict[int, list[int]] = {}
        for cid, cat in self.state.globals["categories"].items():
            parent = cat.get("parent_id")
            if parent is not None:
                children.setdefault(int(parent), []).append(cid)
        out: set[int] = set()
        todo = [category_id]
        while todo:
            for child in children.get(todo.pop(), ()):
                if child not in out:
                    out.add(child)
                    todo.append(child)
        return out

    def _truncate(self, table: str, part: int, lsn: int, ts: int) -> None:
        if table in GLOBAL_TABLES:
            gone = self.state.truncate(table, None, lsn)
            for row in gone:
                self._global_effects(table, int(row["id"]), row, None, lsn, ts)
        elif table in OWNED_TABLES:
            gone = self.state.truncate(table, part, lsn)
            for row in gone:
                pid = int(row["id"] if table == "products" else row["product_id"])
                self._owned_effects(table, part, pid, row, None, lsn, ts)
                if table == "products":
                    for cid in self.state.category_links(pid):
                        _bump(self.counts, (cid, part), lsn, ts)

    # -- building -----------------------------------------------------------------------

    def finish(self) -> Output:
        """Build every touched document once; return what to emit and publish."""
        out = Output()
        paths: dict[int, tuple[str, ...] | None] = {}
        for (cid, part), (lsn, ts) in sorted(self.counts.items()):
            out.counts.append(KeyedCount(cid, part, self.state.local_count(cid, part), lsn, ts))
        for pid, (lsn, ts) in sorted(self.products.items()):
            self._emit(out, "product", pid, lsn, ts, lambda i: self._product(i, paths))
        for cid, (lsn, ts) in sorted(self.categories.items()):
            if self.owns_category(cid):
                self._emit(out, "category", cid, lsn, ts, lambda i: self._category(i, paths))
            else:
                # Another instance emits it; keep the pending LSN, so that this one gives
                # the same version if the category's partition comes to it later.
                self._note_pending("category", cid, lsn, ts)
        return out

    def recheck_categories(self) -> None:
        """Touch every category this instance owns (after an assignment changed).

        Each is rebuilt and emitted only if it differs from what this instance last
        emitted for it: a category taken over from another instance is brought up to
        date without waiting for its next change.
        """
        for cid in self.state.globals["categories"]:
            if self.owns_category(cid):
                _bump(self.categories, cid, 0, 0)

    def _note_pending(self, kind: str, doc_id: int, lsn: int, ts: int) -> None:
        known = self.state.doc(kind, doc_id)
        pending, _ts, version, last_hash = known if known else (0, 0, 0, None)
        if lsn > pending:
            self.state.set_doc(kind, doc_id, lsn, ts, version, last_hash)

    def _emit(self, out: Output, kind: str, doc_id: int, lsn: int, ts: int, build: Any) -> None:
        known = self.state.doc(kind, doc_id)
        pending, pending_ts, version, last_hash = known if known else (0, 0, 0, None)
        if lsn > pending:
            pending, pending_ts = lsn, ts
        try:
            doc = build(doc_id)
        except _Deferred as exc:
            # Not buildable yet (a row from another topic has not arrived): keep the
            # pending LSN; the arriving row touches the document again.
            out.deferred.append((kind, doc_id, str(exc)))
            self.state.set_doc(kind, doc_id, pending, pending_ts, version, last_hash)
            return
        except ValidationError as exc:
            out.dead_letters.append(DeadLetter(kind, doc_id, str(exc), self._rows_of(kind, doc_id)))
            self.state.set_doc(kind, doc_id, pending, pending_ts, version, "!invalid")
            return
        digest = TOMBSTONE if doc is None else hashlib.sha1(to_json(doc).encode()).hexdigest()
        if digest == last_hash:
            self.state.set_doc(kind, doc_id, pending, pending_ts, version, last_hash)
            return
        new_version = max(pending, version + 1)
        if doc is not None:
            doc = doc.model_copy(update={"version": new_version, "source_ts_ms": pending_ts})
        out.emissions.append(Emission(kind, doc_id, doc, new_version, pending_ts))
        self.state.set_doc(kind, doc_id, pending, pending_ts, new_version, digest)

    def _rows_of(self, kind: str, doc_id: int) -> dict[str, Any]:
        if kind == "category":
            return {"categories": self.state.globals["categories"].get(doc_id)}
        rows: dict[str, Any] = {"products": self.state.product(doc_id)}
        for table in OWNED_TABLES[1:]:
            rows[table] = self.state.children(table, doc_id)
        return rows

    def _path(self, cid: int, cache: dict[int, tuple[str, ...] | None]) -> tuple[str, ...] | None:
        """Names from the root down to ``cid``; ``None`` while an ancestor is unknown."""
        if cid in cache:
            return cache[cid]
        cats = self.state.globals["categories"]
        names: list[str] = []
        seen: set[int] = set()
        current: int | None = cid
        result: tuple[str, ...] | None = None
        while current is not None:
            cat = cats.get(current)
            if cat is None or current in seen:
                break
            seen.add(current)
            names.append(cat["name"])
            parent = cat.get("parent_id")
            if parent is None:
                result = tuple(reversed(names))
                break
            current = int(parent)
        cache[cid] = result
        return result

    def _store(self, store_id: int, what: str) -> StoreRef:
        store = self.state.globals["stores"].get(store_id)
        if store is None:
            raise _Deferred(f"{what}: store {store_id} not known yet")
        return StoreRef(id=store_id, code=store["code"])

    def _product(
        self, pid: int, paths: dict[int, tuple[str, ...] | None]
    ) -> ProductDocument | None:
        p = self.state.product(pid)
        if p is None or p.get("deleted_at") is not None:
            return None
        brand = None
        if p.get("brand_id") is not None:
            b = self.state.globals["brands"].get(int(p["brand_id"]))
            if b is None:
                raise _Deferred(f"product {pid}: brand {p['brand_id']} not known yet")
            brand = BrandRef(id=int(p["brand_id"]), name=b["name"])
        links = sorted(
            self.state.children("product_categories", pid),
            key=lambda r: (r["position"], r["category_id"]),
        )
        categories = []
        cats = self.state.globals["categories"]
        for link in links:
            cid = int(link["category_id"])
            cat = cats.get(cid)
            path = self._path(cid, paths)
            if cat is None or path is None:
                raise _Deferred(f"product {pid}: category {cid} (or an ancestor) not known yet")
            categories.append(
                CategoryRef(
                    id=cid,
                    name=cat["name"],
                    url_key=cat["url_key"],
                    path=path,
                    position=link["position"],
                )
            )
        variants = [
            Variant(
                sku=v["sku"],
                price=v["price"],
                quantity=v["quantity"],
                attributes=_json_loads(v["attributes"]),
            )
            for v in sorted(self.state.children("product_variants", pid), key=lambda r: r["id"])
        ]
        images = [
            Image(file_name=i["file_name"], url=i["url"], position=i["position"])
            for i in sorted(
                self.state.children("product_images", pid),
                key=lambda r: (r["position"], r["id"]),
            )
        ]
        specs = [
            TechnicalData(
                group=t["group_name"],
                description=t["description"],
                value=t["value"],
                suffix=t["suffix"],
                print_order=t["print_order"],
            )
            for t in sorted(
                self.state.children("technical_data", pid),
                key=lambda r: (r["print_order"], r["id"]),
            )
        ]
        return ProductDocument(
            id=pid,
            store=self._store(int(p["store_id"]), f"product {pid}"),
            reference=p["reference"],
            name=p["name"],
            description=p["description"],
            url_key=p["url_key"],
            price=p["price"],
            list_price=p["list_price"],
            active=p["active"],
            brand=brand,
            categories=tuple(categories),
            variants=tuple(variants),
            total_quantity=sum(v.quantity for v in variants),
            images=tuple(images),
            technical_data=tuple(specs),
            ean13=p["ean13"],
            weight=p["weight"],
            tags=normalize_tags(p["tags"]),
            updated_at=p["updated_at"],
            version=0,
            source_ts_ms=0,
        )

    def _category(
        self, cid: int, paths: dict[int, tuple[str, ...] | None]
    ) -> CategoryDocument | None:
        cat = self.state.globals["categories"].get(cid)
        if cat is None:
            return None
        path = self._path(cid, paths)
        if path is None:
            raise _Deferred(f"category {cid}: an ancestor is not known yet")
        return CategoryDocument(
            id=cid,
            store=self._store(int(cat["store_id"]), f"category {cid}"),
            parent_id=cat["parent_id"],
            name=cat["name"],
            url_key=cat["url_key"],
            path=path,
            position=cat["position"],
            active=cat["active"],
            product_count=self.state.product_count(cid),
            updated_at=cat["updated_at"],
            version=0,
            source_ts_ms=0,
        )


class _Deferred(Exception):
    """A document cannot be built yet: a row it needs has not arrived."""
