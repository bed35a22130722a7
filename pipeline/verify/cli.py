"""``catalog-cdc verify CONSUMER [--repair]``.

Exit status: 0 in sync (after ``--repair``: in sync after it), 1 out of sync, 2 the
consumer cannot be verified (its target cannot be listed) or a usage error, 3 the sink
or the database could not be read (the error is printed).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pipeline.errors import CatalogCdcError, ConfigurationError
from pipeline.settings import parse_options

EXIT_IN_SYNC = 0
EXIT_OUT_OF_SYNC = 1
EXIT_UNSUPPORTED = 2
EXIT_ERROR = 3


def register(sub: Any) -> None:
    p = sub.add_parser(
        "verify",
        help="compare a consumer's target with the database (in sync / out of sync); --repair",
        description=(
            "Compare what CONSUMER's target holds (the search index, the edge KV keys) with "
            "what the database calls for (the documents a SQL join gives), per document "
            "class: in sync, out of sync (content differs), missing (in the database, not in "
            "the sink), extra (in the sink, not in the database); list the first differences. "
            "--repair re-emits what is missing or out of sync and deletes what is extra "
            "through the consumer's own sink, then verifies again. Exit status: 0 in sync, "
            "1 out of sync, 2 the consumer cannot be verified, 3 the target or the database "
            "could not be read. See docs/verify.md."
        ),
    )
    p.add_argument("consumer", help="the consumer (search, edge-kv; see docs/verify.md)")
    p.add_argument("--repair", action="store_true", help="fix the differences, then verify again")
    p.add_argument(
        "--limit", type=int, default=20, metavar="N",
        help="differences to list (default 20)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE",
        help="the consumer's options, as for `catalog-cdc consume` (repeatable)",
    )  # fmt: skip
    p.add_argument("--dsn", help="catalog database (default CATALOG_CDC_POSTGRES_DSN / the stack)")
    p.set_defaults(handler=_verify)


def _verify(args: argparse.Namespace) -> int:
    from consumers.registry import SinkContext
    from pipeline.settings import load_connections
    from pipeline.verify.base import Unsupported
    from pipeline.verify.driver import run, verifier_for
    from pipeline.verify.report import render

    limit = max(args.limit, 0)
    try:
        conns = load_connections()
        dsn = args.dsn or conns.require("postgres_dsn")
        verifier = verifier_for(args.consumer, SinkContext(conns, parse_options(args.option)), dsn)
    except Unsupported as exc:
        if args.json:
            print(
                json.dumps({"consumer": args.consumer, "status": "unsupported", "reason": str(exc)})
            )
        else:
            print(f"catalog-cdc verify: {exc}", file=sys.stderr)
        return EXIT_UNSUPPORTED
    except ConfigurationError as exc:
        print(f"catalog-cdc verify: error: {exc}", file=sys.stderr)
        return EXIT_UNSUPPORTED
    try:
        result = run(verifier, repair=args.repair)
    except CatalogCdcError as exc:
        print(f"catalog-cdc verify: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        verifier.close()
    if args.json:
        out: dict[str, Any] = result.report.as_json(limit)
        if result.repair is not None and result.after is not None:
            r = result.repair
            out["repair"] = {
                "reemitted": r.reemitted,
                "deleted": r.deleted,
                "key_writes": r.key_writes,
                "key_deletes": r.key_deletes,
                "rejected": [{"id": x.record.id, "reason": x.reason} for x in r.rejected],
                "skipped": r.skipped,
            }
            out["after_repair"] = result.after.as_json(limit)
        print(json.dumps(out, ensure_ascii=False, default=str))
    else:
        print(render(result.report, limit))
        if result.repair is not None and result.after is not None:
            r = result.repair
            print(
                f"repair: {r.reemitted} re-emitted, {r.deleted} deleted, "
                f"{r.key_writes} keys written, {r.key_deletes} keys deleted, "
                f"{len(r.rejected)} rejected"
            )
            for x in r.rejected:
                print(f"  rejected {x.record.kind} {x.record.id}: {x.reason[:200]}")
            for s in r.skipped:
                print(f"  not repaired: {s}")
            print("after repair: " + render(result.after, limit))
    return EXIT_IN_SYNC if result.final.in_sync else EXIT_OUT_OF_SYNC
