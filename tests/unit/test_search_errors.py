"""A search target that refuses the credentials: a one-line error, not a traceback or a retry loop."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from elasticsearch import Elasticsearch

from consumers.contract import SinkError
from consumers.search.sink import SearchSink


class _Refuses(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        body = b'{"error":{"type":"security_exception","reason":"unable to authenticate"},"status":401}'
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Elastic-Product", "Elasticsearch")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_HEAD = _answer

    def log_message(self, *args: object) -> None:
        pass


def test_bad_credentials_stop_with_a_clear_error() -> None:
    server = HTTPServer(("127.0.0.1", 0), _Refuses)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        sink = SearchSink(Elasticsearch(f"http://127.0.0.1:{server.server_port}"), "t")
        with pytest.raises(SinkError, match=r"refused the request \(401.*check the credentials"):
            sink.open()
    finally:
        server.shutdown()
        server.server_close()
