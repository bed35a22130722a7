"""``catalog-cdc consume NAME``: run one consumer (a sink) on the document topics."""

from __future__ import annotations

import argparse
import signal
import threading
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "consume",
        help="run a consumer: document topics -> a sink (long-running)",
        description=(
            "Read the document topics ({prefix}.doc.products / .categories) in the consumer "
            "group {prefix}-NAME and write them to the sink NAME: retries while the target is "
            "unavailable, dead-letters what it refuses to {prefix}.dlq.NAME, commits offsets "
            "only after the sink flushed. Consumers are entry points of the group "
            "catalog_cdc.consumers (see docs/adding-a-consumer.md). SIGTERM/Ctrl-C exits 0."
        ),
    )
    p.add_argument("name", nargs="?", help="the consumer (see --list)")
    p.add_argument("--list", action="store_true", help="list the installed consumers and exit")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option for the sink (repeatable; see the consumer's docs)",
    )
    p.add_argument("--group", help="consumer group (default {prefix}-NAME)")
    p.add_argument("--batch-size", type=int, default=500, help="records per batch (default 500)")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port")
    p.add_argument(
        "--exit-when-idle",
        type=float,
        metavar="SECONDS",
        help="exit 0 once caught up and idle this long",
    )
    p.set_defaults(handler=_consume)


def _consume(args: argparse.Namespace) -> int:
    from consumers.registry import SinkContext, available, load
    from consumers.runtime import ConsumerRuntime, RuntimeSettings
    from pipeline.errors import ConfigurationError
    from pipeline.settings import load_connections

    if args.list or not args.name:
        for name, target in sorted(available().items()):
            print(f"{name:<20} {target}")
        return 0 if args.list else 2
    options: dict[str, str] = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigurationError(f"--option {item!r}: expected KEY=VALUE")
        options[key] = value
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    conns = load_connections()
    sink = load(args.name)(SinkContext(conns, options))
    runtime = ConsumerRuntime(
        sink,
        bootstrap=conns.require("kafka_bootstrap"),
        topic_prefix=conns.topic_prefix,
        settings=RuntimeSettings(
            batch_size=args.batch_size, metrics_port=args.metrics_port, group=args.group
        ),
        schema_registry_url=conns.schema_registry_url,
    )
    if args.exit_when_idle is not None:
        idle = float(args.exit_when_idle)

        def watch() -> None:
            while not stop.is_set():
                caught_up = runtime.caught_up.wait(0.5) and not stop.wait(idle)
                if caught_up and runtime.caught_up.is_set():
                    stop.set()

        threading.Thread(target=watch, name="idle-watch", daemon=True).start()
    runtime.run(stop)
    return 0
