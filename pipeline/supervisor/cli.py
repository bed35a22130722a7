"""``catalog-cdc run``: the whole pipeline, supervised, from one config file.

The config's command lines are checked against the whole ``catalog-cdc`` parser, which
:mod:`pipeline.cli` builds and passes in (``build_parser``): this module does not
import :mod:`pipeline.cli`, which imports it.
"""

from __future__ import annotations

import argparse
import functools
import re
from collections.abc import Callable
from typing import Any


def register(sub: Any, build_parser: Callable[[], argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "run",
        help="run the whole pipeline (reader, assembler, consumers...) as supervised processes",
        description=(
            "Start every service the config file names -- contract servers for demos, the "
            "reader, the assembler, each enabled consumer, other catalog-cdc services -- as "
            "child processes; restart a failed one with capped exponential backoff; prefix "
            "each child's log lines with its name; on SIGTERM/Ctrl-C stop them all (SIGKILL "
            "after the grace period) and exit 0. Config: --config FILE, else "
            "$CATALOG_CDC_CONFIG, else ./catalog-cdc.toml (example: "
            "docs/catalog-cdc.example.toml; guide: docs/run.md). Connections come from the "
            "CATALOG_CDC_* environment or the local stack, passed down to every child."
        ),
    )
    p.add_argument("--config", metavar="FILE", help="the TOML config (default ./catalog-cdc.toml)")
    p.add_argument(
        "--check",
        action="store_true",
        help="validate the config and print what would run, without starting anything",
    )
    p.set_defaults(handler=functools.partial(_run, build_parser=build_parser))


_SECRET = re.compile(r"PASSWORD|SECRET|TOKEN|KEY", re.IGNORECASE)


def _masked(key: str, value: str) -> str:
    return "***" if _SECRET.search(key) else value


def _run(args: argparse.Namespace, *, build_parser: Callable[[], argparse.ArgumentParser]) -> int:
    import shlex

    from pipeline.errors import ConfigurationError
    from pipeline.supervisor.config import (
        build_services,
        check_command_lines,
        load_config,
        resolve_path,
    )

    path = resolve_path(args.config)
    config = load_config(path)
    specs = build_services(config, args.log_level, args.log_format)
    check_command_lines(specs, build_parser(), str(path))
    if not specs:
        raise ConfigurationError(f"{path}: every service is disabled: nothing to run")
    if args.check:
        r = config.restart
        print(f"config {path}: valid")
        print(
            f"restart {r.policy}: backoff {r.backoff_initial:g}s doubling to {r.backoff_max:g}s, "
            f"afresh after {r.reset_after:g}s up; grace period "
            f"{config.supervisor.grace_period:g}s; status every "
            f"{config.supervisor.status_interval:g}s"
        )
        print("would start, in this order:")
        width = max(len(s.name) for s in specs)
        for s in specs:
            print(f"  {s.name:<{width}}  catalog-cdc {shlex.join(s.argv)}  [restart {s.restart}]")
            for key, value in s.env.items():
                print(f"  {'':<{width}}    env {key}={_masked(key, value)}")
        disabled = [
            key
            for key, svc in [
                ("reader", config.reader),
                ("assembler", config.assembler),
                *((f"consumers.{k}", v) for k, v in config.consumers.items()),
                *((f"contract_servers.{k}", v) for k, v in config.contract_servers.items()),
                *((f"services.{k}", v) for k, v in config.services.items()),
            ]
            if not svc.enabled
        ]
        if disabled:
            print(f"disabled: {', '.join(disabled)}")
        stop = [s.name for s in reversed(specs) if s.stage != "target"]
        targets = [s.name for s in reversed(specs) if s.stage == "target"]
        print(
            "stop: SIGTERM to "
            + ", ".join(stop)
            + (f"; then {', '.join(targets)}" if targets else "")
            + f"; SIGKILL after {config.supervisor.grace_period:g}s"
        )
        return 0

    from pipeline.supervisor.supervisor import Supervisor

    return Supervisor(specs, config.supervisor, config.restart).run()
