"""Finding consumers: the ``catalog_cdc.consumers`` entry-point group.

Each entry point names a *factory*: ``name = "package.module:factory"``, called as
``factory(context)`` with a :class:`SinkContext` and returning a
:class:`~consumers.contract.Sink`.  A separate package adds a consumer by declaring
one in its own ``pyproject.toml``; ``catalog-cdc consume --list`` shows them all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path

from consumers.contract import Sink
from pipeline.errors import ConfigurationError
from pipeline.settings import ConnectionSettings

__all__ = ["GROUP", "SinkContext", "available", "load"]

GROUP = "catalog_cdc.consumers"


@dataclass(frozen=True)
class SinkContext:
    """What a sink factory gets: where the services are, and ``--option key=value``s."""

    connections: ConnectionSettings
    options: Mapping[str, str] = field(default_factory=dict)
    replay: bool = False
    """Built for ``catalog-cdc replay``: re-send what the sink's own bookkeeping (last
    versions, content hashes) would skip — a replay rebuilds the target."""
    replay_state: Path | None = None
    """A replay's state file: a sink built for it may keep files of its own beside it
    (``.with_suffix(...)``), e.g. a write index that must start empty."""


SinkFactory = Callable[[SinkContext], Sink]


def available() -> dict[str, str]:
    """``{name: "module:attr"}`` of every installed consumer."""
    return {ep.name: ep.value for ep in entry_points(group=GROUP)}


def load(name: str) -> SinkFactory:
    found = [ep for ep in entry_points(group=GROUP) if ep.name == name]
    if not found:
        known = ", ".join(sorted(available())) or "none"
        raise ConfigurationError(
            f"no consumer named {name!r} (installed: {known}); a consumer is an entry point "
            f"in the {GROUP!r} group (see docs/adding-a-consumer.md)"
        )
    factory: SinkFactory = found[0].load()
    return factory
