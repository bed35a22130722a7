"""``catalog-cdc consume search-service``: documents -> a hosted search "Update API".

Products and categories go to ``POST {url}/api/items/update/json`` (``data``: JSON,
zlib-compressed), deletes to ``items/delete`` / ``categories/delete`` by id; the
attribute and filter schema (:data:`~consumers.search_service.mapping.SCHEMA`) is sent
first, alone, and again only when it changed.  See ``docs/search-service.md``.

Guarantees (with :mod:`consumers.runtime`: at-least-once, commit after flush):

* **Nothing malformed is sent.** Five malformed requests within an hour block the key,
  so every item and category is checked locally against the seed's rules
  (:mod:`consumers.search_service.rules`, sizes included) first; one that breaks them
  is returned as :class:`~consumers.contract.Rejected` (dead-lettered) with the id and
  the field, and never sent.
* **One server-side rejection stops everything.** A request the service refuses as
  malformed opens a *circuit breaker*, kept in the state file: the sink raises
  :class:`~consumers.runtime.SinkError` (the consumer stops, nothing is committed)
  and refuses to send anything until it is reset by hand
  (``python -m consumers.search_service reset-breaker``).
* **Retries never skip.** 429/5xx/``CLOSED;``/timeouts raise
  :class:`~consumers.contract.TransientSinkError` (``Retry-After`` honoured) keeping
  exactly the records not yet confirmed; what a request confirmed is recorded at once.
* **Idempotent.** The state file keeps, per kind and id, the last version sent and its
  content hash: an equal or older version, or unchanged content, is not sent again.
* **First run = full import.** With a new state file the sink rebuilds the service's
  index from the document topics with the full-import protocol (``full_import=start``,
  schema, categories, products, ``done``: the index is replaced at ``done``), then
  follows the changes.  :meth:`SearchServiceSink.full_import` is the same protocol
  for the replay command.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from consumers.contract import Record, Rejected, SinkError, TransientSinkError, handing_over
from consumers.registry import SinkContext
from consumers.search_service import mapping, rules
from consumers.search_service.client import DEFAULT_URL, Malformed, UpdateApi
from consumers.search_service.mapping import Links
from consumers.search_service.state import State
from consumers.toolkit.batching import chunks
from pipeline.documents.model import CategoryDocument, ProductDocument
from pipeline.documents.wire import DocumentMessage
from pipeline.errors import ConfigurationError

log = logging.getLogger(__name__)

__all__ = ["SearchServiceSettings", "SearchServiceSink", "breaker_message", "reset_breaker"]

ENV_KEY = "CATALOG_CDC_SEARCH_SERVICE_PRIVATE_KEY"
DEFAULT_STATE = Path(".catalog-cdc/search-service.sqlite")
RESET_HINT = "python -m consumers.search_service reset-breaker --state {state}"
_OVERHEAD = 1024  # bytes of a request's data JSON besides its objects (header, keys)


class SearchServiceSettings(BaseSettings):
    """``--option key=value``s of the consumer; each also ``CATALOG_CDC_SEARCH_SERVICE_<KEY>``."""

    model_config = SettingsConfigDict(env_prefix="CATALOG_CDC_SEARCH_SERVICE_", extra="forbid")

    url: str = Field(default=DEFAULT_URL, description="Base URL of the Update API.")
    private_key: SecretStr = Field(description="The private API key (never logged).")
    state: Path = Field(default=DEFAULT_STATE, description="The sink's SQLite state file.")
    product_url: str = Field(default=Links.product, description="Product link template.")
    category_url: str = Field(default=Links.category, description="Category link template.")
    stores: str = Field(default="", description="Comma-separated store codes (empty: all).")
    initial_import: str = Field(default="auto", description="auto: full import on first run; off.")
    compress: bool = Field(default=True, description="zlib-compress the data parameter.")
    timeout: float = Field(default=30.0, gt=0, description="HTTP timeout, seconds.")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not rules.is_valid_url(value):
            raise ValueError(f"not an http(s) URL: {value!r}")
        return value.rstrip("/")

    @field_validator("product_url", "category_url")
    @classmethod
    def _template(cls, value: str) -> str:
        try:
            sample = value.format(store="main", url_key="some-key", id=1)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"{value!r}: only {{store}}, {{url_key}} and {{id}}: {exc}") from exc
        if not rules.is_valid_url(sample):
            raise ValueError(f"{value!r} does not give a valid http(s) URL ({sample!r})")
        return value

    @field_validator("initial_import")
    @classmethod
    def _initial(cls, value: str) -> str:
        if value not in ("auto", "off"):
            raise ValueError("auto or off")
        return value


@dataclass
class _Op:
    record: Record
    obj: dict[str, Any] | None  # None: delete it at the service
    digest: str | None
    size: int = 0


def breaker_message(info: dict[str, Any], state: Path) -> str:
    """What a person reads when the breaker is (or was just) opened."""
    return (
        f"search service: the circuit breaker is open since {info.get('opened_at')}: "
        f"the service refused {info.get('request')} as malformed "
        f"(reply: {info.get('reply')}). Nothing more is sent, and this request is never "
        "resent automatically: five malformed requests within an hour block the private "
        "key. Find the cause (the request is in the consumer's log and in the state file), "
        "fix it, then reset the breaker with `"
        + RESET_HINT.format(state=state)
        + "` and start the consumer again (the batch was not committed: it is sent again)."
    )


class SearchServiceSink:
    """Implements :class:`~consumers.contract.Sink` for the Update API (see the module)."""

    name = "search-service"
    verify_unsupported = (
        "the hosted search Update API (seeds/search-service-update-api.txt) has no endpoint "
        "that lists the indexed items, only state/get. What can be checked instead: "
        "`catalog-cdc search-service status` shows the service's product_count and import "
        "status; a count equal to the database's proves nothing about the content. To "
        "rebuild it: `catalog-cdc replay search-service` (a full import)."
    )
    """Why ``catalog-cdc verify`` cannot compare this target (``Unverifiable``)."""
    kinds = ("product", "category")

    def __init__(
        self,
        api: UpdateApi,
        state_path: Path = DEFAULT_STATE,
        *,
        links: Links | None = None,
        stores: Iterable[str] = (),
        initial_source: Callable[[], Iterable[Record]] | None = None,
        compress: bool = True,
        max_data_bytes: int = rules.MAX_DATA_BYTES,
    ) -> None:
        self.api = api
        self.state_path = state_path
        self.links = links or Links()
        self.stores = frozenset(stores)
        self.initial_source = initial_source
        self.compress = compress
        self.max_data_bytes = max_data_bytes
        self._state: State | None = None
        self._pending: dict[tuple[str, int], _Op] = {}
        self._rejected: list[Rejected] = []
        self._types = rules.attribute_types(mapping.SCHEMA)
        self.stats = {
            "requests": 0,
            "items": 0,
            "categories": 0,
            "deleted": 0,
            "skipped_old": 0,
            "skipped_unchanged": 0,
            "rejected": 0,
            "schema_sent": 0,
            "full_imports": 0,
        }

    @classmethod
    def from_context(cls, context: SinkContext) -> SearchServiceSink:
        options = dict(context.options)
        try:
            build: Any = SearchServiceSettings  # options are strings: pydantic converts
            settings: SearchServiceSettings = build(**options)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'option'}: {e['msg']}"
                for e in exc.errors()
            )
            raise ConfigurationError(
                f"search-service options: {problems} (private_key: --option private_key=... "
                f"or {ENV_KEY}; see docs/search-service.md)"
            ) from None
        conns = context.connections
        source: Callable[[], Iterable[Record]] | None = None
        if settings.initial_import == "auto":
            bootstrap = conns.require("kafka_bootstrap")
            source = _topic_source(bootstrap, conns.topic_prefix, conns.schema_registry_url)
        return cls(
            UpdateApi(settings.url, settings.private_key.get_secret_value(), settings.timeout),
            settings.state,
            links=Links(settings.product_url, settings.category_url),
            stores=[s.strip() for s in settings.stores.split(",") if s.strip()],
            initial_source=source,
            compress=settings.compress,
        )

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def state(self) -> State:
        if self._state is None:
            self._state = State(self.state_path)
            target = self._state.get("target")
            if target is not None and target != self.api.url:
                log.warning("event=search_service_new_target state=%s was=%s now=%s "
                            "action=start_over", self.state_path, target, self.api.url)  # fmt: skip
                self._state.forget_sent()
                for key in ("schema_hash", "initial_import"):
                    self._state.put(key, None)
            self._state.put("target", self.api.url)
        return self._state

    def open(self) -> None:
        """Check the breaker; on the first run a full import, else the schema if changed."""
        try:
            self._open()
        except TransientSinkError:
            raise
        except SinkError:
            self.close()  # fatal: the runtime stops without calling close()
            raise

    def _open(self) -> None:
        self._check_breaker()
        if self.initial_source is not None and self.state.get("initial_import") != "done":
            log.info("event=search_service_first_run state=%s action=full_import", self.state_path)
            rejected = self.full_import(self.initial_source())
            for rej in rejected:  # the consumer meets these records again and dead-letters them
                log.warning("event=search_service_import_rejected kind=%s id=%s reason=%s",
                            rej.record.kind, rej.record.id, rej.reason)  # fmt: skip
        else:
            self._ensure_schema()

    def close(self) -> None:
        self.api.close()
        if self._state is not None:
            self._state.close()
            self._state = None
        log.info("event=search_service_closed %s",
                 " ".join(f"{k}={v}" for k, v in self.stats.items()))  # fmt: skip

    # -- incremental changes ------------------------------------------------------------

    def add(self, records: Sequence[Record]) -> None:
        for r in records:
            self._pending[(r.kind, r.id)] = self._op(r)  # the last record of a key wins

    def flush(self) -> list[Rejected]:
        """Send what was added; the refusals of this attempt are returned, or travel in
        the :class:`~consumers.contract.TransientSinkError` when something is to be
        sent again (the records still to send stay pending)."""
        return handing_over(self._send_pending, self._rejected)

    def _send_pending(self) -> None:
        self._check_breaker()
        updates: dict[str, list[_Op]] = {"category": [], "product": []}
        deletes: list[_Op] = []
        for key, op in list(self._pending.items()):
            verdict = self._verdict(op)
            if verdict == "send":
                (updates[op.record.kind] if op.obj is not None else deletes).append(op)
            else:
                del self._pending[key]
        for kind, ops in updates.items():
            for chunk in self._chunks(ops):
                self._send_objects(kind, chunk)
                for op in chunk:
                    del self._pending[(op.record.kind, op.record.id)]
        for op in deletes:
            self._send_delete(op)
            del self._pending[(op.record.kind, op.record.id)]

    # -- full import --------------------------------------------------------------------

    def full_import(self, records: Iterable[Record]) -> list[Rejected]:
        """Rebuild the service's index from ``records`` (every current document; deletes
        and older versions allowed, the newest version of a key wins).

        ``full_import=start``, the schema, objects in requests of <= 250, ``done``: the
        service indexes none of it until ``done``, then replaces its index with it.
        Returns the records refused locally (never sent).  A
        :class:`~consumers.contract.TransientSinkError` leaves the import unfinished:
        call it again (it starts over).  Call it while no flush runs.
        """
        self._check_breaker()
        started = datetime.now(UTC)
        self._post("state/update", {"full_import": "start"}, "full_import=start")
        self.state.forget_sent()
        self.state.put("initial_import", "started")
        self._send_schema()
        buffers: dict[str, dict[int, _Op]] = {"category": {}, "product": {}}
        sizes = {"category": 0, "product": 0}
        count = 0
        for record in records:
            op = self._op(record)
            buffer = buffers[record.kind]
            queued = buffer.get(record.id)
            if queued is not None and record.version <= queued.record.version:
                self.stats["skipped_old"] += 1
                continue
            if queued is not None:
                del buffer[record.id]
                sizes[record.kind] -= queued.size
            if self._verdict(op) != "send":
                continue
            if op.obj is None:
                prev = self.state.sent(record.kind, record.id)
                if prev is None:  # not in the new index: nothing to delete
                    self.state.record([(record.kind, record.id, record.version, None)])
                else:
                    self._send_delete(op)
                continue
            if len(buffer) >= rules.MAX_PER_REQUEST or (
                sizes[record.kind] + op.size > self.max_data_bytes - _OVERHEAD
            ):
                self._send_objects(record.kind, list(buffer.values()))
                buffer.clear()
                sizes[record.kind] = 0
            buffer[record.id] = op
            sizes[record.kind] += op.size
            count += 1
        for kind, buffer in buffers.items():
            if buffer:
                self._send_objects(kind, list(buffer.values()))
        self._post("state/update", {"full_import": "done"}, "full_import=done")
        self.state.put("initial_import", "done")
        self.stats["full_imports"] += 1
        rejected, self._rejected = self._rejected, []
        log.info("event=search_service_full_import_done objects=%d rejected=%d seconds=%.1f",
                 count, len(rejected), (datetime.now(UTC) - started).total_seconds())  # fmt: skip
        return rejected

    # -- deciding -----------------------------------------------------------------------

    def _op(self, r: Record) -> _Op:
        doc = r.doc
        obj: dict[str, Any] | None = None
        if doc is not None and (not self.stores or doc.store.code in self.stores):
            if isinstance(doc, ProductDocument):
                obj = mapping.product_item(doc, self.links)
            else:
                assert isinstance(doc, CategoryDocument)
                obj = mapping.category_item(doc, self.links)
        if obj is None:
            return _Op(r, None, None)
        size = len(json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
        return _Op(r, obj, mapping.content_hash(obj), size + 1)

    def _verdict(self, op: _Op) -> str:
        """``send``, or why not (recorded: ``old``, ``unchanged``, ``gone``, ``rejected``)."""
        r = op.record
        prev = self.state.sent(r.kind, r.id)
        if prev is not None and r.version <= prev.version:
            self.stats["skipped_old"] += 1
            return "old"
        if op.obj is None:
            if prev is not None and prev.deleted:
                self.state.record([(r.kind, r.id, r.version, None)])
                return "gone"
            return "send"
        if prev is not None and not prev.deleted and prev.hash == op.digest:
            self.stats["skipped_unchanged"] += 1
            self.state.record([(r.kind, r.id, r.version, op.digest)])
            return "unchanged"
        problems = self._problems(op)
        if problems:
            what = "product" if r.kind == "product" else "category"
            reason = (
                f"search-service: {what} {r.id} breaks the Update API's rules and was not "
                f"sent: {'; '.join(problems)}"
            )
            log.error("event=search_service_invalid kind=%s id=%s problems=%s",
                      r.kind, r.id, json.dumps(problems, ensure_ascii=False))  # fmt: skip
            self._rejected.append(Rejected(r, reason))
            self.stats["rejected"] += 1
            return "rejected"
        return "send"

    def _problems(self, op: _Op) -> list[str]:
        assert op.obj is not None
        if op.record.kind == "product":
            problems = rules.item_errors(op.obj, self._types)
        else:
            problems = rules.category_errors(op.obj)
        if op.size > self.max_data_bytes - _OVERHEAD:
            problems.append(
                f"size: {op.size} bytes of JSON, more than one request may carry "
                f"({self.max_data_bytes - _OVERHEAD})"
            )
        return problems

    def _chunks(self, ops: list[_Op]) -> Iterator[list[_Op]]:
        """Requests of at most 250 objects and ``max_data_bytes`` of data JSON (an object
        too large for one request never gets here: :meth:`_problems` refused it)."""
        return chunks(
            ops,
            max_items=rules.MAX_PER_REQUEST,
            max_bytes=self.max_data_bytes - _OVERHEAD,
            size_of=_op_size,
        )

    # -- sending ------------------------------------------------------------------------

    def _header(self) -> dict[str, str]:
        return {
            "id": self.links.store_url,
            "updated": datetime.now(UTC).isoformat(timespec="seconds"),
        }

    def _data(self, data: dict[str, Any]) -> dict[str, str | bytes]:
        return {"data": rules.encode_data({"header": self._header(), **data}, self.compress)}

    def _ensure_schema(self) -> None:
        if self.state.get("schema_hash") != mapping.SCHEMA_HASH:
            self._send_schema()

    def _send_schema(self) -> None:
        self._post("items/update", self._data({"schema": mapping.SCHEMA}), "the schema")
        self.state.put("schema_hash", mapping.SCHEMA_HASH)
        self.stats["schema_sent"] += 1
        log.info("event=search_service_schema_sent attributes=%d hash=%s",
                 len(mapping.SCHEMA), mapping.SCHEMA_HASH[:12])  # fmt: skip

    def _send_objects(self, kind: str, ops: list[_Op]) -> None:
        key = "items" if kind == "product" else "categories"
        ids = [op.record.id for op in ops]
        what = f"items/update with {len(ops)} {key} (ids {_ids(ids)})"
        self._post("items/update", self._data({key: [op.obj for op in ops]}), what)
        self.state.record([(kind, op.record.id, op.record.version, op.digest) for op in ops])
        self.stats[key] += len(ops)

    def _send_delete(self, op: _Op) -> None:
        r = op.record
        endpoint = "items/delete" if r.kind == "product" else "categories/delete"
        self._post(endpoint, {"id": str(r.id)}, f"{endpoint} id={r.id}")
        self.state.record([(r.kind, r.id, r.version, None)])
        self.stats["deleted"] += 1

    def _post(self, endpoint: str, params: dict[str, str | bytes], what: str) -> None:
        self.stats["requests"] += 1
        try:
            self.api.post(endpoint, params)
        except Malformed as exc:
            info = {
                "opened_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "request": f"POST {endpoint} ({what})",
                "status": exc.status,
                "reply": exc.reply,
            }
            self.state.open_breaker(info)
            message = breaker_message(info, self.state_path)
            log.error("event=search_service_breaker_open request=%r status=%s reply=%r state=%s",
                      info["request"], exc.status, exc.reply, self.state_path)  # fmt: skip
            raise SinkError(message) from exc

    def _check_breaker(self) -> None:
        info = self.state.breaker
        if info is not None:
            raise SinkError(breaker_message(info, self.state_path))


def _op_size(op: _Op) -> int:
    return op.size


def _ids(ids: list[int]) -> str:
    shown = ", ".join(str(i) for i in ids[:20])
    return shown if len(ids) <= 20 else f"{shown}, ... {len(ids) - 20} more"


def reset_breaker(state_path: Path) -> dict[str, Any] | None:
    """Close the breaker in ``state_path``; returns what it held (None: it was closed)."""
    if not state_path.exists():
        return None
    state = State(state_path)
    try:
        info = state.breaker
        state.put("breaker", None)
        if info is not None:
            log.warning("event=search_service_breaker_reset state=%s was=%r", state_path, info)
        return info
    finally:
        state.close()


def _topic_source(
    bootstrap: str, prefix: str, registry_url: str | None
) -> Callable[[], Iterable[Record]]:
    """The latest document of every key on the document topics (categories first)."""

    def source() -> Iterator[DocumentMessage]:
        from pipeline.documents.reading import DocumentTopicError, latest_documents

        for kind in ("category", "product"):
            try:
                latest = latest_documents(bootstrap, prefix, kind, schema_registry_url=registry_url)
            except DocumentTopicError as exc:
                log.info("event=search_service_import_source kind=%s documents=0 note=%r",
                         kind, str(exc))  # fmt: skip
                continue
            yield from latest.values()

    return source
