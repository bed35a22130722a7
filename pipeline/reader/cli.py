"""``catalog-cdc reader`` and ``catalog-cdc tail``."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "reader",
        help="stream PostgreSQL changes to Kafka (long-running service)",
        description=(
            "Capture every committed change of the catalog tables through a pgoutput logical "
            "replication slot and produce Debezium-style Avro events to Kafka topics "
            "{prefix}.{schema}.{table}. Creates the publication, slot and topics when missing, "
            "snapshots the tables when the slot is new, then streams. SIGTERM/Ctrl-C drains, "
            "confirms and exits 0. Settings: CATALOG_CDC_READER_* (see docs/reader.md)."
        ),
    )
    p.add_argument("--slot", help="replication slot (default catalog_cdc)")
    p.add_argument("--publication", help="publication (default catalog_cdc)")
    p.add_argument(
        "--tables",
        nargs="+",
        metavar="SCHEMA.TABLE",
        help="tables to capture (default: demo catalog)",
    )
    p.add_argument("--snapshot-mode", choices=["initial", "never"], help="default initial")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port")
    p.add_argument("--heartbeat-interval", type=float, help="seconds between heartbeats (0 = off)")
    p.set_defaults(handler=_reader)

    t = sub.add_parser(
        "tail",
        help="print the decoded events of a topic as JSON lines",
        description="Decode a change-event topic (Avro, via the schema topic or registry) and "
        "print one JSON object per message: key, partition, offset and the event envelope.",
    )
    t.add_argument("topic", help="topic, e.g. catalog.public.products")
    t.add_argument("--from-beginning", action="store_true", help="start at the earliest offset")
    t.add_argument("--max", type=int, default=None, help="stop after N messages")
    t.add_argument(
        "--timeout", type=float, default=None,
        help="stop after this many idle seconds (default: follow forever, or 5 s with --max)",
    )  # fmt: skip
    t.add_argument("--json", action="store_true", help="compact JSON (one line per event; default)")
    t.set_defaults(handler=_tail)

    topics = sub.add_parser(
        "topics",
        help="list the pipeline's Kafka topics with partitions and message counts",
        description="Topics starting with the topic prefix (CATALOG_CDC_TOPIC_PREFIX), with their "
        "partition count and messages held (sum over partitions of high - low watermark).",
    )
    topics.add_argument("--json", action="store_true", help="one JSON object on stdout")
    topics.set_defaults(handler=_topics)


def _reader(args: argparse.Namespace) -> int:
    from pipeline.lifecycle import stop_event

    # Handlers first: a SIGTERM during start-up must also end in a clean stop.
    stop = stop_event()

    from pipeline.reader.service import Reader
    from pipeline.reader.settings import ReaderSettings
    from pipeline.settings import load_connections

    conns = load_connections()
    overrides = {
        k: v
        for k, v in {
            "slot": args.slot,
            "publication": args.publication,
            "tables": args.tables,
            "snapshot_mode": args.snapshot_mode,
            "metrics_port": args.metrics_port,
            "heartbeat_interval": args.heartbeat_interval,
        }.items()
        if v is not None
    }
    settings = ReaderSettings(**overrides)
    reader = Reader(
        dsn=conns.require("postgres_dsn"),
        bootstrap=conns.require("kafka_bootstrap"),
        topic_prefix=conns.topic_prefix,
        settings=settings,
        schema_registry_url=conns.schema_registry_url,
    )
    reader.run(stop)
    return 0


def _topics(args: argparse.Namespace) -> int:
    import json

    from confluent_kafka import Consumer, TopicPartition

    from pipeline.kafka import consumer_config
    from pipeline.settings import load_connections

    conns = load_connections()
    consumer = Consumer(consumer_config(conns.require("kafka_bootstrap")))
    try:
        meta = consumer.list_topics(timeout=10)
        rows = {}
        for name in sorted(meta.topics):
            if not name.startswith(conns.topic_prefix + "."):
                continue
            parts = meta.topics[name].partitions
            held = 0
            for p in parts:
                low, high = consumer.get_watermark_offsets(TopicPartition(name, p), timeout=10)
                held += max(0, high - low)
            rows[name] = {"partitions": len(parts), "messages": held}
    finally:
        consumer.close()
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        width = max((len(n) for n in rows), default=5)
        for name, info in rows.items():
            parts, held = info["partitions"], info["messages"]
            print(f"{name:<{width}}  {parts:>3} partitions  {held:>10,} messages")
    return 0


def _tail(args: argparse.Namespace) -> int:
    from pipeline.reader.tail import tail
    from pipeline.settings import load_connections

    conns = load_connections()
    timeout = args.timeout if args.timeout is not None else (5.0 if args.max else None)
    tail(
        bootstrap=conns.require("kafka_bootstrap"),
        topic=args.topic,
        topic_prefix=conns.topic_prefix,
        schema_registry_url=conns.schema_registry_url,
        from_beginning=args.from_beginning,
        max_messages=args.max,
        idle_timeout=timeout,
    )
    return 0
