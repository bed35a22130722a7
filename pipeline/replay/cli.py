"""``catalog-cdc replay CONSUMER`` and ``catalog-cdc resnapshot``."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

from pipeline.errors import ConfigurationError
from pipeline.settings import parse_options


def register(sub: Any) -> None:
    p = sub.add_parser(
        "replay",
        help="rebuild a consumer's target from the document topics, beside the live one",
        description=(
            "Rebuild CONSUMER's target from the document topics while the live consumer "
            "keeps running. How is the consumer's own: a sink with a replay plan follows it "
            "(e.g. a new index generation, then an atomic alias swap, the old one deleted "
            "after --grace), a sink whose target has a full-import protocol uses it, every "
            "other one gets everything re-sent as idempotent upserts. What "
            "the target refuses goes to the consumer's dead-letter topic. Shows documents/s "
            "and ETA; an interrupted replay resumes (its positions are in --state). Exit 0 "
            "when done, 1 on error."
        ),
    )
    p.add_argument("consumer", help="the consumer (see `catalog-cdc consume --list`)")
    p.add_argument(
        "--from-time",
        metavar="ISO-8601",
        help="only documents written since then (e.g. 2026-12-01T10:00:00Z; default: all)",
    )
    p.add_argument("--dry-run", action="store_true", help="count what would be replayed")
    p.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE",
        help="the consumer's options, as for `catalog-cdc consume` (repeatable)",
    )  # fmt: skip
    p.add_argument(
        "--grace", type=float, default=30.0, metavar="SECONDS",
        help="seconds a replay plan keeps the old target generation after the switch (default 30)",
    )  # fmt: skip
    p.add_argument("--state", help="resume file (default <stack dir>/replay/<prefix>-<name>.json)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=_replay)

    r = sub.add_parser(
        "resnapshot",
        help="put the database's current rows back onto the raw topics (reader signal)",
        description=(
            "Ask the running reader to re-read tables while it streams (an incremental "
            "snapshot: op='r' events, never overwriting a newer live change), for when "
            "topic retention dropped history or a sink needs a full resend from the "
            "source. Writes the reader's signal row; the reader logs its progress "
            "(event=resnapshot_*)."
        ),
    )
    r.add_argument(
        "--tables", nargs="+", metavar="SCHEMA.TABLE",
        help="tables to re-read (default: every captured table)",
    )  # fmt: skip
    r.add_argument("--signal-table", default="public.catalog_cdc_signal", help="signal table")
    r.set_defaults(handler=_resnapshot)


def _replay(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pipeline.lifecycle import stop_event
    from pipeline.replay import replay, terminal_progress
    from pipeline.settings import load_connections

    from_time = None
    if args.from_time:
        try:
            from_time = datetime.fromisoformat(args.from_time.replace("Z", "+00:00"))
        except ValueError as exc:
            raise ConfigurationError(f"--from-time {args.from_time!r}: {exc}") from exc
        if from_time.tzinfo is None:
            from_time = from_time.replace(tzinfo=UTC)
    stop = stop_event()
    result = replay(
        args.consumer,
        connections=load_connections(),
        options=parse_options(args.option),
        from_time=from_time,
        dry_run=args.dry_run,
        grace=args.grace,
        state_path=Path(args.state) if args.state else None,
        progress=None if args.json else terminal_progress(),
        stop=stop,
    )
    if args.json:
        print(json.dumps(result.__dict__, default=str))
    elif result.dry_run:
        print(f"{result.consumer}: {result.records:,} messages would be replayed")
    else:
        state = "interrupted (run again to resume)" if result.detail.get("interrupted") else "done"
        print(
            f"{result.consumer}: replay {state}: {result.records:,} records, "
            f"{result.rejected} rejected, {result.seconds:.1f} s"
        )
    return 0


def _resnapshot(args: argparse.Namespace) -> int:
    import uuid

    import psycopg
    from psycopg import sql
    from psycopg.types.json import Jsonb

    from pipeline.settings import load_connections

    dsn = load_connections().require("postgres_dsn")
    schema, _, table = args.signal_table.rpartition(".")
    signal_id = f"resnapshot-{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("INSERT INTO {} (id, type, data) VALUES (%s, 'execute-snapshot', %s)").format(
                sql.Identifier(schema or "public", table)
            ),
            (signal_id, Jsonb({"tables": args.tables or []})),
        )
    what = ", ".join(args.tables) if args.tables else "every captured table"
    print(f"signal {signal_id} written: the reader re-reads {what} (see its log)")
    return 0
