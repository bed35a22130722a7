"""The Update API's request rules (``seeds/search-service-update-api.txt``), in one place.

Pure functions, no I/O.  The sink checks every item, category and schema against them
*before* sending (five malformed requests within an hour block the private key), and
the contract server (``tests/contracts/search_service.py``) refuses what breaks them.

Each ``*_errors`` function returns a list of ``"field: what is wrong"`` strings (empty:
valid).  What the seed says, and where it is silent, the choice made here:

* ``id``/``parent_id`` are ``bigint`` (signed 64-bit); ``int`` attributes are signed
  32-bit (the seed tells ``int`` from ``bigint``); ``float`` is a finite JSON number
  (an integer is a float too); booleans are never numbers.
* ``valid url``: an absolute ``http``/``https`` URL with a host and no whitespace.
* Standard attributes hold one value.  Additional attributes hold one value of their
  schema ``type`` or a list of them (a product in several categories); an attribute not
  in the schema has the default type ``text``.  ``null`` is never a value (leave the
  field out).
* At most 250 items, 250 categories and 250 pages per request; the ``data`` JSON of a
  request (after zlib decompression) at most :data:`MAX_DATA_BYTES` (the seed names no
  byte limit: 8 MiB is this project's).
"""

from __future__ import annotations

import json
import math
import re
import zlib
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final
from urllib.parse import urlencode, urlsplit

__all__ = [
    "ATTRIBUTE_TYPES",
    "MAX_DATA_BYTES",
    "MAX_PER_REQUEST",
    "STANDARD_ATTRIBUTES",
    "DataTooLarge",
    "attribute_types",
    "category_errors",
    "data_errors",
    "decode_data",
    "encode_data",
    "form_body",
    "header_errors",
    "is_empty",
    "is_valid_url",
    "item_errors",
    "page_errors",
    "schema_errors",
]

MAX_PER_REQUEST: Final = 250
"""Items (products), categories or pages in one ``items/update`` request."""

MAX_DATA_BYTES: Final = 8 * 1024 * 1024
"""Largest ``data`` JSON of one request, decompressed (this project's limit)."""

NAME_RE: Final = re.compile(r"^[a-zA-Z_][0-9a-zA-Z_]+$")
"""An attribute ``name`` (the seed's regular expression)."""

ATTRIBUTE_TYPES: Final = ("text", "int", "float")
FACET_TYPES: Final = ("select", "slider", "range")
YES_NO: Final = ("Y", "N")

INT_MIN, INT_MAX = -(2**31), 2**31 - 1
BIGINT_MIN, BIGINT_MAX = -(2**63), 2**63 - 1

STANDARD_ATTRIBUTES: Final[Mapping[str, tuple[str, frozenset[str]]]] = {
    # name: (value type, schema keys that may be set besides ``name``)
    "id": ("bigint", frozenset({"title"})),
    "title": ("text", frozenset({"title", "text_search", "weight"})),
    "summary": ("text", frozenset({"title", "text_search", "weight"})),
    "link": ("url", frozenset({"title"})),
    "price": ("float", frozenset({"title", "facet"})),
    "list_price": ("float", frozenset({"title", "facet"})),
    "quantity": ("int", frozenset({"title", "facet"})),
    "product_code": ("text", frozenset({"title", "text_search", "weight"})),
    "image_link": ("url", frozenset({"title"})),
}
"""The seed's standard attributes: their type and what a schema may change of them
(price, list_price, quantity: the title, and a filter of the range or slider type)."""

ATTRIBUTE_KEYS: Final = frozenset(
    {"name", "title", "type", "text_search", "sorting", "weight", "facet"}
)
FACET_KEYS: Final = frozenset({"title", "position", "type", "ranges"})
RANGE_KEYS: Final = frozenset({"title", "from", "to", "position"})
CATEGORY_FIELDS: Final[Mapping[str, str]] = {
    "id": "bigint",
    "parent_id": "bigint",
    "link": "url",
    "title": "text",
    "summary": "text",
    "image_link": "url",
}
PAGE_FIELDS: Final[Mapping[str, str]] = {**CATEGORY_FIELDS}  # the seed's example has parent_id
HEADER_FIELDS: Final = frozenset({"id", "updated"})
DATA_KEYS: Final = ("header", "schema", "items", "categories", "pages")


