"""Contract server for the Workers KV REST API (the edge KV seed, seeds/edge-kv-sync.txt).

Endpoints, under ``/client/v4/accounts/{account}/storage/kv/namespaces/{namespace}``,
every one with ``Authorization: Bearer {token}``:

* ``PUT .../bulk`` — a JSON array of up to 10,000 ``{"key", "value"}`` objects
  (optional ``base64``, ``expiration``, ``expiration_ttl``, ``metadata`` accepted);
  answers ``{"success": true, "errors": [], "messages": [], "result":
  {"successful_key_count": N, "unsuccessful_keys": []}}``.
* ``POST .../bulk/delete`` — a JSON array of up to 10,000 keys; the same answer.
* ``GET .../values/{key}`` — the value as it was written (``application/octet-stream``),
  404 with error 10009 ``key not found``.
* ``GET .../keys?prefix=&limit=&cursor=`` — ``{"result": [{"name": ...}], "result_info":
  {"count": N, "cursor": "..."}}``, keys sorted, ``limit`` 10..1000 (default 1000), an
  empty cursor on the last page.

Rules, as Cloudflare's (status, ``errors[0].code``): a missing or wrong bearer token 403
/ 10000 ``Authentication error``; another account or namespace 404 / 10013; a body that
is not such an array 400 / 10001; more than 10,000 entries 400 / 10018; a request over
100 MB 413 / 10011; a key that is empty, ``.``, ``..`` or over 512 bytes (UTF-8) 414 /
10033; a value over 25 MiB 413 / 10012.  **At most one write per key per second**: a
write or delete of a key less than one second after the previous accepted one is
recorded as a *violation* and answered 429 / 10049 (``Retry-After: 1``); the request is
then not applied at all.  (Cloudflare's exact error codes vary; these are stable
stand-ins.)

``state()``: ``{"keys": {key: value}, "violations": [{"key", "gap"}], "writes": {key:
count}}``.

Options (``--option k=v``): ``account`` (default ``demo-account``), ``namespace``
(``demo-namespace``), ``token`` (``demo-token``), ``write_interval`` (seconds, default 1).
Knobs for tests: :meth:`Server.fail_next`, :meth:`Server.throttle_writes` (429 to every
write until lifted).
"""

from __future__ import annotations

import base64
import binascii
import time
from typing import Any
from urllib.parse import unquote

from tests.contracts.base import ContractServer, Request, Response, route

__all__ = ["Server"]

BASE = "/client/v4/accounts/{account}/storage/kv/namespaces/{namespace}"
MAX_PAIRS = 10_000
MAX_KEY_BYTES = 512
MAX_VALUE_BYTES = 25 * 1024 * 1024
MAX_REQUEST_BYTES = 100_000_000


def _fail(status: int, code: int, message: str, **headers: str) -> Response:
    return Response(
        status,
        {"success": False, "errors": [{"code": code, "message": message}], "messages": []},
        headers=dict(headers),
    )


def _ok(result: Any, **extra: Any) -> Response:
    return Response(200, {"success": True, "errors": [], "messages": [], "result": result, **extra})


