"""The search sink: product documents -> the index behind ``{prefix}-products``.

One sink, one behaviour on Elasticsearch (8, 9) and OpenSearch (2.x): it talks to the
engine through :class:`~consumers.search.engine.SearchEngine` (``--option engine=``
``elasticsearch|opensearch`` or ``CATALOG_CDC_SEARCH_ENGINE``; unset: asked of the
server at the first request).  Options: ``url`` (default ``CATALOG_CDC_SEARCH_URL``,
else ``CATALOG_CDC_ELASTICSEARCH_URL``), ``engine``, ``index_prefix``.

Guarantees (with :mod:`consumers.runtime`: at-least-once delivery, commit after flush):

* **Idempotent, ordered.** Every write uses external versioning with the document
  ``version``: an equal or older version is a no-op (409, counted as success), so a
  redelivered batch changes nothing. A delete (tombstone) deletes with its version;
  a delete of a missing document is a success.
* **Only what changed is written.** A document whose content hash equals the one this
  sink last wrote for that id is not sent (the local Elasticsearch-API stand-in
  overwrites a few hundred documents a second); the writes saved are counted.
* **Serialized beside the network.** A flush builds each bulk request while the one
  before it is in flight (sent by a helper thread, awaited in order, one at a time),
  so building the bodies does not add to the time the engine takes.
* **Retries never skip.** Bulk requests are cut by count and by bytes; connection
  errors, timeouts, 429 and 5xx (of the request or of single items) raise
  :class:`~consumers.contract.TransientSinkError`, keeping exactly the items still to
  write; the runtime retries with capped exponential backoff.
* **Poison goes to the DLQ.** An item the engine refuses for good (a mapping
  error, 400) is returned as :class:`~consumers.contract.Rejected` with its reason —
  also when the same bulk answer asks for other items to be retried (the refusals
  then travel in the :class:`~consumers.contract.TransientSinkError`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from consumers.capabilities import ReplayPlan, ReplayRequest
from consumers.contract import FlushOutcome, Record, Rejected, SinkError
from consumers.registry import SinkContext
from consumers.search import mapping
from consumers.search.engine import (
    BulkItem,
    EngineUnavailable,
    IndexNotFound,
    SearchEngine,
    connect,
    engine_name,
)
from consumers.toolkit.batching import chunks
from pipeline.documents.model import ProductDocument
from pipeline.errors import ConfigurationError

if TYPE_CHECKING:
    from pipeline.verify.base import Verifier

log = logging.getLogger(__name__)

__all__ = ["SearchSink"]

MAX_ACTIONS = 500
MAX_BYTES = 5 * 1024 * 1024


@dataclass
class _Op:
    record: Record
    source: bytes | None  # the serialized _source; None: delete
    digest: str | None


class SearchSink:
    """Implements :class:`~consumers.contract.Sink` for Elasticsearch and OpenSearch.

    ``engine``: the engine's client; or ``None`` with ``connector``, which makes it on
    first use (so building the sink needs no server: an unreachable one is a
    :class:`~consumers.contract.TransientSinkError` of :meth:`open`, retried)."""

    name = "search"
    kinds = ("product",)

    def __init__(
        self,
        engine: SearchEngine | None,
        index_prefix: str,
        target_index: str | None = None,
        *,
        connector: Callable[[], SearchEngine] | None = None,
    ) -> None:
        if engine is None and connector is None:
            raise ConfigurationError("SearchSink needs an engine or a connector")
        self._engine = engine
        self._connector = connector
        self.prefix = index_prefix
        self.alias = mapping.alias(index_prefix)
        self.target_index = target_index
        """Write here instead of the alias (a replay building a new generation)."""
        self._pending: dict[int, Record] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._written: dict[int, str] = {}  # id -> content hash of the last write
        self.stats = {"indexed": 0, "deleted": 0, "noop": 0, "skipped_unchanged": 0}

    @classmethod
    def from_context(cls, context: SinkContext) -> SearchSink:
        conns = context.connections
        url = context.options.get("url") or conns.elasticsearch_url
        if not url:
            raise ConfigurationError(
                "no search engine URL: set CATALOG_CDC_SEARCH_URL (or "
                "CATALOG_CDC_ELASTICSEARCH_URL) or --option url=..."
            )
        engine = engine_name(context.options.get("engine") or conns.search_engine)
        prefix = context.options.get("index_prefix") or conns.topic_prefix
        return cls(None, prefix, connector=lambda: connect(url, engine))

    @property
    def engine(self) -> SearchEngine:
        """The engine's client (connected, and the engine detected, on first use)."""
        if self._engine is None:
            assert self._connector is not None
            self._engine = self._connector()
        return self._engine

    # -- lifecycle ----------------------------------------------------------------------

    def open(self) -> None:
        """Check the engine answers; create the template and the first generation.
        Raises :class:`TransientSinkError` while it is unavailable (or answers 429/5xx),
        :class:`SinkError` when it refuses (401/403: the message names the URL setting)."""
        engine = self.engine
        info = engine.info()
        engine.put_index_template(self.alias, mapping.template(self.prefix))
        if not engine.alias_exists(self.alias):
            index = mapping.generation(self.prefix, 1)
            if not engine.index_exists(index):
                engine.create_index(index)
            engine.put_alias(index, self.alias)
            log.info("event=search_index_created index=%s alias=%s", index, self.alias)
        log.info("event=search_open engine=%s version=%s", info.engine, info.version)

    # -- capabilities (consumers.capabilities) ------------------------------------------

    def replay_plan(self, request: ReplayRequest) -> ReplayPlan:
        """A new index generation built beside the live one and swapped in by alias."""
        from consumers.search.replay import SearchReplayPlan

        return SearchReplayPlan(lambda: self.engine, self.prefix, request.grace, request.stop)

    def verifier(self, context: SinkContext, dsn: str) -> Verifier:
        from consumers.search.verify import SearchVerifier

        return SearchVerifier(context, dsn)

    def target_available(self) -> bool:
        try:
            self.engine.info()
        except SinkError as exc:
            log.warning("event=search_unavailable error=%s", exc)
            return False
        return True

    def target_count(self) -> int | None:
        try:
            return self.engine.count(self.alias)
        except IndexNotFound:
            return 0  # no index yet: nothing written
        except SinkError as exc:
            log.warning("event=search_count_failed error=%s", exc)
            return None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        if self._engine is not None:
            self._engine.close()

    # -- writing ------------------------------------------------------------------------

    def add(self, records: Sequence[Record]) -> None:
        for r in records:
            self._pending[r.id] = r  # the last record of an id wins

    def flush(self) -> list[Rejected]:
        """Write what was added: chunk by chunk, each chunk serialized while the one
        before it is in flight (the request is sent by a helper thread and waited for
        here, one at a time, in order), so building the bodies does not add to the time
        the engine takes.  Returns when every item is confirmed or refused; raises
        :class:`~consumers.contract.TransientSinkError` (carrying the refusals of this
        attempt) when some items must be written again, keeping exactly those."""
        outcome = FlushOutcome()
        retry: dict[int, _Op] = {}
        in_flight: tuple[Future[list[BulkItem]], list[_Op]] | None = None
        sender = self._sender()
        for chunk in self._chunks():
            request = sender.submit(self._send, _payload(chunk, self.target_index or self.alias))
            if in_flight is not None:
                retry.update(self._settle(*in_flight, outcome))
            in_flight = (request, chunk)
        if in_flight is not None:
            retry.update(self._settle(*in_flight, outcome))
        self._pending = {doc_id: op.record for doc_id, op in retry.items()}
        if retry:
            outcome.retry("429/5xx/unavailable", count=len(retry))
        return outcome.result()

    def _sender(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="search-bulk")
        return self._pool

    def _ops(self) -> Iterator[_Op]:
        """The pending records as writes; those whose content this sink last wrote are
        skipped (counted)."""
        for doc_id, r in self._pending.items():
            if r.doc is None:
                yield _Op(r, None, None)
                continue
            assert isinstance(r.doc, ProductDocument)
            # Serialized once: the canonical JSON of the content (without the version)
            # is hashed, and is the request body with the hash and version appended.
            body = mapping.body(r.doc)
            version = body.pop("version")
            content = _dumps(body)
            digest = hashlib.sha1(content).hexdigest()
            if self._written.get(doc_id) == digest:
                self.stats["skipped_unchanged"] += 1
                continue
            source = b'%s,"content_hash":"%s","version":%d}' % (
                content[:-1],
                digest.encode(),
                version,
            )
            yield _Op(r, source, digest)

    def _chunks(self) -> Iterator[list[_Op]]:
        """Bulk requests cut by count and by (approximate) bytes, built as they are
        asked for (a document over :data:`MAX_BYTES` goes alone: the engine judges)."""
        return chunks(self._ops(), max_items=MAX_ACTIONS, max_bytes=MAX_BYTES, size_of=_size)

    def _send(self, payload: bytes) -> list[BulkItem]:
        return self.engine.bulk(payload)

    def _settle(
        self, request: Future[list[BulkItem]], ops: list[_Op], outcome: FlushOutcome
    ) -> dict[int, _Op]:
        """The outcome of one bulk request; the ops to retry."""
        try:
            items = request.result()
        except EngineUnavailable as exc:  # no answer, timeout, 429/5xx of the request
            log.warning("event=search_unavailable status=%s error=%s", exc.status, exc)
            outcome.retry("unavailable", count=0, retry_after=exc.retry_after)
            return {op.record.id: op for op in ops}
        # Any other refusal of the whole request (EngineRequestError: 401/403, a bad
        # request) propagates: a SinkError, the consumer stops, nothing is committed.
        retry: dict[int, _Op] = {}
        label = self.engine.label
        for op, item in zip(ops, items, strict=True):
            action, status, doc_id = item.action, item.status, op.record.id
            if status in (200, 201) or (action == "delete" and status == 404):
                if op.source is None:
                    self._written.pop(doc_id, None)
                    self.stats["deleted"] += 1
                else:
                    assert op.digest is not None
                    self._written[doc_id] = op.digest
                    self.stats["indexed"] += 1
            elif status == 409:  # an equal or newer version is there: nothing to do
                self.stats["noop"] += 1
            elif status == 429 or status >= 500:
                retry[doc_id] = op
            else:
                reason = json.dumps(item.error, default=str)[:2000]
                outcome.refuse(op.record, f"{label} refused it ({status}): {reason}")
        return retry


def _size(op: _Op) -> int:
    """Approximate bytes of one op in a bulk request (action line and source)."""
    return 120 + (len(op.source) if op.source is not None else 0)


def _payload(ops: list[_Op], index_name: str) -> bytes:
    """The NDJSON of one bulk request (the bodies are serialized already)."""
    index = json.dumps(index_name).encode()
    lines: list[bytes] = []
    for op in ops:
        action = b"index" if op.source is not None else b"delete"
        lines.append(
            b'{"%s":{"_index":%s,"_id":"%d","version":%d,"version_type":"external"}}'
            % (action, index, op.record.id, op.record.version)
        )
        if op.source is not None:
            lines.append(op.source)
    lines.append(b"")
    return b"\n".join(lines)


def _dumps(value: dict[str, Any]) -> bytes:
    """Canonical JSON (sorted keys, no spaces): equal content, equal bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def delete_index(engine: SearchEngine, prefix: str) -> None:
    """Delete every generation of the product index (tests, tooling)."""
    for name in engine.indices(f"{prefix}-products-*"):
        if name.startswith(prefix):
            engine.delete_index(name)
