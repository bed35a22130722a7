"""Contract server of the products sync API (seed ``erp-to-storefront-products-sync-api``).

``catalog-cdc contract-server storefront-api [--option k=v ...]``, or in-process
``with Server(username="demo", password="demo") as s: s.url``.

Endpoints:

* ``POST /api/auth/login`` ``{"username", "password"}`` -> ``{"success": true, "data":
  {"token": <HS256 JWT>, "tokenType": "Bearer", "expiresIn": <s>}}``; 401 otherwise.
* ``POST /api/products/sync``: one product (``operation`` create/update + the fields).
  200 with the seed's success body; 400 (malformed: missing/unknown fields, wrong
  types), 422 (a limit), 409 (create of an existing reference), 404 (update of an
  unknown one), all with the seed's error body; 401 without a valid, unexpired token;
  429 + ``Retry-After`` over ``rate_limit`` requests a second per token.
* ``POST /api/products/sync/batch`` ``{"products": [...]}``: 1 to 50 products (400
  otherwise); 200 with one result per product (``index``, ``reference``, ``success``,
  ``status``, and the single endpoint's ``data`` or ``error``/``details``) and the
  batch's ``syncId``/``status`` (``completed``, ``partial``, ``failed``).
* ``GET /api/products/sync/status/{syncId}``: a sync's status and per-product results.
* ``GET /cdn/<any path>``: stands in for the image CDN (the sink's
  ``image_base_url``): deterministic bytes per path (:meth:`Server.image_bytes`).

Every field rule comes from :mod:`consumers.storefront_api.rules` — the same table the
sink checks before sending — and is enforced here whatever the client did.

Options (strings, from ``--option``): ``username``/``password`` (default demo/demo),
``rate_limit`` (requests per second per token, default 20), ``token_ttl`` (seconds,
default 3600), ``secret`` (JWT signing key), ``categories`` (the category ids that
exist in the shop, ``1-500`` or ``1,2,5``; default: any positive id).

Knobs for tests: :meth:`Server.fail_next` (the next n sync requests answer a status),
:meth:`Server.fail_items` (the next n batch items do), :meth:`Server.throttle_references`
(chosen products answer a status until lifted), :meth:`Server.expire_tokens`,
:meth:`Server.preload`.  :meth:`Server.state` returns the products by reference, the
sync log, the logins and every reference received.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from consumers.storefront_api import rules
from tests.contracts.base import ContractServer, Request, Response, route

__all__ = ["Server"]

_FAILURE_ERRORS = {
    429: "Rate limit exceeded",
    500: "Internal server error during processing",
    502: "PrestaShop API communication error",
    503: "Service unavailable",
}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _categories(spec: str | None) -> frozenset[int] | None:
    if not spec:
        return None
    ids: set[int] = set()
    for part in spec.split(","):
        lo, dash, hi = part.strip().partition("-")
        ids.update(range(int(lo), int(hi) + 1) if dash else {int(lo)})
    return frozenset(ids)


@dataclass
class _Failure:
    status: int
    retry_after: float | None


class Server(ContractServer):
    name = "storefront-api"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        username: str = "demo",
        password: str = "demo",
        rate_limit: str | int = 20,
        token_ttl: str | float = 3600,
        secret: str = "contract-server-secret",
        categories: str | None = None,
        **unknown: str,
    ) -> None:
        if unknown:
            raise TypeError(f"unknown storefront-api server options: {', '.join(unknown)}")
        super().__init__(host, port)
        self.username = username
        self.password = password
        self.rate_limit = int(rate_limit)
        self.token_ttl = float(token_ttl)
        self._secret = secret.encode()
        self.known_categories = _categories(categories)
        self.products: dict[str, dict[str, Any]] = {}
        self.syncs: dict[str, dict[str, Any]] = {}
        self.received: list[str] = []  # every reference in a sync request, valid or not
        self.logins = 0
        self._not_before = 0.0
        self._failures: deque[_Failure] = deque()
        self._item_failures: deque[int] = deque()
        self._throttled: dict[str, int] = {}
        self._windows: dict[str, deque[float]] = {}
        self._seq = 0
        self._ids = threading.Lock()

    # -- knobs --------------------------------------------------------------------------

    def fail_next(self, n: int = 1, status: int = 502, retry_after: float | None = None) -> None:
        """The next ``n`` sync requests (single or batch) answer ``status`` and change nothing."""
        with self.lock:
            self._failures.extend(_Failure(status, retry_after) for _ in range(n))

    def fail_items(self, n: int = 1, status: int = 502) -> None:
        """The next ``n`` products of batch requests fail with ``status`` (the rest succeed)."""
        with self.lock:
            self._item_failures.extend([status] * n)

    def throttle_references(self, references: Iterable[str] = (), status: int = 429) -> None:
        """Until called again (``throttle_references()`` lifts it), every product with one
        of ``references`` answers ``status`` and changes nothing: alone as a batch item (the
        rest of the batch is applied), as a whole on the single endpoint."""
        with self.lock:
            self._throttled = dict.fromkeys(references, status)

    def expire_tokens(self) -> None:
        """Every token issued so far is expired from now on (a new login is needed)."""
        with self.lock:
            self._not_before = time.time() + 1e-6

    def preload(self, product: dict[str, Any]) -> None:
        """Put a product in the shop as if created earlier (``product`` as a sync body)."""
        with self.lock:
            self._create({**product, "operation": "create"}, "preload")

    # -- state --------------------------------------------------------------------------

    def state(self) -> Any:
        with self.lock:
            return json.loads(
                json.dumps(
                    {
                        "products": self.products,
                        "syncs": list(self.syncs.values()),
                        "logins": self.logins,
                        "received": self.received,
                    }
                )
            )

    @staticmethod
    def image_bytes(path: str) -> bytes:
        """What ``GET /cdn/<path>`` serves: a PNG signature and bytes derived from ``path``."""
        return b"\x89PNG\r\n\x1a\n" + hashlib.sha256(path.encode()).digest() * 4

    # -- auth ---------------------------------------------------------------------------

    @route("POST", "/api/auth/login")
    def _login(self, req: Request) -> Response:
        try:
            body = req.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not {"username", "password"} <= body.keys():
            return Response(400, rules.error_body(
                [rules.FieldError("username", "username and password are required", 400)],
                "Invalid request data"))  # fmt: skip
        ok = hmac.compare_digest(str(body["username"]), self.username) and hmac.compare_digest(
            str(body["password"]), self.password
        )
        if not ok:
            return Response(401, {"success": False, "error": "Invalid credentials"})
        now = time.time()
        with self.lock:
            self.logins += 1
            self._seq += 1
            jti = f"t{self._seq}"
        claims = {"sub": self.username, "iat": now, "exp": now + self.token_ttl, "jti": jti}
        head = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        payload = _b64url(json.dumps(claims).encode())
        sig = hmac.new(self._secret, f"{head}.{payload}".encode(), hashlib.sha256).digest()
        token = f"{head}.{payload}.{_b64url(sig)}"
        return Response(200, {"success": True, "message": "Login successful",
                              "data": {"token": token, "tokenType": "Bearer",
                                       "expiresIn": self.token_ttl}})  # fmt: skip

    def _authorize(self, req: Request, *, sync: bool = True) -> tuple[str | None, Response | None]:
        """(token id, None) or (None, the 401/429 answer, or a failure of :meth:`fail_next`
        when ``sync``)."""
        scheme, _, token = req.header("Authorization").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None, _unauthorized("Missing or invalid authentication token")
        try:
            head, payload, sig = token.split(".")
            want = hmac.new(self._secret, f"{head}.{payload}".encode(), hashlib.sha256).digest()
            if not hmac.compare_digest(want, _unb64url(sig)):
                return None, _unauthorized("Invalid authentication token (signature)")
            if json.loads(_unb64url(head)).get("alg") != "HS256":
                return None, _unauthorized("Invalid authentication token (alg)")
            claims = json.loads(_unb64url(payload))
        except (ValueError, TypeError):
            return None, _unauthorized("Missing or invalid authentication token")
        now = time.time()
        with self.lock:
            if float(claims.get("exp", 0)) <= now or float(claims.get("iat", 0)) < self._not_before:
                return None, _unauthorized("Token expired")
            jti = str(claims.get("jti"))
            window = self._windows.setdefault(jti, deque())
            while window and window[0] <= now - 1.0:
                window.popleft()
            if len(window) >= self.rate_limit:
                wait = max(1, math.ceil(1.0 - (now - window[0])))
                return None, Response(
                    429,
                    {"success": False, "error": "Rate limit exceeded", "retryAfter": wait},
                    {"Retry-After": str(wait)},
                )
            window.append(now)
            if sync and self._failures:
                f = self._failures.popleft()
                headers = {} if f.retry_after is None else {"Retry-After": f"{f.retry_after:g}"}
                return None, Response(
                    f.status,
                    {"success": False, "error": _FAILURE_ERRORS.get(f.status, "Server error")},
                    headers,
                )
        return jti, None

    # -- sync ---------------------------------------------------------------------------

    @route("POST", "/api/products/sync")
    def _sync(self, req: Request) -> Response:
        _, denied = self._authorize(req)
        if denied is not None:
            return denied
        try:
            body = req.json()
        except ValueError:
            return Response(400, rules.error_body(
                [rules.FieldError("", "the body is not JSON", 400)], "Invalid request data"))  # fmt: skip
        with self.lock:
            if isinstance(body, dict) and isinstance(body.get("reference"), str):
                self.received.append(body["reference"])
                throttled = self._throttled.get(body["reference"])
                if throttled is not None:
                    return Response(throttled, {"success": False, "error": _FAILURE_ERRORS.get(
                        throttled, "Server error")})  # fmt: skip
            errors = self._check(body)
            if errors:
                return Response(_status_of(errors), rules.error_body(errors))
            sync_id = self._new_sync("single", 1)
            status, payload = self._apply(body, sync_id)
            self._finish(sync_id, [(body.get("reference"), body.get("operation"), status)])
            if status != 200:
                return Response(status, payload)
            return Response(200, {"success": True,
                                  "message": "Product synchronized successfully",
                                  "data": payload})  # fmt: skip

    @route("POST", "/api/products/sync/batch")
    def _batch(self, req: Request) -> Response:
        _, denied = self._authorize(req)
        if denied is not None:
            return denied
        try:
            body = req.json()
        except ValueError:
            body = None
        envelope = rules.check_batch(body)
        if envelope:
            return Response(400, rules.error_body(envelope, "Invalid request data"))
        with self.lock:
            sync_id = self._new_sync("batch", len(body["products"]))
            results: list[dict[str, Any]] = []
            log: list[tuple[Any, Any, int]] = []
            for i, item in enumerate(body["products"]):
                ref = item.get("reference") if isinstance(item, dict) else None
                if isinstance(ref, str):
                    self.received.append(ref)
                if isinstance(ref, str) and ref in self._throttled:
                    code = self._throttled[ref]
                    payload: dict[str, Any] = {
                        "success": False,
                        "error": _FAILURE_ERRORS.get(code, "Server error"),
                    }
                elif self._item_failures:
                    code = self._item_failures.popleft()
                    payload = {
                        "success": False,
                        "error": _FAILURE_ERRORS.get(code, "Server error"),
                    }
                else:
                    errors = self._check(item)
                    if errors:
                        code, payload = _status_of(errors), rules.error_body(errors)
                    else:
                        code, payload = self._apply(item, sync_id)
                op = item.get("operation") if isinstance(item, dict) else None
                log.append((ref, op, code))
                result = {"index": i, "reference": ref, "status": code, "success": code == 200}
                if code == 200:
                    result.update(payload)
                else:
                    result.update({k: v for k, v in payload.items() if k != "success"})
                results.append(result)
            summary = self._finish(sync_id, log)
            ok = summary["successful"]
            return Response(200, {
                "success": summary["failed"] == 0,
                "message": f"Batch synchronized: {ok} of {len(results)} products",
                "data": {"syncId": sync_id, "status": summary["status"], "total": len(results),
                         "successful": ok, "failed": summary["failed"], "results": results},
            })  # fmt: skip

    @route("GET", "/api/products/sync/status/{sync_id}")
    def _status(self, req: Request) -> Response:
        _, denied = self._authorize(req, sync=False)
        if denied is not None:
            return denied
        with self.lock:
            sync = self.syncs.get(req.params["sync_id"])
            if sync is None:
                return Response(404, {"success": False, "error": "Sync not found"})
            return Response(200, {"success": True, "data": sync})

    def dispatch(self, req: Request) -> Response:
        if req.method == "GET" and req.path.startswith("/cdn/"):
            # the image CDN's stand-in: any path, deterministic bytes
            path = req.path.removeprefix("/cdn")
            return Response(200, self.image_bytes(path), {"Content-Type": "image/png"})
        return super().dispatch(req)

    # -- the shop -----------------------------------------------------------------------

    def _check(self, item: Any) -> list[rules.FieldError]:
        errors = rules.check_product(item)
        if errors or self.known_categories is None:
            return errors
        return [
            rules.FieldError(f"categories[{i}]", f"category {c} does not exist in PrestaShop")
            for i, c in enumerate(item.get("categories") or [])
            if c not in self.known_categories
        ]

    def _apply(self, item: dict[str, Any], sync_id: str) -> tuple[int, dict[str, Any]]:
        ref = item["reference"]
        existing = self.products.get(ref)
        if item["operation"] == "create":
            if existing is not None:
                return 409, rules.error_body(
                    [rules.FieldError("reference", f"a product with reference {ref!r} exists "
                                      f"(productId {existing['productId']})", 409)],
                    "Product already exists")  # fmt: skip
            product = self._create(item, sync_id)
        else:
            if existing is None:
                return 404, rules.error_body(
                    [rules.FieldError("reference", f"no product with reference {ref!r}", 404)],
                    "Product not found")  # fmt: skip
            product = existing
            product.update(_fields(item))
            product["lastSyncId"] = sync_id
            product["updates"] += 1
        return 200, {
            "productId": product["productId"],
            "reference": ref,
            "presta_id": product["presta_id"],
            "syncId": sync_id,
            "operation": item["operation"],
            "imagesProcessed": len(item.get("images") or []),
            "technicalDataProcessed": len(item.get("technical_data") or []),
        }

    def _create(self, item: dict[str, Any], sync_id: str) -> dict[str, Any]:
        self._seq += 1
        product: dict[str, Any] = {
            "description": "",
            "active": True,
            "categories": [],
            "ean13": "",
            "weight": None,
            "brand": None,
            "images": [],
            "technical_data": [],
            **_fields(item),
            "productId": self._seq,
            "presta_id": 1000 + self._seq,
            "createdSyncId": sync_id,
            "lastSyncId": sync_id,
            "updates": 0,
        }
        self.products[item["reference"]] = product
        return product

    def _new_sync(self, kind: str, total: int) -> str:
        self._seq += 1
        sync_id = f"sync_{self._seq:06d}{hashlib.sha1(str(time.time()).encode()).hexdigest()[:6]}"
        self.syncs[sync_id] = {"syncId": sync_id, "type": kind, "status": "processing",
                               "total": total, "createdAt": time.time()}  # fmt: skip
        return sync_id

    def _finish(self, sync_id: str, log: list[tuple[Any, Any, int]]) -> dict[str, Any]:
        ok = sum(1 for _, _, code in log if code == 200)
        failed = len(log) - ok
        sync = self.syncs[sync_id]
        sync.update({
            "status": "completed" if failed == 0 else ("failed" if ok == 0 else "partial"),
            "successful": ok, "failed": failed, "completedAt": time.time(),
            "results": [{"reference": r, "operation": o, "status": c} for r, o, c in log],
        })  # fmt: skip
        return sync


def _fields(item: dict[str, Any]) -> dict[str, Any]:
    """What the shop keeps of a sync body: the fields given (null clears), images as
    their name, size and hash (not the bytes), technical data with PrintOrder."""
    out = {k: v for k, v in item.items() if k != "operation"}
    if "images" in out:
        images = []
        for image in out["images"] or []:
            raw = base64.b64decode(image["base64"])
            images.append({"fileName": image["fileName"], "bytes": len(raw),
                           "sha256": hashlib.sha256(raw).hexdigest()})  # fmt: skip
        out["images"] = images
    if "technical_data" in out:
        out["technical_data"] = [
            {**t, "PrintOrder": t.get("PrintOrder", 0)} for t in out["technical_data"] or []
        ]
    return out


def _status_of(errors: list[rules.FieldError]) -> int:
    return 400 if any(e.status == 400 for e in errors) else 422


def _unauthorized(message: str) -> Response:
    return Response(401, {"success": False, "error": message},
                    {"WWW-Authenticate": 'Bearer error="invalid_token"'})  # fmt: skip
