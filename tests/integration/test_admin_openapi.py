"""Schemathesis against the served OpenAPI document: no request makes the API fail (5xx).

``catalog-cdc admin serve`` runs as a subprocess on the real stack (in a scratch
directory, so whatever a fuzzed replay's options would create stays there) with a
topic prefix of its own: replays started by the fuzzer run for real and fail fast
(no document topics), so nothing is stubbed and nothing outside the test is touched.
Every operation gets a bounded number of examples, with an admin token.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from consumers.registry import available
from pipeline.admin.tokens import TokenStore
from tests.conftest import Endpoints
from tests.integration.test_admin_api import _free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def admin_api(
    stack: Endpoints, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("admin-openapi")
    token = TokenStore(work / "tokens.json").add("fuzzer", "admin")
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO),
           "CATALOG_CDC_KAFKA_BOOTSTRAP": stack.kafka_bootstrap,
           "CATALOG_CDC_ELASTICSEARCH_URL": stack.elasticsearch_url,
           "CATALOG_CDC_TOPIC_PREFIX": f"t{uuid.uuid4().hex[:10]}",
           "CATALOG_CDC_STACK_DIR": str(work / ".stack"),
           "CATALOG_CDC_ADMIN_GRACE": "0"}  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "--log-level", "warning", "admin", "serve",
         "--port", str(port), "--tokens", str(work / "tokens.json")],
        cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                    break
            assert proc.poll() is None and time.monotonic() < deadline, "admin server did not start"
            time.sleep(0.1)
        yield {"url": url, "headers": {"Authorization": f"Token {token}"}}
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "Traceback" not in out, out


OPERATIONS = [
    ("POST", "/v1/products/search/sync/"),
    ("POST", "/v1/replay/{consumer}"),
    ("GET", "/v1/jobs"),
    ("GET", "/v1/jobs/{job_id}"),
    ("GET", "/v1/status"),
    ("GET", "/metrics"),
    ("GET", "/healthz"),
]


@pytest.fixture(scope="module")
def admin_schema(admin_api: dict[str, Any]) -> Any:
    return schemathesis.openapi.from_url(f"{admin_api['url']}/openapi.json")


# Not `schemathesis.pytest.from_fixture(...).parametrize()`: with pytest 9 it fails
# ("'Function' object has no attribute '_nodeid'", schemathesis 4.32); the same
# strategies, driven by Hypothesis directly, one test per operation.
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_no_server_errors(
    method: str, path: str, admin_api: dict[str, Any], admin_schema: Any
) -> None:
    operation = admin_schema[path][method]
    headers = admin_api["headers"]
    strategies = [
        operation.as_strategy(GenerationMode.POSITIVE, headers=headers),
        operation.as_strategy(GenerationMode.NEGATIVE),  # bad tokens, bodies, parameters
    ]
    if path == "/v1/replay/{consumer}":  # valid bodies for the installed consumers, too
        strategies += [
            operation.as_strategy(GenerationMode.POSITIVE, headers=headers,
                                  path_parameters={"consumer": name})
            for name in sorted(available())
        ]  # fmt: skip
    strategy = st.one_of(strategies)
    seen: list[int] = []

    @given(case=strategy)
    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck),
              database=None)  # fmt: skip
    def run(case: Any) -> None:
        response = case.call_and_validate(headers=admin_api["headers"],
                                          checks=[not_a_server_error], timeout=30)  # fmt: skip
        seen.append(response.status_code)

    run()
    assert seen and max(seen) < 500, seen


def test_the_document_describes_every_endpoint(admin_api: dict[str, Any]) -> None:
    doc = httpx.get(f"{admin_api['url']}/openapi.json", timeout=10).json()
    assert doc["openapi"].startswith("3.")
    ops = {(m.upper(), p): op for p, item in doc["paths"].items() for m, op in item.items()}
    assert set(ops) == set(OPERATIONS)
    scheme = doc["components"]["securitySchemes"]["token"]
    assert (scheme["type"], scheme["in"], scheme["name"]) == ("apiKey", "header", "Authorization")
    for key, op in ops.items():
        secured = op.get("security") == [{"token": []}]
        assert secured == (key[1].startswith("/v1/")), key
        if secured:
            assert {"401"} <= set(op["responses"]), key
    assert {"403", "503"} <= set(ops[("POST", "/v1/products/search/sync/")]["responses"])
    assert {"403", "404", "409", "422"} <= set(ops[("POST", "/v1/replay/{consumer}")]["responses"])
    body = ops[("POST", "/v1/replay/{consumer}")]["requestBody"]["content"]["application/json"]
    assert body["schema"]
