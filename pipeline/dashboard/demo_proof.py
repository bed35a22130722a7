"""``proof`` of ``make demo`` (:mod:`pipeline.dashboard.demo`).

What each contract server accepted (``GET /_contract/state``) against the database
(:func:`pipeline.documents.reference.expected_documents`): counts, and per product the
fields the sink sends; exit 1 when one is out of sync.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from pipeline.errors import CatalogCdcError
from pipeline.supervisor.config import load_config


@dataclass
class SinkProof:
    """One sink against the database: counts, and the products that differ."""

    name: str
    lines: list[str] = field(default_factory=list)
    """``what: sink N vs database M`` lines."""
    differences: list[str] = field(default_factory=list)
    """``product 7: price 12.00 != 12.50`` (first ones)."""
    difference_count: int = 0

    @property
    def in_sync(self) -> bool:
        return self.difference_count == 0

    def differ(self, text: str) -> None:
        self.difference_count += 1
        if len(self.differences) < 5:
            self.differences.append(text)

    def count(self, what: str, sink: int, db: int) -> None:
        mark = "" if sink == db else "   <-- differs"
        self.lines.append(f"{what}: {sink:,} received vs {db:,} in the database{mark}")
        if sink != db:
            self.difference_count += 1


@dataclass(frozen=True)
class Expected:
    """From the database: per live product (not soft-deleted, not hard-deleted) the
    fields the sinks carry."""

    products: Mapping[int, Mapping[str, Any]]
    live_sql: int
    """``SELECT count(*) FROM products WHERE deleted_at IS NULL``."""


def expected_from_db(dsn: str) -> Expected:
    import psycopg

    from pipeline.documents.reference import expected_documents

    with psycopg.connect(dsn) as conn:
        products, _ = expected_documents(conn)
        row = conn.execute("SELECT count(*) FROM products WHERE deleted_at IS NULL").fetchone()
    live = int(row[0]) if row is not None else 0
    return Expected(
        {
            pid: {
                "reference": d.reference,
                "name": d.name,
                "price": Decimal(str(d.price)),
                "active": d.active,
                "quantity": d.total_quantity,
            }
            for pid, d in products.items()
        },
        live,
    )


def _same_price(a: Any, b: Decimal) -> bool:
    try:
        return Decimal(str(a)) == b
    except ArithmeticError:
        return False


def prove_storefront(state: Mapping[str, Any], db: Expected) -> SinkProof:
    """The shop keeps every product it got; deleted ones deactivated (docs/storefront-api.md)."""
    proof = SinkProof("storefront-api")
    shop: Mapping[str, Mapping[str, Any]] = state["products"]
    active = {ref for ref, p in shop.items() if p.get("active")}
    db_active = {p["reference"] for p in db.products.values() if p["active"]}
    proof.count("active products", len(active), len(db_active))
    proof.lines.append(
        f"products in the shop: {len(shop):,} (deleted and inactive ones stay, inactive); "
        f"syncs {len(state['syncs']):,}, logins {state['logins']}"
    )
    for pid, p in sorted(db.products.items()):
        got = shop.get(p["reference"])
        if got is None:
            proof.differ(f"product {pid} ({p['reference']}): not in the shop")
            continue
        wrong = [
            f"{k} {got.get(k)!r} != {p[k]!r}"
            for k in ("name", "active", "quantity")
            if got.get(k) != p[k]
        ]
        if not _same_price(got.get("price"), p["price"]):
            wrong.append(f"price {got.get('price')!r} != {p['price']}")
        if wrong:
            proof.differ(f"product {pid}: " + "; ".join(wrong))
    live_refs = {p["reference"] for p in db.products.values()}
    for ref in sorted(active - live_refs):
        proof.differ(f"{ref}: active in the shop, deleted in the database")
    return proof


def prove_search_service(state: Mapping[str, Any], db: Expected) -> SinkProof:
    """Every live product is an item (inactive ones with status "disabled")."""
    proof = SinkProof("search-service")
    items: Mapping[str, Mapping[str, Any]] = state["items"]
    proof.count("items in the hosted index", len(items), len(db.products))
    proof.lines.append(
        f"service status {state['status']!r}, full import {state['full_import']!r}, "
        f"malformed requests {state['malformed']['total']}, blocked {state['blocked']}"
    )
    for pid, p in sorted(db.products.items()):
        item = items.get(str(pid))
        if item is None:
            proof.differ(f"product {pid}: not in the index")
            continue
        status = "active" if p["active"] else "disabled"
        wrong = (
            [f"title {item.get('title')!r} != {p['name']!r}"]
            if item.get("title") != (p["name"])
            else []
        )
        if item.get("status") != status:
            wrong.append(f"status {item.get('status')!r} != {status!r}")
        if not _same_price(item.get("price"), p["price"]):
            wrong.append(f"price {item.get('price')!r} != {p['price']}")
        if wrong:
            proof.differ(f"product {pid}: " + "; ".join(wrong))
    for ident in sorted(set(items) - {str(pid) for pid in db.products}, key=int):
        proof.differ(f"product {ident}: in the index, deleted in the database")
    return proof


def prove_webhooks(state: Mapping[str, Any], db: Expected) -> SinkProof:
    """Per product the last event received tells the receiver the product's state."""
    proof = SinkProof("webhooks")
    products: Mapping[str, Mapping[str, Any]] = state["products"]
    alive = {int(k): v for k, v in products.items() if v.get("event_type") != "product.deleted"}
    proof.lines.append(
        f"events received: {len(state['events']):,} for {len(products):,} distinct products; "
        f"out of order {len(state['out_of_order'])}, duplicates {len(state['duplicates'])}, "
        f"refused {len(state['refused'])}"
    )
    proof.count("products whose last event is not product.deleted", len(alive), len(db.products))
    for pid, p in sorted(db.products.items()):
        last = alive.get(pid)
        if last is None:
            proof.differ(f"product {pid}: no event, or its last event is product.deleted")
            continue
        body = last.get("product") or {}
        wrong = [
            f"{k} {body.get(k2)!r} != {p[k]!r}"
            for k, k2 in (("name", "name"), ("active", "is_active"), ("quantity", "total_quantity"))
            if body.get(k2) != p[k]
        ]
        if not _same_price(body.get("price"), p["price"]):
            wrong.append(f"price {body.get('price')!r} != {p['price']}")
        if wrong:
            proof.differ(f"product {pid}: " + "; ".join(wrong))
    for pid in sorted(set(alive) - set(db.products)):
        proof.differ(f"product {pid}: last event not product.deleted, deleted in the database")
    if state["out_of_order"]:
        proof.differ(f"{len(state['out_of_order'])} events out of order")
    return proof


