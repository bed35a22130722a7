"""HTTP calls to the Update API and what its answers mean.

Answers, as the sink acts on them (the seed's "Possible errors"; HTTP statuses where
the seed is silent):

* ``"ok"`` — done.
* 429, 5xx, ``CLOSED;``, ``error_internal_error``, timeouts, connection errors —
  :class:`~consumers.contract.TransientSinkError` (``Retry-After`` honoured).
* ``error_invalid_private_key`` / ``inactive_private_key`` — :class:`~consumers.runtime.SinkError`:
  the key is wrong or disabled (blocked after five malformed requests, or not paid).
* 404/405 — :class:`~consumers.runtime.SinkError`: the ``url`` is not the Update API.
* any other 4xx, and ``error_empty_request`` — :class:`Malformed`: the service says the
  request was malformed.  The sink opens its circuit breaker on it.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx

from consumers.contract import SinkError, TransientSinkError
from consumers.search_service.rules import form_body
from consumers.toolkit.headers import retry_after  # re-exported: the one Retry-After reader

log = logging.getLogger(__name__)

__all__ = ["Malformed", "UpdateApi", "retry_after", "status"]

DEFAULT_URL = "https://searchserverapi.com"


class Malformed(SinkError):
    """The service refused a request as malformed (each one counts towards the block)."""

    def __init__(self, message: str, status: int, reply: str) -> None:
        super().__init__(message)
        self.status = status
        self.reply = reply


class _RedactKey(logging.Filter):
    """httpx logs every request's URL at INFO: hide ``private_key=...`` (state/get)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args and isinstance(record.args, tuple):
            record.args = tuple(
                _KEY_IN_URL.sub("private_key=***", str(a)) if "private_key=" in str(a) else a
                for a in record.args
            )
        return True


_KEY_IN_URL = re.compile(r"private_key=[^&\s\"]*")


def _redact_httpx_logs() -> None:
    httpx_log = logging.getLogger("httpx")
    if not any(isinstance(f, _RedactKey) for f in httpx_log.filters):
        httpx_log.addFilter(_RedactKey())


class UpdateApi:
    """One ``httpx.Client`` for ``{url}/api/{endpoint}/json``; the key is never logged."""

    def __init__(self, url: str, private_key: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self._key = private_key
        self._timeout = httpx.Timeout(timeout, connect=min(10.0, timeout))
        self._client: httpx.Client | None = None
        _redact_httpx_logs()

    @property
    def _http(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(timeout=self._timeout)
        return self._client

    def close(self) -> None:
        """Close the connections (a later request opens new ones)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def post(self, endpoint: str, params: Mapping[str, str | bytes]) -> None:
        """POST form-encoded ``private_key`` + ``params`` to ``endpoint`` (``items/update``)."""
        body = form_body({"private_key": self._key, **params})
        started = time.perf_counter()
        try:
            resp = self._http.post(
                f"{self.url}/api/{endpoint}/json",
                content=body,
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
        except httpx.HTTPError as exc:
            raise TransientSinkError(
                f"search service {endpoint}: {type(exc).__name__}: {self._redact(str(exc))}"
            ) from exc
        log.debug("event=search_service_request endpoint=%s status=%s bytes=%d seconds=%.3f",
                  endpoint, resp.status_code, len(body), time.perf_counter() - started)  # fmt: skip
        self._check(endpoint, resp, expect_ok=True)

    def state(
        self, variables: tuple[str, ...] = ("status", "full_import", "product_count")
    ) -> dict[str, Any]:
        """``GET state/get``: the ``variable`` object (status, full_import, product_count)."""
        query = "&".join([f"private_key={quote(self._key, safe='')}", *variables])
        try:
            resp = self._http.get(f"{self.url}/api/state/get/json?{query}")
        except httpx.HTTPError as exc:
            raise TransientSinkError(
                f"search service state/get: {type(exc).__name__}: {self._redact(str(exc))}"
            ) from exc
        body = self._check("state/get", resp, expect_ok=False)
        if not isinstance(body, dict) or not isinstance(body.get("variable"), dict):
            raise SinkError(f"search service state/get: unexpected answer {_short(resp.text)}")
        return dict(body["variable"])

    def _check(self, endpoint: str, resp: httpx.Response, *, expect_ok: bool) -> Any:
        status, text = resp.status_code, self._redact(resp.text)
        try:
            body: Any = json.loads(text)
        except ValueError:
            body = None
        errors = body.get("errors") if isinstance(body, dict) else None
        code = errors.get("error") if isinstance(errors, dict) else None
        what = f"search service {endpoint}: HTTP {status} {_short(text)}"
        if 200 <= status < 300 and errors is None and not text.startswith("CLOSED"):
            if not expect_ok or body == "ok":
                return body
            raise SinkError(f"{what}: not the \"ok\" the Update API answers; is url={self.url} "
                            "the Update API?")  # fmt: skip
        if (
            status == 429
            or status >= 500
            or text.startswith("CLOSED")
            or code == "error_internal_error"
        ):
            raise TransientSinkError(what, retry_after=retry_after(resp.headers.get("Retry-After")))
        if code == "error_invalid_private_key":
            raise SinkError(f"{what}: the private key is wrong; set --option private_key=... or "
                            "CATALOG_CDC_SEARCH_SERVICE_PRIVATE_KEY")  # fmt: skip
        if code == "inactive_private_key":
            raise SinkError(
                f"{what}: the API keys are disabled (blocked after five malformed requests "
                "within an hour, disabled by addon_status, or not paid); ask the search "
                "service to reactivate them (after addon_status=deleted a full import does)"
            )
        if status in (401, 403):
            raise SinkError(f"{what}: the service refused the key; check private_key")
        if status in (404, 405):
            raise SinkError(f"{what}: is url={self.url} the Update API's base URL?")
        raise Malformed(what, status, _short(text, 2000))


def _short(text: str, limit: int = 300) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def status(url: str, private_key: str, timeout: float = 30.0) -> dict[str, Any]:
    """The service's ``state/get``: ``{"status": ..., "full_import": ..., "product_count": ...}``.

    ``status`` is one of normal, none, update, updating, error, disabled; ``full_import``
    start or done; ``product_count`` a string, as the service sends it.
    """
    api = UpdateApi(url, private_key, timeout)
    try:
        return api.state()
    finally:
        api.close()
