"""Contract server: a webhook subscriber (seed ``inventory-sync-webhooks.txt``).

It is the receiving end of ``catalog-cdc consume webhooks``: ``POST {path}`` (default
``/webhooks/pixlpay``, the seed's route) takes ``product.created`` /
``product.updated`` / ``product.deleted`` events and

* verifies the signature and the timestamp with :func:`verify_webhook` — the very
  snippet of ``docs/webhooks.md`` that receivers copy (a unit test keeps the two
  identical): 401 for a missing or bad signature or a stale timestamp;
* checks the event's shape (400, the ERP seed's error body ``{"success": false,
  "error": "Validation failed", "details": [{"field", "message"}]}``);
* deduplicates by delivery id (``X-Webhook-ID``, also the body's ``id``): a repeat is
  answered 200 and not applied again;
* records the accepted events in order, per product, and every event whose
  ``data.version`` is not newer than the product's last accepted one (out of order);
* answers ``200 {"status": "received"}`` (the seed's reply).

Knobs for tests (in-process methods, also ``POST /_contract/fail-next`` ``{"n",
"status"}``, ``/_contract/down`` ``{"seconds"}``, ``/_contract/slow`` ``{"seconds"}``):
:meth:`Server.fail_next`, :meth:`Server.down`, :meth:`Server.respond_slowly`; in-process only:
:meth:`Server.refuse_products`, :meth:`Server.throttle_products` (per product, until lifted).

Options: ``secret`` (>= 32 characters, the ERP seed's minimum), ``path``,
``tolerance`` (seconds a timestamp may be off, default 300).  ``GET /_contract/state``:
see :meth:`Server.state`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Iterable
from typing import Any

from pipeline.errors import ConfigurationError
from tests.contracts.base import ContractServer, Request, Response, route

__all__ = ["DEFAULT_SECRET", "Server", "verify_webhook"]

DEFAULT_SECRET = "whsec_contract-server-webhook-secret-0001"
EVENT_TYPES = ("product.created", "product.updated", "product.deleted")


def verify_webhook(
    secret: str, body: bytes, timestamp: str, signature: str, tolerance: float = 300
) -> None:
    """Raise ValueError unless the request is signed with `secret` and is fresh.

    `body` is the raw request body (bytes, before any JSON parsing); `timestamp` and
    `signature` are the X-Webhook-Timestamp and X-Webhook-Signature headers.
    """
    if not timestamp or not signature:
        raise ValueError("missing X-Webhook-Timestamp or X-Webhook-Signature header")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise ValueError(f"X-Webhook-Timestamp {timestamp!r} is not a Unix time") from None
    if abs(time.time() - sent_at) > tolerance:
        raise ValueError(f"stale X-Webhook-Timestamp {timestamp} (tolerance {tolerance} s)")
    signed = timestamp.encode() + b"." + body
    expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature):
        raise ValueError("X-Webhook-Signature does not match")


def _invalid(field: str, message: str) -> Response:
    return Response(
        400,
        {
            "success": False,
            "error": "Validation failed",
            "details": [{"field": field, "message": message}],
        },
    )


class Server(ContractServer):
    name = "webhooks"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        secret: str = DEFAULT_SECRET,
        path: str = "/webhooks/pixlpay",
        tolerance: str | float = 300,
    ) -> None:
        if len(secret) < 32:
            raise ConfigurationError(
                f"--option secret: {len(secret)} characters; a webhook secret needs at least 32"
            )
        if not path.startswith("/"):
            raise ConfigurationError(f"--option path={path!r}: must start with /")
        super().__init__(host, port)
        self.secret = secret
        self.path = path.rstrip("/") or "/"
        self.tolerance = float(tolerance)
        self._routes.append(
            ("POST", re.compile(f"^{re.escape(self.path.rstrip('/'))}/?$"), Server._receive)
        )
        self._fail_next = 0
        self._fail_status = 503
        self._down_until = 0.0
        self._slow = 0.0
        self.events: list[dict[str, Any]] = []  # accepted, in arrival order
        self.products: dict[int, dict[str, Any]] = {}  # per product: the last accepted event
        self.history: dict[int, list[dict[str, Any]]] = {}
        self.seen_ids: set[str] = set()
        self.duplicates: list[str] = []
        self.out_of_order: list[dict[str, Any]] = []
        self.refused: list[dict[str, Any]] = []  # (status, reason) of what was not accepted
        self._refuse_products: dict[int, int] = {}
        self._throttle_products: dict[int, tuple[int, str | None]] = {}

    # -- knobs ------------------------------------------------------------------------

    def fail_next(self, n: int, status: int = 503) -> None:
        """Answer the next ``n`` deliveries with ``status`` (before any check)."""
        with self.lock:
            self._fail_next, self._fail_status = n, status

    def down(self, seconds: float) -> None:
        """Answer every delivery 503 for ``seconds`` from now."""
        with self.lock:
            self._down_until = time.monotonic() + seconds

    def respond_slowly(self, seconds: float) -> None:
        """Wait ``seconds`` before handling each delivery (0: back to normal)."""
        with self.lock:
            self._slow = seconds

    def refuse_products(self, product_ids: Iterable[int] = (), status: int = 422) -> None:
        """Until called again (``refuse_products()`` lifts it), a valid, signed event of one
        of ``product_ids`` is refused for good with ``status`` (the ERP seed's validation
        error body) and not applied."""
        with self.lock:
            self._refuse_products = dict.fromkeys(product_ids, status)

    def throttle_products(
        self, product_ids: Iterable[int] = (), status: int = 429, retry_after: str | None = None
    ) -> None:
        """Until called again (``throttle_products()`` lifts it), a valid, signed event of
        one of ``product_ids`` is answered ``status`` (``Retry-After``: ``retry_after``) and
        not applied; the other products' events are accepted."""
        with self.lock:
            self._throttle_products = dict.fromkeys(product_ids, (status, retry_after))

    @route("POST", "/_contract/fail-next")
    def _knob_fail(self, req: Request) -> Response:
        body = req.json()
        self.fail_next(int(body.get("n", 1)), int(body.get("status", 503)))
        return Response(200, {"ok": True})

    @route("POST", "/_contract/down")
    def _knob_down(self, req: Request) -> Response:
        self.down(float(req.json().get("seconds", 10)))
        return Response(200, {"ok": True})

    @route("POST", "/_contract/slow")
    def _knob_slow(self, req: Request) -> Response:
        self.respond_slowly(float(req.json().get("seconds", 0)))
        return Response(200, {"ok": True})

    # -- the endpoint -----------------------------------------------------------------

    def _refuse(self, status: int, reason: str, body: Any) -> Response:
        with self.lock:
            self.refused.append({"status": status, "reason": reason})
        return Response(status, body)

    def _receive(self, req: Request) -> Response:
        with self.lock:
            if self._fail_next > 0:
                self._fail_next -= 1
                status = self._fail_status
                self.refused.append({"status": status, "reason": "fail_next"})
                return Response(status, {"error": f"failing on purpose ({status})"})
            if time.monotonic() < self._down_until:
                self.refused.append({"status": 503, "reason": "down"})
                return Response(503, {"error": "down for maintenance"}, {"Retry-After": "1"})
            slow = self._slow
        if slow > 0:
            time.sleep(slow)
        try:
            verify_webhook(
                self.secret,
                req.body,
                req.header("X-Webhook-Timestamp"),
                req.header("X-Webhook-Signature"),
                self.tolerance,
            )
        except ValueError as exc:
            return self._refuse(401, str(exc), {"error": "Invalid signature", "message": str(exc)})
        try:
            event = req.json()
        except ValueError as exc:
            return self._refuse(400, "not JSON", _invalid("body", f"not JSON: {exc}").body)
        checked = self._check(event, req.header("X-Webhook-ID"), req.header("X-Webhook-Event"))
        if checked is not None:
            return self._refuse(400, str(checked.body), checked.body)
        data = event["data"]
        pid, version = int(data["product_id"]), int(data["version"])
        with self.lock:
            throttled = self._throttle_products.get(pid)
            refused = self._refuse_products.get(pid)
        if throttled is not None:
            status, wait = throttled
            with self.lock:
                self.refused.append({"status": status, "reason": "throttle_products"})
            headers = {} if wait is None else {"Retry-After": wait}
            return Response(status, {"error": f"throttled on purpose ({status})"}, headers)
        if refused is not None:
            body = _invalid("data.product", f"product {pid} refused on purpose").body
            return self._refuse(refused, "refuse_products", body)
        with self.lock:
            if event["id"] in self.seen_ids:
                self.duplicates.append(event["id"])
                return Response(200, {"status": "received", "duplicate": True})
            self.seen_ids.add(event["id"])
            last = self.products.get(pid)
            if last is not None and version <= last["version"]:
                self.out_of_order.append(
                    {"product_id": pid, "version": version, "after": last["version"],
                     "id": event["id"], "event_type": event["event_type"]}
                )  # fmt: skip
            summary = {
                "id": event["id"],
                "event_type": event["event_type"],
                "product_id": pid,
                "version": version,
            }
            self.events.append(summary)
            self.history.setdefault(pid, []).append(summary)
            self.products[pid] = {
                "event_type": event["event_type"],
                "version": version,
                "product": data.get("product"),
            }
        return Response(200, {"status": "received"})

    @staticmethod
    def _check(event: Any, header_id: str, header_event: str) -> Response | None:
        """The event's shape, or the 400 that says what is wrong."""
        if not isinstance(event, dict):
            return _invalid("body", "an event object is expected")
        if not isinstance(event.get("id"), str) or not event["id"]:
            return _invalid("id", "the delivery id is required")
        if header_id != event["id"]:
            return _invalid("X-Webhook-ID", f"header {header_id!r} is not the body's id")
        etype = event.get("event_type")
        if etype not in EVENT_TYPES:
            return _invalid("event_type", f"must be one of {list(EVENT_TYPES)}, not {etype!r}")
        if header_event != etype:
            return _invalid("X-Webhook-Event", f"header {header_event!r} is not {etype!r}")
        if not isinstance(event.get("created_at"), str):
            return _invalid("created_at", "an ISO 8601 time is required")
        data = event.get("data")
        if not isinstance(data, dict):
            return _invalid("data", "an object is required")
        pid = data.get("product_id")
        if not isinstance(pid, int) or isinstance(pid, bool):
            return _invalid("data.product_id", "an integer is required")
        if not isinstance(data.get("version"), int):
            return _invalid("data.version", "an integer is required")
        if etype == "product.deleted":
            if "product" in data:
                return _invalid("data.product", "a deleted event carries no product")
            return None
        product = data.get("product")
        if not isinstance(product, dict):
            return _invalid("data.product", "the product is required")
        if product.get("id") != pid:
            return _invalid("data.product.id", f"{product.get('id')!r} is not product_id {pid}")
        if product.get("version") != data["version"]:
            return _invalid("data.product.version", "must equal data.version")
        for name in ("name", "updated_at"):
            if not isinstance(product.get(name), str) or not product[name]:
                return _invalid(f"data.product.{name}", "a non-empty string is required")
        if not isinstance(product.get("is_active"), bool):
            return _invalid("data.product.is_active", "a boolean is required")
        return None

    def state(self) -> Any:
        """``events`` (accepted, in order), ``products`` (per product id: the last
        accepted ``event_type``, ``version`` and ``product``), ``history`` (per product:
        its events in order), ``out_of_order``, ``duplicates`` (delivery ids received
        again), ``refused`` (status and reason of every delivery not accepted)."""
        with self.lock:
            return {
                "events": list(self.events),
                "products": {str(k): dict(v) for k, v in self.products.items()},
                "history": {str(k): list(v) for k, v in self.history.items()},
                "out_of_order": list(self.out_of_order),
                "duplicates": list(self.duplicates),
                "refused": list(self.refused),
            }
