"""Run a verification: pick the consumer's :class:`~pipeline.verify.base.Verifier`, compare,
repair if asked, compare again.

A consumer's sink says whether it can be verified (:mod:`consumers.capabilities`):
a :class:`~consumers.capabilities.Verifiable` sink gives its verifier; a target that
cannot be listed (a third-party API without a listing endpoint in its seed) is
:class:`~consumers.capabilities.Unverifiable`: :func:`verifier_for` raises
:class:`~pipeline.verify.base.Unsupported` with the sink's word on what can be checked
instead.  No consumer is named here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from consumers.capabilities import Unverifiable, Verifiable
from consumers.registry import SinkContext, load
from pipeline.verify.base import RepairOutcome, Unsupported, Verifier
from pipeline.verify.report import Report

log = logging.getLogger(__name__)

__all__ = ["VerifyResult", "run", "verifier_for"]


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
    """The verifier of consumer ``name``: its sink's, if it is
    :class:`~consumers.capabilities.Verifiable`; else :class:`Unsupported`, with the
    reason the sink gives (:class:`~consumers.capabilities.Unverifiable`)."""
    sink = load(name)(context)
    if isinstance(sink, Verifiable):
        return sink.verifier(context, dsn)
    if isinstance(sink, Unverifiable):
        raise Unsupported(f"{name} cannot be verified: {sink.verify_unsupported}")
    raise Unsupported(
        f"{name} cannot be verified: its sink has no verifier (see docs/adding-a-consumer.md "
        "to give it one, and docs/verify.md)"
    )


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
