"""The edge KV key layout (seeds/edge-kv-sync.txt), and what to rewrite when data changes.

Pure logic, no I/O: :class:`Catalog` holds what the sink knows (product and category
documents, ``stores`` and ``cms_pages`` rows); :meth:`Catalog.keys` gives the keys of one
*scope*; :func:`plan` compares the keys of the scopes a change touched with the
:class:`KeyIndex` of what was written, giving the writes and deletes (:class:`Plan`);
:func:`full_layout` is the from-scratch layout of a catalog (what the store must equal).

Keys (``{store}`` = the store's ``code``), values are compact JSON:

=============================================  ==============================================
key                                            value
=============================================  ==============================================
``{store}:config``                             ``{"id","code","name","currency","locale"}``
``{store}:categories``                         the visible category tree (below)
``{store}:product:{urlKey}``                   the product document (:func:`product_value`)
``{store}:products:category:{id}:page:{n}``    ``{"category_id","page","page_size","products"}``
``{store}:cms:{identifier}``                   ``{"id","identifier","title","content",
                                               "updated_at"}``
``pulse``                                      see :func:`next_pulse`
=============================================  ==============================================

Rules (where the seed is silent):

* a product is *listed* (has a product key and appears on listing pages) when it is
  active and not deleted (deleted products have no document);
* a category is *visible* when it is active and so are all its ancestors; only visible
  categories are in the tree and have listing pages;
* a listing holds the listed products linked directly to the category, ordered by the
  product's position in that category (``product_categories.position``), then product
  id; pages are numbered from 1, ``page_size`` products each; an empty category has no
  page; the tree's ``product_count`` is the number of products in the listing (so
  ``ceil(product_count / page_size)`` is the number of pages);
* the tree is a JSON array of root nodes ``{"id","name","url_key","position",
  "product_count","children"}``, siblings by ``position`` then id; a store without a
  visible category has no ``{store}:categories`` key;
* CMS pages: only active ones, for a store whose ``stores`` row is known.

Scopes (``product:{id}``, ``listing:{category id}``, ``tree:{store code}``,
``config:{store id}``, ``cms:{store id}``) are the units of recomputation: a change
marks the scopes it may affect, and only their keys are compared with the index.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol

from pipeline.codec.jsontext import json_dumps as _json_dumps
from pipeline.codec.jsontext import json_loads as _json_loads
from pipeline.documents.model import CategoryDocument, ProductDocument, to_json

__all__ = [
    "KEY_MAX_BYTES",
    "PULSE",
    "VALUE_MAX_BYTES",
    "Catalog",
    "CmsRow",
    "KeyIndex",
    "MemoryIndex",
    "Plan",
    "ProductFacts",
    "StoreRow",
    "digest",
    "full_layout",
    "next_pulse",
    "plan",
    "product_value",
]

PULSE: Final = "pulse"
KEY_MAX_BYTES: Final = 512
VALUE_MAX_BYTES: Final = 25 * 1024 * 1024
DEFAULT_PAGE_SIZE: Final = 100

Kind = Literal["product", "category", "store", "cms"]


@dataclass(frozen=True)
class StoreRow:
    """A ``stores`` row (the ``{store}:config`` value)."""

    id: int
    code: str
    name: str
    currency: str
    locale: str

    def value(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "code": self.code,
            "name": self.name,
            "currency": self.currency,
            "locale": self.locale,
        }


@dataclass(frozen=True)
class CmsRow:
    """A ``cms_pages`` row."""

    id: int
    store_id: int
    identifier: str
    title: str
    content: str
    active: bool
    updated_at: str
    """ISO 8601 (UTC)."""

    def value(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "identifier": self.identifier,
            "title": self.title,
            "content": self.content,
            "updated_at": self.updated_at,
        }


def dumps(value: Any) -> str:
    """Compact JSON, decimals exact, non-ASCII kept."""
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    except TypeError:
        return _json_dumps(value)


def digest(value: str) -> str:
    """Content hash of a value (what the index keeps)."""
    return hashlib.sha256(value.encode()).hexdigest()[:32]


def product_value(doc: ProductDocument) -> str:
    """The ``{store}:product:{urlKey}`` value: the document's JSON without ``version`` and
    ``source_ts_ms`` (they come from the WAL, not from the data: a redelivery or a rebuild
    gives the same value)."""
    data = _json_loads(to_json(doc))
    data.pop("version", None)
    data.pop("source_ts_ms", None)
    return _json_dumps(data)


def summary(doc: ProductDocument) -> dict[str, Any]:
    """A product as a listing page shows it."""
    return {
        "id": doc.id,
        "url_key": doc.url_key,
        "name": doc.name,
        "price": str(doc.price),
        "list_price": None if doc.list_price is None else str(doc.list_price),
        "brand": None if doc.brand is None else doc.brand.name,
        "image": doc.images[0].url if doc.images else None,
        "in_stock": doc.total_quantity > 0,
    }


@dataclass(frozen=True, slots=True)
class ProductFacts:
    """What the layout keeps of a product between batches: its key, and what its
    listings and the tree's counts show.  The whole document (for the product key's
    value) is read only when that key is recomputed (:attr:`Catalog.load_document`).
    """

    store_code: str
    url_key: str
    active: bool
    categories: tuple[tuple[int, int], ...]
    """``(category id, position)`` of every category the product is linked to."""
    summary: dict[str, Any]
    """The product as a listing page shows it (:func:`summary`)."""

    @classmethod
    def of(cls, doc: ProductDocument) -> ProductFacts:
        return cls(
            store_code=doc.store.code,
            url_key=doc.url_key,
            active=doc.active,
            categories=tuple((c.id, c.position) for c in doc.categories),
            summary=summary(doc),
        )

    def to_json(self) -> str:
        return dumps([self.store_code, self.url_key, self.active, self.categories, self.summary])

    @classmethod
    def from_json(cls, text: str) -> ProductFacts:
        code, url_key, active, cats, summary_ = json.loads(text)
        return cls(code, url_key, active, tuple((c, p) for c, p in cats), summary_)


def _listing_facts(facts: ProductFacts | None) -> Any:
    """What of a product its listings and tree counts depend on."""
    if facts is None or not facts.active:
        return None
    return (facts.summary, facts.store_code, facts.categories)


def _tree_facts(doc: CategoryDocument | None) -> Any:
    if doc is None:
        return None
    return (doc.store.code, doc.parent_id, doc.name, doc.url_key, doc.position, doc.active)


class Catalog:
    """What the sink knows, with the indexes the layout needs.

    Of a product it keeps the :class:`ProductFacts` (a few hundred bytes); its whole
    document only from :meth:`put` until :meth:`release_documents`, and reads it back
    with ``load_document`` when the product key is recomputed later.  Without a loader
    every document stays in memory (a catalog built to compare with, in ``verify``).
    """

    def __init__(
        self,
        page_size: int = DEFAULT_PAGE_SIZE,
        load_document: Callable[[int], ProductDocument | None] | None = None,
    ) -> None:
        self.page_size = page_size
        self.load_document = load_document
        self.products: dict[int, ProductFacts] = {}
        self._documents: dict[int, ProductDocument] = {}
        self.categories: dict[int, CategoryDocument] = {}
        self.stores: dict[int, StoreRow] = {}
        self.cms: dict[int, CmsRow] = {}
        self._linked: dict[int, set[int]] = {}  # category id -> product ids linking it
        self._store_categories: dict[str, set[int]] = {}  # store code -> category ids
        self._children: dict[int | None, set[int]] = {}  # parent id -> category ids
        self._store_cms: dict[int, set[int]] = {}  # store id -> cms page ids

    # -- changes ----------------------------------------------------------------------

    def get(self, kind: Kind, ident: int) -> Any:
        if kind == "product":
            return self.document(ident)
        if kind == "category":
            return self.categories.get(ident)
        if kind == "store":
            return self.stores.get(ident)
        return self.cms.get(ident)

    def put(self, kind: Kind, ident: int, value: Any) -> set[str]:
        """Set (``None``: delete) one entity; the scopes whose keys may have changed."""
        if kind == "product":
            return self.put_product(ident, value)
        if kind == "category":
            return self.put_category(ident, value)
        if kind == "store":
            return self.put_store(ident, value)
        return self.put_cms(ident, value)

    def document(self, pid: int) -> ProductDocument | None:
        """The whole document of a known product (``None`` if there is none)."""
        if pid not in self.products:
            return None
        doc = self._documents.get(pid)
        if doc is None and self.load_document is not None:
            doc = self.load_document(pid)
        if doc is None:
            raise LookupError(f"product {pid}: its document is neither in memory nor stored")
        return doc

    def documents(self) -> dict[int, ProductDocument]:
        """Every product's document (all of them read: for a catalog built to compare)."""
        out: dict[int, ProductDocument] = {}
        for pid in self.products:
            doc = self.document(pid)
            assert doc is not None
            out[pid] = doc
        return out

    @property
    def documents_held(self) -> int:
        """How many whole product documents are in memory now."""
        return len(self._documents)

    def release_documents(self) -> None:
        """Forget the whole documents put so far (they are stored: ``load_document``)."""
        if self.load_document is not None:
            self._documents.clear()

    def saved_product(self, pid: int) -> tuple[ProductFacts | None, ProductDocument | None]:
        """What :meth:`restore_product` needs to undo a :meth:`put_product` of ``pid``."""
        return self.products.get(pid), self._documents.get(pid)

    def restore_product(
        self, pid: int, saved: tuple[ProductFacts | None, ProductDocument | None]
    ) -> None:
        """Undo the puts since :meth:`saved_product` (the stored document is the old one:
        nothing was saved in between)."""
        facts, doc = saved
        self._set_facts(pid, facts)
        if doc is None:
            self._documents.pop(pid, None)
        else:
            self._documents[pid] = doc

    def _set_facts(self, pid: int, facts: ProductFacts | None) -> ProductFacts | None:
        old = self.products.pop(pid, None)
        if old is not None:
            for cid, _ in old.categories:
                self._linked.get(cid, set()).discard(pid)
        if facts is not None:
            self.products[pid] = facts
            for cid, _ in facts.categories:
                self._linked.setdefault(cid, set()).add(pid)
        return old

    def put_product(self, pid: int, doc: ProductDocument | ProductFacts | None) -> set[str]:
        """Set (``None``: delete) a product, from its document or (loading a saved
        state) its facts; the scopes whose keys may have changed."""
        facts = doc if doc is None or isinstance(doc, ProductFacts) else ProductFacts.of(doc)
        old = self._set_facts(pid, facts)
        if isinstance(doc, ProductDocument):
            self._documents[pid] = doc
        else:
            self._documents.pop(pid, None)
        scopes = {f"product:{pid}"}
        if _listing_facts(old) != _listing_facts(facts):
            for f in (old, facts):
                if f is not None:
                    scopes.update(f"listing:{cid}" for cid, _ in f.categories)
                    scopes.add(f"tree:{f.store_code}")
        return scopes

    def put_category(self, cid: int, doc: CategoryDocument | None) -> set[str]:
        old = self.categories.pop(cid, None)
        if old is not None:
            self._store_categories.get(old.store.code, set()).discard(cid)
            self._children.get(old.parent_id, set()).discard(cid)
        if doc is not None:
            self.categories[cid] = doc
            self._store_categories.setdefault(doc.store.code, set()).add(cid)
            self._children.setdefault(doc.parent_id, set()).add(cid)
        if _tree_facts(old) == _tree_facts(doc):
            return set()
        scopes: set[str] = {f"listing:{cid}"}
        for d in (old, doc):
            if d is not None:
                scopes.add(f"tree:{d.store.code}")
                # visibility (and the store code) may change below it: every listing
                # of the store is recomputed (only changed pages are written)
                scopes.update(f"listing:{c}" for c in self._store_categories.get(d.store.code, ()))
        return scopes

    def put_store(self, sid: int, row: StoreRow | None) -> set[str]:
        if row is None:
            self.stores.pop(sid, None)
        else:
            self.stores[sid] = row
        return {f"config:{sid}", f"cms:{sid}"}

    def put_cms(self, page_id: int, row: CmsRow | None) -> set[str]:
        old = self.cms.pop(page_id, None)
        scopes: set[str] = set()
        if old is not None:
            self._store_cms.get(old.store_id, set()).discard(page_id)
            scopes.add(f"cms:{old.store_id}")
        if row is not None:
            self.cms[page_id] = row
            self._store_cms.setdefault(row.store_id, set()).add(page_id)
            scopes.add(f"cms:{row.store_id}")
        return scopes

    # -- layout -----------------------------------------------------------------------

    def all_scopes(self) -> set[str]:
        scopes = {f"product:{p}" for p in self.products}
        scopes |= {f"listing:{c}" for c in self.categories}
        scopes |= {f"tree:{d.store.code}" for d in self.categories.values()}
        scopes |= {f"config:{s}" for s in self.stores}
        scopes |= {f"cms:{s}" for s in self.stores}
        return scopes

    def keys(self, scope: str) -> dict[str, str]:
        """The keys (and values) of one scope in the current state."""
        kind, _, arg = scope.partition(":")
        if kind == "product":
            facts = self.products.get(int(arg))
            if facts is None or not facts.active:
                return {}
            doc = self.document(int(arg))
            assert doc is not None
            return {f"{facts.store_code}:product:{facts.url_key}": product_value(doc)}
        if kind == "listing":
            return self._listing(int(arg))
        if kind == "tree":
            return self._tree(arg)
        if kind == "config":
            store = self.stores.get(int(arg))
            return {} if store is None else {f"{store.code}:config": dumps(store.value())}
        if kind == "cms":
            store = self.stores.get(int(arg))
            if store is None:
                return {}
            pages = (self.cms[i] for i in self._store_cms.get(store.id, ()))
            return {f"{store.code}:cms:{p.identifier}": dumps(p.value()) for p in pages if p.active}
        raise ValueError(f"unknown scope {scope!r}")

    def visible(self, cid: int) -> bool:
        seen: set[int] = set()
        current: int | None = cid
        while current is not None:
            doc = self.categories.get(current)
            if doc is None or not doc.active or current in seen:
                return False
            seen.add(current)
            current = doc.parent_id
        return True

    def listed(self, cid: int) -> list[ProductFacts]:
        """The listing of a category, in page order."""
        entries: list[tuple[int, int, ProductFacts]] = []
        for pid in self._linked.get(cid, ()):
            facts = self.products[pid]
            if not facts.active:
                continue
            position = next(p for c, p in facts.categories if c == cid)
            entries.append((position, pid, facts))
        entries.sort(key=lambda e: (e[0], e[1]))
        return [e[2] for e in entries]

    def _listing(self, cid: int) -> dict[str, str]:
        cat = self.categories.get(cid)
        if cat is None or not self.visible(cid):
            return {}
        products = self.listed(cid)
        size = self.page_size
        out: dict[str, str] = {}
        for start in range(0, len(products), size):
            n = start // size + 1
            page = {
                "category_id": cid,
                "page": n,
                "page_size": size,
                "products": [p.summary for p in products[start : start + size]],
            }
            out[f"{cat.store.code}:products:category:{cid}:page:{n}"] = dumps(page)
        return out

    def _tree(self, code: str) -> dict[str, str]:
        ids = self._store_categories.get(code, set())

        def node(cid: int) -> dict[str, Any]:
            c = self.categories[cid]
            return {
                "id": c.id,
                "name": c.name,
                "url_key": c.url_key,
                "position": c.position,
                "product_count": len(self.listed(cid)),
                "children": level(cid),
            }

        def level(parent: int | None) -> list[dict[str, Any]]:
            kids = [
                self.categories[i]
                for i in self._children.get(parent, ())
                if i in ids and self.categories[i].active
            ]
            kids.sort(key=lambda c: (c.position, c.id))
            return [node(c.id) for c in kids]

        roots = level(None)
        return {f"{code}:categories": dumps(roots)} if roots else {}


