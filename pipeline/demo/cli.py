"""``catalog-cdc demo seed | edits | counts``: the demo catalog."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import psycopg


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="load the demo catalog and apply live edits",
        description="The demo catalog (schemas/sql/catalog.sql): seed it, edit it live, count it.",
    )
    p.add_argument("--dsn", default=None, help="catalog database (default: settings/stack)")
    dsub = p.add_subparsers(dest="demo_command", metavar="ACTION", required=True)

    seed = dsub.add_parser(
        "seed",
        help="create the schema and load a realistic catalog",
        description="Create the catalog schema if missing and load N products, deterministically "
        "for a given --seed (stores, brands, category trees, variants, images, technical data).",
    )
    seed.add_argument(
        "--products", type=int, default=1000, help="number of products (default 1000)"
    )
    seed.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    seed.add_argument("--stores", type=int, default=2, help="number of stores (default 2)")
    seed.add_argument(
        "--replace", action="store_true", help="empty a non-empty catalog first (destructive)"
    )
    seed.set_defaults(handler=_seed)

    edits = dsub.add_parser(
        "edits",
        help="apply a realistic mix of live edits",
        description="Apply price and stock changes, new products, soft and hard deletes, category "
        "moves, brand renames, long (TOASTed) descriptions, multi-row and rolled-back "
        "transactions, at about --rate edits/s for --duration seconds.",
    )
    edits.add_argument("--rate", type=float, default=50.0, help="edits per second (default 50)")
    edits.add_argument("--duration", type=float, default=30.0, help="seconds (default 30)")
    edits.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    edits.add_argument("--json", action="store_true", help="print the final statistics as JSON")
    edits.set_defaults(handler=_edits)

    counts = dsub.add_parser(
        "counts",
        help="print the row count of every catalog table",
        description="Row counts of every table in the catalog database's public schema.",
    )
    counts.add_argument("--json", action="store_true", help="one JSON object on stdout")
    counts.set_defaults(handler=_counts)


def _dsn(args: argparse.Namespace) -> str:
    if args.dsn:
        return str(args.dsn)
    from pipeline.settings import load_connections

    return load_connections().require("postgres_dsn")


def _progress_printer(label: str) -> Any:
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 0.5 or done >= total:
            last[0] = now
            pct = 100.0 * done / total if total else 100.0
            print(f"\r{label}: {done}/{total} ({pct:5.1f}%)", end="", file=sys.stderr, flush=True)
            if done >= total:
                print(file=sys.stderr)

    return progress


def _seed(args: argparse.Namespace) -> int:
    from pipeline.demo.catalog import load_schema
    from pipeline.demo.seed import seed_catalog

    dsn = _dsn(args)
    with psycopg.connect(dsn) as conn:
        load_schema(conn)
    started = time.monotonic()
    counts = seed_catalog(
        dsn,
        products=args.products,
        seed=args.seed,
        stores=args.stores,
        replace=args.replace,
        progress=_progress_printer("seeding products"),
    )
    elapsed = time.monotonic() - started
    print(
        f"seeded in {elapsed:.1f}s: " + ", ".join(f"{k}={v}" for k, v in _as_dict(counts).items())
    )
    return 0


def _edits(args: argparse.Namespace) -> int:
    from pipeline.demo.edits import run_edits

    stats = run_edits(_dsn(args), rate=args.rate, duration=args.duration, seed=args.seed)
    data = _as_dict(stats)
    if args.json:
        print(json.dumps(data, indent=2, default=str))
    else:
        print("edits: " + ", ".join(f"{k}={v}" for k, v in data.items()))
    return 0


def table_counts(dsn: str) -> dict[str, int]:
    """Row count of every base table in the public schema."""
    with psycopg.connect(dsn) as conn:
        tables = [
            str(r[0])
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1"
            )
        ]
        out: dict[str, int] = {}
        for table in tables:
            row = conn.execute(
                psycopg.sql.SQL("SELECT count(*) FROM {}").format(psycopg.sql.Identifier(table))
            ).fetchone()
            out[table] = int(row[0]) if row else 0
        return out


def _counts(args: argparse.Namespace) -> int:
    counts = table_counts(_dsn(args))
    if args.json:
        print(json.dumps(counts, indent=2))
    else:
        width = max((len(t) for t in counts), default=5)
        for table, n in counts.items():
            print(f"{table:<{width}}  {n:>10,}")
    return 0


def _as_dict(obj: Any) -> dict[str, Any]:
    if hasattr(obj, "model_dump"):
        return dict(obj.model_dump())
    if hasattr(obj, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(obj)
    return dict(vars(obj))
