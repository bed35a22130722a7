"""``catalog-cdc verify search``: the index behind ``{prefix}-products`` against the database.

*Expected*: :func:`~pipeline.documents.reference.expected_documents` (the SQL join), each
product in its indexed form (:func:`~consumers.search.mapping.body`) without ``version``.
*Actual*: every document of the alias, read with a scroll of :data:`CHUNK` documents
(the local Elasticsearch-API stand-in is slow on large searches: moderate pages), its
``_source`` without ``content_hash`` and ``version``, and its ``_version`` (the external
version the sink wrote).  Only products: the search sink does not index categories.

Repair goes through :class:`~consumers.search.sink.SearchSink` itself (built by the
registry with the same ``--option``s, a fresh instance so its content-hash cache sends
everything): a missing or out-of-sync product is re-emitted from the database with the
version ``max(db version, index _version + 1)`` (a missing one: above the version the
document topic last carried for it + 1, where Elasticsearch and OpenSearch keep the delete
tombstone of a hand delete for ``index.gc_deletes``); external versioning accepts it, and
any real change later carries a far higher LSN, so the live consumer's next write wins;
an extra document is deleted with ``_version + 1``.  A document id that is not a number
cannot be written by the sink: it is listed, not repaired.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from typing import Any

import psycopg

from consumers.contract import SinkError
from consumers.registry import SinkContext, load
from consumers.search import mapping
from consumers.search.engine import EngineUnavailable
from consumers.search.sink import SearchSink
from pipeline.documents.model import ProductDocument
from pipeline.documents.reference import expected_documents
from pipeline.documents.wire import DocumentMessage
from pipeline.errors import CatalogCdcError
from pipeline.verify.base import (
    RepairOutcome,
    VerifyError,
    now_ms,
    repair_version,
    with_retries,
)
from pipeline.verify.report import EXTRA, MISSING, Report, Snapshot, compare

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
        # Its engine and index prefix: the consumer's own configuration.
        self.sink: SearchSink = sink
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
            engine = self.sink.engine
            if not engine.alias_exists(self.alias):
                log.warning("event=verify_no_index alias=%s", self.alias)
                return snap
            engine.refresh(self.alias)
            for hit in engine.scan(self.alias, self.chunk):
                source = dict(hit.source)
                source.pop("content_hash", None)
                source.pop("version", None)
                snap.put(PRODUCT, _ident(hit.id), source, hit.version or 0)
        except EngineUnavailable as exc:  # "<engine> is not available at <url>: ..."
            raise VerifyError(str(exc)) from exc
        except SinkError as exc:
            raise VerifyError(f"reading {self.alias}: {exc}") from exc
        return snap

    def compare(self, expected: Snapshot, actual: Snapshot) -> Report:
        return compare(self.name, expected, actual, self.classes)

    def repair(self, report: Report, expected: Snapshot, actual: Snapshot) -> RepairOutcome:
        outcome = RepairOutcome()
        ts = now_ms()
        records: list[DocumentMessage] = []
        written = self._last_written([d.id for d in report.differences if d.status == MISSING])
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
            if d.status == MISSING and d.id in written:
                # Deleted behind the sink's back: the engine keeps a delete tombstone
                # for index.gc_deletes (60 s) at the version the sink wrote + 1, and
                # refuses a write at or below it (409, a no-op for the sink).
                have = written[d.id] + 1
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

    def _last_written(self, ids: list[Hashable]) -> dict[int, int]:
        """The version the sink last wrote for ``ids`` (the document topic's latest
        message of each), for the documents the index misses; ``{}`` without Kafka or
        without the topic (a write at the database's version is tried then)."""
        conns = self.context.connections
        if not ids or not conns.kafka_bootstrap:
            return {}
        from pipeline.documents.reading import latest_documents

        try:
            latest = latest_documents(
                conns.kafka_bootstrap,
                conns.topic_prefix,
                PRODUCT,
                schema_registry_url=conns.schema_registry_url,
            )
        except CatalogCdcError as exc:
            log.warning("event=verify_no_document_topic error=%s", exc)
            return {}
        return {i: latest[i].version for i in ids if isinstance(i, int) and i in latest}

    def close(self) -> None:
        self.sink.close()


def _ident(raw: str) -> Hashable:
    try:
        return int(raw)
    except ValueError:
        return raw
