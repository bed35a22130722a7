"""HTTP client of the products sync API: JWT login, one re-login on 401, typed failures.

* ``POST /api/auth/login`` with ``{"username", "password"}`` gives a JWT (``token``,
  at the top level or under ``data``); every other request carries ``Authorization:
  Bearer <token>``.
* A 401 logs in again **once** and repeats the request; a second 401 (or a login
  refused) is a :class:`~consumers.runtime.SinkError` that says which credentials to
  check.
* Connection errors and timeouts are :class:`~consumers.contract.TransientSinkError`;
  every HTTP answer else is returned to the caller, who knows what 409 or 422 means
  for a product.

Secrets (the password, the token) are never logged.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx

from consumers.contract import SinkError, TransientSinkError
from consumers.toolkit.headers import retry_after as read_retry_after

log = logging.getLogger(__name__)

__all__ = ["StorefrontClient", "retry_after"]

_CREDENTIALS_HINT = (
    "check --option username=/password= or CATALOG_CDC_STOREFRONT_USERNAME / "
    "CATALOG_CDC_STOREFRONT_PASSWORD"
)


class StorefrontClient:
    def __init__(
        self, base_url: str, username: str, password: str, *, timeout: float = 30.0
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._username = username
        self._password = password
        self._http = httpx.Client(timeout=httpx.Timeout(timeout, connect=10.0))
        self._token: str | None = None
        self.logins = 0

    def close(self) -> None:
        self._http.close()

    def login(self) -> None:
        resp = self._request(
            "POST",
            "/api/auth/login",
            {"username": self._username, "password": self._password},
            auth=False,
        )
        if resp.status_code in (401, 403):
            raise SinkError(
                f"the storefront API at {self.base_url} refused the login "
                f"({resp.status_code}: {_error_text(resp)}); {_CREDENTIALS_HINT}"
            )
        if resp.status_code == 429 or resp.status_code >= 500:
            raise TransientSinkError(
                f"login answered {resp.status_code}", retry_after=retry_after(resp)
            )
        token = None
        if resp.status_code == 200:
            data = _json(resp)
            inner = data.get("data")
            token = data.get("token") or (inner.get("token") if isinstance(inner, dict) else None)
        if not isinstance(token, str) or not token:
            raise SinkError(
                f"the storefront API at {self.base_url} answered the login with "
                f"{resp.status_code} and no token: is --option url= the API's base URL?"
            )
        self._token = token
        self.logins += 1
        log.info("event=storefront_login url=%s user=%s", self.base_url, self._username)

    def post(self, path: str, body: Any) -> httpx.Response:
        """POST ``body`` with the bearer token; on 401 log in again once and repeat."""
        if self._token is None:
            self.login()
        resp = self._request("POST", path, body)
        if resp.status_code != 401:
            return resp
        log.info("event=storefront_token_refused path=%s action=relogin", path)
        self.login()
        resp = self._request("POST", path, body)
        if resp.status_code == 401:
            raise SinkError(
                f"the storefront API refused a fresh token for POST {path} (401: "
                f"{_error_text(resp)}); {_CREDENTIALS_HINT}, and that the user may sync products"
            )
        return resp

    def download(self, url: str) -> httpx.Response:
        """GET an image (no credentials sent): connection problems are transient."""
        try:
            return self._http.get(url, follow_redirects=True)
        except httpx.TransportError as exc:
            raise TransientSinkError(f"cannot download image {url}: {exc!r}") from exc

    def _request(self, method: str, path: str, body: Any, *, auth: bool = True) -> httpx.Response:
        headers = {"Content-Type": "application/json"}
        if auth and self._token is not None:
            headers["Authorization"] = f"Bearer {self._token}"
        try:
            return self._http.request(method, self.base_url + path, json=body, headers=headers)
        except httpx.TransportError as exc:
            raise TransientSinkError(
                f"the storefront API at {self.base_url} is not reachable: {exc!r}"
            ) from exc


def _json(resp: httpx.Response) -> dict[str, Any]:
    try:
        data = resp.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _error_text(resp: httpx.Response) -> str:
    data = _json(resp)
    return str(data.get("error") or data.get("message") or resp.text[:200])


def retry_after(resp: httpx.Response) -> float | None:
    """``Retry-After`` of ``resp`` in seconds (delta-seconds or an HTTP-date), or ``None``
    (:func:`consumers.toolkit.headers.retry_after`)."""
    return read_retry_after(resp.headers.get("Retry-After"))
