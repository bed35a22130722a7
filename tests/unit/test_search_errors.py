"""The search engine's answers, as the sink sees them, on both clients (a fake server):
bad credentials are a one-line error naming the URL setting (not a traceback or a
retry loop), 429/5xx and no answer are transient, the engine is detected from ``GET /``."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from consumers.contract import SinkError, TransientSinkError
from consumers.search.engine import (
    ENGINES,
    EngineAuthError,
    EngineUnavailable,
    connect,
    detect,
    engine_name,
)
from consumers.search.sink import SearchSink
from pipeline.errors import ConfigurationError

OPENSEARCH_ROOT = {"version": {"distribution": "opensearch", "number": "2.19.6"}}
ELASTIC_ROOT = {"version": {"number": "8.15.3"}, "cluster_name": "x"}


@contextmanager
def fake_server(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> Iterator[str]:
    """Every request answered ``status`` with ``body`` and ``headers``."""
    payload = json.dumps(body).encode()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


ELASTIC = {"X-Elastic-Product": "Elasticsearch"}
UNAUTHORIZED = {"error": {"type": "security_exception", "reason": "unable to authenticate"}}


@pytest.mark.parametrize("engine", ENGINES)
def test_bad_credentials_stop_with_a_clear_error(engine: str) -> None:
    with fake_server(401, {**UNAUTHORIZED, "status": 401}, ELASTIC) as url:
        sink = SearchSink(connect(url, engine), "t")
        with pytest.raises(SinkError, match=r"refused the request \(401.*check the credentials"):
            sink.open()
        with pytest.raises(EngineAuthError, match="CATALOG_CDC_SEARCH_URL"):
            sink.open()
        assert sink.target_available() is False


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("status", [429, 503])
def test_throttled_or_down_is_transient(engine: str, status: int) -> None:
    body = {"error": {"type": "es_rejected_execution_exception", "reason": "busy"}}
    with fake_server(status, body, {**ELASTIC, "Retry-After": "7"}) as url:
        sink = SearchSink(connect(url, engine), "t")
        with pytest.raises(TransientSinkError, match=f"answered {status}") as caught:
            sink.open()
        assert isinstance(caught.value, EngineUnavailable) and caught.value.status == status
        sink.close()


@pytest.mark.parametrize("engine", [*ENGINES, None])
def test_no_server_is_transient_and_building_the_sink_needs_none(engine: str | None) -> None:
    from consumers.registry import SinkContext
    from pipeline.settings import ConnectionSettings

    url = "http://127.0.0.1:1"
    options = {"url": url, **({"engine": engine} if engine else {})}
    sink = SearchSink.from_context(SinkContext(ConnectionSettings(), options))
    with pytest.raises(TransientSinkError, match=r"not available at http://127\.0\.0\.1:1"):
        sink.open()
    assert sink.target_available() is False and sink.target_count() is None
    sink.close()


def test_the_engine_is_detected_from_the_root_answer() -> None:
    with fake_server(200, OPENSEARCH_ROOT) as url:
        assert detect(url) == "opensearch"
        assert connect(url).engine == "opensearch"
    with fake_server(200, ELASTIC_ROOT, ELASTIC) as url:
        assert detect(url) == "elasticsearch"
        assert connect(url).engine == "elasticsearch"
    with (
        fake_server(200, {"hello": "world"}) as url,
        pytest.raises(ConfigurationError, match=r"neither OpenSearch.*nor Elasticsearch"),
    ):
        detect(url)
    with (
        fake_server(401, UNAUTHORIZED) as url,
        pytest.raises(EngineAuthError, match="check the credentials"),
    ):
        detect(url)


def test_a_configured_engine_that_is_the_other_one_says_so() -> None:
    with (
        fake_server(200, ELASTIC_ROOT, ELASTIC) as url,
        pytest.raises(ConfigurationError, match="not OpenSearch"),
    ):
        connect(url, "opensearch").info()
    with (
        fake_server(200, OPENSEARCH_ROOT) as url,
        pytest.raises(ConfigurationError, match="not Elasticsearch"),
    ):
        connect(url, "elasticsearch").info()


def test_engine_names() -> None:
    assert engine_name(None) is None and engine_name("") is None and engine_name("auto") is None
    assert engine_name(" OpenSearch ") == "opensearch"
    with pytest.raises(ConfigurationError, match="expected one of elasticsearch, opensearch"):
        engine_name("solr")


def test_a_password_is_not_shown() -> None:
    with fake_server(401, UNAUTHORIZED) as url:
        secret = url.replace("http://", "http://user:s3cret@")
        with pytest.raises(EngineAuthError) as caught:
            detect(secret)
    assert "s3cret" not in str(caught.value) and "user:***@" in str(caught.value)
