"""The storefront-api sink: product documents -> a shop's products sync API.

``catalog-cdc consume storefront-api --option url=https://shop.example.com`` keeps the
products of a shop behind the products sync API (seed
``erp-to-storefront-products-sync-api``) equal to the catalog's.  See
``docs/storefront-api.md``.

Guarantees (with :mod:`consumers.runtime`: at-least-once delivery, commit after flush):

* **Only confirmed work is forgotten.** The sink keeps, in its state file
  (:mod:`consumers.storefront_api.state`), what exists remotely per product id: the
  reference, the last version and content hash the API confirmed.  A product not there
  is sent as ``create``, one there as ``update``; a ``create`` answered 409 (it exists
  already) becomes an ``update``, an ``update`` answered 404 a ``create``.  The state
  is written after each answer and before the runtime commits offsets.
* **Idempotent.** A record whose version is not newer than the last confirmed one for
  its id is skipped (``noop``); so is a document whose mapped content is unchanged
  (``skipped_unchanged``).
* **Checked before sending.** Every field rule of the seed (:mod:`.rules`) is checked
  locally; a violating product is returned as
  :class:`~consumers.contract.Rejected` (dead-lettered) with every field error, and
  never sent.  A product the API refuses (400/422) is rejected with its error body.
* **Deletes deactivate.** A deleted product is sent as an ``update`` with
  ``active=false`` and ``quantity=0`` (the API has no delete); a product that never
  reached the shop needs nothing (``delete_noop``).
* **Retries never skip.** 429 (honouring ``Retry-After``), 5xx/502 and connection
  errors raise :class:`~consumers.contract.TransientSinkError`; the records still
  unconfirmed stay pending and only they are sent again.  In a batch, the per-item
  results say which.
* **Auth.** JWT from ``/api/auth/login``; a 401 logs in again once; a second 401 stops
  the consumer with a message naming the credentials to check.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from consumers.contract import Record, Rejected, SinkError, TransientSinkError, handing_over
from consumers.registry import SinkContext
from consumers.storefront_api import mapping, rules
from consumers.storefront_api.client import StorefrontClient, retry_after
from consumers.storefront_api.state import DEFAULT_PATH, ProductState, State, status
from consumers.toolkit.batching import chunks
from pipeline.documents.model import ProductDocument
from pipeline.errors import ConfigurationError

log = logging.getLogger(__name__)

__all__ = ["StorefrontApiSink", "StorefrontSettings", "status"]

SYNC_PATH = "/api/products/sync"
BATCH_PATH = "/api/products/sync/batch"
_MAX_CONVERSIONS = 2  # create -> 409 -> update -> 404 -> create: then give up on it


class StorefrontSettings(BaseSettings):
    """``CATALOG_CDC_STOREFRONT_URL`` / ``_USERNAME`` / ``_PASSWORD`` (options win)."""

    model_config = SettingsConfigDict(env_prefix="CATALOG_CDC_STOREFRONT_", extra="ignore")

    url: str | None = None
    username: str | None = None
    password: SecretStr | None = None


@dataclass
class _Op:
    record: Record
    kind: str  # "upsert" | "deactivate" | "retire" (deactivate an old reference)
    operation: str  # "create" | "update"
    fields: dict[str, Any]
    digest: str | None = None
    urls: tuple[str, ...] = ()
    conversions: int = 0

    @property
    def reference(self) -> str:
        return str(self.fields["reference"])

    def wire(self) -> dict[str, Any]:
        return {"operation": self.operation, **self.fields}


class StorefrontApiSink:
    """Implements :class:`~consumers.contract.Sink` for the products sync API."""

    name: str = "storefront-api"
    verify_unsupported = (
        "the shop's products sync API (seeds/erp-to-storefront-products-sync-api.txt) has no "
        "endpoint that lists the shop's products, so what the shop holds cannot be read back. "
        "What can be checked instead: `catalog-cdc storefront-api status` reads the consumer's "
        "state file (per product: synced / deactivated / rejected / absent, the last syncIds "
        "and errors). That proves what the API confirmed to the consumer and which products "
        "it refused; it does not prove the shop still holds them (a product edited or deleted "
        "in the shop by hand is invisible). To resend everything as idempotent upserts: "
        "`catalog-cdc replay storefront-api`."
    )
    """Why ``catalog-cdc verify`` cannot compare this target (``Unverifiable``)."""
    kinds: Sequence[str] = ("product",)

    def __init__(
        self,
        client: StorefrontClient,
        state_path: Path = DEFAULT_PATH,
        *,
        batch: int = rules.BATCH_MAX,
        store: str | None = None,
        images: bool = True,
        image_base_url: str | None = None,
        categories: bool = True,
        pause: float = 0.0,
        resend: bool = False,
    ) -> None:
        if not 1 <= batch <= rules.BATCH_MAX:
            raise ConfigurationError(
                f"--option batch={batch}: between 1 and {rules.BATCH_MAX} products per request"
            )
        self.client = client
        self.state_path = state_path
        self.batch = batch
        self.store = store
        self.images = images
        self.image_base_url = image_base_url.rstrip("/") if image_base_url else None
        self.categories = categories
        self.resend = resend
        """A replay: send every product again (as an update, or a create if the shop lacks
        it), even when the state says it was confirmed at this version and content."""
        self.pause = pause
        self._state: State | None = None
        self._pending: dict[int, Record] = {}
        self._rejected: list[Rejected] = []
        self._last_request = 0.0
        self.stats = {
            "created": 0,
            "updated": 0,
            "deactivated": 0,
            "noop": 0,
            "skipped_unchanged": 0,
            "delete_noop": 0,
            "conflicts": 0,
            "rejected": 0,
            "other_store": 0,
            "requests": 0,
        }

    @classmethod
    def from_context(cls, context: SinkContext) -> StorefrontApiSink:
        o = context.options
        env = StorefrontSettings()
        url = o.get("url") or env.url
        if not url:
            raise ConfigurationError(
                "no storefront API URL: --option url=https://... (or CATALOG_CDC_STOREFRONT_URL)"
            )
        username = o.get("username") or env.username
        password = o.get("password") or (env.password.get_secret_value() if env.password else None)
        if not username or not password:
            raise ConfigurationError(
                "no storefront API credentials: --option username=... --option password=... "
                "(or CATALOG_CDC_STOREFRONT_USERNAME / CATALOG_CDC_STOREFRONT_PASSWORD)"
            )
        images = o.get("images", "fetch")
        if images not in ("fetch", "none"):
            raise ConfigurationError(f"--option images={images}: 'fetch' or 'none'")
        try:
            batch = int(o.get("batch", rules.BATCH_MAX))
            timeout = float(o.get("timeout", "30"))
            pause = float(o.get("pause", "0"))
        except ValueError as exc:
            raise ConfigurationError(f"storefront-api option: {exc}") from exc
        return cls(
            StorefrontClient(url, username, password, timeout=timeout),
            Path(o.get("state", str(DEFAULT_PATH))),
            batch=batch,
            store=o.get("store") or None,
            images=images == "fetch",
            image_base_url=o.get("image_base_url") or None,
            categories=o.get("categories", "ids") != "none",
            resend=context.replay,
            pause=pause,
        )

    # -- lifecycle ----------------------------------------------------------------------

    def open(self) -> None:
        if self._state is None:
            self._state = State(self.state_path)
        self.client.login()

    def close(self) -> None:
        self.client.close()
        if self._state is not None:
            self._state.close()
            self._state = None

    @property
    def state(self) -> State:
        assert self._state is not None, "open() first"
        return self._state

    # -- writing ------------------------------------------------------------------------

    def add(self, records: Sequence[Record]) -> None:
        for r in records:
            self._pending[r.id] = r  # per key in version order: the last one wins

    def flush(self) -> list[Rejected]:
        """Send what was added; the refusals of this attempt are returned, or travel in
        the :class:`~consumers.contract.TransientSinkError` when something is to be
        sent again (the records still to send stay pending)."""
        return handing_over(self._send_pending, self._rejected)

    def _send_pending(self) -> None:
        retire, ops = self._plan()
        self._fetch_images(ops)
        self._send_all(retire)
        self._send_all(ops)

    # -- planning -----------------------------------------------------------------------

    def _plan(self) -> tuple[list[_Op], list[_Op]]:
        """What to send for each pending record; settles the records that need nothing."""
        retire: list[_Op] = []
        ops: list[_Op] = []
        settled: list[ProductState] = []
        for pid, r in list(self._pending.items()):
            st = self.state.get(pid)
            if st is not None and r.version <= st.version and not self.resend:
                self.stats["noop"] += 1
                del self._pending[pid]
                continue
            doc = r.doc
            if doc is not None and self.store is not None:
                assert isinstance(doc, ProductDocument)
                if doc.store.code != self.store:  # not (or no longer) this shop's product
                    self.stats["other_store"] += 1
                    doc = None
            if doc is None:
                if st is None or not st.remote or st.status == "deactivated":
                    self.stats["delete_noop"] += 1
                    ref = st.reference if st is not None else ""
                    base = st or ProductState(pid, ref, False, False, -1, None, None, None, "")
                    keep = base.status == "deactivated"
                    settled.append(
                        replace(base, version=r.version, status=base.status if keep else "absent")
                    )
                    del self._pending[pid]
                else:
                    ops.append(_deactivation(r, st, "deactivate"))
                continue
            assert isinstance(doc, ProductDocument)
            fields = mapping.body(doc, categories=self.categories, images=self.images)
            urls = tuple(mapping.image_urls(doc)) if self.images else ()
            errors = rules.check_product({"operation": "update", **fields}, image_data=False)
            if errors:
                self._reject(r, doc.reference, _local_reason(r, doc.reference, errors))
                continue
            digest = hashlib.sha1(json.dumps([fields, urls], sort_keys=True).encode()).hexdigest()
            same_ref = st is not None and st.remote and st.reference == doc.reference
            if same_ref and st is not None and st.digest == digest and not self.resend:
                self.stats["skipped_unchanged"] += 1
                settled.append(replace(st, version=r.version))
                del self._pending[pid]
                continue
            if st is not None and st.remote and not same_ref and st.status != "deactivated":
                retire.append(_deactivation(r, st, "retire"))
            operation = "update" if same_ref else "create"
            ops.append(_Op(r, "upsert", operation, fields, digest, urls))
        self.state.put(settled)
        return retire, ops

    def _reject(self, r: Record, reference: str, reason: str) -> None:
        log.warning("event=storefront_rejected id=%s reference=%s reason=%s", r.id, reference,
                    reason)  # fmt: skip
        self._rejected.append(Rejected(r, reason))
        self.stats["rejected"] += 1
        self._pending.pop(r.id, None)
        st = self.state.get(r.id)
        base = st or ProductState(r.id, reference, False, False, -1, None, None, None, "rejected")
        self.state.put([replace(base, status="rejected", error=reason[:2000])])

    # -- images -------------------------------------------------------------------------

    def _fetch_images(self, ops: list[_Op]) -> None:
        """Download every image of ``ops`` into its ``base64``; a missing or too large
        image rejects its product; the image host unavailable is transient."""
        for op in list(ops):
            if not op.urls:
                continue
            images = [dict(i) for i in op.fields["images"]]
            problem: str | None = None
            for i, url in enumerate(op.urls):
                where = self._image_url(url)
                resp = self.client.download(where)
                if resp.status_code == 429 or resp.status_code >= 500:
                    raise TransientSinkError(
                        f"image host answered {resp.status_code} for {where}",
                        retry_after=retry_after(resp),
                    )
                if resp.status_code != 200:
                    problem = f"images[{i}]: cannot download {where} ({resp.status_code})"
                    break
                errors = rules.check_image_bytes(i, len(resp.content))
                if errors:
                    problem = "; ".join(str(e) for e in errors)
                    break
                images[i]["base64"] = base64.b64encode(resp.content).decode("ascii")
            if problem is not None:
                ops.remove(op)
                ref = op.reference
                self._reject(
                    op.record,
                    ref,
                    f"product {op.record.id} (reference {ref!r}) not sent: {problem}",
                )
                continue
            op.fields = {**op.fields, "images": images}

    def _image_url(self, url: str) -> str:
        if self.image_base_url is None:
            return url
        parts = urlsplit(url)
        return self.image_base_url + parts.path + (f"?{parts.query}" if parts.query else "")

    # -- sending ------------------------------------------------------------------------

    def _send_all(self, queue: list[_Op]) -> None:
        """Send ``queue`` in requests of at most ``batch`` products until every product is
        confirmed, rejected, or transiently failed (then raise, keeping those pending)."""
        transient: list[str] = []
        wait: float | None = None
        while queue:
            again: list[_Op] = []
            for chunk in chunks(queue, max_items=self.batch):
                if transient and wait is not None:  # a 429: send nothing more for now
                    break
                try:
                    again += self._send(chunk)
                except _Transient as exc:
                    transient.append(str(exc))
                    wait = exc.retry_after if wait is None else max(wait, exc.retry_after or 0)
                    if exc.whole_request:
                        break
            queue = again if not transient else []
        if transient:
            raise TransientSinkError(
                f"{len(self._pending)} products to send again: {transient[0]}", retry_after=wait
            )

    def _send(self, chunk: list[_Op]) -> list[_Op]:
        """One request; returns the ops to send again now (409 -> update, 404 -> create)."""
        if self.pause and self._last_request:
            delay = self._last_request + self.pause - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        self._last_request = time.monotonic()
        self.stats["requests"] += 1
        if len(chunk) == 1:
            resp = self.client.post(SYNC_PATH, chunk[0].wire())
            data = _json(resp)
            if resp.status_code == 200:
                sync_id = str((data.get("data") or {}).get("syncId") or "")
                if sync_id:
                    self.state.record_sync(sync_id, "single", "completed", 1, 1)
            elif resp.status_code == 429 or resp.status_code >= 500:
                raise _Transient(f"{resp.status_code} {_error(data, resp)}", retry_after(resp))
            outcome = self._outcome(chunk[0], resp.status_code, data, data.get("data") or {})
            return [] if outcome is None else [outcome]

        resp = self.client.post(BATCH_PATH, {"products": [op.wire() for op in chunk]})
        data = _json(resp)
        if resp.status_code == 429 or resp.status_code >= 500:
            raise _Transient(f"batch: {resp.status_code} {_error(data, resp)}", retry_after(resp))
        if resp.status_code != 200:
            raise SinkError(
                f"the storefront API refused a batch of {len(chunk)} products as a whole "
                f"({resp.status_code}: {json.dumps(data)[:500]}); is --option url= an API "
                "with POST /api/products/sync/batch? --option batch=1 uses the single endpoint"
            )
        body = data.get("data") or {}
        results = body.get("results")
        if not isinstance(results, list) or len(results) != len(chunk):
            raise SinkError(f"batch answer without one result per product: {str(data)[:500]}")
        if body.get("syncId"):
            ok = sum(1 for item in results if item.get("success"))
            self.state.record_sync(
                str(body["syncId"]), "batch", str(body.get("status", "")), len(chunk), ok
            )
        again: list[_Op] = []
        failures: list[str] = []
        for op, item in zip(chunk, results, strict=True):
            code = int(item.get("status", 200 if item.get("success") else 500))
            if code == 429 or code >= 500:
                failures.append(f"{op.reference}: {code} {item.get('error', '')}")
                continue
            nxt = self._outcome(op, code, item, item)
            if nxt is not None:
                again.append(nxt)
        if failures:
            # the others are settled; these stay pending (with the ops converted now)
            raise _Transient(f"batch items failed: {'; '.join(failures[:3])}", None, whole=False)
        return again

    def _outcome(
        self, op: _Op, code: int, body: dict[str, Any], data: dict[str, Any]
    ) -> _Op | None:
        """Settle one product's answer; return the op to send again, if any."""
        r = op.record
        if code == 200:
            self._confirm(op, data)
            return None
        if code == 409 and op.operation == "create":
            self.stats["conflicts"] += 1
            self._mark_remote(op)
            return self._convert(op, "update", body)
        if code == 404 and op.operation == "update":
            if op.kind != "upsert":  # nothing to deactivate there
                self._forget(op)
                return None
            return self._convert(op, "create", body)
        if code in (400, 409, 422):
            self._reject(
                r,
                op.reference,
                f"product {r.id} (reference {op.reference!r}): the storefront API refused "
                f"the {op.operation} ({code}): {json.dumps(body, default=str)[:2000]}",
            )
            return None
        raise SinkError(
            f"the storefront API answered {code} for product {r.id} (reference "
            f"{op.reference!r}): {json.dumps(body, default=str)[:500]}"
        )

    def _convert(self, op: _Op, operation: str, body: dict[str, Any]) -> _Op | None:
        op.conversions += 1
        if op.conversions > _MAX_CONVERSIONS:
            self._reject(
                op.record,
                op.reference,
                f"product {op.record.id} (reference {op.reference!r}): create answered 409 "
                f"and update 404 (last: {json.dumps(body, default=str)[:500]})",
            )
            return None
        op.operation = operation
        return op

    def _confirm(self, op: _Op, data: dict[str, Any]) -> None:
        r = op.record
        sync_id = data.get("syncId")
        presta_id = data.get("presta_id")
        st = self.state.get(r.id)
        if op.kind == "retire":
            log.info("event=storefront_retired id=%s reference=%s", r.id, op.reference)
            return
        if op.kind == "deactivate":
            assert st is not None
            self.state.put(
                [replace(st, active=False, version=r.version, digest=None, status="deactivated",
                         sync_id=sync_id or st.sync_id, error=None)]
            )  # fmt: skip
            self.stats["deactivated"] += 1
        else:
            self.state.put(
                [
                    ProductState(
                        r.id, op.reference, True, bool(op.fields.get("active", True)),
                        r.version, op.digest, op.fields["name"], op.fields["price"], "synced",
                        sync_id, presta_id if isinstance(presta_id, int) else None,
                    )
                ]
            )  # fmt: skip
            self.stats["created" if op.operation == "create" else "updated"] += 1
        self._pending.pop(r.id, None)

    def _mark_remote(self, op: _Op) -> None:
        """A create met 409: the product is there; remember it (no version: not confirmed)."""
        if op.kind != "upsert":
            return
        r = op.record
        st = self.state.get(r.id)
        version = st.version if st is not None and st.reference == op.reference else -1
        self.state.put(
            [ProductState(r.id, op.reference, True, True, version, None, op.fields["name"],
                          op.fields["price"], "exists")]
        )  # fmt: skip

    def _forget(self, op: _Op) -> None:
        r = op.record
        st = self.state.get(r.id)
        if op.kind == "deactivate" and st is not None:
            self.state.put([replace(st, remote=False, version=r.version, status="absent")])
            self.stats["delete_noop"] += 1
            self._pending.pop(r.id, None)


class _Transient(Exception):
    def __init__(self, message: str, retry_after: float | None, *, whole: bool = True) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.whole_request = whole


def _deactivation(r: Record, st: ProductState, kind: str) -> _Op:
    """The smallest update the API takes: the required fields, quantity 0, inactive."""
    fields: dict[str, Any] = {
        "reference": st.reference,
        "name": st.name or st.reference,
        "price": st.price if st.price is not None else 0.0,
        "quantity": 0,
        "active": False,
    }
    return _Op(r, kind, "update", fields)


def _local_reason(r: Record, reference: str, errors: list[rules.FieldError]) -> str:
    return (
        f"product {r.id} (reference {reference!r}) breaks the storefront API's rules, "
        f"not sent: " + "; ".join(str(e) for e in errors)
    )


def _json(resp: httpx.Response) -> dict[str, Any]:
    try:
        data = resp.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _error(data: dict[str, Any], resp: httpx.Response) -> str:
    return str(data.get("error") or resp.text[:200])
