"""The admin HTTP API on the real stack: auth matrix, 503 without Elasticsearch, a real
search sync into the alias, 409 for a second replay, status and lag, hashed tokens; the
sync endpoint rebuilding whichever consumer the admin's settings name.

The server runs in-process (uvicorn in a thread, on a free port) except for the 503
test, which runs ``catalog-cdc admin serve`` with ``CATALOG_CDC_ELASTICSEARCH_URL``
pointing at a closed port (the stack's server is not touched).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from consumers.jsonl import JsonlSink
from consumers.runtime import ConsumerRuntime, RuntimeSettings
from consumers.search.engine import connect
from consumers.search.sink import delete_index
from pipeline.admin.app import SYNC_MESSAGE, AdminContext, AdminSettings, build_context, create_app
from pipeline.admin.tokens import TokenStore
from pipeline.settings import ConnectionSettings
from tests.integration.test_consumer_runtime import _produce, _product, running

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def serving(ctx: AdminContext) -> Iterator[str]:
    """The app on a free loopback port, in a thread; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(ctx), log_config=None, access_log=False, lifespan="on")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "admin server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def make_tokens(path: Path) -> tuple[TokenStore, str, str]:
    store = TokenStore(path)
    return store, store.add("ops", "admin"), store.add("viewer", "reader")


def context(
    tmp_path: Path, bootstrap: str, prefix: str, es_url: str, **settings: Any
) -> AdminContext:
    conns = ConnectionSettings(kafka_bootstrap=bootstrap, elasticsearch_url=es_url,
                               topic_prefix=prefix)  # fmt: skip
    return build_context(AdminSettings(tokens_file=tmp_path / "tokens.json", **settings), conns)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Token {token}"}


def wait_job(client: httpx.Client, job_id: str, token: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}", headers=auth(token)).json()
        if job["state"] in ("done", "failed") or time.monotonic() > deadline:
            return job
        time.sleep(0.1)


