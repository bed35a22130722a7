"""``catalog-cdc admin serve`` and ``catalog-cdc admin token add|list|revoke``."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "admin",
        help="the admin HTTP API (search sync, replays, jobs, status) and its tokens",
        description="serve: the admin HTTP API (docs/admin-api.md; binds 127.0.0.1 by "
        "default). token: the API's tokens, stored hashed with a role (admin | reader). "
        "Settings: CATALOG_CDC_ADMIN_* (host, port, tokens_file, search_consumer, "
        "consumer_options, ...).",
    )
    asub = p.add_subparsers(dest="admin_command", metavar="ACTION", required=True)

    s = asub.add_parser("serve", help="serve the admin HTTP API (long-running)")
    s.add_argument("--host", help="address to bind (default 127.0.0.1)")
    s.add_argument("--port", type=int, help="port (default 8080; 0: any free port)")
    s.add_argument(
        "--tokens", metavar="FILE", help="the token file (default .catalog-cdc/admin-tokens.json)"
    )
    s.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="CONSUMER.KEY=VALUE",
        help="an option of one consumer's sink, as the admin builds it and starts its "
        "replays (repeatable; wins over CATALOG_CDC_ADMIN_CONSUMER_OPTIONS)",
    )
    s.set_defaults(handler=_serve)

    t = asub.add_parser("token", help="add, list or revoke API tokens")
    tsub = t.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    add = tsub.add_parser("add", help="make a token (printed once; only its hash is stored)")
    add.add_argument("name", help="who or what uses it (unique)")
    add.add_argument(
        "--role",
        choices=["admin", "reader"],
        required=True,
        help="admin: everything; reader: status and jobs only",
    )
    lst = tsub.add_parser("list", help="the tokens: name, role, created")
    rev = tsub.add_parser("revoke", help="delete a token (effective at once)")
    rev.add_argument("name")
    for q in (add, lst, rev):
        q.add_argument("--tokens", metavar="FILE", help="the token file")
    add.set_defaults(handler=_token_add)
    lst.set_defaults(handler=_token_list)
    rev.set_defaults(handler=_token_revoke)


RETIRED = {
    "CATALOG_CDC_ADMIN_INDEX_PREFIX": "CATALOG_CDC_ADMIN_CONSUMER_OPTIONS="
    '\'{"NAME": {"index_prefix": "..."}}\' or --option NAME.index_prefix=...',
    "CATALOG_CDC_ADMIN_ES_TIMEOUT": "CATALOG_CDC_ADMIN_PROBE_TIMEOUT",
}
"""Settings that named one consumer's target, and what replaced them."""


def consumer_options(items: list[str]) -> dict[str, dict[str, str]]:
    """``--option CONSUMER.KEY=VALUE`` arguments as ``{consumer: {key: value}}``."""
    from pipeline.errors import ConfigurationError

    out: dict[str, dict[str, str]] = {}
    for item in items:
        target, eq, value = item.partition("=")
        consumer, dot, key = target.partition(".")
        if not eq or not dot or not consumer.strip() or not key.strip():
            raise ConfigurationError(
                f"--option {item!r}: expected CONSUMER.KEY=VALUE (e.g. NAME.index_prefix=shop)"
            )
        out.setdefault(consumer.strip(), {})[key.strip()] = value
    return out


def _settings(args: argparse.Namespace) -> Any:
    import os

    from pipeline.admin.app import AdminSettings
    from pipeline.errors import ConfigurationError

    for name, instead in RETIRED.items():
        if name in os.environ:
            raise ConfigurationError(f"{name} is no longer read: use {instead} (docs/admin-api.md)")
    overrides: dict[str, Any] = {
        k: v
        for k, v in (
            ("host", getattr(args, "host", None)),
            ("port", getattr(args, "port", None)),
            ("tokens_file", getattr(args, "tokens", None)),
        )
        if v is not None
    }
    settings = AdminSettings(**overrides)
    given = consumer_options(getattr(args, "option", None) or [])
    if given:
        merged = {n: dict(o) for n, o in settings.consumer_options.items()}
        for name, opts in given.items():
            merged.setdefault(name, {}).update(opts)
        settings = settings.model_copy(update={"consumer_options": merged})
    return settings


def _store(args: argparse.Namespace) -> Any:
    from pipeline.admin.tokens import TokenStore

    return TokenStore(_settings(args).tokens_file)


def _token_add(args: argparse.Namespace) -> int:
    store = _store(args)
    plaintext = store.add(args.name, args.role)
    print(plaintext)
    print(
        f"token {args.name!r} ({args.role}) stored hashed in {store.path}; this is the only "
        "time it is shown. Use it as: Authorization: Token <token>",
        file=sys.stderr,  # stdout is the token alone: TOKEN=$(catalog-cdc admin token add ...)
        flush=True,
    )
    return 0


def _token_list(args: argparse.Namespace) -> int:
    tokens = _store(args).list()
    if not tokens:
        print("no tokens (add one: catalog-cdc admin token add NAME --role admin|reader)")
    for t in tokens:
        print(f"{t.name:<24} {t.role:<7} {t.created_at}")
    return 0


def _token_revoke(args: argparse.Namespace) -> int:
    store = _store(args)
    store.revoke(args.name)
    print(f"token {args.name!r} revoked")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from pipeline.admin.app import build_context, create_app
    from pipeline.lifecycle import stop_event
    from pipeline.settings import load_connections

    log = logging.getLogger("pipeline.admin")
    settings = _settings(args)
    ctx = build_context(settings, load_connections())
    if not ctx.tokens.list():
        log.warning(
            "event=admin_no_tokens file=%s hint=%s",
            settings.tokens_file,
            "catalog-cdc admin token add NAME --role admin",
        )
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(ctx),
            host=settings.host,
            port=settings.port,
            log_config=None,
            access_log=False,
        )
    )
    log.info(
        "event=admin_serving host=%s port=%d tokens=%s",
        settings.host,
        settings.port,
        settings.tokens_file,
    )
    # uvicorn handles SIGTERM/SIGINT while it runs (a graceful shutdown: running jobs are
    # stopped and keep their positions), then re-raises the signal to the handlers it
    # found: ours, so that a stop exits 0 as every service does.
    stop_event()
    server.run()
    return 0
