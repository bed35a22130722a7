"""Run a verification: pick the consumer's :class:`~pipeline.verify.base.Verifier`, compare,
repair if asked, compare again.

Consumers whose target cannot be listed (third-party APIs without a listing endpoint in
their seeds) have no verifier: :func:`verifier_for` raises
:class:`~pipeline.verify.base.Unsupported` with what can be checked instead.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import Final

from consumers.registry import SinkContext, available
from pipeline.errors import ConfigurationError
from pipeline.verify.base import RepairOutcome, Unsupported, Verifier
from pipeline.verify.report import Report

log = logging.getLogger(__name__)

__all__ = ["UNSUPPORTED", "VERIFIERS", "VerifyResult", "run", "verifier_for"]

VERIFIERS: Final[dict[str, str]] = {
    "search": "consumers.search.verify:SearchVerifier",
    "edge-kv": "consumers.edge_kv.verify:EdgeKvVerifier",
}
"""Consumer name -> ``module:class`` of its verifier, called as ``cls(context, dsn)``."""

UNSUPPORTED: Final[dict[str, str]] = {
    "storefront-api": (
        "the shop's products sync API (seeds/erp-to-storefront-products-sync-api.txt) has no "
        "endpoint that lists the shop's products, so what the shop holds cannot be read back. "
        "What can be checked instead: `catalog-cdc storefront-api status` reads the consumer's "
        "state file (per product: synced / deactivated / rejected / absent, the last syncIds "
        "and errors). That proves what the API confirmed to the consumer and which products "
        "it refused; it does not prove the shop still holds them (a product edited or deleted "
        "in the shop by hand is invisible). To resend everything as idempotent upserts: "
        "`catalog-cdc replay storefront-api`."
    ),
    "search-service": (
        "the hosted search Update API (seeds/search-service-update-api.txt) has no endpoint "
        "that lists the indexed items, only state/get. What can be checked instead: "
        "`catalog-cdc search-service status` shows the service's product_count and import "
        "status; a count equal to the database's proves nothing about the content. To "
        "rebuild it: `catalog-cdc replay search-service` (a full import)."
    ),
    "webhooks": (
        "webhooks are notifications to partners' receivers (seeds/inventory-sync-webhooks.txt): "
        "there is no target to list, each receiver keeps its own copy. What can be checked "
        "instead: the consumer's dead-letter topic {prefix}.dlq.webhooks lists the events no "
        "receiver accepted. To resend every product: `catalog-cdc replay webhooks` (receivers "
        "must be idempotent, as the seed's upsert by external_id is)."
    ),
    "jsonl": (
        "the jsonl consumer writes a log of records, not the current state of each document; "
        "there is nothing to compare with the database."
    ),
}


@dataclass
class VerifyResult:
    """The first report; with ``--repair``, what was sent and the report after it."""

    report: Report
    repair: RepairOutcome | None = None
    after: Report | None = None

    @property
    def final(self) -> Report:
        return self.after if self.after is not None else self.report


def verifier_for(name: str, context: SinkContext, dsn: str) -> Verifier:
    target = VERIFIERS.get(name)
    if target is None:
        if name in UNSUPPORTED:
            raise Unsupported(f"{name} cannot be verified: {UNSUPPORTED[name]}")
        if name not in available():
            known = ", ".join(sorted(available())) or "none"
            raise ConfigurationError(f"no consumer named {name!r} (installed: {known})")
        raise Unsupported(
            f"{name} cannot be verified: it has no verifier (only {', '.join(sorted(VERIFIERS))} "
            "have one; see docs/verify.md)"
        )
    module, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module), attr)
    verifier: Verifier = cls(context, dsn)
    return verifier


def run(verifier: Verifier, *, repair: bool = False) -> VerifyResult:
    """Compare; with ``repair`` and differences, repair and compare again."""
    expected = verifier.expected()
    actual = verifier.actual()
    report = verifier.compare(expected, actual)
    log.info(
        "event=verify consumer=%s status=%r differences=%d",
        verifier.name,
        report.verdict,
        len(report.differences),
    )
    result = VerifyResult(report)
    if not repair or report.in_sync:
        return result
    result.repair = verifier.repair(report, expected, actual)
    result.after = verifier.compare(verifier.expected(), verifier.actual())
    log.info(
        "event=verify_after_repair consumer=%s status=%r differences=%d",
        verifier.name,
        result.after.verdict,
        len(result.after.differences),
    )
    return result