def test_auth_matrix_and_hashed_tokens(
    kafka_bootstrap: str, topic_prefix: str, es_url: str, tmp_path: Path
) -> None:
    _produce(kafka_bootstrap, topic_prefix, [(i, _product(i, 10 + i)) for i in range(1, 4)])
    ctx = context(tmp_path, kafka_bootstrap, topic_prefix, es_url, grace=0.0)
    store, admin, reader = make_tokens(tmp_path / "tokens.json")

    # Stored hashed, readable by the owner only.
    raw = (tmp_path / "tokens.json").read_text()
    assert admin not in raw and reader not in raw
    assert {t["name"]: t["role"] for t in json.loads(raw)["tokens"]} == {
        "ops": "admin",
        "viewer": "reader",
    }
    assert stat.S_IMODE((tmp_path / "tokens.json").stat().st_mode) == 0o600

    none: dict[str, str] = {}
    bad = auth("ccdc_not-a-real-token")
    with serving(ctx) as url, httpx.Client(base_url=url, timeout=30) as c:
        dry = {"json": {"dry_run": True, "options": {"kinds": "product"}}}
        job_id = c.post("/v1/replay/jsonl", headers=auth(admin), **dry).json()["id"]  # type: ignore[arg-type]
        admin_only = [("POST", "/v1/products/search/sync/", {}), ("POST", "/v1/replay/jsonl", dry)]
        read_only = [
            ("GET", "/v1/status", {}),
            ("GET", "/v1/jobs", {}),
            ("GET", f"/v1/jobs/{job_id}", {}),
        ]
        for method, path, kw in admin_only + read_only:
            for headers in (
                none,
                bad,
                {"Authorization": "Basic b3BzOm9wcw=="},
                {"Authorization": admin},
            ):
                r = c.request(method, path, headers=headers, **kw)  # type: ignore[arg-type]
                assert r.status_code == 401, (method, path, headers, r.text)
                assert r.json() == {"error": "Unauthorized"}
                assert r.headers["WWW-Authenticate"].startswith("Token")
        for method, path, kw in admin_only:
            r = c.request(method, path, headers=auth(reader), **kw)  # type: ignore[arg-type]
            assert (r.status_code, r.json()) == (
                403,
                {"error": "Forbidden - Admin access required"},
            )
        for method, path, kw in read_only:
            for token in (reader, admin):
                r = c.request(method, path, headers=auth(token), **kw)  # type: ignore[arg-type]
                assert r.status_code == 200, (method, path, r.text)
        # Admin on the admin-only endpoints (jobs finish fast: three documents).
        assert wait_job(c, job_id, admin)["state"] == "done"
        r = c.post("/v1/replay/jsonl", headers={"Authorization": f"Bearer {admin}"}, **dry)  # type: ignore[arg-type]
        assert r.status_code == 202, r.text
        assert r.headers["Location"] == f"/v1/jobs/{r.json()['id']}"
        assert wait_job(c, r.json()["id"], admin)["result"]["records"] == 3
        r = c.post("/v1/products/search/sync/", headers=auth(admin))
        assert (r.status_code, r.json()) == (200, {"message": SYNC_MESSAGE})
        assert wait_job(c, r.headers["X-Job-Id"], admin)["state"] == "done"
        # No token needed: health, metrics, the OpenAPI document.
        assert c.get("/healthz").json() == {"status": "ok"}
        assert (
            c.get("/openapi.json").json()["components"]["securitySchemes"]["token"]["type"]
            == "apiKey"
        )
        metrics = c.get("/metrics").text
        assert (
            'catalog_cdc_admin_requests_total{method="GET",path="/v1/status",status="401"} 4.0'
            in metrics
        )
        assert (
            'catalog_cdc_admin_jobs_finished_total{consumer="jsonl",kind="replay",state="done"} 2.0'
            in metrics
        )
        # A revoked token stops working at once (the server re-reads the file).
        store.revoke("viewer")
        assert c.get("/v1/status", headers=auth(reader)).status_code == 401
    delete_index(connect(es_url), topic_prefix)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_sync_answers_503_when_elasticsearch_is_unavailable(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """`catalog-cdc admin serve` with Elasticsearch at a closed port: 503, nothing started."""
    _, admin, reader = make_tokens(tmp_path / "tokens.json")
    port, closed = _free_port(), _free_port()
    env = {**os.environ, "CATALOG_CDC_ELASTICSEARCH_URL": f"http://127.0.0.1:{closed}",
           "CATALOG_CDC_KAFKA_BOOTSTRAP": kafka_bootstrap, "CATALOG_CDC_TOPIC_PREFIX": topic_prefix,
           "CATALOG_CDC_STACK_DIR": str(tmp_path / "no-stack")}  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "admin", "serve", "--port", str(port),
         "--tokens", str(tmp_path / "tokens.json")],
        cwd=tmp_path, env={**env, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            deadline = time.monotonic() + 30
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if c.get("/healthz").status_code == 200:
                        break
                assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
                time.sleep(0.1)
            r = c.post("/v1/products/search/sync/", headers=auth(admin))
            assert (r.status_code, r.json()) == (503, {"error": "Elasticsearch is not available"})
            r = c.post("/v1/replay/search", headers=auth(admin))
            assert (r.status_code, r.json()) == (
                503,
                {"error": "the target of consumer 'search' is not available"},
            )
            # Auth comes first; the read-only endpoints still answer.
            assert c.post("/v1/products/search/sync/").status_code == 401
            assert c.post("/v1/products/search/sync/", headers=auth(reader)).status_code == 403
            assert c.get("/v1/jobs", headers=auth(admin)).json() == []  # nothing was started
            status = c.get("/v1/status", headers=auth(reader)).json()
            assert status["consumers"]["search"]["product_count"] is None
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "event=admin_target_unavailable consumer=search" in out


def test_sync_rebuilds_the_index_and_a_second_replay_conflicts(
    kafka_bootstrap: str, topic_prefix: str, es_url: str, tmp_path: Path
) -> None:
    ids = list(range(1, 31))
    _produce(
        kafka_bootstrap, topic_prefix, [(i, _product(i, 100 + i, f"Product {i}")) for i in ids]
    )
    # A grace period keeps the job running after the swap: room for the 409.
    ctx = context(tmp_path, kafka_bootstrap, topic_prefix, es_url, grace=3.0)
    _, admin, _reader = make_tokens(tmp_path / "tokens.json")
    es = connect(es_url)
    try:
        with serving(ctx) as url, httpx.Client(base_url=url, timeout=30) as c:
            r = c.post("/v1/products/search/sync/", headers=auth(admin))
            assert (r.status_code, r.json()) == (200, {"message": SYNC_MESSAGE})
            job_id = r.headers["X-Job-Id"]
            conflict = c.post("/v1/replay/search", headers=auth(admin), json={"dry_run": True})
            assert conflict.status_code == 409, conflict.text
            assert conflict.json()["job_id"] == job_id
            # The seed: a second sync is safe -- the same job, not a second one.
            again = c.post("/v1/products/search/sync/", headers=auth(admin))
            assert again.status_code == 200 and again.headers["X-Job-Id"] == job_id
            status = c.get("/v1/status", headers=auth(admin)).json()["consumers"]["search"]
            assert (status["status"], status["full_import"]) == ("update", "start")
            job = wait_job(c, job_id, admin)
            assert job["state"] == "done", job
            assert job["kind"] == "search_sync"
            assert job["result"]["records"] == len(ids)
            assert job["progress"]["phase"] == "done"
            es.refresh(f"{topic_prefix}-products")  # _count sees refreshed docs
            status = c.get("/v1/status", headers=auth(admin)).json()["consumers"]["search"]
            assert status["full_import"] == "done" and status["product_count"] == len(ids)
        alias = f"{topic_prefix}-products"
        es.refresh(alias)
        found = es.search(alias, {"match_all": {}}, size=100).hits
        assert sorted(int(h.id) for h in found) == ids
        assert {h.source["name"] for h in found if h.id == "7"} == {"Product 7"}
    finally:
        delete_index(es, topic_prefix)
        es.close()


def test_status_lag_and_vocabulary(
    kafka_bootstrap: str, topic_prefix: str, es_url: str, tmp_path: Path
) -> None:
    _produce(kafka_bootstrap, topic_prefix, [(i, _product(i, 10 + i)) for i in range(1, 21)])
    _produce(kafka_bootstrap, topic_prefix, [(3, None), (4, None)])  # two deleted
    ctx = context(tmp_path, kafka_bootstrap, topic_prefix, es_url)
    _, _admin, reader = make_tokens(tmp_path / "tokens.json")
    runtime = ConsumerRuntime(JsonlSink(tmp_path / "out.jsonl", kinds=("product",)),
                              bootstrap=kafka_bootstrap, topic_prefix=topic_prefix,
                              settings=RuntimeSettings(idle_pause=0.05))  # fmt: skip
    with serving(ctx) as url, httpx.Client(base_url=url, timeout=30) as c:
        body = c.get("/v1/status", headers=auth(reader)).json()
        assert body["topic_prefix"] == topic_prefix and body["jobs"] == []
        jsonl = body["consumers"]["jsonl"]
        assert (
            jsonl["status"] == "none"
            and jsonl["lag"] == 0
            and jsonl["group"] == f"{topic_prefix}-jsonl"
        )
        assert jsonl["product_count"] == 18  # live documents on the topic: 20 less 2 deleted
        with running(runtime):
            assert runtime.caught_up.wait(30)
            deadline = time.monotonic() + 20
            while (s := c.get("/v1/status", headers=auth(reader)).json()["consumers"]["jsonl"])[
                "lag"
            ]:
                assert time.monotonic() < deadline, s
                time.sleep(0.1)
            assert s["status"] == "normal" and s["full_import"] == "done" and s["consuming"]
            assert s["topics"] == {f"{topic_prefix}.doc.products": {"lag": 0, "committed": 22}}
        # Three more while nobody consumes: lag 3, the changes await indexation.
        _produce(kafka_bootstrap, topic_prefix, [(i, _product(i, 50 + i)) for i in (21, 22, 23)])
        deadline = time.monotonic() + 20
        while (s := c.get("/v1/status", headers=auth(reader)).json()["consumers"]["jsonl"])[
            "consuming"
        ]:
            assert time.monotonic() < deadline, s  # the group empties once its member left
            time.sleep(0.2)
        assert (s["status"], s["lag"], s["product_count"]) == ("update", 3, 21)
        assert body["consumers"].keys() >= {"jsonl", "search", "edge-kv", "webhooks"}
        # A failed replay (the search-service consumer has no key): status error.
        r = c.post("/v1/replay/search-service", headers=auth(_admin))
        job = wait_job(c, r.json()["id"], reader)
        assert job["state"] == "failed" and "private_key" in job["error"]
        s = c.get("/v1/status", headers=auth(reader)).json()["consumers"]["search-service"]
        assert s["status"] == "error" and s["job"] == {"id": job["id"], "state": "failed"}


def test_the_sync_endpoint_rebuilds_the_consumer_the_settings_name(
    kafka_bootstrap: str, topic_prefix: str, es_url: str, tmp_path: Path
) -> None:
    """CATALOG_CDC_ADMIN_SEARCH_CONSUMER and CONSUMER_OPTIONS: the sync endpoint replays
    another consumer (one that is no TargetProbe: nothing to probe, so no 503), with the
    options the admin gives it; its product_count then comes from the topic."""
    _produce(kafka_bootstrap, topic_prefix, [(i, _product(i, 10 + i)) for i in range(1, 6)])
    out = tmp_path / "synced.jsonl"
    ctx = context(tmp_path, kafka_bootstrap, topic_prefix, es_url, search_consumer="jsonl",
                  consumer_options={"jsonl": {"path": str(out), "kinds": "product"}})  # fmt: skip
    _, admin, reader = make_tokens(tmp_path / "tokens.json")
    with serving(ctx) as url, httpx.Client(base_url=url, timeout=30) as c:
        r = c.post("/v1/products/search/sync/", headers=auth(admin))
        assert (r.status_code, r.json()) == (200, {"message": SYNC_MESSAGE})
        job = wait_job(c, r.headers["X-Job-Id"], admin)
        assert (job["state"], job["kind"], job["consumer"]) == ("done", "search_sync", "jsonl")
        assert job["result"]["records"] == 5
        status = c.get("/v1/status", headers=auth(reader)).json()["consumers"]
        assert status["jsonl"]["product_count"] == 5  # from the topic: jsonl is no probe
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(line["id"] for line in lines) == [1, 2, 3, 4, 5]