class Server(ContractServer):
    name = "kv-rest"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        account: str = "demo-account",
        namespace: str = "demo-namespace",
        token: str = "demo-token",
        write_interval: str | float = 1.0,
    ) -> None:
        super().__init__(host, port)
        self.account = account
        self.namespace = namespace
        self.token = token
        self.write_interval = float(write_interval)
        self.kv: dict[str, str] = {}
        self.last_write: dict[str, float] = {}
        self.writes: dict[str, int] = {}
        self.violations: list[dict[str, Any]] = []
        self._fail: list[int] = []
        self._throttled = False
        self.throttled = 0  # write requests answered 429 by throttle_writes

    @property
    def api_url(self) -> str:
        """What a client takes as its API base URL (``.../client/v4``)."""
        return f"{self.url}/client/v4"

    def fail_next(self, *statuses: int) -> None:
        """Answer the next write requests with these statuses (e.g. 503, 429)."""
        with self.lock:
            self._fail.extend(statuses)

    def throttle_writes(self, on: bool = True) -> None:
        """While on, every write request (bulk write or delete) is answered 429 / 10049
        (``Retry-After: 0.2``) and not applied at all."""
        with self.lock:
            self._throttled = on

    def state(self) -> Any:
        return {
            "keys": dict(self.kv),
            "violations": list(self.violations),
            "writes": dict(self.writes),
        }

    # -- checks ---------------------------------------------------------------------

    def _check(self, req: Request) -> Response | None:
        if req.header("authorization") != f"Bearer {self.token}":
            return _fail(403, 10000, "Authentication error")
        if req.params.get("account") != self.account:
            return _fail(404, 10013, f"account {req.params.get('account')!r} not found")
        if req.params.get("namespace") != self.namespace:
            return _fail(404, 10013, "namespace not found")
        return None

    def _check_key(self, key: Any) -> Response | None:
        if not isinstance(key, str):
            return _fail(400, 10001, f"a key must be a string, not {key!r}")
        size = len(key.encode())
        if size == 0 or key in (".", ".."):
            return _fail(414, 10033, f"invalid key {key!r}")
        if size > MAX_KEY_BYTES:
            return _fail(
                414, 10033, f"UTF-8 encoded length of {size} exceeds key length limit of 512"
            )
        return None

    def _rate(self, keys: list[str]) -> Response | None:
        """429 (and a violation per key) when a key was written less than a second ago."""
        now = time.monotonic()
        hot = [
            (k, now - self.last_write[k])
            for k in keys
            if k in self.last_write and now - self.last_write[k] < self.write_interval
        ]
        if not hot:
            for k in keys:
                self.last_write[k] = now
                self.writes[k] = self.writes.get(k, 0) + 1
            return None
        for key, gap in hot:
            self.violations.append({"key": key, "gap": round(gap, 4)})
        return _fail(
            429,
            10049,
            f"more than one write per second to the same key: {hot[0][0]!r}",
            **{"Retry-After": "1"},
        )

    def _array(self, req: Request) -> tuple[list[Any] | None, Response | None]:
        if len(req.body) > MAX_REQUEST_BYTES:
            return None, _fail(413, 10011, "request body over 100 MB")
        try:
            body = req.json()
        except (ValueError, UnicodeDecodeError):
            return None, _fail(400, 10001, "request body is not valid JSON")
        if not isinstance(body, list):
            return None, _fail(400, 10001, "request body must be a JSON array")
        if len(body) > MAX_PAIRS:
            return None, _fail(400, 10018, f"{len(body)} entries: at most 10000 a request")
        return body, None

    def _injected(self) -> Response | None:
        if self._throttled:
            self.throttled += 1
            return _fail(429, 10049, "throttled (throttle_writes)", **{"Retry-After": "0.2"})
        if self._fail:
            status = self._fail.pop(0)
            return _fail(status, 10000 + status, f"injected {status}", **{"Retry-After": "0.1"})
        return None

    # -- endpoints ------------------------------------------------------------------

    @route("PUT", BASE + "/bulk")
    def bulk_write(self, req: Request) -> Response:
        with self.lock:
            refused = self._check(req) or self._injected()
            if refused:
                return refused
            body, refused = self._array(req)
            if refused or body is None:
                return refused or _fail(400, 10001, "empty body")
            pairs: list[tuple[str, str]] = []
            for item in body:
                if not isinstance(item, dict) or "key" not in item or "value" not in item:
                    return _fail(400, 10001, f"each entry needs key and value: {item!r:.100}")
                refused = self._check_key(item["key"])
                if refused:
                    return refused
                value = item["value"]
                if not isinstance(value, str):
                    return _fail(400, 10001, f"value of {item['key']!r} must be a string")
                if item.get("base64"):
                    try:
                        value = base64.b64decode(value, validate=True).decode()
                    except (binascii.Error, UnicodeDecodeError):
                        return _fail(400, 10001, f"value of {item['key']!r} is not base64")
                if len(value.encode()) > MAX_VALUE_BYTES:
                    return _fail(413, 10012, f"value of {item['key']!r} exceeds 25 MiB")
                pairs.append((item["key"], value))
            refused = self._rate([k for k, _ in pairs])
            if refused:
                return refused
            for key, value in pairs:
                self.kv[key] = value
            return _ok({"successful_key_count": len(pairs), "unsuccessful_keys": []})

    @route("POST", BASE + "/bulk/delete")
    def bulk_delete(self, req: Request) -> Response:
        with self.lock:
            refused = self._check(req) or self._injected()
            if refused:
                return refused
            body, refused = self._array(req)
            if refused or body is None:
                return refused or _fail(400, 10001, "empty body")
            for key in body:
                refused = self._check_key(key)
                if refused:
                    return refused
            refused = self._rate(list(body))
            if refused:
                return refused
            for key in body:
                self.kv.pop(key, None)
            return _ok({"successful_key_count": len(body), "unsuccessful_keys": []})

    @route("GET", BASE + "/values/{key}")
    def get_value(self, req: Request) -> Response:
        with self.lock:
            refused = self._check(req)
            if refused:
                return refused
            key = unquote(req.params["key"])
            if key not in self.kv:
                return _fail(404, 10009, "get: 'key not found'")
            return Response(
                200, self.kv[key].encode(), headers={"Content-Type": "application/octet-stream"}
            )

    @route("GET", BASE + "/keys")
    def list_keys(self, req: Request) -> Response:
        with self.lock:
            refused = self._check(req)
            if refused:
                return refused
            prefix = req.query.get("prefix", [""])[0]
            try:
                limit = int(req.query.get("limit", ["1000"])[0])
            except ValueError:
                return _fail(400, 10001, "limit must be a number")
            if not 10 <= limit <= 1000:
                return _fail(400, 10001, "limit must be between 10 and 1000")
            cursor = req.query.get("cursor", [""])[0]
            start = int(cursor) if cursor.isdigit() else 0
            names = sorted(k for k in self.kv if k.startswith(prefix))
            page = names[start : start + limit]
            nxt = str(start + limit) if start + limit < len(names) else ""
            return _ok([{"name": n} for n in page], result_info={"count": len(page), "cursor": nxt})