class DataTooLarge(ValueError):
    """The decompressed ``data`` is larger than :data:`MAX_DATA_BYTES`."""


# --------------------------------------------------------------------------- values


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_valid_url(value: Any) -> bool:
    """An absolute http(s) URL with a host and no whitespace or control characters."""
    if not isinstance(value, str) or not value or any(c.isspace() or ord(c) < 32 for c in value):
        return False
    try:
        parts = urlsplit(value)
        _ = parts.port  # a non-numeric port raises
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _value_error(value: Any, kind: str) -> str | None:
    """What is wrong with one value of type ``kind`` (None: nothing)."""
    if kind in ("text",):
        return None if isinstance(value, str) else f"expected a string, got {_show(value)}"
    if kind == "url":
        return None if is_valid_url(value) else f"expected a valid http(s) URL, got {_show(value)}"
    if kind == "int":
        if not _is_int(value):
            return f"expected an integer, got {_show(value)}"
        if not INT_MIN <= value <= INT_MAX:
            return f"{value} is outside int ({INT_MIN}..{INT_MAX})"
        return None
    if kind == "bigint":
        if not _is_int(value):
            return f"expected an integer (bigint), got {_show(value)}"
        if not BIGINT_MIN <= value <= BIGINT_MAX:
            return f"{value} is outside bigint ({BIGINT_MIN}..{BIGINT_MAX})"
        return None
    if kind == "float":
        if _is_int(value):
            return None
        if not isinstance(value, float):
            return f"expected a number, got {_show(value)}"
        return None if math.isfinite(value) else f"expected a finite number, got {value}"
    raise AssertionError(f"unknown value type {kind!r}")


def _show(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _fields(obj: Any, spec: Mapping[str, str], required: tuple[str, ...]) -> list[str]:
    if not isinstance(obj, dict):
        return [f"expected an object, got {_show(obj)}"]
    errors = [f"{name}: required" for name in required if name not in obj]
    for name, value in obj.items():
        kind = spec.get(name)
        if kind is None:
            errors.append(f"{name}: not a field of this object (allowed: {', '.join(spec)})")
        elif (problem := _value_error(value, kind)) is not None:
            errors.append(f"{name}: {problem}")
    return errors


# --------------------------------------------------------------------------- schema


def attribute_types(schema: Any) -> dict[str, str]:
    """``{name: type}`` of the additional attributes a (valid) schema declares."""
    out: dict[str, str] = {}
    if isinstance(schema, list):
        for attr in schema:
            if isinstance(attr, dict) and isinstance(attr.get("name"), str):
                name = attr["name"]
                if name not in STANDARD_ATTRIBUTES:
                    out[name] = str(attr.get("type", "text"))
    return out


def schema_errors(schema: Any) -> list[str]:
    """The ``schema`` object: a list of attribute settings (see the seed's tables)."""
    if not isinstance(schema, list):
        return [f"schema: expected a list of attributes, got {_show(schema)}"]
    errors: list[str] = []
    seen: set[str] = set()
    for i, attr in enumerate(schema):
        where = f"schema[{i}]"
        if not isinstance(attr, dict):
            errors.append(f"{where}: expected an object, got {_show(attr)}")
            continue
        name = attr.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name):
            errors.append(
                f"{where}.name: required, must match {NAME_RE.pattern}, got {_show(name)}"
            )
            continue
        where = f"schema[{i}] ({name})"
        if name in seen:
            errors.append(f"{where}: the attribute appears twice")
        seen.add(name)
        errors += [
            f"{where}.{k}: not an attribute setting" for k in attr if k not in ATTRIBUTE_KEYS
        ]
        standard = STANDARD_ATTRIBUTES.get(name)
        if standard is not None:
            allowed = standard[1]
            errors += [
                f"{where}.{k}: cannot be changed for the standard attribute {name!r} "
                f"(allowed: {', '.join(sorted(allowed))})"
                for k in attr
                if k in ATTRIBUTE_KEYS and k != "name" and k not in allowed
            ]
            kind = "float" if standard[0] in ("float", "int") else "text"
        else:
            kind = attr.get("type", "text")
            if kind not in ATTRIBUTE_TYPES:
                errors.append(f"{where}.type: must be one of {', '.join(ATTRIBUTE_TYPES)}")
        if "title" in attr and not isinstance(attr["title"], str):
            errors.append(f"{where}.title: expected a string")
        if "text_search" in attr:
            if attr["text_search"] not in YES_NO:
                errors.append(f"{where}.text_search: must be 'Y' or 'N'")
            if kind != "text":
                errors.append(f"{where}.text_search: only for attributes with type=text")
        if "sorting" in attr and attr["sorting"] not in YES_NO:
            errors.append(f"{where}.sorting: must be 'Y' or 'N'")
        if "weight" in attr and not _is_int(attr["weight"]):
            errors.append(f"{where}.weight: expected an integer")
        if "facet" in attr:
            errors += _facet_errors(attr["facet"], kind, f"{where}.facet", standard is not None)
    return errors


