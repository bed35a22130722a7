"""Contract server for the hosted search "Update API" (seeds/search-service-update-api.txt).

Endpoints (form-encoded ``POST``s, ``private_key`` in the form; ``state/get`` a ``GET``
with it in the query):

* ``POST /api/items/update/json`` — ``data``: JSON, or JSON ZLIB-compressed
  (``gzcompress``), with ``header``, ``schema``, ``items``, ``categories``, ``pages``;
  at most 250 items / categories / pages a request; every rule of
  :mod:`consumers.search_service.rules` (attribute names, standard-attribute edit
  restrictions, facet and range settings, item value types against the schema in
  force, required ids, valid URLs).
* ``POST /api/items/delete/json``, ``/api/categories/delete/json``,
  ``/api/pages/delete/json`` — ``id`` (``id[]`` repeated also accepted: the seed's
  "id array").
* ``POST /api/state/update/json`` — ``full_import=start|done``, ``addon_status=
  enabled|disabled|deleted``.  Between ``start`` and ``done`` nothing is indexed: what
  arrives goes to a staging index (starting empty, with the current schema) that
  *replaces* the index at ``done``.  ``deleted`` clears everything and disables the
  keys until a ``full_import=start``; ``disabled`` until ``enabled``.
* ``GET /api/state/get/json?private_key=K&status&full_import&product_count`` —
  ``{"variable": {"status": ..., "full_import": ..., "product_count": "N"}}``.

Answers: ``"ok"``; ``{"errors": {"error": CODE}}`` with the seed's codes — 401
``error_invalid_private_key``, 403 ``inactive_private_key``, 400
``error_empty_request``, 500 ``error_internal_error``, 503 ``CLOSED;``.  The seed has
no code for malformed data (the real service finds out asynchronously): this server
answers it at once, 400 (413 when too large) ``{"errors": {"error":
"error_invalid_data", "messages": [...]}}``, so that clients can be tested.  Every
malformed request (``error_empty_request`` and ``error_invalid_data``) counts; the
fifth within an hour blocks the key: from then on every request gets
``inactive_private_key`` (``unblock()`` lifts it).

Options (``--option k=v``): ``private_key`` (default ``demo-private-key``),
``index_delay`` (seconds a change stays ``update``/``updating`` in ``state/get``,
default 0).  Knobs for tests: :meth:`Server.fail_next`, :meth:`Server.refuse_next`,
:meth:`Server.unblock`, :meth:`Server.throttle` (429 to every request until lifted).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_to_bytes

from consumers.search_service import rules
from tests.contracts.base import ContractServer, Request, Response, route

__all__ = ["Server"]

HOUR = 3600.0
BLOCK_AFTER = 5


def parse_form(body: bytes) -> dict[bytes, list[bytes]]:
    """``application/x-www-form-urlencoded`` to raw bytes (``data`` may be binary zlib)."""
    out: dict[bytes, list[bytes]] = {}
    for pair in body.split(b"&"):
        if not pair:
            continue
        name, _, value = pair.partition(b"=")
        key = unquote_to_bytes(name.replace(b"+", b" "))
        out.setdefault(key, []).append(unquote_to_bytes(value.replace(b"+", b" ")))
    return out


def _error(status: int, code: str, **extra: Any) -> Response:
    return Response(status, {"errors": {"error": code, **extra}})


@dataclass
class _Index:
    schema: dict[str, dict[str, Any]] = field(default_factory=dict)  # by attribute name
    items: dict[int, dict[str, Any]] = field(default_factory=dict)
    categories: dict[int, dict[str, Any]] = field(default_factory=dict)
    pages: dict[int, dict[str, Any]] = field(default_factory=dict)

    def types(self) -> dict[str, str]:
        return rules.attribute_types(list(self.schema.values()))

    def dump(self) -> dict[str, Any]:
        return {
            "schema": list(self.schema.values()),
            "items": {str(k): v for k, v in sorted(self.items.items())},
            "categories": {str(k): v for k, v in sorted(self.categories.items())},
            "pages": {str(k): v for k, v in sorted(self.pages.items())},
        }


class Server(ContractServer):
    name = "search-service"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        private_key: str = "demo-private-key",
        index_delay: str | float = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(host, port)
        self.private_key = private_key
        self.index_delay = float(index_delay)
        self.clock = clock
        self.live = _Index()
        self.staging: _Index | None = None
        self.full_import = "done"
        self.addon_status = "enabled"
        self.received = False
        self.changed_at = float("-inf")
        self.last_error: str | None = None
        self.malformed_at: list[float] = []
        self.malformed_total = 0
        self.blocked = False
        self.log: list[dict[str, Any]] = []
        self._failures: list[tuple[int, float | None]] = []
        self._refusals: list[str] = []
        self._throttle: float | None = None
        self.throttled = 0  # requests answered 429 by throttle()

    # -- knobs --------------------------------------------------------------------------

    def fail_next(self, n: int = 1, status: int = 503, retry_after: float | None = None) -> None:
        """The next ``n`` requests fail with ``status`` (503: ``CLOSED;``, 500:
        ``error_internal_error``, 429 ...), before anything is read or counted."""
        with self.lock:
            self._failures += [(status, retry_after)] * n

    def refuse_next(self, n: int = 1, reason: str = "refused by the test (refuse_next)") -> None:
        """The next ``n`` valid ``items/update`` requests are answered as malformed (and
        counted as such): what the real service does with data it cannot process."""
        with self.lock:
            self._refusals += [reason] * n

    def throttle(self, on: bool = True, retry_after: float = 0.2) -> None:
        """While on, every request is answered 429 (``Retry-After``), before anything is
        read or counted (the API has no per-item throttle: a request is throttled whole)."""
        with self.lock:
            self._throttle = retry_after if on else None

    def unblock(self) -> None:
        with self.lock:
            self.blocked = False
            self.malformed_at.clear()

    # -- recorded state -----------------------------------------------------------------

    def malformed_last_hour(self) -> int:
        now = self.clock()
        return sum(1 for t in self.malformed_at if now - t < HOUR)

    def status(self) -> str:
        """The seed's ``status`` vocabulary."""
        if self.addon_status != "enabled":
            return "disabled"
        if self.last_error is not None:
            return "error"
        if not self.received and not self.live.items and not self.live.categories:
            return "none"
        if self.full_import == "start":
            return "update"
        elapsed = self.clock() - self.changed_at
        if elapsed < self.index_delay / 2:
            return "update"
        if elapsed < self.index_delay:
            return "updating"
        return "normal"

    def state(self) -> Any:
        with self.lock:
            return {
                **self.live.dump(),
                "staging": None if self.staging is None else self.staging.dump(),
                "full_import": self.full_import,
                "addon_status": self.addon_status,
                "status": self.status(),
                "product_count": len(self.live.items),
                "malformed": {
                    "last_hour": self.malformed_last_hour(),
                    "total": self.malformed_total,
                    "last_error": self.last_error,
                },
                "blocked": self.blocked,
                "requests": list(self.log),
            }

    # -- request plumbing ---------------------------------------------------------------

    def _target(self) -> _Index:
        return self.staging if self.staging is not None else self.live

    def _changed(self) -> None:
        self.received = True
        self.last_error = None
        if self.staging is None:
            self.changed_at = self.clock()

    def _record(self, entry: dict[str, Any], resp: Response) -> Response:
        entry["status"] = resp.status
        if isinstance(resp.body, dict) and "errors" in resp.body:
            entry["error"] = resp.body["errors"]
        self.log.append(entry)
        return resp

    def _malformed(
        self, messages: list[str], code: str = "error_invalid_data", status: int = 400
    ) -> Response:
        self.malformed_total += 1
        self.malformed_at.append(self.clock())
        self.last_error = f"{code}: {'; '.join(messages)[:500]}"
        if self.malformed_last_hour() >= BLOCK_AFTER:
            self.blocked = True
        if code == "error_empty_request":
            return _error(status, code)
        return _error(status, code, messages=messages[:50])

    def _gate(
        self, req: Request, entry: dict[str, Any], needs_active: bool
    ) -> tuple[dict[str, list[bytes]], Response | None]:
        """Failures on purpose, the form, the key, the block: (params, refusal or None)."""
        if self._throttle is not None:
            self.throttled += 1
            return {}, Response(
                429, {"errors": {"error": "http_429"}}, {"Retry-After": f"{self._throttle:g}"}
            )
        if self._failures:
            status, retry_after = self._failures.pop(0)
            headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
            if status == 503:
                headers["Content-Type"] = "text/plain"
                return {}, Response(status, b"CLOSED;", headers)
            if status == 500:
                return {}, Response(status, {"errors": {"error": "error_internal_error"}}, headers)
            return {}, Response(status, {"errors": {"error": f"http_{status}"}}, headers)
        params: dict[bytes, list[bytes]]
        if req.method == "GET":
            params = {k.encode(): [v.encode() for v in vs] for k, vs in req.query.items()}
        else:
            params = parse_form(req.body)
        keys = params.get(b"private_key", [])
        if len(keys) != 1 or keys[0].decode("utf-8", "replace") != self.private_key:
            return params, _error(401, "error_invalid_private_key")
        if self.blocked or (needs_active and self.addon_status != "enabled"):
            return params, _error(403, "inactive_private_key")
        if req.method == "POST":
            ctype = req.header("Content-Type").split(";")[0].strip().lower()
            if ctype != "application/x-www-form-urlencoded":
                return params, self._malformed(
                    [
                        f"expected a form-encoded body (application/x-www-form-urlencoded), got {ctype!r}"
                    ]
                )
        for name, values in params.items():
            if len(values) > 1 and name not in (b"id", b"id[]"):
                return params, self._malformed(
                    [f"parameter {name.decode('latin-1')} given {len(values)} times"]
                )
        return params, None

    # -- endpoints ----------------------------------------------------------------------

    @route("POST", "/api/items/update/json")
    def items_update(self, req: Request) -> Response:
        with self.lock:
            entry: dict[str, Any] = {"method": "POST", "endpoint": "items/update"}
            params, refusal = self._gate(req, entry, needs_active=True)
            if refusal is not None:
                return self._record(entry, refusal)
            raw = (params.get(b"data") or [b""])[0]
            if not raw:
                return self._record(entry, self._malformed(["no data"], "error_empty_request"))
            entry["compressed"] = raw[:1] == b"\x78"
            try:
                data = rules.decode_data(raw)
            except rules.DataTooLarge as exc:
                return self._record(entry, self._malformed([str(exc)], status=413))
            except ValueError as exc:
                return self._record(
                    entry, self._malformed([f"data is not (zlib-compressed) JSON: {exc}"])
                )
            if rules.is_empty(data):
                return self._record(
                    entry, self._malformed(["data has nothing"], "error_empty_request")
                )
            target = self._target()
            problems = rules.data_errors(data, target.types())
            if isinstance(data, dict):
                for key in ("schema", "items", "categories", "pages"):
                    objs = data.get(key)
                    if isinstance(objs, list):
                        entry[key] = [
                            o.get("id", o.get("name")) if isinstance(o, dict) else None
                            for o in objs
                        ]
            if problems:
                return self._record(entry, self._malformed(problems))
            if self._refusals:
                return self._record(entry, self._malformed([self._refusals.pop(0)]))
            for attr in data.get("schema", []):
                merged = {**target.schema.get(attr["name"], {}), **attr}
                target.schema[attr["name"]] = copy.deepcopy(merged)
            for key, store in (
                ("items", target.items),
                ("categories", target.categories),
                ("pages", target.pages),
            ):
                for obj in data.get(key, []):
                    store[int(obj["id"])] = copy.deepcopy(obj)
            entry["staged"] = self.staging is not None
            self._changed()
            return self._record(entry, Response(200, "ok"))

    def _delete(self, req: Request, what: str) -> Response:
        with self.lock:
            entry: dict[str, Any] = {"method": "POST", "endpoint": f"{what}/delete"}
            params, refusal = self._gate(req, entry, needs_active=True)
            if refusal is not None:
                return self._record(entry, refusal)
            values = params.get(b"id", []) + params.get(b"id[]", [])
            if not values or not any(values):
                return self._record(entry, self._malformed(["no id"], "error_empty_request"))
            ids: list[int] = []
            for v in values:
                text = v.decode("utf-8", "replace")
                try:
                    ident = int(text)
                except ValueError:
                    ident = None
                if (
                    ident is None
                    or not rules.BIGINT_MIN <= ident <= rules.BIGINT_MAX
                    or text.strip() != text
                ):
                    return self._record(entry, self._malformed([f"id: not a bigint: {text!r}"]))
                ids.append(ident)
            entry["ids"] = ids
            target = self._target()
            store = {"items": target.items, "categories": target.categories, "pages": target.pages}[
                what
            ]
            for ident in ids:
                store.pop(ident, None)
            entry["staged"] = self.staging is not None
            self._changed()
            return self._record(entry, Response(200, "ok"))

    @route("POST", "/api/items/delete/json")
    def items_delete(self, req: Request) -> Response:
        return self._delete(req, "items")

    @route("POST", "/api/categories/delete/json")
    def categories_delete(self, req: Request) -> Response:
        return self._delete(req, "categories")

    @route("POST", "/api/pages/delete/json")
    def pages_delete(self, req: Request) -> Response:
        return self._delete(req, "pages")

    @route("POST", "/api/state/update/json")
    def state_update(self, req: Request) -> Response:
        with self.lock:
            entry: dict[str, Any] = {"method": "POST", "endpoint": "state/update"}
            params, refusal = self._gate(req, entry, needs_active=False)
            if refusal is not None:
                return self._record(entry, refusal)
            full = [v.decode("utf-8", "replace") for v in params.get(b"full_import", [])]
            addon = [v.decode("utf-8", "replace") for v in params.get(b"addon_status", [])]
            entry.update(
                {
                    "full_import": full[0] if full else None,
                    "addon_status": addon[0] if addon else None,
                }
            )
            if bool(full) == bool(addon):
                problem = "one of full_import or addon_status" if not full else "not both"
                return self._record(
                    entry, self._malformed([f"state/update needs {problem}"], "error_empty_request")
                )
            if full:
                return self._record(entry, self._full_import(full[0]))
            return self._record(entry, self._addon_status(addon[0]))

    def _full_import(self, value: str) -> Response:
        if value == "start":
            if self.addon_status == "disabled":
                return _error(403, "inactive_private_key")
            # A new start discards an unfinished import; the schema carries over.
            self.staging = _Index(schema=copy.deepcopy(self.live.schema))
            self.full_import = "start"
            self.addon_status = "enabled"  # after addon_status=deleted: keys active again
            self.last_error = None
            return Response(200, "ok")
        if value == "done":
            if self.staging is None:
                return self._malformed(["full_import=done without full_import=start"])
            self.live, self.staging = self.staging, None
            self.full_import = "done"
            self._changed()
            return Response(200, "ok")
        return self._malformed([f"full_import: must be 'start' or 'done', got {value!r}"])

    def _addon_status(self, value: str) -> Response:
        if value not in ("enabled", "disabled", "deleted"):
            return self._malformed(
                [f"addon_status: must be enabled, disabled or deleted, got {value!r}"]
            )
        if value == "deleted":
            self.live, self.staging = _Index(), None
            self.full_import = "done"
            self.received = False
        if value == "enabled" and self.addon_status == "deleted":
            return _error(403, "inactive_private_key")  # only a full import reactivates
        self.addon_status = value
        return Response(200, "ok")

    @route("GET", "/api/state/get/json")
    def state_get(self, req: Request) -> Response:
        with self.lock:
            entry: dict[str, Any] = {"method": "GET", "endpoint": "state/get"}
            params, refusal = self._gate(req, entry, needs_active=False)
            if refusal is not None:
                return self._record(entry, refusal)
            asked = [k for k in ("status", "full_import", "product_count") if k.encode() in params]
            variable: dict[str, str] = {}
            for key in asked or ("status", "full_import", "product_count"):
                if key == "status":
                    variable["status"] = self.status()
                elif key == "full_import":
                    variable["full_import"] = self.full_import
                elif self.addon_status != "deleted":
                    variable["product_count"] = str(len(self.live.items))
            return self._record(entry, Response(200, {"variable": variable}))
