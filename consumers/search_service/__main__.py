"""``python -m consumers.search_service``: the search service's status; the breaker.

    python -m consumers.search_service status [--url URL] [--private-key KEY]
    python -m consumers.search_service breaker [--state FILE]  # is it open, and why
    python -m consumers.search_service reset-breaker [--state FILE]

The key defaults to ``$CATALOG_CDC_SEARCH_SERVICE_PRIVATE_KEY``, the URL to
``$CATALOG_CDC_SEARCH_SERVICE_URL``, the state file to the consumer's default.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from consumers.search_service.client import DEFAULT_URL, status
from consumers.search_service.sink import DEFAULT_STATE, ENV_KEY, reset_breaker
from consumers.search_service.state import State
from pipeline.errors import CatalogCdcError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m consumers.search_service")
    sub = parser.add_subparsers(dest="command", required=True)
    st = sub.add_parser(
        "status", help="the service's state/get: status, full_import, product_count"
    )
    st.add_argument("--url", default=os.environ.get("CATALOG_CDC_SEARCH_SERVICE_URL", DEFAULT_URL))
    st.add_argument("--private-key", help=f"default: ${ENV_KEY}")
    for name, text in (("breaker", "show the circuit breaker"), ("reset-breaker", "close it")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--state", type=Path, default=DEFAULT_STATE, help=f"default {DEFAULT_STATE}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    try:
        if args.command == "status":
            key = args.private_key or os.environ.get(ENV_KEY)
            if not key:
                print(f"no private key: --private-key or {ENV_KEY}", file=sys.stderr)
                return 2
            print(json.dumps(status(args.url, key)))
        elif args.command == "breaker":
            if not args.state.exists():
                print(json.dumps({"breaker": None, "note": f"no state file {args.state}"}))
                return 0
            state = State(args.state)
            try:
                print(json.dumps({"breaker": state.breaker}, ensure_ascii=False))
            finally:
                state.close()
        else:
            was = reset_breaker(args.state)
            print(json.dumps({"reset": was is not None, "was": was}, ensure_ascii=False))
    except CatalogCdcError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
