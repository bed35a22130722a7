"""What every contract server shares: a threaded HTTP server, routing, JSON replies.

A contract server stands in for a third-party SaaS API in tests and in the demo.  It
enforces the rules of one seed (``../shared/seeds/``) — auth, field limits, error
codes and bodies, rate limits — and records what it accepted, so that a test can
compare it with the database.  Each server is a subclass of :class:`ContractServer`
with ``routes`` and runs either in-process (``with Server() as s: s.url``) or as
``catalog-cdc contract-server NAME --port P``.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["ContractServer", "Request", "Response", "route"]


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes
    params: dict[str, str] = field(default_factory=dict)  # from the route pattern

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)


@dataclass
class Response:
    status: int = 200
    body: Any = None  # JSON-serialisable, or bytes sent as they are
    headers: dict[str, str] = field(default_factory=dict)

    def encoded(self) -> tuple[bytes, str]:
        if isinstance(self.body, bytes):
            return self.body, self.headers.get("Content-Type", "application/octet-stream")
        if self.body is None:
            return b"", "application/json"
        return json.dumps(self.body).encode(), "application/json"


Handler = Callable[[Any, Request], Response]


def route(method: str, pattern: str) -> Callable[[Handler], Handler]:
    """Mark a method as the handler of ``METHOD /path/{param}``."""

    def mark(fn: Handler) -> Handler:
        fn._route = (method.upper(), pattern)  # type: ignore[attr-defined]
        return fn

    return mark


class ContractServer:
    """Base class.  Subclasses decorate handler methods with :func:`route`."""

    name = "contract"

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.lock = threading.RLock()  # handlers run in threads: guard the recorded state
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status) log
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []
        for attr in dir(type(self)):
            fn = getattr(type(self), attr)
            spec = getattr(fn, "_route", None)
            if spec is not None:
                regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", spec[1].rstrip("/"))
                self._routes.append((spec[0], re.compile(f"^{regex}/?$"), fn))
        self._httpd = ThreadingHTTPServer((host, port), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None
        self._outage_until = 0.0

    def outage(self, seconds: float) -> None:
        """Answer every request with 503 for ``seconds`` (``/_contract/state`` still works):
        the service is down, its recorded state kept."""
        with self.lock:
            self._outage_until = time.monotonic() + seconds

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> ContractServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name=f"contract-{self.name}", daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._httpd.serve_forever()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> ContractServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def state(self) -> Any:
        """What the server accepted, as JSON (tests compare it with the database)."""
        return {}

    @route("GET", "/_contract/state")
    def _state(self, req: Request) -> Response:
        with self.lock:
            return Response(200, self.state())

    def dispatch(self, req: Request) -> Response:
        if req.path != "/_contract/state" and time.monotonic() < self._outage_until:
            return Response(503, {"error": "service unavailable (contract server outage)"})
        allowed = False
        for method, regex, fn in self._routes:
            m = regex.match(req.path)
            if m is None:
                continue
            allowed = True
            if method == req.method:
                req.params = m.groupdict()
                return fn(self, req)
        if allowed:
            return Response(405, {"error": f"method {req.method} not allowed on {req.path}"})
        return Response(404, {"error": f"no route {req.method} {req.path}"})

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # TCP_NODELAY: the headers and the body go out as two writes; with Nagle's
            # algorithm the body waited for the client's delayed ACK, 40 ms a response
            # (the webhooks demo delivered 22 events a second).
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def _serve(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                req = Request(
                    method=self.command,
                    path=parts.path,
                    query=parse_qs(parts.query, keep_blank_values=True),
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                )
                try:
                    resp = server.dispatch(req)
                except Exception as exc:  # noqa: BLE001 -- a bug in the contract server: say so, as a 500
                    resp = Response(500, {"error": f"contract server bug: {exc!r}"})
                payload, ctype = resp.encoded()
                with server.lock:
                    server.requests.append((req.method, req.path, resp.status))
                self.send_response(resp.status)
                self.send_header("Content-Type", resp.headers.pop("Content-Type", ctype))
                for k, v in resp.headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

        return _Handler
