"""``catalog-cdc verify edge-kv``: the KV store's keys against the layout the database calls for.

*Expected*: the layout (:func:`~consumers.edge_kv.layout.full_layout`) of a
:class:`~consumers.edge_kv.layout.Catalog` filled from the database: the documents of
:func:`~pipeline.documents.reference.expected_documents` and the ``stores`` and
``cms_pages`` rows, with the consumer's ``page_size``.  *Actual*: every key of the
consumer's backend (the same ``--option``s as ``catalog-cdc consume edge-kv``) but
``pulse`` (a change counter, not data).  Values are compared as JSON, field by field.
Classes: ``config``, ``category tree``, ``product``, ``listing page``, ``cms page``
(``other`` for a key outside the layout).

Repair, in two steps, both through the consumer's own sink and state:

1. *documents*: a product or category document the sink's state holds differently from
   the database (or lacks, or holds but the database has not) is re-emitted through
   :class:`~consumers.edge_kv.sink.EdgeKvSink` (``add`` + ``flush``: it rewrites the keys
   and pages the change touches, and ``pulse``), with version ``max(db, state + 1)``;
2. *keys*: the sink only writes what differs from its index of what it wrote, so a key
   changed behind its back (deleted, altered, added by hand) is invisible to
   re-emission.  What still differs after step 1 is written (the layout's value) or
   deleted through the sink's backend, with a new ``pulse``, and the sink's state file
   (its key index and pulse) is updated to match.

Run it with the edge-kv consumer stopped when step 1 has work (two writers on one state
file); step 2 alone is safe beside a running consumer whose state is in sync.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC
from typing import Any

import psycopg

from consumers.contract import TransientSinkError
from consumers.edge_kv.layout import (
    PULSE,
    Catalog,
    CmsRow,
    Plan,
    StoreRow,
    digest,
    full_layout,
    next_pulse,
)
from consumers.edge_kv.sink import EdgeKvSink
from consumers.edge_kv.state import SinkState
from consumers.registry import SinkContext, load
from pipeline.documents.model import CategoryDocument, ProductDocument
from pipeline.documents.reference import comparable, expected_documents
from pipeline.documents.wire import DocumentMessage
from pipeline.verify.base import (
    RepairOutcome,
    VerifyError,
    now_ms,
    repair_version,
    with_retries,
)
from pipeline.verify.report import EXTRA, Report, Snapshot, compare

log = logging.getLogger(__name__)

__all__ = ["CLASSES", "EdgeKvVerifier", "database_catalog", "key_class"]

CLASSES = ("config", "category tree", "product", "listing page", "cms page")

_KINDS = {
    "config": "config",
    "categories": "category tree",
    "product": "product",
    "products": "listing page",
    "cms": "cms page",
}


def key_class(key: str) -> str:
    """The class of a layout key (``{store}:{kind}...``), ``other`` for anything else."""
    parts = key.split(":", 2)
    return _KINDS.get(parts[1], "other") if len(parts) > 1 else "other"


def database_catalog(conn: psycopg.Connection[Any], page_size: int) -> Catalog:
    """A :class:`Catalog` of what the database holds: documents, stores, CMS pages."""
    products, categories = expected_documents(conn)
    stores = conn.execute("SELECT id, code, name, currency, locale FROM stores").fetchall()
    pages = conn.execute(
        "SELECT id, store_id, identifier, title, content, active, updated_at FROM cms_pages"
    ).fetchall()
    catalog = Catalog(page_size)
    for c in categories.values():
        catalog.put("category", c.id, c)
    for p in products.values():
        catalog.put("product", p.id, p)
    for sid, code, name, currency, locale in stores:
        catalog.put("store", sid, StoreRow(sid, code, name, currency.strip(), locale))
    for pid, sid, ident, title, content, active, updated in pages:
        row = CmsRow(pid, sid, ident, title, content, active, updated.astimezone(UTC).isoformat())
        catalog.put("cms", pid, row)
    return catalog


def _parsed(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


class EdgeKvVerifier:
    """Implements :class:`~pipeline.verify.base.Verifier` for the edge KV consumer."""

    name = "edge-kv"
    classes = CLASSES

    def __init__(self, context: SinkContext, dsn: str) -> None:
        self.context = context
        self.dsn = dsn
        self._factory = load(self.name)
        self.sink = self._sink()  # only its backend is used (to read), never its state
        self._catalog = Catalog(self.sink.page_size)
        self._layout: dict[str, str] = {}

    def _sink(self) -> EdgeKvSink:
        sink: object = self._factory(self.context)
        if not isinstance(sink, EdgeKvSink):
            raise VerifyError(f"the consumer 'edge-kv' is {type(sink).__name__}, not EdgeKvSink")
        return sink

    def expected(self) -> Snapshot:
        with psycopg.connect(self.dsn) as conn:
            self._catalog = database_catalog(conn, self.sink.page_size)
        self._layout = full_layout(self._catalog)
        snap = Snapshot()
        for key, value in self._layout.items():
            snap.put(key_class(key), key, _parsed(value))
        return snap

    def actual(self) -> Snapshot:
        backend = self.sink.backend
        snap = Snapshot()
        try:
            backend.open()
            for key in backend.list(""):
                if key == PULSE:
                    continue
                value = backend.get(key)
                if value is not None:  # deleted since it was listed
                    snap.put(key_class(key), key, _parsed(value))
        except TransientSinkError as exc:
            raise VerifyError(
                f"the edge KV store ({backend.name}) is not available: {exc}"
            ) from exc
        return snap

    def compare(self, expected: Snapshot, actual: Snapshot) -> Report:
        return compare(self.name, expected, actual, self.classes)

    # -- repair -------------------------------------------------------------------------

    def repair(self, report: Report, expected: Snapshot, actual: Snapshot) -> RepairOutcome:
        outcome = RepairOutcome()
        sink = self._sink()
        with_retries("edge-kv: open", sink.open)
        try:
            records = self._documents_to_reemit(sink, outcome)
            if records:
                sink.add(records)
                outcome.rejected = with_retries("edge-kv: flush", sink.flush)
            # Step 2: keys still different from the layout (changed behind the sink's back).
            after = self.compare(expected, self.actual())
            writes: dict[str, str] = {}
            deletes: set[str] = set()
            for d in after.differences:
                key = str(d.id)
                if d.status == EXTRA:
                    deletes.add(key)
                else:
                    writes[key] = self._layout[key]
            if not writes and not deletes:
                return outcome
            scopes = self._scopes()
            p = Plan(
                writes=dict(writes),
                deletes=deletes,
                owners={k: (scopes[k], digest(v)) for k, v in writes.items()},
            )
            pulse = next_pulse(sink.pulse, p)
            with_retries(
                "edge-kv: write keys", lambda: sink.backend.apply({**writes, PULSE: pulse}, deletes)
            )
            outcome.key_writes, outcome.key_deletes = len(writes), len(deletes)
        finally:
            sink.close()
        state = SinkState(sink.state_path)
        try:
            state.save([], p, pulse)
        finally:
            state.close()
        log.info(
            "event=verify_repaired consumer=edge-kv reemitted=%d deleted=%d key_writes=%d "
            "key_deletes=%d pulse=%s",
            outcome.reemitted,
            outcome.deleted,
            outcome.key_writes,
            outcome.key_deletes,
            pulse,
        )
        return outcome

    def _documents_to_reemit(
        self, sink: EdgeKvSink, outcome: RepairOutcome
    ) -> list[DocumentMessage]:
        ts = now_ms()
        records: list[DocumentMessage] = []
        sides: list[tuple[str, dict[int, Any], Any, Any]] = [
            (
                "product",
                self._catalog.documents(),
                sink.catalog.products,
                sink.catalog.document,  # read back from the sink's state
            ),
            (
                "category",
                self._catalog.categories,
                sink.catalog.categories,
                sink.catalog.categories.get,
            ),
        ]
        for kind, want, have, have_doc in sides:
            for ident in sorted(set(want) | set(have)):
                known = sink.versions.get((kind, ident))
                doc: ProductDocument | CategoryDocument | None = want.get(ident)
                old = have_doc(ident)
                if doc is None:
                    records.append(DocumentMessage(kind, ident, None, repair_version(0, known), ts))
                    outcome.deleted += 1
                elif old is None or comparable(old) != comparable(doc):
                    version = repair_version(doc.version, known)
                    fixed = doc.model_copy(update={"version": version, "source_ts_ms": ts})
                    records.append(DocumentMessage(kind, ident, fixed, version, ts))
                    outcome.reemitted += 1
        return records

    def _scopes(self) -> dict[str, str]:
        """key -> the scope that holds it in the database's layout (as full_layout)."""
        out: dict[str, str] = {}
        for scope in sorted(self._catalog.all_scopes()):
            for key in self._catalog.keys(scope):
                out[key] = scope
        return out

    def close(self) -> None:
        self.sink.backend.close()
