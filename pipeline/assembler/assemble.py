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

A document's ``version`` is the LSN of the newest change it reflects: the highest
"relevant LSN" of the rows it is built from (a row's LSN moves only when a column some
document shows changes; the graves of removed child rows count, and for the categories
in a product's paths only their name, url key and parent).  That is a function of the
rows alone, so a rebuild gives the versions of the incremental run.  A document is
emitted when its content changed or that LSN rose, with ``max(LSN, last version + 1)``:
per key, versions strictly increase.  The ``+ 1`` only happens when a change from
another topic arrives after a newer one was emitted (cross-topic order is not global)
or a transaction's changes to one product span batches (events carry their
transaction's commit LSN); it stays far below the next real LSN (the next
transaction's commit record, every WAL record being longer than one byte).  A
rebuilt state, or an instance taking partitions over, first loads the versions and
hashes last emitted (the service reads them from the document topics' headers), so
such a bump is never undone: see ``quiet`` and ``force`` of :class:`Batch`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from pydantic import ValidationError

from pipeline.assembler.state import (
    GLOBAL_TABLES,
    OWNED_TABLES,
    TOMBSTONE,
    AssemblerState,
    StateError,
    serialize_row,
)
from pipeline.codec.jsontext import json_loads as _json_loads
from pipeline.documents.model import (
    CategoryDocument,
    Document,
    ProductDocument,
    normalize_tags,
)
from pipeline.events import UNCHANGED_TOAST, ChangeEvent
from pipeline.jsonify import canonical, loads
from pipeline.kafka import partition_for

log = logging.getLogger(__name__)

__all__ = ["Batch", "Emission", "KeyedCount", "key_from_row", "row_key"]


def row_key(table: str, key: dict[str, Any]) -> str:
    """The state key of a row: its id, or ``product_id:category_id`` for a link."""
    if table == "product_categories":
        return f"{key['product_id']}:{key['category_id']}"
    return str(key["id"])


_LINK_KEY: Final = ("product_id", "category_id")
_ID_KEY: Final = ("id",)


def key_from_row(table: str, event: ChangeEvent) -> dict[str, Any] | None:
    """The key columns :func:`row_key` reads, taken from the event's row image
    (``after``, or ``before`` of a delete); ``None`` when the image lacks one of them
    (then the key message has to be decoded).

    The same values as the message key: the reader writes the key from the same row.
    Taking them from the row spares decoding a second Avro message per change.
    """
    row = event.after if event.after is not None else event.before
    if row is None:
        return None
    columns = _LINK_KEY if table == "product_categories" else _ID_KEY
    key = {}
    for column in columns:
        value = row.get(column)
        if value is None or value is UNCHANGED_TOAST:
            return None
        key[column] = value
    return key


@dataclass(frozen=True)
class Emission:
    """One message for a document topic (``doc`` ``None``: tombstone)."""

    kind: str
    id: int
    doc: Document | None
    version: int
    source_ts_ms: int
    digest: str = ""
    """The content hash the state keeps for the document (sent as a header)."""


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


RELEVANT: dict[str, tuple[str, ...]] = {
    "stores": ("code",),
    "brands": ("name",),
    "categories": (
        "store_id", "parent_id", "name", "url_key", "position", "active", "updated_at",
    ),
    "products": (
        "store_id", "reference", "name", "description", "price", "list_price", "active",
        "url_key", "weight", "ean13", "brand_id", "tags", "updated_at", "deleted_at",
    ),
    "product_variants": ("product_id", "sku", "price", "quantity", "attributes"),
    "product_categories": ("position",),
    "product_images": ("product_id", "file_name", "url", "position"),
    "technical_data": (
        "product_id", "group_name", "description", "value", "suffix", "print_order",
    ),
}  # fmt: skip
"""The columns of each table that some document shows (the others touch nothing)."""


PATH_COLUMNS: tuple[str, ...] = ("name", "parent_id")
"""The columns of a category its descendants' paths are made of."""


def _relevant_change(
    table: str,
    old: dict[str, Any] | None,
    new: dict[str, Any] | None,
    columns: tuple[str, ...] | None = None,
) -> bool:
    if (old is None) != (new is None):
        return True
    if old is None or new is None:
        return False
    columns = columns or RELEVANT.get(table)
    if columns is None:
        return True
    return any(old.get(c) != new.get(c) for c in columns)


def _bump(touched: dict[Any, tuple[int, int]], key: Any, lsn: int, ts: int) -> None:
    old = touched.get(key)
    if old is None or lsn > old[0]:
        touched[key] = (lsn, ts)


class Batch:
    """The changes of one poll batch (apply them in LSN order, then :meth:`finish`).

    ``owned`` is the set of product partitions this instance owns, ``partitions`` the
    partition count of the product-owned raw topics (for category ownership).
    """

    def __init__(
        self,
        state: AssemblerState,
        owned: Iterable[int],
        partitions: int,
        *,
        quiet: Iterable[int] = (),
        force: bool = False,
    ) -> None:
        self.state = state
        self.owned = frozenset(owned)
        self.partitions = partitions
        self.quiet = frozenset(quiet)
        """Owned partitions still catching up after a takeover: their documents (and
        counts) are not built yet; the takeover touches them all once it is done."""
        self.force = force
        """Emit every touched document, an unchanged one as an identical duplicate at its
        version (the end of a rebuild: each document once, no version going back)."""
        self.products: dict[int, tuple[int, int]] = {}
        self.categories: dict[int, tuple[int, int]] = {}
        self.counts: dict[tuple[int, int], tuple[int, int]] = {}
        self.applied = 0
        self.stale = 0
        self._contrib = (0, 0)
        self._sink: Callable[[Emission], None] = lambda _e: None  # set by finish()
        self.global_lsn = 0
        """The highest LSN of a global-table change this batch applied."""
        self.late: list[tuple[str, int]] = []
        """Documents emitted at ``version + 1`` (a late cross-topic arrival)."""

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
        if old is None and new_row is None:
            # A delete of a row never seen (history before the topics' retention): keep
            # a grave, so the row cannot be resurrected by a replay.
            old_image = {**(event.key or {}), **(event.before or {})}
            if table in OWNED_TABLES and "product_id" not in old_image and table != "products":
                raise StateError(
                    f"{table} key {key}: a delete of a row the assembler never saw, without "
                    "its product_id (REPLICA IDENTITY FULL is missing?): cannot tell which "
                    "product it belonged to; run `catalog-cdc resnapshot` then "
                    "`catalog-cdc assembler --rebuild`"
                )
            old = {c: v for c, v in old_image.items() if v is not UNCHANGED_TOAST}
        data = None if new_row is None else serialize_row(table, key, new_row, old)
        new = None if data is None else loads(data)
        self.applied += 1
        # When nothing a document shows changed (a column no document holds, or an
        # UPDATE that set the same values) the row is stored but touches nothing, so a
        # version stays the LSN of the newest change a document reflects.
        relevant = _relevant_change(table, old, new)
        if table in OWNED_TABLES:
            source = new or old or {}
            pid = int(source["id"] if table == "products" else source["product_id"])
            extra: dict[str, Any] = {"product_id": pid, "part": part}
            if table == "products":
                extra["ref"] = None if new is None else new.get("brand_id")
                extra["store_id"] = None if new is None else new.get("store_id")
                extra["live"] = new is not None and new.get("deleted_at") is None
                was_live = old is not None and old.get("deleted_at") is None
                if not extra["live"] and (was_live or stored is None):
                    extra["url_key"] = (lsn, ts)  # klsn of a product: when it went away
            elif table == "product_categories":
                extra["ref"] = int(source["category_id"])
            self.state.put(table, key, lsn, data, relevant=(lsn, ts) if relevant else None, **extra)
            if relevant:
                self._owned_effects(table, part, pid, old, new, lsn, ts)
        elif table in GLOBAL_TABLES:
            self.global_lsn = max(self.global_lsn, lsn)
            is_cat = table == "categories"
            path = is_cat and _relevant_change(table, old, new, PATH_COLUMNS)
            url_key = is_cat and _relevant_change(table, old, new, ("url_key",))
            self.state.put(
                table,
                key,
                lsn,
                data,
                relevant=(lsn, ts) if relevant else None,
                path=(lsn, ts) if path else None,
                url_key=(lsn, ts) if url_key else None,
            )
            if relevant:
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
            if changed(*PATH_COLUMNS):
                # Their paths come from this row: every descendant, and every product
                # in any of them.
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
            gone = self.state.truncate(table, None, lsn, ts)
            for row in gone:
                self._global_effects(table, int(row["id"]), row, None, lsn, ts)
        elif table in OWNED_TABLES:
            gone = self.state.truncate(table, part, lsn, ts)
            for row in gone:
                pid = int(row["id"] if table == "products" else row["product_id"])
                self._owned_effects(table, part, pid, row, None, lsn, ts)
                if table == "products":
                    for cid in self.state.category_links(pid):
                        _bump(self.counts, (cid, part), lsn, ts)

    # -- building -----------------------------------------------------------------------

    def finish(self, emit: bool = True, sink: Callable[[Emission], None] | None = None) -> Output:
        """Build every touched document once; return what to emit and publish.

        With ``emit=False`` (catching up after a rebuild) nothing is built: the state
        only takes the rows, and :meth:`touch_all` emits everything at the end.

        ``sink`` takes each document as soon as it is built, instead of
        ``Output.emissions`` holding the whole batch: a batch of a few thousand
        documents kept alive until the end made the garbage collector walk them again
        and again (the service encodes and produces each one at once).
        """
        out = Output()
        if not emit:
            return out
        self._sink = out.emissions.append if sink is None else sink
        paths: dict[int, tuple[str, ...] | None] = {}
        quiet, parts = self.quiet, self.partitions
        for (cid, part), (lsn, ts) in sorted(self.counts.items()):
            if part not in quiet:
                out.counts.append(KeyedCount(cid, part, self.state.local_count(cid, part), lsn, ts))
        for pid, (lsn, ts) in sorted(self.products.items()):
            if not quiet or partition_for(pid, parts) not in quiet:
                self._emit(out, "product", pid, lsn, ts, lambda i: self._product(i, paths))
        for cid, (lsn, ts) in sorted(self.categories.items()):
            if self.owns_category(cid) and (not quiet or partition_for(cid, parts) not in quiet):
                self._emit(out, "category", cid, lsn, ts, lambda i: self._category(i, paths))
        return out

    def touch_all(
        self, products: Iterable[int], counts: Iterable[tuple[int, int]], categories: bool
    ) -> None:
        """Touch ``products``, ``counts`` and (with ``categories``) every category."""
        for pid in products:
            _bump(self.products, pid, 0, 0)
        for key in counts:
            _bump(self.counts, key, 0, 0)
        if categories:
            for cid in self.state.globals["categories"]:
                _bump(self.categories, cid, 0, 0)

    def recheck_partitions(self, since: dict[int, int]) -> None:
        """Fan out, to the products of partitions that were not owned, the global
        changes made since (``since``: partition -> global LSN already fanned out).

        A brand renamed or a category moved while another instance (or nobody) owned a
        partition is then reflected in its products once this instance owns it.
        """
        lsns = self.state.global_lsns
        for part, seen in since.items():
            if part not in self.owned:
                continue
            brands = [b for b, (lsn, _) in lsns["brands"].items() if lsn > seen]
            stores = [i for i, (lsn, _) in lsns["stores"].items() if lsn > seen]
            affected: set[int] = set()
            for cid, (lsn, _) in self.state.category_plsns.items():
                if lsn > seen:
                    affected |= self._descendants(cid) | {cid}
            for cid, (lsn, _) in self.state.category_klsns.items():
                if lsn > seen:
                    affected.add(cid)
            pids = (
                self.state.products_where("ref", brands, [part])
                | self.state.products_where("store_id", stores, [part])
                | self.state.products_in_categories(affected, [part])
            )
            for pid in pids:
                _bump(self.products, pid, 0, 0)

    def recheck_categories(self) -> None:
        """Touch every category this instance owns (after an assignment changed).

        Each is rebuilt and emitted only if it differs from what this instance last
        emitted for it: a category taken over from another instance is brought up to
        date without waiting for its next change.
        """
        for cid in self.state.globals["categories"]:
            if self.owns_category(cid):
                _bump(self.categories, cid, 0, 0)

    def _emit(self, out: Output, kind: str, doc_id: int, lsn: int, ts: int, build: Any) -> None:
        known = self.state.doc(kind, doc_id)
        version, last_hash = known if known else (0, None)
        self._contrib = (0, 0)
        try:
            built: Built | None = build(doc_id)
        except _Deferred as exc:
            # Not buildable yet (a row from another topic has not arrived): the arriving
            # row touches the document again.
            out.deferred.append((kind, doc_id, str(exc)))
            return
        digest = TOMBSTONE if built is None else built.digest()
        newest, newest_ts = self._contrib
        if digest == last_hash and newest <= version:
            if not self.force:
                return  # nothing new
            doc = None if built is None else built.document(version, newest_ts)
            self._sink(Emission(kind, doc_id, doc, version, newest_ts, digest))
            return
        new_version = max(newest, version + 1)
        try:
            doc = None if built is None else built.document(new_version, newest_ts)
        except ValidationError as exc:
            out.dead_letters.append(DeadLetter(kind, doc_id, str(exc), self._rows_of(kind, doc_id)))
            self.state.set_doc(kind, doc_id, version, "!invalid")
            return
        if newest <= version:
            # A change reached us after a newer one of another topic was emitted.
            self.late.append((kind, doc_id))
        self._sink(Emission(kind, doc_id, doc, new_version, newest_ts, digest))
        self.state.set_doc(kind, doc_id, new_version, digest)

    def _rows_of(self, kind: str, doc_id: int) -> dict[str, Any]:
        if kind == "category":
            return {"categories": self.state.globals["categories"].get(doc_id)}
        rows: dict[str, Any] = {"products": self.state.product(doc_id)}
        for table in OWNED_TABLES[1:]:
            rows[table] = self.state.children(table, doc_id)
        return rows

    def _see(self, lsn: tuple[int, int]) -> None:
        """Note a row the document being built is made from."""
        if lsn > self._contrib:
            self._contrib = lsn

    def _see_category(self, cid: int, whole: bool = False) -> None:
        """Note a category (``whole``: every column, else its name, parent and url key)
        and the name and parent of its ancestors (its path is made of them)."""
        cats = self.state.globals["categories"]
        if whole:
            self._see(self.state.global_lsns["categories"].get(cid, (0, 0)))
        else:
            self._see(self.state.category_klsns.get(cid, (0, 0)))
        seen: set[int] = set()
        current: int | None = cid
        while current is not None and current not in seen and current in cats:
            seen.add(current)
            self._see(self.state.category_plsns.get(current, (0, 0)))
            parent = cats[current].get("parent_id")
            current = None if parent is None else int(parent)

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

    def _store(self, store_id: int, what: str) -> dict[str, Any]:
        store = self.state.globals["stores"].get(store_id)
        if store is None:
            raise _Deferred(f"{what}: store {store_id} not known yet")
        self._see(self.state.global_lsns["stores"].get(store_id, (0, 0)))
        return {"id": store_id, "code": store["code"]}

    def _product(self, pid: int, paths: dict[int, tuple[str, ...] | None]) -> Built | None:
        p = self.state.product(pid)
        if p is None or p.get("deleted_at") is not None:
            # A tombstone's version is the LSN at which the product went away (its
            # delete or soft delete): what its rows do afterwards does not matter.
            self._see(self.state.gone_lsn(pid))
            return None
        children, newest = self.state.product_rows(pid)
        self._see(newest)
        brand = None
        if p.get("brand_id") is not None:
            b = self.state.globals["brands"].get(int(p["brand_id"]))
            if b is None:
                raise _Deferred(f"product {pid}: brand {p['brand_id']} not known yet")
            brand = {"id": int(p["brand_id"]), "name": b["name"]}
            self._see(self.state.global_lsns["brands"].get(int(p["brand_id"]), (0, 0)))
        categories = []
        cats = self.state.globals["categories"]
        for link in sorted(
            children["product_categories"], key=lambda r: (r["position"], r["category_id"])
        ):
            cid = int(link["category_id"])
            cat = cats.get(cid)
            path = self._path(cid, paths)
            if cat is None or path is None:
                raise _Deferred(f"product {pid}: category {cid} (or an ancestor) not known yet")
            self._see_category(cid)
            categories.append(
                {
                    "id": cid,
                    "name": cat["name"],
                    "url_key": cat["url_key"],
                    "path": list(path),
                    "position": link["position"],
                }
            )
        variants = [
            {
                "sku": v["sku"],
                "price": v["price"],
                "quantity": v["quantity"],
                "attributes": v["attributes"],  # JSON text here, parsed by Built.document
            }
            for v in sorted(children["product_variants"], key=lambda r: r["id"])
        ]
        images = [
            {"file_name": i["file_name"], "url": i["url"], "position": i["position"]}
            for i in sorted(children["product_images"], key=lambda r: (r["position"], r["id"]))
        ]
        specs = [
            {
                "group": t["group_name"],
                "description": t["description"],
                "value": t["value"],
                "suffix": t["suffix"],
                "print_order": t["print_order"],
            }
            for t in sorted(children["technical_data"], key=lambda r: (r["print_order"], r["id"]))
        ]
        return Built(
            ProductDocument,
            {
                "id": pid,
                "store": self._store(int(p["store_id"]), f"product {pid}"),
                "reference": p["reference"],
                "name": p["name"],
                "description": p["description"],
                "url_key": p["url_key"],
                "price": p["price"],
                "list_price": p["list_price"],
                "active": p["active"],
                "brand": brand,
                "categories": categories,
                "variants": variants,
                "total_quantity": sum(int(v["quantity"]) for v in variants),
                "images": images,
                "technical_data": specs,
                "ean13": p["ean13"],
                "weight": p["weight"],
                "tags": list(normalize_tags(p["tags"])),
                "updated_at": p["updated_at"],
                "version": 0,
                "source_ts_ms": 0,
            },
        )

    def _category(self, cid: int, paths: dict[int, tuple[str, ...] | None]) -> Built | None:
        cat = self.state.globals["categories"].get(cid)
        if cat is None:
            self._see(self.state.relevant_lsn("categories", str(cid)))  # its grave
            return None
        self._see_category(cid, whole=True)
        self._see(self.state.count_lsn(cid))
        path = self._path(cid, paths)
        if path is None:
            raise _Deferred(f"category {cid}: an ancestor is not known yet")
        return Built(
            CategoryDocument,
            {
                "id": cid,
                "store": self._store(int(cat["store_id"]), f"category {cid}"),
                "parent_id": cat["parent_id"],
                "name": cat["name"],
                "url_key": cat["url_key"],
                "path": list(path),
                "position": cat["position"],
                "active": cat["active"],
                "product_count": self.state.product_count(cid),
                "updated_at": cat["updated_at"],
                "version": 0,
                "source_ts_ms": 0,
            },
        )


@dataclass(frozen=True)
class Built:
    """A document's content as plain JSON-able data (what the content hash is of)."""

    cls: type[ProductDocument] | type[CategoryDocument]
    data: dict[str, Any]

    def digest(self) -> str:
        return hashlib.sha1(canonical(self.data)).hexdigest()

    def document(self, version: int = 0, source_ts_ms: int = 0) -> Document:
        """The validated document with ``version`` and ``source_ts_ms`` (variant
        attributes parsed from their JSON text).  The content hash (:meth:`digest`)
        leaves both out: it is of what the document shows."""
        data = {**self.data, "version": version, "source_ts_ms": source_ts_ms}
        if self.cls is ProductDocument:
            data["variants"] = [
                {**v, "attributes": _json_loads(v["attributes"])} for v in data["variants"]
            ]
        return self.cls.model_validate(data)


class _Deferred(Exception):
    """A document cannot be built yet: a row it needs has not arrived."""
