"""Replay of the search index from the document topic vs a bare bulk load, side by side.

N product documents (the demo catalog's, built by SQL, cloned with new ids up to N) are
put on a fresh compacted ``{prefix}.doc.products`` topic. Then, into fresh indices of
the stack's search engine (OpenSearch or Elasticsearch, as the search consumer finds it):

- **bare**: the engine client's ``helpers.bulk`` of the same documents (bodies built by the
  search mapping, external versions, 500 a request), from memory — no Kafka, no Avro;
- **replay**: ``catalog-cdc replay search`` (``pipeline.replay.replay``): reads the
  topic, decodes the Avro documents, writes a new generation through the search sink,
  swaps the alias, saves its resume positions after every batch.

The ratio is replay documents/s / bare documents/s (goal >= 0.8).  Who goes first
alternates between rounds; the first one's index is deleted before the second
starts, and each starts on an idle server (its CPU under 0.15 cores for 2 s): the
local server slows down as it fills and works on after a big write, which the next
writer would otherwise pay for.

Usage: python bench/replay_bench.py [--products N] [--rounds R] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from reader_bench import _with_db
from search_bench import _bare as bare_bulk
from search_bench import _documents

from consumers.search import mapping
from consumers.search.engine import SearchEngine, connect
from consumers.search.sink import delete_index
from pipeline.documents.model import ProductDocument
from pipeline.documents.reading import document_codec
from pipeline.documents.wire import doc_key, headers_of
from pipeline.kafka import TopicSpec, ensure_topics, partition_for, producer_config
from pipeline.replay import replay
from pipeline.settings import ConnectionSettings, load_connections
from pipeline.topics import doc_topic


def _clone(docs: list[ProductDocument], n: int) -> list[ProductDocument]:
    return list(clones(docs, n))


def clones(docs: list[ProductDocument], n: int) -> Iterator[ProductDocument]:
    """``n`` documents with ids 1..n (new references and url keys), made as they are
    asked for (a million pydantic models would not fit in memory at once)."""
    for i in range(n):
        d = docs[i % len(docs)]
        pid = i + 1
        yield d.model_copy(
            update={
                "id": pid,
                "reference": f"{d.reference[:50]}-{pid}",
                "url_key": f"{d.url_key[:80]}-{pid}",
                "version": 1000 + pid,
            }
        )


def _put_on_topic(bootstrap: str, prefix: str, docs: Iterable[ProductDocument]) -> None:
    codec = document_codec(bootstrap, prefix)
    topic = doc_topic(prefix, "product")
    parts = 6
    ensure_topics(bootstrap, [TopicSpec(topic, parts, {"cleanup.policy": "compact"})])
    ensure_topics(bootstrap, [TopicSpec(doc_topic(prefix, "category"), 1, {"cleanup.policy": "compact"})])  # fmt: skip
    producer = Producer({**producer_config(bootstrap), "linger.ms": 20})
    for d in docs:
        while True:
            try:
                producer.produce(
                    topic,
                    key=doc_key(d.id),
                    value=codec.encode(d),
                    partition=partition_for(d.id, parts),
                    headers=headers_of("product", d.version, d.source_ts_ms),
                )
                break
            except BufferError:
                producer.poll(0.1)
    assert producer.flush(120) == 0


def _bare(es: SearchEngine, prefix: str, docs: list[ProductDocument]) -> float:
    """search_bench's bare helpers.bulk into a fresh generation of ``prefix``."""
    es.put_index_template(prefix, mapping.template(prefix))
    index = mapping.generation(prefix, 1)
    es.create_index(index)
    return bare_bulk(es, index, docs)


def _replay(bootstrap: str, es_url: str, prefix: str) -> tuple[float, int]:
    conns = ConnectionSettings(kafka_bootstrap=bootstrap, elasticsearch_url=es_url, topic_prefix=prefix)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        result = replay("search", connections=conns, grace=0, state_path=Path(tmp) / "r.json")
        elapsed = time.perf_counter() - t
    assert result.rejected == 0, result
    return elapsed, result.records


def _drop(es: SearchEngine, prefix: str) -> None:
    delete_index(es, prefix)
    _settle()


def _settle(limit: float = 180.0) -> float:
    """Until the local server is idle again (under 0.15 cores for 2 s; at most
    ``limit`` s): after 100k documents were put on a topic, or an index deleted, it
    works on for a while, and whoever wrote next paid for it (measured: the first
    writer of a round 2x slower than the second, whichever it was)."""
    from latency_bench import _stack_pids
    from reader_bench import _cpu_s

    pid = _stack_pids().get("noida-db")
    started = time.monotonic()
    if pid is None:
        time.sleep(2.0)
        return 0.0
    while time.monotonic() - started < limit:
        before = _cpu_s(pid)
        time.sleep(2.0)
        if (_cpu_s(pid) - before) / 2.0 < 0.15:
            break
    return time.monotonic() - started


def one_round(
    bootstrap: str, es_url: str, docs: list[ProductDocument], replay_first: bool
) -> dict[str, Any]:
    es = connect(es_url, timeout=600)
    prefix = f"rb{uuid.uuid4().hex[:6]}"
    bare_prefix = f"rbb{uuid.uuid4().hex[:6]}"
    try:
        _put_on_topic(bootstrap, prefix, docs)
        _settle()
        # Each into a fresh index on a server that holds only what the other left
        # deleted: the local server slows down as it fills (100k documents are
        # several GB of its memory), so the second writer would pay for the first.
        if replay_first:
            replay_s, records = _replay(bootstrap, es_url, prefix)
            _drop(es, prefix)
            bare_s = _bare(es, bare_prefix, docs)
        else:
            bare_s = _bare(es, bare_prefix, docs)
            _drop(es, bare_prefix)
            replay_s, records = _replay(bootstrap, es_url, prefix)
        n = len(docs)
        assert records == n, (records, n)
        return {
            "documents": n,
            "bare_s": bare_s,
            "replay_s": replay_s,
            "bare_docs_per_s": n / bare_s,
            "replay_docs_per_s": n / replay_s,
            "ratio": bare_s / replay_s,
        }
    finally:
        for p in (prefix, bare_prefix):
            delete_index(es, p)
        for template in (bare_prefix, f"{prefix}-products"):
            es.delete_index_template(template)
        es.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=100_000)
    parser.add_argument("--source-products", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    conns = load_connections()
    admin = _with_db(conns.require("postgres_dsn"), "postgres")
    docs = _clone(_documents(admin, args.source_products), args.products)
    rounds = []
    for i in range(args.rounds):
        r = one_round(
            conns.require("kafka_bootstrap"), conns.require("elasticsearch_url"), docs, i % 2 == 1
        )
        rounds.append(r)
        print(
            f"round {i + 1}: replay {r['replay_docs_per_s']:,.0f} docs/s, bare bulk "
            f"{r['bare_docs_per_s']:,.0f} docs/s, ratio {r['ratio']:.2f}",
            flush=True,
        )
    print(json.dumps({k: statistics.median(x[k] for x in rounds) for k in rounds[0]}, indent=1))
    if args.json:
        args.json.write_text(json.dumps({"rounds": rounds}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
