"""The one command-line entry point, ``catalog-cdc``, with a subcommand per service and tool.

Each area registers its own subcommands (``register(subparsers)`` in its ``cli``
module); this module only builds the parser, configures logging and turns project
errors into a one-line message and exit status 1 (2 for usage errors, as argparse).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from pipeline import logs
from pipeline.errors import CatalogCdcError

log = logging.getLogger(__name__)

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    from consumers import cli as consumers_cli
    from consumers.edge_kv import cli as kv_cli
    from pipeline import contract_servers
    from pipeline.admin import cli as admin_cli
    from pipeline.assembler import cli as assembler_cli
    from pipeline.dashboard import cli as dashboard_cli
    from pipeline.demo import cli as demo_cli
    from pipeline.reader import cli as reader_cli
    from pipeline.replay import cli as replay_cli
    from pipeline.stack import cli as stack_cli
    from pipeline.supervisor import cli as supervisor_cli
    from pipeline.verify import cli as verify_cli

    parser = argparse.ArgumentParser(
        prog="catalog-cdc",
        description=(
            "Change-data-capture for product catalogs: PostgreSQL -> Kafka -> search, "
            "shop APIs, webhooks and edge KV. Connection settings come from "
            "CATALOG_CDC_* environment variables, else from the local stack."
        ),
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"],
        help="log verbosity (default: info)",
    )  # fmt: skip
    parser.add_argument(
        "--log-format", default="kv", choices=["kv", "json"],
        help="log line format: key=value or JSON (default: kv)",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    stack_cli.register(sub)
    demo_cli.register(sub)
    reader_cli.register(sub)
    assembler_cli.register(sub)
    consumers_cli.register(sub)
    kv_cli.register(sub)
    contract_servers.register(sub)
    replay_cli.register(sub)
    supervisor_cli.register(sub, build_parser)
    admin_cli.register(sub)
    verify_cli.register(sub)
    dashboard_cli.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.configure(args.log_level, args.log_format)
    handler: Handler = args.handler
    try:
        return handler(args)
    except CatalogCdcError as exc:
        print(f"catalog-cdc: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("catalog-cdc: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
