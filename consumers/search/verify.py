"""``catalog-cdc verify search``: the index behind ``{prefix}-products`` against the database.

*Expected*: :func:`~pipeline.documents.reference.expected_documents` (the SQL join), each
product in its indexed form (:func:`~consumers.search.mapping.body`) without ``version``.
*Actual*: every document of the alias, read with a scroll of :data:`CHUNK` documents
(the local Elasticsearch-API server is slow on large searches: moderate pages), its
``_source`` without ``content_hash`` and ``version``, and its ``_version`` (the external
version the sink wrote).  Only products: the search sink does not index categories.

Repair goes through :class:`~consumers.search.sink.SearchSink` itself (built by the
registry with the same ``--option``s, a fresh instance so its content-hash cache sends
everything): a missing or out-of-sync product is re-emitted from the database with the
version ``max(db version, index _version + 1)`` (external versioning accepts it, and any
real change later carries a far higher LSN, so the live consumer's next write wins); an
extra document is deleted with ``_version + 1``.  A document id that is not a number
cannot be written by the sink: it is listed, not repaired.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Hashable
from typing import Any

import psycopg
from elasticsearch import ApiError, ConnectionError, ConnectionTimeout, Elasticsearch

from consumers.registry import SinkContext, load
from consumers.search import mapping
from consumers.search.sink import SearchSink
from pipeline.documents.model import ProductDocument
from pipeline.documents.reference import expected_documents
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

__all__ = ["CHUNK", "SearchVerifier", "indexed_form"]

CHUNK = 500
"""Documents per scroll page."""

PRODUCT = "product"


def indexed_form(doc: ProductDocument) -> dict[str, Any]:
    """What the index must hold for ``doc`` (the compared fields: no version)."""
    body = mapping.body(doc)
    body.pop("version", None)
    return body


class SearchVerifier:
    """Implements :class:`~pipeline.verify.base.Verifier` for the search consumer."""

    name = "search"
    classes = (PRODUCT,)

    def __init__(self, context: SinkContext, dsn: str, chunk: int = CHUNK) -> None:
        self.context = context
        self.dsn = dsn
        self.chunk = chunk
        self._factory = load(self.name)
        sink: object = self._factory(context)
        if not isinstance(sink, SearchSink):
            raise VerifyError(f"the consumer 'search' is {type(sink).__name__}, not SearchSink")
        # Its client and index prefix: the consumer's own configuration.
        self.sink: SearchSink = sink
        self.es: Elasticsearch = sink.es
        self.alias: str = sink.alias
        self._docs: dict[int, ProductDocument] = {}

    def expected(self) -> Snapshot:
        with psycopg.connect(self.dsn) as conn:
            products, _ = expected_documents(conn)
        self._docs = products
        snap = Snapshot()
        for pid, doc in products.items():
            snap.put(PRODUCT, pid, indexed_form(doc))
        snap.items.setdefault(PRODUCT, {})
        return snap

    def actual(self) -> Snapshot:
        snap = Snapshot()
        snap.items[PRODUCT] = {}
        try:
            if not self.es.indices.exists_alias(name=self.alias):
                log.warning("event=verify_no_index alias=%s", self.alias)
                return snap
            self.es.indices.refresh(index=self.alias)
            page = self.es.search(
                index=self.alias, scroll="2m", size=self.chunk, version=True, sort=["_doc"]
            )
            scroll_id = page.get("_scroll_id")
            try:
                while page["hits"]["hits"]:
                    for hit in page["hits"]["hits"]:
                        source = dict(hit.get("_source") or {})
                        source.pop("content_hash", None)
                        source.pop("version", None)
                        snap.put(PRODUCT, _ident(hit["_id"]), source, int(hit.get("_version", 0)))
                    if not scroll_id:
                        break
                    page = self.es.scroll(scroll_id=scroll_id, scroll="2m")
                    scroll_id = page.get("_scroll_id", scroll_id)
            finally:
                if scroll_id:
                    with contextlib.suppress(ApiError, ConnectionError, ConnectionTimeout):
                        self.es.clear_scroll(scroll_id=scroll_id)
        except (ConnectionError, ConnectionTimeout) as exc:
            raise VerifyError(f"Elasticsearch is not available: {exc}") from exc
        except ApiError as exc:
            raise VerifyError(
                f"Elasticsearch refused reading {self.alias} ({exc.meta.status}: {exc.message})"
            ) from exc
        return snap

    def compare(self, expected: Snapshot, actual: Snapshot) -> Report:
        return compare(self.name, expected, actual, self.classes)

    def repair(self, report: Report, expected: Snapshot, actual: Snapshot) -> RepairOutcome:
        outcome = RepairOutcome()
        ts = now_ms()
        records: list[DocumentMessage] = []
        for d in report.differences:
            if d.cls != PRODUCT:
                continue
            have = actual.version(PRODUCT, d.id)
            if not isinstance(d.id, int):
                outcome.skipped.append(
                    f"product {d.id!r}: not a numeric id, the sink cannot write it"
                )
                continue
            if d.status == EXTRA:
                records.append(DocumentMessage(PRODUCT, d.id, None, repair_version(0, have), ts))
                outcome.deleted += 1
                continue
            doc = self._docs[d.id]
            version = repair_version(doc.version, have)
            fixed = doc.model_copy(update={"version": version, "source_ts_ms": ts})
            records.append(DocumentMessage(PRODUCT, d.id, fixed, version, ts))
            outcome.reemitted += 1
        if not records:
            return outcome
        sink = self._factory(self.context)
        try:
            with_retries("search: open", sink.open)
            sink.add(records)
            outcome.rejected = with_retries("search: flush", sink.flush)
        finally:
            sink.close()
        log.info(
            "event=verify_repaired consumer=search reemitted=%d deleted=%d rejected=%d",
            outcome.reemitted,
            outcome.deleted,
            len(outcome.rejected),
        )
        return outcome

    def close(self) -> None:
        self.sink.close()


def _ident(raw: str) -> Hashable:
    try:
        return int(raw)
    except ValueError:
        return raw
