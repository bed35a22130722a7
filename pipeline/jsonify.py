"""Event values as JSON, without losing anything: for `tail`, logs and HTTP sinks.

- ``Decimal`` -> string (exact; ``"12.50"`` keeps its scale)
- ``datetime``/``date``/``time`` -> ISO 8601 strings
- ``UUID`` -> string, ``bytes`` -> ``{"$base64": ...}``
- :data:`~pipeline.events.UNCHANGED_TOAST` -> ``{"$unchanged_toast": true}`` (never null)
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import uuid
from decimal import Decimal
from typing import Any

import orjson

from pipeline.events import UNCHANGED_TOAST, ChangeEvent


def loads(text: str | bytes) -> Any:
    """``json.loads``, about 4x faster (orjson) on the JSON this project writes itself.

    What orjson refuses (``NaN``, ``Infinity``, a lone surrogate escape) is parsed by the
    standard parser, so the result is the same.  (orjson reads an integer beyond 64 bits
    as a float: none is written, as ``numeric`` values are kept as strings.)
    """
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def canonical(value: Any) -> bytes:
    """Compact UTF-8 JSON with sorted keys, what a content hash is taken of.

    The same bytes as ``json.dumps(value, sort_keys=True, separators=(",", ":"),
    ensure_ascii=False).encode()`` for JSON-native values (``str``, ``int``, ``bool``,
    ``None``, lists and dicts of them; tested), at a fraction of the cost.  Only floats
    may be written differently (``1e16`` for ``1e+16``, ``null`` for ``NaN``).
    """
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # an integer beyond 64 bits, a lone surrogate, a non-JSON type
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def jsonable(value: Any) -> Any:
    """A JSON-serializable copy of ``value``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if value is UNCHANGED_TOAST:
        return {"$unchanged_toast": True}
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$base64": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    raise TypeError(f"no JSON form for {type(value).__name__}")


def event_to_json(event: ChangeEvent) -> dict[str, Any]:
    """The Debezium envelope of ``event`` as a JSON-able dict."""
    return {
        "op": event.op,
        "ts_ms": event.ts_ms,
        "before": jsonable(event.before),
        "after": jsonable(event.after),
        "source": jsonable(dataclasses.asdict(event.source)),
    }


def dumps(value: Any) -> str:
    return json.dumps(jsonable(value), separators=(",", ":"), ensure_ascii=False)
