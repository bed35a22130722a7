"""The project's exception hierarchy.

Every error raised on purpose by catalog-cdc derives from :class:`CatalogCdcError`, so
the CLI can print its message (which says what failed and what to do) without a
traceback, and callers can tell our errors from bugs.
"""

from __future__ import annotations


class CatalogCdcError(Exception):
    """Base of every catalog-cdc error."""


class ConfigurationError(CatalogCdcError):
    """A setting is missing or invalid; the message names it and how to set it."""


class StackError(CatalogCdcError):
    """The local service stack could not be started, stopped or inspected."""