def full_layout(catalog: Catalog) -> dict[str, str]:
    """Every key of ``catalog`` (without ``pulse``), computed from scratch."""
    out: dict[str, str] = {}
    for scope in sorted(catalog.all_scopes()):
        out.update(catalog.keys(scope))
    return out


# --------------------------------------------------------------------------- the index


class KeyIndex(Protocol):
    """What the sink wrote: key -> (scope, content hash)."""

    def get(self, key: str) -> tuple[str, str] | None: ...
    def keys_of(self, scope: str) -> Collection[str]: ...


@dataclass
class MemoryIndex:
    """A :class:`KeyIndex` in memory (the sink loads and persists it, see state.py)."""

    entries: dict[str, tuple[str, str]] = field(default_factory=dict)
    by_scope: dict[str, set[str]] = field(default_factory=dict)

    def get(self, key: str) -> tuple[str, str] | None:
        return self.entries.get(key)

    def keys_of(self, scope: str) -> Collection[str]:
        return self.by_scope.get(scope, set())

    def set(self, key: str, scope: str, hash_: str) -> None:
        old = self.entries.get(key)
        if old is not None:
            self.by_scope.get(old[0], set()).discard(key)
        self.entries[key] = (scope, hash_)
        self.by_scope.setdefault(scope, set()).add(key)

    def remove(self, key: str) -> None:
        old = self.entries.pop(key, None)
        if old is not None:
            self.by_scope.get(old[0], set()).discard(key)

    def apply(self, p: Plan) -> None:
        for key in p.deletes:
            self.remove(key)
        for key, (scope, hash_) in p.owners.items():
            self.set(key, scope, hash_)


