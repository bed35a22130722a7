"""Helpers of ``make demo`` (scripts/demo.sh), each a step of its own::

    python -m pipeline.dashboard.demo ports --config scripts/demo.toml
    python -m pipeline.dashboard.demo prepare --config scripts/demo.toml --run demo1202101530
    python -m pipeline.dashboard.demo wait-reader --config scripts/demo.toml
    python -m pipeline.dashboard.demo wait-groups --config scripts/demo.toml
    python -m pipeline.dashboard.demo proof --config scripts/demo.toml [--summary FILE]

``ports``: every port the config names (contract servers, metrics) is free on
loopback, else exit 1 naming the ones that are not.  ``prepare --run demoNNNN``: an
isolated run — its own database (created empty), replication slot, topic prefix (so
its own consumer groups and search index), the consumers' SQLite state files removed;
what earlier demo runs left is dropped; prints the run's ``CATALOG_CDC_*`` variables as
``export`` lines (``eval`` them).
``wait-reader``: until the reader has confirmed the server's current WAL position;
prints the UTC time.  ``wait-groups``: then until the assembler's consumer group has
committed the ends of the raw topics and each consumer's group the ends of the document
topics (committed offsets: each stage commits only what its output or sink confirmed).
``proof``: what each contract server accepted (``GET /_contract/state``) against the
database (:func:`pipeline.documents.reference.expected_documents`): counts, and per
product the fields the sink sends; exit 1 when one is out of sync.

The steps live in :mod:`pipeline.dashboard.demo_prepare`,
:mod:`pipeline.dashboard.demo_wait` and :mod:`pipeline.dashboard.demo_proof`; this
module is their command line, and the ``ports`` check.
"""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.dashboard.demo_prepare import prepare
from pipeline.dashboard.demo_proof import proof
from pipeline.dashboard.demo_wait import wait_groups, wait_reader
from pipeline.errors import CatalogCdcError
from pipeline.supervisor.config import RunConfig, build_services, load_config


def used_ports(config: RunConfig) -> list[tuple[int, str]]:
    """(port, what) of every enabled service: contract servers' ports, metrics ports,
    and a ``--port N`` on a service's command line (the admin API)."""
    out: list[tuple[int, str]] = []
    for spec in build_services(config):
        if spec.port is not None:
            out.append((spec.port, f"contract server {spec.name}"))
        elif "--port" in spec.argv[:-1]:
            value = spec.argv[spec.argv.index("--port") + 1]
            if value.isdigit() and int(value) > 0:
                out.append((int(value), f"service {spec.name}"))
        if spec.metrics_port is not None:
            out.append((spec.metrics_port, f"{spec.name} metrics"))
    return out


def taken(ports: Sequence[tuple[int, str]], host: str = "127.0.0.1") -> list[tuple[int, str]]:
    """The ones something already listens on (a bind test, as the services would do)."""
    busy = []
    for port, what in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                busy.append((port, what))
    return busy


def _ports(config_path: Path) -> int:
    busy = taken(used_ports(load_config(config_path)))
    for port, what in busy:
        print(
            f"demo: port {port} ({what}) is already in use on 127.0.0.1: stop what listens "
            f"there (`ss -ltnp 'sport = :{port}'`; a demo still running?) or change the port "
            f"in {config_path}",
            file=sys.stderr,
        )
    return 1 if busy else 0


def main(argv: Sequence[str] | None = None) -> int:
    from pipeline import logs

    parser = argparse.ArgumentParser(prog="python -m pipeline.dashboard.demo")
    parser.add_argument("step", choices=["ports", "prepare", "wait-reader", "wait-groups", "proof"])
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--summary", type=Path, help="proof: append one JSON line per sink")
    parser.add_argument("--timeout", type=float, default=240, help="wait-reader: seconds")
    parser.add_argument("--run", help="prepare: the run id (demo + 10-14 digits)")
    args = parser.parse_args(argv)
    logs.configure("warning", "kv")
    try:
        if args.step == "ports":
            return _ports(args.config)
        if args.step == "prepare":
            if not args.run:
                parser.error("prepare needs --run")
            return prepare(args.config, args.run)
        if args.step == "wait-reader":
            return wait_reader(args.config, args.timeout)
        if args.step == "wait-groups":
            return wait_groups(args.config, args.timeout)
        return proof(args.config, args.summary)
    except CatalogCdcError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
