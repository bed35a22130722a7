"""``catalog-cdc contract-server NAME``: run one of the seed contract servers.

The contract servers stand in for the third-party APIs the consumers feed (the
products sync API, the hosted search Update API, webhook subscribers, the KV REST
API).  They are test tooling and live in the source checkout under
``tests/contracts/``; this command runs one in the foreground for the demo or for
trying a consumer by hand.  Each enforces its seed (``../shared/seeds/``) and
serves what it accepted at ``GET /_contract/state``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigurationError

log = logging.getLogger(__name__)

SERVERS = {
    "storefront-api": "tests.contracts.storefront_api",
    "search-service": "tests.contracts.search_service",
    "webhooks": "tests.contracts.webhooks",
    "kv-rest": "tests.contracts.kv_rest",
}


def register(sub: Any) -> None:
    p = sub.add_parser(
        "contract-server",
        help="run a seed's contract server (stand-in for a third-party API; foreground)",
        description=(
            "Run a contract server that enforces one seed's rules (auth, field limits, error "
            "codes, rate limits) and records what it accepted (GET /_contract/state). "
            f"Servers: {', '.join(SERVERS)}. They ship with the source checkout "
            "(tests/contracts/). Ctrl-C stops it."
        ),
    )
    p.add_argument("name", choices=sorted(SERVERS), help="which server")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port (default: a free one, printed)")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a server option (repeatable; see the server module's docstring)",
    )
    p.set_defaults(handler=_serve)


def load(name: str) -> Any:
    """The server class of ``name`` (``tests.contracts.<module>.Server``)."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "tests" / "contracts" / "__init__.py").exists():
        raise ConfigurationError(
            "the contract servers ship with the source checkout (tests/contracts/); "
            f"none found beside {root}"
        )
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return importlib.import_module(SERVERS[name]).Server


def _serve(args: argparse.Namespace) -> int:
    from pipeline.settings import parse_options

    options = {k.replace("-", "_"): v for k, v in parse_options(args.option).items()}
    server = load(args.name)(args.host, args.port, **options)
    print(f"{args.name} contract server on {server.url}", flush=True)
    log.info("event=contract_server_started name=%s url=%s", args.name, server.url)
    server.serve_forever()  # Ctrl-C: the CLI's KeyboardInterrupt handling
    return 0
