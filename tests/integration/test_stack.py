"""`catalog-cdc stack`: a second, private stack started, checked, restarted and wiped.

Runs the real CLI in subprocesses, so it covers the console script, the state file,
pid tracking and (when the tests run as root) running PostgreSQL as `postgres`.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import site
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from consumers.search.engine import connect
from tests.integration.search_support import get_doc, put_doc

pytestmark = pytest.mark.integration

CLI = str(Path(sys.executable).parent / "catalog-cdc")
REPO = Path(__file__).resolve().parents[2]


def _cli(
    stack_dir: Path, *args: str, user: str | None = None, home: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CATALOG_CDC_STACK_DIR": str(stack_dir)}
    argv = [CLI, *args]
    if user:
        env["HOME"] = str(home)
        argv = ["runuser", "-u", user, "--", "env", f"HOME={home}",
                *_python_for(user), "-m", "pipeline.cli", *args]  # fmt: skip
        env["PYTHONPATH"] = os.pathsep.join([*site.getsitepackages(), str(REPO)])
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=180, check=False)


def _python_for(user: str) -> list[str]:
    """An interpreter ``user`` may run: the venv's, else the system's same-version one.

    (A venv made from a Python under /root is not executable by other users.)
    """
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for python in (sys.executable, f"/usr/bin/python{version}", shutil.which(f"python{version}")):
        if python and subprocess.run(
            ["runuser", "-u", user, "--", python, "-c", "import sys; print(sys.version_info[:2])"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip() == str(tuple(sys.version_info[:2])):
            return [python]
    pytest.skip(f"no Python {sys.version_info[:2]} that user {user!r} may execute")


def _status(stack_dir: Path, **kw: Any) -> dict[str, Any]:
    res = _cli(stack_dir, "stack", "status", "--json", **kw)
    return json.loads(res.stdout)  # type: ignore[no-any-return]


def _assert_live(status: dict[str, Any]) -> None:
    assert status["healthy"], status
    for field in ("postgres_dsn", "kafka_bootstrap", "kafka_bootstrap_alt", "elasticsearch_url"):
        assert status[field], field
    with psycopg.connect(status["postgres_dsn"]) as conn:
        assert conn.execute("SHOW wal_level").fetchone() == ("logical",)
    for bootstrap in (
        status["kafka_bootstrap"],
        status["kafka_bootstrap_alt"],
        status["kafka_bootstrap_apache"],
    ):
        meta = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
        assert len(meta.brokers) >= 1
    engines = {
        name: (svc.get("engine"), svc.get("version")) for name, svc in status["services"].items()
    }
    assert engines["kafka"] == ("Apache Kafka", "4.4.0"), engines
    assert engines["opensearch"] == ("OpenSearch", "2.19.6"), engines
    for url in (status["elasticsearch_url"], status["opensearch_url"]):
        engine = connect(url)
        try:
            assert engine.info().version
        finally:
            engine.close()


def test_stack_lifecycle(tmp_path: Path) -> None:
    stack_dir = tmp_path / "stack"
    try:
        up = _cli(stack_dir, "stack", "up", "--json")
        assert up.returncode == 0, up.stderr
        status = json.loads(up.stdout)
        _assert_live(status)
        pids = {n: s["pid"] for n, s in status["services"].items()}

        # Idempotent: nothing restarted.
        again = _cli(stack_dir, "stack", "up", "--json")
        assert again.returncode == 0, again.stderr
        assert {n: s["pid"] for n, s in json.loads(again.stdout)["services"].items()} == pids
        assert "already running" in again.stderr

        # Leave data behind, stop, start: data kept (PostgreSQL, noida's Kafka + ES).
        with psycopg.connect(status["postgres_dsn"], autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (id int primary key)")
            conn.execute("INSERT INTO kept VALUES (7)")
        for bootstrap in (status["kafka_bootstrap"], status["kafka_bootstrap_apache"]):
            admin = AdminClient({"bootstrap.servers": bootstrap})
            admin.create_topics([NewTopic("kept-topic", 2, 1)])["kept-topic"].result(10)
        for url in (status["elasticsearch_url"], status["opensearch_url"]):
            put_doc(url, "kept-index", "1", {"a": 1})

        down = _cli(stack_dir, "stack", "down")
        assert down.returncode == 0, down.stderr
        stopped = _status(stack_dir)
        assert not stopped["healthy"]
        assert not any(s["running"] for s in stopped["services"].values())
        for pid in pids.values():
            assert (
                not Path(f"/proc/{pid}").exists()
                or b"zombie" in Path(f"/proc/{pid}/status").read_bytes()
            )

        up2 = _cli(stack_dir, "stack", "up", "--json")
        assert up2.returncode == 0, up2.stderr
        status2 = json.loads(up2.stdout)
        _assert_live(status2)
        with psycopg.connect(status2["postgres_dsn"]) as conn:
            assert conn.execute("SELECT id FROM kept").fetchall() == [(7,)]
        for bootstrap in (status2["kafka_bootstrap"], status2["kafka_bootstrap_apache"]):
            meta = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
            assert "kept-topic" in meta.topics, bootstrap
        for url in (status2["elasticsearch_url"], status2["opensearch_url"]):
            found = get_doc(url, "kept-index", "1")
            assert found is not None and found["_source"] == {"a": 1}
    finally:
        wiped = _cli(stack_dir, "stack", "down", "--wipe")
    assert wiped.returncode == 0, wiped.stderr
    assert not stack_dir.exists()
    pg_dir = status["services"]["postgres"]["data_dir"]
    assert not Path(pg_dir).exists(), "wipe left the PostgreSQL cluster behind"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the CLI as an ordinary user")
def test_stack_as_ordinary_user(tmp_path: Path) -> None:
    """As an ordinary user the stack runs PostgreSQL directly (no `postgres` switch)."""
    user = "nobody"
    pw = pwd.getpwnam(user)
    home = Path("/var/tmp") / f"catalog-cdc-test-{os.getpid()}"
    home.mkdir(mode=0o755, exist_ok=True)
    os.chown(home, pw.pw_uid, pw.pw_gid)
    stack_dir = home / "stack"
    try:
        up = _cli(stack_dir, "stack", "up", "--json", user=user, home=home)
        assert up.returncode == 0, up.stderr
        status = json.loads(up.stdout)
        _assert_live(status)
        pg_pid = status["services"]["postgres"]["pid"]
        assert Path(f"/proc/{pg_pid}").stat().st_uid == pw.pw_uid
        down = _cli(stack_dir, "stack", "down", "--wipe", user=user, home=home)
        assert down.returncode == 0, down.stderr
    finally:
        _cli(stack_dir, "stack", "down", "--wipe", user=user, home=home)
        shutil.rmtree(home, ignore_errors=True)
