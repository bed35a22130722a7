"""The Workers KV REST API backend (httpx): bulk writes and deletes, one write a second.

Endpoints (under ``{api_url}/accounts/{account}/storage/kv/namespaces/{namespace}``,
``Authorization: Bearer {token}``): ``PUT /bulk`` (a JSON array of ``{"key", "value"}``),
``POST /bulk/delete`` (a JSON array of keys), ``GET /values/{key}``, ``GET
/keys?prefix=&cursor=``.  Limits: 10,000 pairs and 100 MB a request (requests are cut
by count and bytes), keys <= 512 bytes and values <= 25 MiB (the sink refuses longer
ones before they get here).

**One write a second per key, coalesced.**  The backend remembers when each key was
last written (or deleted) and never sends a key again within a second (plus a small
margin).  ``apply`` sends at once whatever is not hot; a hot key (``pulse`` after every
batch, a product edited in a burst) waits inside ``apply`` until its second is up, and
then the *latest* value is sent.  ``apply`` returns only when every change is confirmed,
so the sink commits offsets only after that: nothing is lost.  While ``apply`` waits the
runtime does not poll, so the edits that arrive meanwhile make the next batch, in which
every key again takes one write: a burst of N edits to one product costs about one write
of that key (and of ``pulse``) per second, not N.  ``pulse`` is sent last, after the
content it announces.

Failures: 429 (with ``Retry-After``), 5xx, timeouts and connection errors are transient
(the keys confirmed before the failure are not sent again on the retry); 401/403 (bad
token), 404 (unknown account or namespace) and any other 4xx stop the consumer with the
server's message.  ``unsuccessful_keys`` in a bulk answer are retried.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any, Final
from urllib.parse import quote

import httpx

from consumers.contract import SinkError, TransientSinkError
from consumers.edge_kv.layout import PULSE
from consumers.toolkit.batching import chunks
from consumers.toolkit.headers import retry_after

log = logging.getLogger(__name__)

__all__ = ["MAX_PAIRS", "MAX_REQUEST_BYTES", "RestBackend"]

MAX_PAIRS: Final = 10_000
MAX_REQUEST_BYTES: Final = 100_000_000
WRITE_INTERVAL: Final = 1.0
MARGIN: Final = 0.02


def _entry_size(item: tuple[str, str | None]) -> int:
    """Bytes of one entry in a bulk request's JSON array (its separator included)."""
    key, value = item
    return len(json.dumps(key)) + (0 if value is None else len(json.dumps(value)) + 20) + 2


