"""``catalog-cdc consume NAME``: run one consumer (a sink) on the document topics."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "consume",
        help="run a consumer: document topics -> a sink (long-running)",
        description=(
            "Read the document topics ({prefix}.doc.products / .categories) in the consumer "
            "group {prefix}-NAME and write them to the sink NAME: retries while the target is "
            "unavailable, dead-letters what it refuses to {prefix}.dlq.NAME, commits offsets "
            "only after the sink flushed. Consumers are entry points of the group "
            "catalog_cdc.consumers (see docs/adding-a-consumer.md). SIGTERM/Ctrl-C exits 0."
        ),
    )
    p.add_argument("name", nargs="?", help="the consumer (see --list)")
    p.add_argument("--list", action="store_true", help="list the installed consumers and exit")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option for the sink (repeatable; see the consumer's docs)",
    )
    p.add_argument("--group", help="consumer group (default {prefix}-NAME)")
    p.add_argument(
        "--instance-id",
        help="static group member id (default: host name + group; give each instance of "
        "one consumer on one host its own; 'none': a dynamic member)",
    )
    p.add_argument("--batch-size", type=int, default=500, help="records per batch (default 500)")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port")
    p.add_argument(
        "--idle-pause",
        type=float,
        default=0.15,
        metavar="SECONDS",
        help="stop fetching this long after an empty poll (default 0.15; 0 = never): "
        "spares the CPU an idle consumer burns on brokers that answer empty fetches at once",
    )
    p.add_argument(
        "--fetch-wait",
        type=float,
        default=0.05,
        metavar="SECONDS",
        help="at the live edge, no fetching while a batch is written and until this long "
        "after its poll (default 0.05; 0 = fetch all the time): the local broker answers "
        "every fetch at once and would else spin beside the write",
    )
    p.add_argument(
        "--stall-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="rejoin the group with a new Kafka client when Kafka holds messages for this "
        "consumer and none arrive this long; a second stall in a row exits 1 (default 60; "
        "0 = never)",
    )
    p.add_argument(
        "--exit-when-idle",
        type=float,
        metavar="SECONDS",
        help="exit 0 once caught up and idle this long",
    )
    p.set_defaults(handler=_consume)

    q = sub.add_parser(
        "search",
        help="query the product search index (the live alias) and show hits and facets",
        description="Full-text search over name, brand, description, reference and SKUs on "
        "{prefix}-products, with brand, category and price filters; prints hits and the "
        "brand, category and price facets.",
    )
    q.add_argument("query", nargs="?", default="", help="words to search for (empty: everything)")
    q.add_argument("--brand", help="only this brand (exact name)")
    q.add_argument("--category", help="only this category (exact name)")
    q.add_argument("--price", metavar="MIN..MAX", help="price range, e.g. 10..50, 100.., ..20")
    q.add_argument("--size", type=int, default=10, help="hits to show (default 10)")
    q.add_argument("--inactive", action="store_true", help="include inactive products")
    q.add_argument("--index-prefix", help="index prefix (default: the topic prefix)")
    q.add_argument(
        "--url", help="the search engine (default CATALOG_CDC_SEARCH_URL, or the local stack's)"
    )
    q.add_argument(
        "--engine",
        choices=["elasticsearch", "opensearch"],
        help="which engine answers at the URL (default CATALOG_CDC_SEARCH_ENGINE, else asked "
        "of the server)",
    )
    q.add_argument(
        "--refresh",
        action="store_true",
        help="refresh the index first, so that the newest writes are searchable (scripts)",
    )
    q.add_argument("--json", action="store_true", help="one JSON object on stdout")
    q.set_defaults(handler=_search)

    st = sub.add_parser(
        "storefront-api",
        help="the storefront-api consumer: what its state file says the shop has, its syncs",
        description="Product counts by sync status, sync counts by status, the last syncs "
        "(syncId, status) and the products in error, from the storefront-api consumer's "
        "state file (see docs/storefront-api.md).",
    )
    st.add_argument("action", choices=["status"], help="status: products, syncs, errors")
    st.add_argument(
        "--state",
        default=".catalog-cdc/storefront-api.sqlite",
        help="the state file (the consumer's --option state=..., default %(default)s)",
    )
    st.add_argument("--last", type=int, default=10, help="syncs to show (default 10)")
    st.add_argument("--json", action="store_true", help="one JSON object on stdout")
    st.set_defaults(handler=_storefront_status)

    ss = sub.add_parser(
        "search-service",
        help="the hosted search service: its status, the consumer's circuit breaker",
        description="status: the Update API's state/get (status, full_import, product_count); "
        "breaker / reset-breaker: the search-service consumer's circuit breaker "
        "(docs/search-service.md). Options: --url, --private-key (status), --state.",
    )
    ss.add_argument("action", choices=["status", "breaker", "reset-breaker"])
    ss.add_argument(
        "rest", nargs=argparse.REMAINDER, help="--url URL --private-key KEY | --state FILE"
    )
    ss.set_defaults(handler=_search_service)


def _consume(args: argparse.Namespace) -> int:
    from consumers.registry import SinkContext, available, load
    from consumers.runtime import ConsumerRuntime, RuntimeSettings
    from pipeline.lifecycle import exit_when_idle, stop_event
    from pipeline.settings import load_connections, parse_options

    if args.list or not args.name:
        for name, target in sorted(available().items()):
            print(f"{name:<20} {target}")
        return 0 if args.list else 2
    options = parse_options(args.option)
    stop = stop_event()
    conns = load_connections()
    sink = load(args.name)(SinkContext(conns, options))
    runtime = ConsumerRuntime(
        sink,
        bootstrap=conns.require("kafka_bootstrap"),
        topic_prefix=conns.topic_prefix,
        settings=RuntimeSettings(
            batch_size=args.batch_size,
            metrics_port=args.metrics_port,
            group=args.group,
            idle_pause=args.idle_pause,
            fetch_wait=args.fetch_wait,
            stall_timeout=args.stall_timeout,
            instance_id=_instance_id(args, conns.topic_prefix),
        ),
        schema_registry_url=conns.schema_registry_url,
    )
    if args.exit_when_idle is not None:
        exit_when_idle(stop, runtime.caught_up, float(args.exit_when_idle))
    runtime.run(stop)
    return 0


def _search(args: argparse.Namespace) -> int:
    import json

    from consumers.search.engine import IndexNotFound, connect, engine_name
    from consumers.search.mapping import alias
    from consumers.search.query import parse_price, search
    from pipeline.errors import ConfigurationError
    from pipeline.settings import load_connections

    conns = load_connections()
    url = args.url or conns.elasticsearch_url
    if not url:
        raise ConfigurationError(
            "no search engine URL: set CATALOG_CDC_SEARCH_URL (or "
            "CATALOG_CDC_ELASTICSEARCH_URL), give --url, or start the local stack"
        )
    engine = connect(url, engine_name(args.engine or conns.search_engine))
    prefix = args.index_prefix or conns.topic_prefix
    try:
        if args.refresh:
            engine.refresh(alias(prefix))
        result = search(
            engine,
            prefix,
            args.query,
            brand=args.brand,
            category=args.category,
            price=parse_price(args.price) if args.price else None,
            size=args.size,
            include_inactive=args.inactive,
        )
    except IndexNotFound as exc:
        raise ConfigurationError(
            f"no index {alias(prefix)} on {engine.label} at {url}: has `catalog-cdc consume "
            "search` run with this topic prefix? (or give --index-prefix)"
        ) from exc
    finally:
        engine.close()
    if args.json:
        print(json.dumps(result, ensure_ascii=False, default=str))
        return 0
    print(f"{result['total']} products match")
    for hit in result["hits"]:
        brand = (hit.get("brand") or {}).get("name") or "-"
        print(
            f"  {hit['id']:>7}  {float(hit['price']):>9.2f}  {brand[:18]:<18}  {hit['name'][:60]}"
        )
    for name, buckets in result["facets"].items():
        shown = ", ".join(f"{b['key']} ({b['count']})" for b in buckets if b["count"])
        print(f"{name}: {shown or '-'}")
    return 0


def _storefront_status(args: argparse.Namespace) -> int:
    import json

    from consumers.storefront_api.state import status
    from pipeline.errors import ConfigurationError

    result = status(args.state, last=args.last)
    if not result["exists"]:
        raise ConfigurationError(
            f"no state file {args.state}: has `catalog-cdc consume storefront-api` run? "
            "(give its --option state=... as --state)"
        )
    if args.json:
        print(json.dumps(result, default=str))
        return 0
    products = ", ".join(f"{k} {v}" for k, v in sorted(result["products"].items()))
    syncs = ", ".join(f"{k} {v}" for k, v in sorted(result["syncs"].items()))
    print(f"products: {products}\nsyncs: {syncs}")
    for s in result["last_syncs"]:
        done = f"{s['succeeded']}/{s['products']}"
        print(f"  {s['sync_id']}  {s['endpoint']:<6}  {s['status']:<9}  {done}")
    for e in result["errors"]:
        print(f"  product {e['id']} ({e['reference']}): {e['error'][:160]}")
    return 0


def _search_service(args: argparse.Namespace) -> int:
    from consumers.search_service.__main__ import main

    return main([args.action, *args.rest])


def _instance_id(args: argparse.Namespace, prefix: str) -> str | None:
    if args.instance_id:
        return None if args.instance_id.lower() == "none" else str(args.instance_id)
    import socket

    return f"{socket.gethostname()}-{args.group or f'{prefix}-{args.name}'}"