def _facet_errors(facet: Any, kind: str, where: str, standard: bool) -> list[str]:
    if not isinstance(facet, dict):
        return [f"{where}: expected an object"]
    errors = [f"{where}.{k}: not a filter setting" for k in facet if k not in FACET_KEYS]
    numeric = kind in ("int", "float")
    ftype = facet.get("type", "range" if numeric else "select")
    if ftype not in FACET_TYPES:
        errors.append(f"{where}.type: must be one of {', '.join(FACET_TYPES)}")
    elif ftype in ("slider", "range") and not numeric:
        errors.append(f"{where}.type: a {ftype} filter needs an int or float attribute")
    elif standard and ftype == "select":
        errors.append(f"{where}.type: only a range or slider filter for this standard attribute")
    if "title" in facet and not isinstance(facet["title"], str):
        errors.append(f"{where}.title: expected a string")
    if "position" in facet and not _is_int(facet["position"]):
        errors.append(f"{where}.position: expected an integer")
    if "ranges" in facet:
        ranges = facet["ranges"]
        if ftype != "range":
            errors.append(f"{where}.ranges: only for a filter of the range type")
        if not isinstance(ranges, list):
            errors.append(f"{where}.ranges: expected a list")
        else:
            for j, rng in enumerate(ranges):
                errors += _range_errors(rng, f"{where}.ranges[{j}]")
    return errors


def _range_errors(rng: Any, where: str) -> list[str]:
    if not isinstance(rng, dict):
        return [f"{where}: expected an object"]
    errors = [f"{where}.{k}: not a range setting" for k in rng if k not in RANGE_KEYS]
    if "title" in rng and not isinstance(rng["title"], str):
        errors.append(f"{where}.title: expected a string")
    for bound in ("from", "to"):
        if bound in rng and not _is_number(rng[bound]):
            errors.append(f"{where}.{bound}: expected a number, got {_show(rng[bound])}")
    if "position" in rng and not _is_int(rng["position"]):
        errors.append(f"{where}.position: expected an integer")
    return errors


def _is_number(value: Any) -> bool:
    """int/float, or a numeric string (the seed's own request example sends "150")."""
    if isinstance(value, str):
        try:
            return math.isfinite(float(value))
        except ValueError:
            return False
    return _value_error(value, "float") is None


# --------------------------------------------------------------------------- objects


def item_errors(item: Any, types: Mapping[str, str]) -> list[str]:
    """One product (``items``); ``types``: the schema's additional attributes."""
    if not isinstance(item, dict):
        return [f"expected an object, got {_show(item)}"]
    errors = [] if "id" in item else ["id: required"]
    for name, value in item.items():
        if not isinstance(name, str) or not name:
            errors.append(f"{_show(name)}: not an attribute name")
            continue
        standard = STANDARD_ATTRIBUTES.get(name)
        if standard is not None:
            if (problem := _value_error(value, standard[0])) is not None:
                errors.append(f"{name}: {problem}")
            continue
        if not NAME_RE.match(name):
            errors.append(f"{name}: an attribute name must match {NAME_RE.pattern}")
            continue
        kind = types.get(name, "text")
        values = value if isinstance(value, list) else [value]
        for j, v in enumerate(values):
            if (problem := _value_error(v, kind)) is not None:
                at = f"{name}[{j}]" if isinstance(value, list) else name
                errors.append(f"{at}: {problem} (type {kind} in the schema)")
    return errors


def category_errors(category: Any) -> list[str]:
    """One category (``categories``)."""
    return _fields(category, CATEGORY_FIELDS, ("id",))


def page_errors(page: Any) -> list[str]:
    """One page (``pages``)."""
    return _fields(page, PAGE_FIELDS, ("id",))


def header_errors(header: Any) -> list[str]:
    """The ``header`` object: ``id`` (the store URL) and ``updated`` (ISO 8601)."""
    if not isinstance(header, dict):
        return [f"header: expected an object, got {_show(header)}"]
    errors = [f"header.{k}: not a header field" for k in header if k not in HEADER_FIELDS]
    if "id" in header and not is_valid_url(header["id"]):
        errors.append(f"header.id: expected a valid URL, got {_show(header['id'])}")
    if "updated" in header:
        try:
            datetime.fromisoformat(str(header["updated"]))
        except ValueError:
            errors.append(
                f"header.updated: expected an ISO 8601 date, got {_show(header['updated'])}"
            )
        if not isinstance(header["updated"], str):
            errors.append("header.updated: expected a string")
    return errors


def data_errors(data: Any, types: Mapping[str, str]) -> list[str]:
    """A whole ``data`` object.  ``types``: the attribute types in force (the schema of
    this request, when it has one, is applied first)."""
    if not isinstance(data, dict):
        return [f"data: expected an object, got {_show(data)}"]
    errors = [f"data.{k}: not a data object" for k in data if k not in DATA_KEYS]
    if "header" in data:
        errors += header_errors(data["header"])
    types = dict(types)
    if "schema" in data:
        found = schema_errors(data["schema"])
        errors += found
        if not found:
            types.update(attribute_types(data["schema"]))
    for key in ("items", "categories", "pages"):
        if key not in data:
            continue
        objects = data[key]
        if not isinstance(objects, list):
            errors.append(f"{key}: expected a list, got {_show(objects)}")
            continue
        if len(objects) > MAX_PER_REQUEST:
            errors.append(f"{key}: {len(objects)} in one request, at most {MAX_PER_REQUEST}")
        for i, obj in enumerate(objects):
            ident = obj.get("id") if isinstance(obj, dict) else None
            where = f"{key}[{i}] (id {ident})"
            if key == "items":
                problems = item_errors(obj, types)
            else:
                problems = category_errors(obj) if key == "categories" else page_errors(obj)
            errors += [f"{where}: {p}" for p in problems]
    return errors


def is_empty(data: Any) -> bool:
    """No schema, items, categories or pages in it (the seed's ``error_empty_request``)."""
    return isinstance(data, dict) and not any(data.get(k) for k in DATA_KEYS if k != "header")


# --------------------------------------------------------------------------- encoding


def encode_data(data: Mapping[str, Any], compress: bool = True) -> bytes:
    """The ``data`` parameter: compact UTF-8 JSON, ZLIB-compressed (PHP's
    ``gzcompress``: an RFC 1950 stream) unless ``compress`` is false."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return zlib.compress(text, 6) if compress else text


def decode_data(raw: bytes, limit: int = MAX_DATA_BYTES) -> Any:
    """The JSON of a ``data`` parameter, compressed (an RFC 1950 header) or not.

    Raises :class:`DataTooLarge` beyond ``limit`` decompressed bytes, ``ValueError``
    (``zlib.error``, ``json.JSONDecodeError``, ``UnicodeDecodeError``) on bad input.
    """
    text = raw
    if raw[:1] == b"\x78":  # a zlib stream (JSON never starts with "x")
        inflater = zlib.decompressobj()
        try:
            text = inflater.decompress(raw, limit + 1)
        except zlib.error as exc:
            raise ValueError(f"data: not a valid zlib stream ({exc})") from exc
        if len(text) > limit or inflater.unconsumed_tail:
            raise DataTooLarge(f"data is larger than {limit} bytes decompressed")
        if not inflater.eof:
            raise ValueError("data: a truncated zlib stream")
    elif len(raw) > limit:
        raise DataTooLarge(f"data is larger than {limit} bytes")
    return json.loads(text.decode("utf-8"))


def form_body(params: Mapping[str, str | bytes]) -> bytes:
    """``application/x-www-form-urlencoded`` bytes (binary values percent-encoded)."""
    return urlencode(params).encode("ascii")
