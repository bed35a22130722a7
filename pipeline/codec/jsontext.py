"""JSON text of json/jsonb values: compact, ``Decimal`` numbers exact both ways.

The reader parses JSON with ``parse_float=Decimal`` (jsonb keeps numbers as numeric);
:func:`json_dumps` writes such values back exactly and :func:`json_loads` reads them as
the reader does.  Used by the Avro codec for json/jsonb columns and, as the one JSON
text form of row values, by the document contract, the assembler and the consumers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Final

__all__ = ["json_dumps", "json_loads"]

_json_fast: Final[Callable[[Any], str]] = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False
).encode
"""Compact JSON text (one prebuilt encoder: ``json.dumps`` with options builds one per call)."""
_json_string: Final[Callable[[str], str]] = json.encoder.encode_basestring


def _json_parts(value: Any, emit: Callable[[str], Any]) -> None:
    if value is None:
        emit("null")
    elif value is True:
        emit("true")
    elif value is False:
        emit("false")
    elif isinstance(value, str):
        emit(_json_string(value))
    elif isinstance(value, Decimal):
        if not value.is_finite():
            raise TypeError(f"JSON has no {value} number")
        emit(str(value))
    elif isinstance(value, int | float):
        emit(_json_fast(value))
    elif isinstance(value, dict):
        emit("{")
        for i, (k, v) in enumerate(value.items()):
            if not isinstance(k, str):
                raise TypeError(f"JSON object keys must be str, not {type(k).__name__}")
            emit("," + _json_string(k) + ":" if i else _json_string(k) + ":")
            _json_parts(v, emit)
        emit("}")
    elif isinstance(value, list | tuple):
        emit("[")
        for i, v in enumerate(value):
            if i:
                emit(",")
            _json_parts(v, emit)
        emit("]")
    else:
        raise TypeError(f"{type(value).__name__} is not a JSON value")


def json_dumps(value: Any) -> str:
    """Compact JSON text of a json/jsonb value; ``Decimal`` numbers written exactly.

    The reader parses JSON numbers with ``parse_float=Decimal`` (jsonb keeps numbers as
    numeric), which the C encoder refuses: those values take the slower exact path.
    """
    try:
        return _json_fast(value)
    except TypeError:
        parts: list[str] = []
        _json_parts(value, parts.append)
        return "".join(parts)


_DECIMAL_JSON = json.JSONDecoder(parse_float=Decimal)


def json_loads(text: str) -> Any:
    """Parsed JSON, non-integral numbers as ``Decimal`` (as the reader produces them)."""
    # One decoder for all calls: json.loads(text, parse_float=...) builds a new one each
    # time, which cost as much as the parsing itself on the assembler's hot path.
    return _DECIMAL_JSON.decode(text)
