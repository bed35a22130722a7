"""The seam between the edge KV sink and a key-value store."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Protocol

__all__ = ["KvBackend"]


class KvBackend(Protocol):
    """A key-value store the sink writes its layout to.

    ``apply`` returns only when every write and delete is confirmed by the store (then
    the sink commits the batch's offsets); it raises
    :class:`~consumers.runtime.TransientSinkError` when the store is unavailable for now
    (the sink calls it again with the same changes) and
    :class:`~consumers.runtime.SinkError` when it cannot go on (bad credentials).
    """

    name: str

    def open(self) -> None: ...

    def apply(self, writes: Mapping[str, str], deletes: Collection[str]) -> None:
        """Write ``writes`` (key -> value) and delete ``deletes``, durably."""
        ...

    def get(self, key: str) -> str | None: ...

    def list(self, prefix: str) -> list[str]:
        """Every key starting with ``prefix``, sorted."""
        ...

    def close(self) -> None: ...
