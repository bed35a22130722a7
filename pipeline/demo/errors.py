"""Errors of the demo catalog (schema, seeding, live edits)."""

from __future__ import annotations

from pipeline.errors import CatalogCdcError


class DemoError(CatalogCdcError):
    """The demo catalog could not be created, seeded or edited; the message says why."""
