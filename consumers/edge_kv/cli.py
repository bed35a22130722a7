"""``catalog-cdc kv get KEY`` / ``catalog-cdc kv list PREFIX``: read the edge KV store.

For people and the demo: the same backends as the consumer (``--backend sqlite`` with
``--path``, the default; ``--backend redis`` with ``--redis-url`` / ``--key-prefix``;
``--backend rest`` with ``--api-url``, ``--account``, ``--namespace``, ``--token``).
``get`` prints the value (``--json``: parsed and indented) and exits 1 when the key is
missing; ``list`` prints one key a line (``--json``: a JSON array).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from consumers.edge_kv.backends import BACKENDS, DEFAULT_PATH, make_backend


def register(sub: Any) -> None:
    p = sub.add_parser(
        "kv",
        help="read the edge KV store the edge-kv consumer writes (get KEY, list PREFIX)",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    kv = p.add_subparsers(dest="kv_command", metavar="ACTION", required=True)
    get = kv.add_parser("get", help="print one key's value")
    get.add_argument("key")
    get.set_defaults(handler=_get)
    lst = kv.add_parser("list", help="print the keys starting with PREFIX")
    lst.add_argument("prefix", nargs="?", default="")
    lst.set_defaults(handler=_list)
    for q in (get, lst):
        q.add_argument("--backend", choices=BACKENDS, default="sqlite", help="default: sqlite")
        q.add_argument(
            "--path", default=str(DEFAULT_PATH), help="SQLite file (default %(default)s)"
        )
        q.add_argument("--redis-url", help="Redis URL (default: CATALOG_CDC_REDIS_URL / the stack)")
        q.add_argument("--key-prefix", default="", help="Redis key prefix the consumer used")
        q.add_argument("--api-url", help="KV REST API base URL (…/client/v4)")
        q.add_argument("--account", help="KV REST API account id")
        q.add_argument("--namespace", help="KV REST API namespace id")
        q.add_argument("--token", help="KV REST API token (or CATALOG_CDC_KV_API_TOKEN)")
        q.add_argument("--json", action="store_true", help="JSON output")


def _backend(args: argparse.Namespace) -> Any:
    from pipeline.errors import ConfigurationError
    from pipeline.settings import load_connections

    options = {
        k: str(v)
        for k, v in {
            "backend": args.backend,
            "path": args.path,
            "redis_url": args.redis_url,
            "key_prefix": args.key_prefix,
            "api_url": args.api_url,
            "account": args.account,
            "namespace": args.namespace,
            "token": args.token,
        }.items()
        if v
    }
    if args.backend == "sqlite" and not Path(args.path).exists():
        raise ConfigurationError(
            f"no SQLite KV store at {args.path}: run `catalog-cdc consume edge-kv` first "
            "(or give --path)"
        )
    return make_backend(options, load_connections())


def _get(args: argparse.Namespace) -> int:
    backend = _backend(args)
    try:
        value = backend.get(args.key)
    finally:
        backend.close()
    if value is None:
        print(f"catalog-cdc: no key {args.key!r}", file=sys.stderr)
        return 1
    if args.json:
        try:
            print(json.dumps(json.loads(value), indent=2, ensure_ascii=False))
            return 0
        except ValueError:
            pass
    print(value)
    return 0


def _list(args: argparse.Namespace) -> int:
    backend = _backend(args)
    try:
        keys = backend.list(args.prefix)
    finally:
        backend.close()
    if args.json:
        print(json.dumps(keys, indent=2, ensure_ascii=False))
    else:
        for key in keys:
            print(key)
    return 0
