"""Cut a stream of items into requests, by count and by bytes.

Guarantee of :func:`chunks`: every item comes out exactly once, in the order it came
in; no chunk is empty; no chunk holds more than ``max_items`` items, and none weighs
more than ``max_bytes`` (the sum of ``size_of`` over its items) — except a chunk of one
item that alone weighs more: such an item is never dropped, it travels alone (a sink
that must refuse it checks the size itself, before).  The input is read lazily: a
chunk is handed out as soon as it is complete, so an item that is costly to build
(a serialized body) is built only when the chunk it belongs to is asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

__all__ = ["chunks"]

T = TypeVar("T")


def chunks(
    items: Iterable[T],
    *,
    max_items: int,
    max_bytes: int | None = None,
    size_of: Callable[[T], int] | None = None,
) -> Iterator[list[T]]:
    """``items`` in consecutive lists of at most ``max_items`` items and, when
    ``max_bytes`` is given, at most ``max_bytes`` of ``size_of(item)`` (an item heavier
    than that alone in its list).  ``max_bytes`` needs ``size_of``."""
    if max_items < 1:
        raise ValueError(f"max_items must be at least 1 (got {max_items})")
    if max_bytes is not None and size_of is None:
        raise ValueError("max_bytes needs size_of")
    chunk: list[T] = []
    size = 0
    for item in items:
        n = 0 if max_bytes is None or size_of is None else size_of(item)
        if chunk and max_bytes is not None and size + n > max_bytes:
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += n
        if len(chunk) >= max_items:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk
