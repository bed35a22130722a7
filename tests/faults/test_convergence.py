"""Randomized end-to-end convergence: seeded random edit workloads through the whole
pipeline, and every sink ends equal to the database.

On the shared stack, in-process: PostgreSQL -> reader -> assembler -> search, edge-kv
(SQLite) and webhooks (to an in-process receiver), each consumer built by the registry
from its ``--option``s as ``catalog-cdc consume`` does.  Three rounds, each a
``run_edits`` workload with its own seed and rate followed by targeted edits (a brand
rename, a category move, a url-key change, a hard delete); after every round, search
and edge-kv must verify in sync (``pipeline.verify``) and the receiver's last event per
product must equal ``expected_documents``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from consumers.registry import SinkContext, load
from consumers.runtime import ConsumerRuntime, RuntimeSettings
from pipeline.demo.edits import run_edits
from pipeline.demo.seed import seed_catalog
from tests.contracts.webhooks import Server
from tests.faults.support import Targets, targeted_edits, wait_converged, write_webhooks_config
from tests.integration.assembler_support import running_assembler
from tests.integration.reader_support import running_reader
from tests.integration.test_consumer_runtime import running

pytestmark = [pytest.mark.integration, pytest.mark.faults]

# (seed, edits/s, seconds): a slow long one, a fast burst, a medium one.
WORKLOADS = [(101, 20, 6), (202, 80, 3), (303, 40, 4)]


@pytest.mark.timeout(360)
def test_random_workloads_converge_in_every_sink(
    catalog_dsn: str,
    kafka_bootstrap: str,
    es_url: str,
    topic_prefix: str,
    index_prefix: str,
    tmp_path: Path,
) -> None:
    seed_catalog(catalog_dsn, products=50, seed=41)
    with Server() as receiver:
        assert isinstance(receiver, Server)
        targets = Targets(
            dsn=catalog_dsn,
            bootstrap=kafka_bootstrap,
            es_url=es_url,
            prefix=topic_prefix,
            index_prefix=index_prefix,
            kv_options={"backend": "sqlite", "path": str(tmp_path / "kv.sqlite"), "page_size": "4"},
            webhooks=receiver,
        )
        hooks = write_webhooks_config(tmp_path / "webhooks.toml", receiver)
        options = {
            "search": {"url": es_url, "index_prefix": index_prefix},
            "edge-kv": targets.kv_options,
            "webhooks": {
                "config": str(hooks),
                "state": str(tmp_path / "webhooks.sqlite"),
                "backoff_initial": "0.1s",
                "backoff_max": "1s",
            },
        }
        conns = targets.connections()
        runtimes = [
            ConsumerRuntime(
                load(name)(SinkContext(conns, opts)),
                bootstrap=kafka_bootstrap,
                topic_prefix=topic_prefix,
                settings=RuntimeSettings(poll_timeout=0.2, backoff_initial=0.05),
            )
            for name, opts in options.items()
        ]
        rounds = []
        with (
            running_reader(catalog_dsn, kafka_bootstrap, topic_prefix),
            running_assembler(kafka_bootstrap, topic_prefix, tmp_path / "assembler.sqlite"),
            running(runtimes[0]),
            running(runtimes[1]),
            running(runtimes[2]),
        ):
            for n, (seed, rate, duration) in enumerate(WORKLOADS):
                started = time.monotonic()
                stats = run_edits(catalog_dsn, rate=rate, duration=duration, seed=seed)
                changed = targeted_edits(catalog_dsn, f"r{n}")
                converged = wait_converged(targets, 90)
                rounds.append({"seed": seed, "committed": stats.committed, "changed": changed,
                               "converged_s": round(converged, 1),
                               "round_s": round(time.monotonic() - started, 1)})  # fmt: skip
                assert stats.committed > 0, stats
        state = receiver.state()
        print(json.dumps({"rounds": rounds, "events": len(state["events"])}, default=str))
        assert state["out_of_order"] == [], state["out_of_order"][:3]
        ids = [e["id"] for e in state["events"]]
        assert len(ids) == len(set(ids))