class RestBackend:
    name = "rest"

    def __init__(
        self,
        api_url: str,
        account: str,
        namespace: str,
        token: str,
        *,
        timeout: float = 30.0,
        write_interval: float = WRITE_INTERVAL,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base = f"{api_url.rstrip('/')}/accounts/{account}/storage/kv/namespaces/{namespace}"
        self.token = token
        self.timeout = timeout
        self.interval = write_interval + MARGIN
        self.max_request_bytes = max_request_bytes
        self._clock = clock
        self._sleep = sleep
        self._client: httpx.Client | None = None
        self._last: dict[str, float] = {}
        """Key -> when its last write or delete was confirmed (``clock()``)."""
        self._confirmed: dict[str, str | None] = {}
        """Changes of an ``apply`` that failed half-way, already confirmed."""
        self.stats = {"requests": 0, "written": 0, "deleted": 0, "waits": 0}

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(
                timeout=httpx.Timeout(self.timeout, connect=5.0),
                headers={"Authorization": f"Bearer {self.token}"},
            )
        return self._client

    def open(self) -> None:
        self._request("GET", "/keys", params={"limit": "10"})

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- requests -------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        url = self.base + path
        try:
            resp = self.client.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            raise TransientSinkError(f"KV REST API {method} {path}: {exc!r}") from exc
        self.stats["requests"] += 1
        status = resp.status_code
        if status == 429 or status >= 500:
            raise TransientSinkError(
                f"KV REST API {method} {path}: {status} {_errors(resp)}",
                retry_after=retry_after(resp.headers.get("Retry-After")),
            )
        if status in (401, 403):
            raise SinkError(
                f"KV REST API refused the token ({status} {_errors(resp)}): check the "
                "sink's token option (or CATALOG_CDC_KV_API_TOKEN)"
            )
        if status == 404 and not path.startswith("/values/"):
            raise SinkError(
                f"KV REST API {method} {path}: 404 {_errors(resp)}: check the account and "
                "namespace options"
            )
        if status >= 400 and status != 404:
            raise SinkError(f"KV REST API {method} {path} refused the request: {status} "
                            f"{_errors(resp)}")  # fmt: skip
        return resp

    def _bulk(self, chunk: list[tuple[str, str | None]]) -> set[str]:
        """Send one bulk request; the keys the server confirmed."""
        if chunk[0][1] is None:
            resp = self._request("POST", "/bulk/delete", json=[k for k, _ in chunk])
        else:
            resp = self._request("PUT", "/bulk", json=[{"key": k, "value": v} for k, v in chunk])
        keys = {k for k, _ in chunk}
        try:
            result = resp.json().get("result") or {}
        except ValueError:
            result = {}
        failed = set(result.get("unsuccessful_keys") or ())
        return keys - failed

    # -- the protocol ---------------------------------------------------------------

    def apply(self, writes: Mapping[str, str], deletes: Collection[str]) -> None:
        ops: dict[str, str | None] = {k: None for k in deletes}
        ops.update(writes)
        for key, value in list(ops.items()):
            if key in self._confirmed and self._confirmed[key] == value:
                del ops[key]  # sent before a failure, confirmed: not again
        while ops:
            now = self._clock()
            content = [k for k in ops if k != PULSE]
            candidates = content or list(ops)  # pulse only once the content is out
            ready = [k for k in candidates if now - self._last.get(k, -math.inf) >= self.interval]
            if not ready:
                wake = min(self._last[k] for k in candidates) + self.interval
                self.stats["waits"] += 1
                self._sleep(max(0.0, wake - now))
                continue
            puts: list[tuple[str, str | None]] = [(k, ops[k]) for k in ready if ops[k] is not None]
            dels: list[tuple[str, str | None]] = [(k, None) for k in ready if ops[k] is None]
            for group in (puts, dels):
                # at most 10,000 entries and max_request_bytes of JSON ("[" and "]": 2)
                for chunk in chunks(
                    group,
                    max_items=MAX_PAIRS,
                    max_bytes=self.max_request_bytes - 2,
                    size_of=_entry_size,
                ):
                    done = self._bulk(chunk)
                    at = self._clock()
                    for key in done:
                        self._last[key] = at
                        self._confirmed[key] = ops.pop(key)
                        self.stats["deleted" if self._confirmed[key] is None else "written"] += 1
                    if len(done) < len(chunk):
                        raise TransientSinkError(
                            f"KV REST API did not store {len(chunk) - len(done)} keys "
                            "(unsuccessful_keys): retrying them"
                        )
        self._confirmed.clear()
        if len(self._last) > 100_000:  # forget keys whose second is long over
            cutoff = self._clock() - self.interval
            self._last = {k: t for k, t in self._last.items() if t > cutoff}

    def get(self, key: str) -> str | None:
        resp = self._request("GET", f"/values/{quote(key, safe='')}")
        return None if resp.status_code == 404 else resp.text

    def list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        cursor = ""
        while True:
            params = {"prefix": prefix, "limit": "1000"}
            if cursor:
                params["cursor"] = cursor
            body = self._request("GET", "/keys", params=params).json()
            keys.extend(str(item["name"]) for item in body.get("result") or ())
            cursor = (body.get("result_info") or {}).get("cursor") or ""
            if not cursor:
                return sorted(keys)


def _errors(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:200]
    errors = body.get("errors") if isinstance(body, dict) else None
    return json.dumps(errors if errors else body)[:300]
