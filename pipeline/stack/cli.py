"""``catalog-cdc stack up | down | status``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pipeline.settings import default_stack_dir


def register(sub: Any) -> None:
    p = sub.add_parser(
        "stack",
        help="start, stop and inspect the local stack of real services",
        description=(
            "The local stack, each service on a free loopback port, state under .stack/: a "
            "private PostgreSQL cluster (wal_level=logical), Apache Kafka 4.4 (KRaft) and "
            "OpenSearch 2.19 (fetched once from Maven Central into ~/.cache/catalog-cdc), and "
            "the stand-ins: noida-db's Elasticsearch API, Tansu (a second Kafka-protocol "
            "broker for the broker matrix) and Redis. See docs/local-services.md."
        ),
    )
    p.add_argument(
        "--stack-dir", type=Path, default=None,
        help="state directory (default: $CATALOG_CDC_STACK_DIR or <checkout>/.stack)",
    )  # fmt: skip
    ssub = p.add_subparsers(dest="stack_command", metavar="ACTION", required=True)

    up = ssub.add_parser(
        "up",
        help="start every service (idempotent); returns when all answer",
        description="Start what is not running and wait until every service answers for real.",
    )
    up.add_argument("--timeout", type=float, default=90.0, help="seconds to wait per service")
    up.add_argument(
        "--kafka-nodes", type=int, choices=(1, 3), default=None,
        help="Kafka nodes: 1, or a 3-node KRaft cluster for the fault tests (default: as "
        "many as run now, else 1)",
    )  # fmt: skip
    up.add_argument("--json", action="store_true", help="print the status as JSON when done")
    up.set_defaults(handler=_up)

    down = ssub.add_parser(
        "down",
        help="stop the services the stack started (data kept)",
        description="Stop only what `stack up` started; data is kept unless --wipe.",
    )
    down.add_argument("--wipe", action="store_true", help="also delete all data under the stack")
    down.set_defaults(handler=_down)

    status = ssub.add_parser(
        "status",
        help="show endpoints and health of every service",
        description="Endpoints and live health. Exit status 0 only when every service answers.",
    )
    status.add_argument("--json", action="store_true", help="one JSON object on stdout")
    status.set_defaults(handler=_status)


def _stack(args: argparse.Namespace) -> Any:
    from pipeline.stack.manager import Stack

    def progress(msg: str) -> None:
        print(f"stack: {msg}", file=sys.stderr, flush=True)

    nodes = getattr(args, "kafka_nodes", None)
    return Stack(args.stack_dir or default_stack_dir(), progress=progress, kafka_nodes=nodes)


def _up(args: argparse.Namespace) -> int:
    stack = _stack(args)
    stack.up(timeout=args.timeout)
    return _print_status(stack.status(), args.json)


def _down(args: argparse.Namespace) -> int:
    _stack(args).down(wipe=args.wipe)
    print("stack: stopped" + (" and wiped" if args.wipe else " (data kept)"), file=sys.stderr)
    return 0


def _status(args: argparse.Namespace) -> int:
    return _print_status(_stack(args).status(), args.json)


_FACTS = (
    "engine", "version", "wal_level", "kafka_brokers", "elasticsearch_version",
    "redis_version", "error",
)  # fmt: skip


def _print_status(status: dict[str, Any], as_json: bool) -> int:
    from pipeline.stack.manager import ENDPOINTS

    if as_json:
        print(json.dumps(status, indent=2))
    else:
        print(f"stack dir: {status['stack_dir']}")
        for name, svc in status["services"].items():
            mark = "up  " if svc["running"] and svc.get("answers") else "DOWN"
            extra = " ".join(f"{k}={v}" for k, v in svc.items() if k in _FACTS)
            print(f"  [{mark}] {name:<10} pid={svc['pid']} ports={svc['ports']} {extra}")
        for field in ENDPOINTS:
            print(f"  {field:<25} {status[field]}")
    return 0 if status["healthy"] else 1
