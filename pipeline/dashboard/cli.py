"""``catalog-cdc dashboard``: the pipeline live in a terminal, from the services' metrics."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime
from typing import Any, TextIO


def register(sub: Any) -> None:
    p = sub.add_parser(
        "dashboard",
        help="a live view of the pipeline from the services' /metrics (rates, lag, dead letters)",
        description=(
            "Scrape the Prometheus /metrics of the reader, the assembler and the consumers "
            "about once a second and show, per service, a status, events/s (reader), "
            "documents/s (assembler), records/s (consumers), the slot lag (bytes), the lag "
            "of each consumer (messages) and the dead letters. Rates are the counters' "
            "deltas between two scrapes. On a terminal the view is redrawn in place; "
            "otherwise (CI logs, a pipe) one line is printed per refresh. Targets: "
            "--metrics, else the metrics_port of every service of a `catalog-cdc run` "
            "config (--config FILE, else $CATALOG_CDC_CONFIG, else ./catalog-cdc.toml). "
            "Ctrl-C stops it. See docs/dashboard.md."
        ),
    )
    p.add_argument(
        "--metrics",
        action="append",
        default=[],
        metavar="[NAME=]URL",
        help="a /metrics endpoint (repeatable): a URL, HOST:PORT or PORT, optionally named",
    )
    p.add_argument("--config", metavar="FILE", help="take the targets from this run config")
    p.add_argument(
        "--interval", type=float, default=1.0, help="seconds between refreshes (default 1)"
    )
    p.add_argument(
        "--window",
        type=float,
        default=3.0,
        help="rates are over the last this many seconds (default 3; 0: since the last scrape)",
    )
    p.add_argument(
        "--once",
        action="store_true",
        help="scrape twice, --interval apart (rates need two), print one view, exit",
    )
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument(
        "--until-synced",
        action="store_true",
        help=(
            "stop (exit 0) once every service has been quiet for --settle seconds: all up, "
            "nothing counted, the reader with nothing in flight, every lag 0"
        ),
    )
    p.add_argument(
        "--settle", type=float, default=2.0, help="seconds of quiet for --until-synced (2)"
    )
    p.add_argument(
        "--timeout",
        type=float,
        help="with --until-synced: give up (exit 1) after this many seconds",
    )
    p.add_argument("--title", default="catalog-cdc dashboard", help="the view's first words")
    p.add_argument(
        "--plain",
        action="store_true",
        help="one line per refresh even on a terminal",
    )
    p.set_defaults(handler=_dashboard)


def _dashboard(args: argparse.Namespace) -> int:
    import logging

    from pipeline.dashboard.scrape import Scraper, parse_target, targets_from_config
    from pipeline.errors import ConfigurationError
    from pipeline.supervisor.config import resolve_path

    if args.interval <= 0:
        raise ConfigurationError(f"--interval {args.interval}: must be more than 0")
    if args.timeout is not None and not args.until_synced:
        raise ConfigurationError("--timeout goes with --until-synced")
    if args.metrics:
        targets = [parse_target(t) for t in args.metrics]
    else:
        targets = targets_from_config(resolve_path(args.config))
    # One line per request at info would bury the view.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # A busy service (GIL-bound on 2 cores) can take a second or two to answer: a
    # slow answer is not a dead service. A refresh waits for the slowest target.
    with Scraper(targets, timeout=max(3.0, args.interval)) as scraper:
        return Dashboard(args, scraper, sys.stdout).run()


class Dashboard:
    """The refresh loop: scrape, update the board, draw; until told to stop."""

    def __init__(self, args: argparse.Namespace, scraper: Any, out: TextIO) -> None:
        from pipeline.dashboard.model import Board

        self.args = args
        self.scraper = scraper
        self.out = out
        self.board = Board(scraper.targets, window=args.window)
        self.tty = out.isatty() and not args.plain and not args.once

    def run(self) -> int:
        from pipeline.dashboard import render

        args = self.args
        started = time.monotonic()
        if args.once:
            self.board.update(self.scraper.scrape())
            time.sleep(args.interval)
            rows = self.board.update(self.scraper.scrape())
            self.out.write("\n".join(render.table(rows, self._title(started))) + "\n")
            return 0
        if self.tty:
            self.out.write(render.CLEAR_SCREEN)
        next_at = started
        try:
            while True:
                rows = self.board.update(self.scraper.scrape())
                now = time.monotonic()
                quiet = self.board.synced_for(now)
                done = args.until_synced and quiet >= args.settle
                self._draw(rows, started, quiet, done)
                if done:
                    return 0
                if args.duration is not None and now - started >= args.duration:
                    return 0
                if args.timeout is not None and now - started >= args.timeout:
                    busy = ", ".join(f"{r.name} {r.status}" for r in rows if not r.quiet)
                    print(
                        f"catalog-cdc dashboard: not synced after {args.timeout:g} s: {busy}",
                        file=sys.stderr,
                    )
                    return 1
                next_at += args.interval
                time.sleep(max(0.0, next_at - time.monotonic()))
        except KeyboardInterrupt:
            return 0

    def _title(self, started: float) -> str:
        up = sum(1 for r in self.board.rows if r.up)
        elapsed = time.monotonic() - started
        clock = datetime.now().strftime("%H:%M:%S")
        return (
            f"{self.args.title}   {clock}   {up}/{len(self.board.rows)} up   "
            f"every {self.args.interval:g} s   {elapsed:.0f} s"
        )

    def _draw(self, rows: Any, started: float, quiet: float, done: bool) -> None:
        from pipeline.dashboard import render

        if self.tty:
            footer = [""]
            if self.args.until_synced:
                footer.append(
                    "synced"
                    if done
                    else f"waiting until synced (quiet {quiet:.0f} s of {self.args.settle:g} s)"
                )
            self.out.write(render.frame(rows, self._title(started), footer))
        else:
            line = render.plain(rows, datetime.now().strftime("%H:%M:%S"))
            if done:
                line += " | synced"
            self.out.write(line + "\n")
        self.out.flush()
