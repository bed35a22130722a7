"""``catalog-cdc run`` on the stack: reader, assembler and a consumer as supervised
children; a ``kill -9`` of the assembler is restarted and the pipeline still
delivers; SIGTERM stops everything, exit 0, no child left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psycopg
import pytest

from pipeline.demo.seed import seed_catalog
from pipeline.documents.reference import expected_documents
from tests.conftest import REPO
from tests.integration.reader_support import CLI, wait_for

pytestmark = pytest.mark.integration

GRACE = 20


def _events(log_path: Path, event: str) -> list[dict[str, str]]:
    """The supervisor's ``event=...`` lines as key -> value (kv log format)."""
    found = []
    for line in log_path.read_text(errors="replace").splitlines():
        fields = dict(tok.split("=", 1) for tok in line.split() if "=" in tok)
        if fields.get("event") == event and "logger=pipeline.supervisor" in line:
            found.append(fields)
    return found


def _latest(jsonl: Path) -> dict[int, dict[str, object]]:
    """Per product id, the line with the highest version (the file is at-least-once)."""
    latest: dict[int, dict[str, object]] = {}
    if not jsonl.exists():
        return latest
    text = jsonl.read_text()
    for line in text[: text.rfind("\n") + 1].splitlines():  # a line being written: not yet
        if not line.strip():
            continue
        rec = json.loads(line)
        if rec["kind"] != "product":
            continue
        pid = int(rec["id"])
        if pid not in latest or int(rec["version"]) >= int(latest[pid]["version"]):  # type: ignore[call-overload]
            latest[pid] = rec
    return latest


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is gone too


def test_run_restarts_a_killed_service_and_stops_cleanly(
    catalog_dsn: str, kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    seed_catalog(catalog_dsn, products=30)
    with psycopg.connect(catalog_dsn) as conn:
        products, _ = expected_documents(conn)
    jsonl = tmp_path / "documents.jsonl"
    config = tmp_path / "catalog-cdc.toml"
    config.write_text(
        f"""
[supervisor]
grace_period = {GRACE}
status_interval = 2

[restart]
backoff_initial = 0.5

[reader]
args = ["--heartbeat-interval", "1"]

[consumers.jsonl]
options = {{ path = "{jsonl}", kinds = "product" }}

[consumers.search]
enabled = false
"""
    )
    env = {
        **os.environ,
        "CATALOG_CDC_POSTGRES_DSN": catalog_dsn,
        "CATALOG_CDC_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "CATALOG_CDC_TOPIC_PREFIX": topic_prefix,
        "CATALOG_CDC_READER_SLOT": f"s_{topic_prefix}",
        "CATALOG_CDC_READER_PUBLICATION": f"p_{topic_prefix}",
        "CATALOG_CDC_ASSEMBLER_STATE_PATH": str(tmp_path / "assembler.sqlite"),
    }
    log_path = tmp_path / "run.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [CLI, "run", "--config", str(config)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )
    pids: set[int] = set()

    def started(name: str) -> list[int]:
        return [int(e["pid"]) for e in _events(log_path, "service_started") if e["name"] == name]

    try:
        # Every product reaches the consumer's file through reader and assembler.
        wait_for(
            lambda: set(_latest(jsonl)) >= set(products) or proc.poll() is not None,
            50,
            "every product in the jsonl file",
        )
        assert proc.poll() is None, log_path.read_text()[-4000:]
        log = log_path.read_text()
        assert "reader    | " in log and "assembler | " in log and "jsonl     | " in log
        names = [e["name"] for e in _events(log_path, "service_started")]
        assert names[:3] == ["reader", "assembler", "jsonl"]
        pids.update(started("reader") + started("assembler") + started("jsonl"))

        # kill -9 the assembler: the supervisor starts it again, the pipeline delivers.
        (first,) = started("assembler")
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: len(started("assembler")) >= 2, 15, "the assembler restarted")
        failed = [e for e in _events(log_path, "service_failed") if e["name"] == "assembler"]
        assert failed and failed[0]["status"] == "SIGKILL"
        pids.update(started("assembler"))
        target = min(products)
        with psycopg.connect(catalog_dsn) as conn:
            conn.execute(
                "UPDATE products SET name = 'Renamed while supervised', updated_at = now() "
                "WHERE id = %s",
                (target,),
            )
        wait_for(
            lambda: (
                (_latest(jsonl).get(target, {}).get("document") or {}).get("name")  # type: ignore[union-attr]
                == "Renamed while supervised"
            ),
            30,
            "the edit after the restart in the jsonl file",
        )
        wait_for(lambda: bool(_events(log_path, "status")), 5, "a status line")
        assert len(started("reader")) == 1 and len(started("jsonl")) == 1

        # SIGTERM: every child stops, exit 0 within the grace period.
        stop_started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(GRACE + 10) == 0, log_path.read_text()[-4000:]
        assert time.monotonic() - stop_started < GRACE
        stopped = {e["name"]: e["status"] for e in _events(log_path, "service_stopped")}
        assert stopped == {"reader": "0", "assembler": "0", "jsonl": "0"}
        assert not _events(log_path, "service_killed")
        # Each service's peak resident memory, sampled from /proc while it ran: a
        # Python process with librdkafka loaded is tens of MB, never zero.
        (peaks,) = _events(log_path, "peak_rss")
        rss = json.loads(peaks["services"])
        assert set(rss) == {"reader", "assembler", "jsonl"}
        assert all(20 < mb < 2000 for mb in rss.values()), rss
        assert not [p for p in pids if _alive(p)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
