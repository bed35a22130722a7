"""How the cost of a replay grows: 10k, 100k and 1M products, the target left out.

The search replay's benchmark (``replay_bench.py``) stops at 100,000 documents: the
local Elasticsearch-API server keeps an index in memory (several GB at 100k), so a
million do not fit this machine.  The replay itself (read the document topic, decode,
validate, batch, write through the sink, save its resume positions) has no such
limit; this measures it with a target that costs little: ``catalog-cdc replay jsonl``
(each document a JSON line in a file).  ``--consumer edge-kv`` replays into the edge
KV layout in SQLite instead (that sink keeps the catalog in memory for its listing
pages, so its memory grows with the catalog).

For each size N: N product documents (the demo catalog's, cloned with new ids, made
one at a time: 1M pydantic models would not fit in memory either) on a fresh compacted
document topic; then ``catalog-cdc replay CONSUMER`` as a process, timed from start to
exit, its peak RSS (``VmHWM``) sampled; the topics are deleted afterwards.  Reported:
documents/s, seconds, peak RSS per size, and the broker's RSS after.

Usage: python bench/replay_scale_bench.py [--sizes 10000,100000,1000000] [--consumer jsonl]
       [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient
from reader_bench import _vm_hwm_kb, _with_db
from replay_bench import _put_on_topic, _settle, clones
from search_bench import _documents

from pipeline.documents.model import ProductDocument
from pipeline.kafka import TopicSpec, ensure_topics
from pipeline.settings import load_connections

CLI = str(Path(__file__).resolve().parent.parent / ".venv" / "bin" / "catalog-cdc")


def _noida_rss_mb() -> float:
    from latency_bench import _stack_pids

    pid = _stack_pids().get("noida-db")
    if pid is None:
        return 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


_OPTIONS = {
    "jsonl": lambda tmp: ["--option", f"path={tmp}/out.jsonl", "--option", "kinds=product"],
    "edge-kv": lambda tmp: ["--option", "backend=sqlite", "--option", f"path={tmp}/out.sqlite"],
}


def one_size(
    bootstrap: str, source: list[ProductDocument], n: int, consumer: str
) -> dict[str, Any]:
    prefix = f"rs{uuid.uuid4().hex[:6]}"
    t = time.perf_counter()
    _put_on_topic(bootstrap, prefix, clones(source, n))
    put_s = time.perf_counter() - t
    # The edge KV also reads the stores and CMS pages (raw topics): none here.
    ensure_topics(bootstrap, [TopicSpec(f"{prefix}.public.{t}") for t in ("stores", "cms_pages")])
    _settle()
    env = {
        **os.environ,
        "CATALOG_CDC_KAFKA_BOOTSTRAP": bootstrap,
        "CATALOG_CDC_TOPIC_PREFIX": prefix,
    }
    try:
        with tempfile.TemporaryDirectory() as tmp:
            argv = [CLI, "replay", consumer, *_OPTIONS[consumer](tmp),
                    "--state", f"{tmp}/replay.json", "--json"]  # fmt: skip
            t = time.perf_counter()
            proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            peak_kb = 0
            while proc.poll() is None:
                peak_kb = max(peak_kb, _vm_hwm_kb(proc.pid))
                time.sleep(0.2)
            elapsed = time.perf_counter() - t
            out, err = proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"replay of {n} failed: {err.decode()[-2000:]}")
            result = json.loads(out)
            out_mb = sum(p.stat().st_size for p in Path(tmp).glob("out.*")) / 1e6
    finally:
        admin = AdminClient({"bootstrap.servers": bootstrap})
        topics = [t for t in admin.list_topics(timeout=30).topics if t.startswith(f"{prefix}.")]
        if topics:
            for f in admin.delete_topics(topics).values():
                f.result(60)
    records = int(result.get("records", 0))
    assert records == n, (records, n, result)
    return {
        "documents": n,
        "put_on_topic_s": put_s,
        "replay_s": elapsed,
        "replay_docs_per_s": n / elapsed,
        "replay_peak_rss_mb": peak_kb / 1024,
        "output_mb": out_mb,
        "noida_rss_mb_after": _noida_rss_mb(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--consumer", default="jsonl", choices=sorted(_OPTIONS))
    parser.add_argument("--source-products", type=int, default=5_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    conns = load_connections()
    admin = _with_db(conns.require("postgres_dsn"), "postgres")
    source = _documents(admin, args.source_products)
    sizes = []
    for n in (int(x) for x in args.sizes.split(",")):
        r = one_size(conns.require("kafka_bootstrap"), source, n, args.consumer)
        sizes.append(r)
        print(f"{n:,} documents: replay {r['replay_s']:.0f} s, {r['replay_docs_per_s']:,.0f} "
              f"docs/s, peak RSS {r['replay_peak_rss_mb']:.0f} MB", flush=True)  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"consumer": args.consumer, "sizes": sizes}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