@dataclass
class Plan:
    """What to do to the store: ``writes`` (key -> value), ``deletes``; ``owners`` is the
    index update (key -> (scope, hash)) for every key the dirty scopes now hold."""

    writes: dict[str, str] = field(default_factory=dict)
    deletes: set[str] = field(default_factory=set)
    owners: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def changes_content(self) -> bool:
        return bool(self.writes or self.deletes)


def plan(catalog: Catalog, scopes: Iterable[str], index: KeyIndex) -> Plan:
    """The writes and deletes that bring the keys of ``scopes`` to the catalog's state.

    A key whose value did not change is not written; a key a dirty scope no longer
    holds is deleted, unless another scope now holds it (a url key taken over).
    """
    out = Plan()
    wanted: dict[str, tuple[str, str]] = {}  # key -> (scope, value)
    dirty = sorted(set(scopes))
    for scope in dirty:
        for key, value in catalog.keys(scope).items():
            wanted[key] = (scope, value)
    for key, (scope, value) in wanted.items():
        h = digest(value)
        known = index.get(key)
        if known is None or known[1] != h:
            out.writes[key] = value
        if known != (scope, h):
            out.owners[key] = (scope, h)
    for scope in dirty:
        for key in index.keys_of(scope):
            if key not in wanted:
                out.deletes.add(key)
    return out


def next_pulse(previous: str, p: Plan) -> str:
    """The ``pulse`` after a batch that changed content: a hash of the previous pulse and
    of every change (key and new content hash, or deletion), 16 hex digits.  Chained, so
    it is new after every change, even one that restores an earlier state."""
    h = hashlib.sha256(previous.encode())
    for key in sorted(p.writes):
        h.update(f"\nw {key} {digest(p.writes[key])}".encode())
    for key in sorted(p.deletes):
        h.update(f"\nd {key}".encode())
    return h.hexdigest()[:16]
