"""Search sink throughput vs the engine client's bare ``helpers.bulk``, side by side.

The same product documents (from the demo catalog, built by SQL) are written to the
stack's search engine (OpenSearch or Elasticsearch: ``CATALOG_CDC_SEARCH_URL``, the
engine detected or ``CATALOG_CDC_SEARCH_ENGINE``) twice per phase, into two fresh indices:

- **bare**: the official client's ``helpers.bulk`` (``elasticsearch.helpers`` or
  ``opensearchpy.helpers``) with the same bodies and external versions, 500 a request;
- **sink**: ``SearchSink.add`` + ``flush`` (the consumer's code: body building, content
  hashing, chunking by count and bytes, per-item status handling).

Phases: *new* documents (N), then *overwrites* (M of them again with a new version
and a changed name; the local server overwrites slowly, so M < N).  The ratio is
sink documents/s / bare documents/s (goal >= 0.8).

Usage: python bench/search_bench.py [--products N] [--overwrites M] [--rounds R] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from reader_bench import _with_db

from consumers.search import mapping
from consumers.search.engine import SearchEngine, connect
from consumers.search.sink import SearchSink, delete_index
from pipeline.demo.seed import seed_catalog
from pipeline.documents.model import ProductDocument
from pipeline.documents.reference import expected_documents
from pipeline.documents.wire import DocumentMessage
from pipeline.settings import load_connections


def _documents(admin_dsn: str, products: int) -> list[ProductDocument]:
    db = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
    try:
        dsn = _with_db(admin_dsn, db)
        seed_catalog(dsn, products=products, seed=7)
        with psycopg.connect(dsn) as conn:
            docs, _ = expected_documents(conn)
        return [d.model_copy(update={"version": 1000}) for d in docs.values()]
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(db)))


def _bare(engine: SearchEngine, index: str, docs: list[ProductDocument]) -> float:
    actions = (
        {
            "_op_type": "index",
            "_index": index,
            "_id": str(d.id),
            "version": d.version,
            "version_type": "external",
            "_source": mapping.body(d),
        }
        for d in docs
    )
    t = time.perf_counter()
    ok = engine.helper_bulk(actions, chunk_size=500)  # raises if any was refused
    elapsed = time.perf_counter() - t
    assert ok == len(docs), (ok, len(docs))
    return elapsed


def _sink(sink: SearchSink, docs: list[ProductDocument]) -> float:
    records = [DocumentMessage("product", d.id, d, d.version, d.source_ts_ms) for d in docs]
    t = time.perf_counter()
    sink.add(records)
    rejected = sink.flush()
    elapsed = time.perf_counter() - t
    assert not rejected, rejected[:3]
    return elapsed


def one_round(
    es_url: str,
    docs: list[ProductDocument],
    overwrites: int,
    sink_first: bool,
    engine_name: str | None = None,
) -> dict[str, Any]:
    es = connect(es_url, engine_name, timeout=300)
    bare_prefix, sink_prefix = f"bb{uuid.uuid4().hex[:6]}", f"bs{uuid.uuid4().hex[:6]}"
    sink = SearchSink(connect(es_url, es.engine, timeout=300), sink_prefix)
    try:
        sink.open()
        es.put_index_template(bare_prefix, mapping.template(bare_prefix))
        bare_index = mapping.generation(bare_prefix, 1)
        es.create_index(bare_index)
        changed = [
            d.model_copy(update={"version": d.version + 1, "name": d.name + " (new)"})
            for d in docs[:overwrites]
        ]
        # Who goes first alternates between rounds (the server warms up, and slows
        # down as it holds more).
        if sink_first:
            new_sink = _sink(sink, docs)
            new_bare = _bare(es, bare_index, docs)
            over_sink = _sink(sink, changed)
            over_bare = _bare(es, bare_index, changed)
        else:
            new_bare = _bare(es, bare_index, docs)
            new_sink = _sink(sink, docs)
            over_bare = _bare(es, bare_index, changed)
            over_sink = _sink(sink, changed)
        n, m = len(docs), len(changed)
        return {
            "engine": es.info().label,
            "new_documents": n,
            "overwrites": m,
            "bare_new_docs_per_s": n / new_bare,
            "sink_new_docs_per_s": n / new_sink,
            "new_ratio": new_bare / new_sink,
            "bare_overwrite_docs_per_s": m / over_bare,
            "sink_overwrite_docs_per_s": m / over_sink,
            "overwrite_ratio": over_bare / over_sink,
        }
    finally:
        delete_index(es, bare_prefix)
        delete_index(es, sink_prefix)
        for template in (bare_prefix, f"{sink_prefix}-products"):
            es.delete_index_template(template)
        sink.close()
        es.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=5000)
    parser.add_argument("--overwrites", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    conns = load_connections()
    admin = _with_db(conns.require("postgres_dsn"), "postgres")
    docs = _documents(admin, args.products)
    rounds = []
    for i in range(args.rounds):
        r = one_round(
            conns.require("elasticsearch_url"),
            docs,
            args.overwrites,
            i % 2 == 1,
            conns.search_engine,
        )
        rounds.append(r)
        print(
            f"round {i + 1}: new {r['sink_new_docs_per_s']:,.0f} vs {r['bare_new_docs_per_s']:,.0f}"
            f" docs/s (ratio {r['new_ratio']:.2f}); overwrites "
            f"{r['sink_overwrite_docs_per_s']:,.0f} vs {r['bare_overwrite_docs_per_s']:,.0f} "
            f"docs/s (ratio {r['overwrite_ratio']:.2f})",
            flush=True,
        )
    numbers = [k for k in rounds[0] if k != "engine"]
    summary = {"engine": rounds[0]["engine"], **{k: statistics.median(x[k] for x in rounds) for k in numbers}}  # fmt: skip
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps({"rounds": rounds}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
