"""``catalog-cdc consume edge-kv``: the storefront key layout in a KV store, with ``pulse``.

Reads the product and category documents and the raw ``stores`` and ``cms_pages``
change topics, keeps the layout of :mod:`consumers.edge_kv.layout` in a backend
(:mod:`consumers.edge_kv.backends`: embedded SQLite by default, Redis, or the Workers KV
REST API) and rewrites only what changed: a price change rewrites the product key and
the listing pages that show the product; a new url key deletes the old product key; a
deleted or deactivated product leaves every key and page that showed it (the pages
after it shift, trailing empty pages are deleted).  After every batch that changed
anything, ``pulse`` gets a new value (and only then).

Options (``--option k=v``): ``backend`` (``sqlite`` | ``redis`` | ``rest``), ``path``
(SQLite file, default ``edge-kv.sqlite``), ``redis_url`` (default the stack's /
``CATALOG_CDC_REDIS_URL``), ``key_prefix`` (Redis), ``api_url``, ``account``,
``namespace``, ``token`` (REST; or ``CATALOG_CDC_KV_*``), ``state`` (the sink's state
file, default ``{path}.state`` for SQLite, ``edge-kv-{backend}.state`` otherwise),
``page_size`` (listing page size, 1..1000, default 100).

Guarantee: at-least-once and idempotent.  A batch is applied to the sink's state (in
memory), the resulting writes and deletes are sent to the backend, and only when the
backend confirmed them is the state saved and the flush returned (then the runtime
commits the offsets).  A transient failure undoes the in-memory changes and raises
:class:`~consumers.contract.TransientSinkError`: the retry recomputes the same changes.
A redelivered batch finds every version already applied and writes nothing (``pulse``
stays).  A record the layout cannot hold (a key over 512 bytes, a value over 25 MiB, a
``stores`` / ``cms_pages`` row with a missing field) is dead-lettered with a reason
naming the record and the field; it changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from consumers.capabilities import ReplayPlan, ReplayRequest, UpsertPlan
from consumers.contract import RawRecord, Record, Rejected, Sink, TransientSinkError
from consumers.edge_kv.backends import DEFAULT_PATH, KvBackend, make_backend
from consumers.edge_kv.layout import (
    KEY_MAX_BYTES,
    PULSE,
    VALUE_MAX_BYTES,
    Catalog,
    CmsRow,
    Kind,
    MemoryIndex,
    Plan,
    StoreRow,
    next_pulse,
    plan,
    product_value,
)
from consumers.edge_kv.state import Entity, SinkState, entity
from consumers.registry import SinkContext
from pipeline.documents.model import ProductDocument
from pipeline.errors import ConfigurationError
from pipeline.events import UNCHANGED_TOAST, ChangeEvent

if TYPE_CHECKING:
    from pipeline.verify.base import Verifier

log = logging.getLogger(__name__)

__all__ = ["EdgeKvSink", "RowError", "cms_row", "store_row"]

_RAW_KINDS: dict[str, Kind] = {"stores": "store", "cms_pages": "cms"}
_STORE_CODE_MAX = 32  # stores.code is varchar(32)


class RowError(ValueError):
    """A raw row the layout cannot hold (the message names the row and the field)."""


def _merged(event: ChangeEvent, old: Any) -> dict[str, Any]:
    """The row after the change; an unchanged TOASTed column keeps the value known."""
    after = dict(event.after or {})
    for name, value in list(after.items()):
        if value is UNCHANGED_TOAST:
            if old is None or not hasattr(old, name):
                raise RowError(f"field {name!r} arrived as unchanged TOAST and is not known yet")
            after[name] = getattr(old, name)
    return after


def _field(row: dict[str, Any], name: str, kind: type, what: str) -> Any:
    if name not in row or row[name] is None:
        raise RowError(f"{what}: field {name!r} is missing")
    value = row[name]
    if kind is str and not isinstance(value, str):
        raise RowError(f"{what}: field {name!r} is not text ({value!r:.60})")
    if kind is int and (not isinstance(value, int) or isinstance(value, bool)):
        raise RowError(f"{what}: field {name!r} is not an integer ({value!r:.60})")
    if kind is bool and not isinstance(value, bool):
        raise RowError(f"{what}: field {name!r} is not a boolean ({value!r:.60})")
    return value


def store_row(event: ChangeEvent, old: StoreRow | None) -> StoreRow:
    row = _merged(event, old)
    what = f"stores row id={row.get('id')}"
    return StoreRow(
        id=_field(row, "id", int, what),
        code=_field(row, "code", str, what),
        name=_field(row, "name", str, what),
        currency=_field(row, "currency", str, what).strip(),
        locale=_field(row, "locale", str, what),
    )


def cms_row(event: ChangeEvent, old: CmsRow | None) -> CmsRow:
    row = _merged(event, old)
    what = f"cms_pages row id={row.get('id')}"
    updated = row.get("updated_at")
    if isinstance(updated, datetime):
        updated = updated.astimezone(UTC).isoformat()
    if not isinstance(updated, str):
        raise RowError(f"{what}: field 'updated_at' is missing")
    page = CmsRow(
        id=_field(row, "id", int, what),
        store_id=_field(row, "store_id", int, what),
        identifier=_field(row, "identifier", str, what),
        title=_field(row, "title", str, what),
        content=_field(row, "content", str, what),
        active=_field(row, "active", bool, what),
        updated_at=updated,
    )
    if len(f":cms:{page.identifier}".encode()) + _STORE_CODE_MAX > KEY_MAX_BYTES:
        raise RowError(f"{what}: field 'identifier' makes the key longer than 512 bytes")
    if len(page.content.encode()) > VALUE_MAX_BYTES - 4096:
        raise RowError(f"{what}: field 'content' is over the 25 MiB value limit")
    return page


class EdgeKvSink:
    """The edge KV consumer (see the module docstring)."""

    name = "edge-kv"
    kinds = ("product", "category")
    raw_tables = ("stores", "cms_pages")

    def __init__(self, backend: KvBackend, state_path: Path, page_size: int = 100) -> None:
        if not 1 <= page_size <= 1000:
            raise ConfigurationError(f"page_size {page_size}: between 1 and 1000")
        self.backend = backend
        self.state_path = state_path
        self.page_size = page_size
        self.catalog = Catalog(page_size)
        self.index = MemoryIndex()
        self.versions: dict[tuple[str, int], int] = {}
        self.pulse = ""
        self._state: SinkState | None = None
        self._pending: list[Record] = []
        self._pending_raw: list[RawRecord] = []
        self.stats = {"batches": 0, "written": 0, "deleted": 0, "pulses": 0, "noop": 0}

    @classmethod
    def from_context(cls, context: SinkContext) -> EdgeKvSink:
        options = {k.replace("-", "_"): v for k, v in context.options.items()}
        backend = make_backend(options, context.connections)
        kind = options.get("backend") or "sqlite"
        default_state = (
            Path(str(options.get("path") or DEFAULT_PATH) + ".state")
            if kind == "sqlite"
            else Path(f"edge-kv-{kind}.state")
        )
        try:
            page_size = int(options.get("page_size") or 100)
        except ValueError as exc:
            raise ConfigurationError(f"--option page_size: {exc}") from exc
        state = Path(options.get("state") or default_state)
        if context.replay and context.replay_state is not None and not options.get("state"):
            # A write index of its own: every key is written again (and pulse moves at
            # the end), whatever the live consumer's index says.  Removed by the plan.
            state = context.replay_state.with_suffix(".kv-index")
        return cls(backend, state, page_size)

    # -- capabilities (consumers.capabilities) ------------------------------------------

    def replay_plan(self, request: ReplayRequest) -> ReplayPlan:
        """Every key written again through a write index of the replay's own; that
        index is deleted once the replay is done (an interrupted one keeps it)."""
        return _ReplayIndexCleanup(self.state_path, request.state_path)

    def verifier(self, context: SinkContext, dsn: str) -> Verifier:
        from consumers.edge_kv.verify import EdgeKvVerifier

        return EdgeKvVerifier(context, dsn)

    # -- lifecycle ----------------------------------------------------------------------

    def open(self) -> None:
        if self._state is None:
            state = SinkState(self.state_path)
            # Only the facts of a product stay in memory; its document is read back from
            # the state when its key is recomputed.
            self.catalog.load_document = state.document
            self.versions, self.pulse = state.load(self.catalog, self.index)
            self._state = state
            log.info(
                "event=edge_kv_state_loaded path=%s products=%d categories=%d keys=%d pulse=%s",
                self.state_path,
                len(self.catalog.products),
                len(self.catalog.categories),
                len(self.index.entries),
                self.pulse or "-",
            )
        self.backend.open()

    def close(self) -> None:
        self.backend.close()
        if self._state is not None:
            self._state.close()
            self._state = None

    def add(self, records: Sequence[Record]) -> None:
        self._pending.extend(records)

    def add_raw(self, records: Sequence[RawRecord]) -> None:
        self._pending_raw.extend(records)

    # -- flush --------------------------------------------------------------------------

    def flush(self) -> list[Rejected]:
        assert self._state is not None, "open() first"
        rejected: list[Rejected] = []
        catalog = self.catalog
        undo: list[tuple[Kind, int, Any]] = []
        changed: dict[tuple[str, int], Entity] = {}
        scopes: set[str] = set()

        def put(kind: Kind, ident: int, version: int, value: Any) -> None:
            if kind == "product":
                undo.append((kind, ident, catalog.saved_product(ident)))
            else:
                undo.append((kind, ident, catalog.get(kind, ident)))
            scopes.update(catalog.put(kind, ident, value))
            facts = catalog.products.get(ident) if kind == "product" else None
            changed[(kind, ident)] = entity(kind, ident, version, value, facts)

        def known_version(kind: str, ident: int) -> int:
            entry = changed.get((kind, ident))
            return entry[2] if entry is not None else self.versions.get((kind, ident), -1)

        for r in self._pending:
            kind: Kind = "product" if r.kind == "product" else "category"
            if r.version <= known_version(kind, r.id):
                continue  # a redelivery, or older than what is applied
            if isinstance(r.doc, ProductDocument):
                reason = _product_problem(r.doc)
                if reason:
                    rejected.append(Rejected(r, reason))
                    continue
            put(kind, r.id, r.version, r.doc)
        for raw in self._pending_raw:
            kind = _RAW_KINDS[raw.kind]
            event = raw.event
            lsn = event.source.lsn
            if event.op == "t":  # truncate: every row of the table goes
                table = self.catalog.stores if kind == "store" else self.catalog.cms
                for ident in list(table):
                    put(kind, ident, max(lsn, known_version(kind, ident)), None)
                continue
            try:
                ident = int(raw.id)
            except ValueError:
                rejected.append(
                    Rejected(raw, f"{raw.kind} row: primary key {raw.id!r} is not an id")
                )
                continue
            if lsn < known_version(kind, ident):
                continue
            try:
                value: Any = None
                if event.op != "d":
                    old = self.catalog.get(kind, ident)
                    value = store_row(event, old) if kind == "store" else cms_row(event, old)
            except RowError as exc:
                rejected.append(Rejected(raw, str(exc)))
                continue
            put(kind, ident, lsn, value)

        p = plan(self.catalog, scopes, self.index)
        pulse = self.pulse
        writes = dict(p.writes)
        if p.changes_content:
            pulse = next_pulse(self.pulse, p)
            writes[PULSE] = pulse
        try:
            if writes or p.deletes:
                self.backend.apply(writes, p.deletes)
        except BaseException as exc:
            for kind, ident, old in reversed(undo):
                if kind == "product":
                    catalog.restore_product(ident, old)
                else:
                    catalog.put(kind, ident, old)
            if isinstance(exc, TransientSinkError) and rejected:
                # The refused travel in the error (dead-lettered before the retry); the
                # retry recomputes the rest from what stays pending.
                exc.rejected += rejected
                gone = {id(rej.record) for rej in rejected}
                self._pending = [r for r in self._pending if id(r) not in gone]
                self._pending_raw = [r for r in self._pending_raw if id(r) not in gone]
            raise
        self._state.save(changed.values(), p, pulse)
        self._confirmed(p, changed, pulse)
        return rejected

    def _confirmed(self, p: Plan, changed: dict[tuple[str, int], Entity], pulse: str) -> None:
        self.index.apply(p)
        self.catalog.release_documents()  # saved: read back from the state when needed
        for key, (_kind, _ident, version, _body, _facts) in changed.items():
            self.versions[key] = version
        self.stats["batches"] += 1
        if p.changes_content:
            self.stats["written"] += len(p.writes)
            self.stats["deleted"] += len(p.deletes)
            self.stats["pulses"] += 1
            log.info(
                "event=edge_kv_batch backend=%s records=%d written=%d deleted=%d pulse=%s",
                self.backend.name,
                len(self._pending) + len(self._pending_raw),
                len(p.writes),
                len(p.deletes),
                pulse,
            )
        else:
            self.stats["noop"] += 1
        self.pulse = pulse
        self._pending.clear()
        self._pending_raw.clear()


def _product_problem(doc: ProductDocument) -> str | None:
    """Why a product cannot be in the layout (key or value too long), or None."""
    key = f"{doc.store.code}:product:{doc.url_key}"
    size = len(key.encode())
    if size > KEY_MAX_BYTES:
        return (
            f"product {doc.id}: field url_key makes the key {size} bytes long "
            f"(limit {KEY_MAX_BYTES})"
        )
    value = len(product_value(doc).encode())
    if value > VALUE_MAX_BYTES:
        return f"product {doc.id}: the document is {value} bytes, over the 25 MiB value limit"
    return None


class _ReplayIndexCleanup(UpsertPlan):
    def __init__(self, index: Path, replay_state: Path) -> None:
        self.index = index
        self.owned = index == replay_state.with_suffix(".kv-index")

    def finish(self, sink: Sink, saved: dict[str, Any]) -> dict[str, Any]:
        if self.owned:  # still open in the sink: unlinked, it goes once closed
            for path in (self.index, *self.index.parent.glob(self.index.name + "-*")):
                path.unlink(missing_ok=True)
        return saved
