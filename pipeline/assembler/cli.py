"""``catalog-cdc assembler`` and ``catalog-cdc documents``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "assembler",
        help="join raw change topics into product and category documents (long-running)",
        description=(
            "Read the reader's raw change topics and keep one denormalized document per "
            "product and per category on the compacted topics {prefix}.doc.products and "
            "{prefix}.doc.categories (key: id; a deleted or soft-deleted product is a "
            "tombstone). State lives in an SQLite file derived only from the raw topics. "
            "Several instances share the work through one consumer group. SIGTERM/Ctrl-C "
            "finishes the batch and exits 0. Settings: CATALOG_CDC_ASSEMBLER_* "
            "(see docs/assembler.md)."
        ),
    )
    p.add_argument(
        "--rebuild",
        action="store_true",
        help="delete the state file and rebuild it from the beginning of the raw topics",
    )
    p.add_argument("--state", type=Path, help="SQLite state file (default under .stack/assembler/)")
    p.add_argument("--group", help="consumer group (default {prefix}-assembler)")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port")
    p.add_argument(
        "--exit-when-idle",
        type=float,
        metavar="SECONDS",
        help="exit 0 once caught up and idle this long (for rebuilds and scripts)",
    )
    p.set_defaults(handler=_assembler)

    d = sub.add_parser(
        "documents",
        help="print the product or category documents on the document topics",
        description="Read a document topic from the beginning and print, as JSON lines, the "
        "latest message of each key (what compaction keeps): the document, or a tombstone.",
    )
    d.add_argument("kind", choices=["products", "categories"], help="which document topic")
    d.add_argument("--id", type=int, action="append", help="only this id (repeatable)")
    d.add_argument("--max", type=int, help="print at most N documents")
    d.add_argument("--all", action="store_true", help="every message, not only the latest per key")
    d.add_argument("--no-tombstones", action="store_true", help="leave out deleted documents")
    d.set_defaults(handler=_documents)


def _assembler(args: argparse.Namespace) -> int:
    from pipeline.lifecycle import exit_when_idle, stop_event

    stop = stop_event()  # first: a SIGTERM during start-up also ends in a clean stop

    from pipeline.assembler.service import Assembler
    from pipeline.assembler.settings import AssemblerSettings
    from pipeline.settings import load_connections

    conns = load_connections()
    overrides = {
        k: v
        for k, v in {
            "state_path": args.state,
            "group": args.group,
            "metrics_port": args.metrics_port,
        }.items()
        if v is not None
    }
    assembler = Assembler(
        bootstrap=conns.require("kafka_bootstrap"),
        topic_prefix=conns.topic_prefix,
        settings=AssemblerSettings(**overrides),
        schema_registry_url=conns.schema_registry_url,
    )
    if args.exit_when_idle is not None:
        exit_when_idle(stop, assembler.caught_up, float(args.exit_when_idle))
    assembler.run(stop, rebuild=args.rebuild)
    return 0


def _documents(args: argparse.Namespace) -> int:
    import json
    import sys

    from pipeline.documents.model import to_json
    from pipeline.documents.reading import iter_documents, latest_documents
    from pipeline.settings import load_connections

    conns = load_connections()
    kind = "product" if args.kind == "products" else "category"
    bootstrap = conns.require("kafka_bootstrap")
    if args.all:
        messages = list(
            iter_documents(
                bootstrap, conns.topic_prefix, kind, schema_registry_url=conns.schema_registry_url
            )
        )
    else:
        latest = latest_documents(
            bootstrap, conns.topic_prefix, kind, schema_registry_url=conns.schema_registry_url
        )
        messages = [latest[k] for k in sorted(latest)]
    printed = 0
    for m in messages:
        if args.id and m.id not in args.id:
            continue
        if args.no_tombstones and m.doc is None:
            continue
        if args.max is not None and printed >= args.max:
            break
        head = {"id": m.id, "version": m.version, "partition": m.partition, "offset": m.offset}
        if m.doc is None:
            line = json.dumps({**head, "tombstone": True})
        else:
            line = json.dumps({**head, "document": json.loads(to_json(m.doc))}, ensure_ascii=False)
        sys.stdout.write(line + "\n")
        printed += 1
    return 0