PROVERS = {
    "storefront-api": prove_storefront,
    "search-service": prove_search_service,
    "webhooks": prove_webhooks,
}


def contract_state(port: int, host: str = "127.0.0.1") -> Any:
    try:
        response = httpx.get(f"http://{host}:{port}/_contract/state", timeout=30)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise CatalogCdcError(f"contract server on port {port}: {exc}") from exc
    return response.json()


def proof(config_path: Path, summary: Path | None) -> int:
    from pipeline.settings import load_connections

    config = load_config(config_path)
    db = expected_from_db(load_connections().require("postgres_dsn"))
    print(
        f"database: {db.live_sql:,} products not deleted "
        "(SELECT count(*) FROM products WHERE deleted_at IS NULL), "
        f"{sum(1 for p in db.products.values() if p['active']):,} of them active"
    )
    proofs = []
    for name, server in config.contract_servers.items():
        if not server.enabled or name not in PROVERS:
            continue
        consumer = config.consumers.get(name)
        if consumer is None or not consumer.enabled:
            continue
        proof = PROVERS[name](contract_state(server.port, server.host), db)
        proofs.append(proof)
        verdict = "in sync" if proof.in_sync else f"OUT OF SYNC ({proof.difference_count})"
        print(f"\n{name} (contract server :{server.port}): {verdict}")
        for line in proof.lines:
            print(f"  {line}")
        for text in proof.differences:
            print(f"  differs: {text}")
    if summary is not None:
        with summary.open("a") as out:
            for p in proofs:
                out.write(json.dumps({"sink": p.name, "in_sync": p.in_sync, "lines": p.lines}))
                out.write("\n")
    return 0 if all(p.in_sync for p in proofs) else 1
