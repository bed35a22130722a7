"""Peak resident memory of every service of the whole pipeline, under ``catalog-cdc run``.

What ``make demo`` runs (``scripts/demo.toml``: the reader, the assembler, the five
consumers, the admin API and the three contract servers), on a demo run of its own
(``pipeline.dashboard.demo prepare``: database, slot, topic prefix, groups, index):
N products seeded, the pipeline started, the initial load through every consumer,
``demo edits`` for S seconds, caught up again, a few admin API status calls, then
SIGTERM.  The supervisor samples each child's ``VmHWM`` every second and logs
``event=peak_rss`` when it stops (pipeline/supervisor/supervisor.py); that is the figure
per service.  The times of the phases are recorded beside it.

Do not run it beside ``make demo``: both use the demo's ports and its ``.stack/demo``.

Usage: python bench/services_bench.py [--products N] [--rate R] [--seconds S]
       [--rounds K] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CLI = str(REPO / ".venv" / "bin" / "catalog-cdc")
CONFIG = "scripts/demo.toml"
ADMIN_PORT = 18780


def _demo(env: dict[str, str], *args: str, timeout: float = 900) -> str:
    """``python -m pipeline.dashboard.demo ARGS`` (the demo's own helpers); its stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.dashboard.demo", *args, "--config", CONFIG],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"demo {' '.join(args)} failed: {done.stderr[-2000:]}")
    return done.stdout


def _caught_up(env: dict[str, str], timeout: float) -> float:
    """Until the reader confirmed the WAL and every consumer group is at the end."""
    t0 = time.monotonic()
    _demo(env, "wait-reader", "--timeout", str(timeout))
    _demo(env, "wait-groups", "--timeout", str(timeout))
    return time.monotonic() - t0


def _admin_status(env: dict[str, str], calls: int) -> int:
    """A reader token, then ``calls`` GET /v1/status (the admin API does some work)."""
    token = subprocess.run(
        [CLI, "admin", "token", "add", f"bench-{time.time_ns()}", "--role", "reader",
         "--tokens", ".stack/demo/admin-tokens.json"],
        cwd=REPO, env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    consumers = 0
    for _ in range(calls):
        req = urllib.request.Request(
            f"http://127.0.0.1:{ADMIN_PORT}/v1/status", headers={"Authorization": f"Token {token}"}
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            consumers = len(json.load(resp)["consumers"])
    return consumers


def one_round(products: int, rate: float, seconds: float, log_path: Path) -> dict[str, Any]:
    env = {**os.environ}
    run_id = f"demo{time.strftime('%m%d%H%M%S', time.gmtime())}"
    exports = _demo(env, "prepare", "--run", run_id)
    for line in exports.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = shlex.split(value)[0] if value else ""
    (REPO / ".stack/demo/admin-tokens.json").unlink(missing_ok=True)
    t0 = time.monotonic()
    subprocess.run([CLI, "demo", "seed", "--products", str(products)], cwd=REPO, env=env,
                   check=True, capture_output=True)  # fmt: skip
    seed_s = time.monotonic() - t0
    with log_path.open("w") as log:
        run = subprocess.Popen([CLI, "run", "--config", CONFIG], cwd=REPO, env=env,
                               stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        t0 = time.monotonic()
        time.sleep(2)
        if run.poll() is not None:
            raise RuntimeError(f"catalog-cdc run exited: {log_path.read_text()[-2000:]}")
        _caught_up(env, 900)
        load_s = time.monotonic() - t0
        edits = subprocess.run(
            [CLI, "demo", "edits", "--rate", str(rate), "--duration", str(seconds), "--json"],
            cwd=REPO, env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        committed = json.loads(edits.stdout)["committed"]
        catch_up_s = _caught_up(env, 600)
        consumers = _admin_status(env, 20)
    finally:
        run.send_signal(signal.SIGTERM)
        status = run.wait(120)
    text = log_path.read_text(errors="replace")
    found = re.findall(r"event=peak_rss services=(\S+)", text)
    if not found:
        raise RuntimeError(f"no event=peak_rss in {log_path}: {text[-2000:]}")
    failures = len(re.findall(r"event=service_failed", text))
    return {
        "run": run_id,
        "products": products,
        "seed_s": seed_s,
        "initial_load_s": load_s,
        "edits_committed": committed,
        "edit_rate": rate,
        "edit_seconds": seconds,
        "catch_up_s": catch_up_s,
        "admin_status_consumers": consumers,
        "run_exit_status": status,
        "service_failures": failures,
        "peak_rss_mb": json.loads(found[-1]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=40.0, help="live edits a second")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the edits run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rounds = []
    for i in range(args.rounds):
        log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"services-bench-{i + 1}.log"
        r = one_round(args.products, args.rate, args.seconds, log_path)
        rounds.append(r)
        print(f"round {i + 1}: initial load {r['initial_load_s']:.0f} s, catch-up "
              f"{r['catch_up_s']:.0f} s, peak RSS MB "
              + ", ".join(f"{k} {v:.0f}" for k, v in r["peak_rss_mb"].items()), flush=True)  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"rounds": rounds}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
