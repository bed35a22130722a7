"""The products sync API's field rules, in one place for the client and the contract server.

Every limit of ``POST /api/products/sync`` (seed ``erp-to-storefront-products-sync-api``)
is a row of :data:`RULES` and a check in :func:`check_product`.  The sink runs the
checks *before* sending (a violating product is dead-lettered and never sent); the
contract server (``tests/contracts/storefront_api.py``) runs the same checks on what
it receives, so the two cannot drift, and the server still enforces them whatever a
client does.

A violation is a :class:`FieldError`: the field's JSON path (``images[3].fileName``),
a message, and the HTTP status the server answers with: **400** for a malformed
request (a required field missing, a wrong type, an unknown field, a bad
``operation``), **422** for a value outside a limit.  Bodies follow the seed::

    {"success": false, "error": "Validation failed",
     "details": [{"field": "price", "message": "Price must be a positive number"}]}
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "BATCH_MAX",
    "EAN13_LENGTH",
    "IMAGE_EXTENSIONS",
    "MAX_DESCRIPTION",
    "MAX_IMAGES",
    "MAX_IMAGE_BYTES",
    "MAX_NAME",
    "MAX_REFERENCE",
    "MAX_TECHNICAL_DATA",
    "OPERATIONS",
    "RULES",
    "FieldError",
    "Rule",
    "check_batch",
    "check_image_bytes",
    "check_product",
    "error_body",
]

OPERATIONS: Final = ("create", "update")
MAX_REFERENCE: Final = 64
MAX_NAME: Final = 255
MAX_DESCRIPTION: Final = 10_000
EAN13_LENGTH: Final = 13
MAX_IMAGES: Final = 10
MAX_IMAGE_BYTES: Final = 10 * 1024 * 1024
"""10 MB per image, of the image itself (before base64)."""
IMAGE_EXTENSIONS: Final = ("jpg", "jpeg", "png", "gif", "webp")
MAX_TECHNICAL_DATA: Final = 100
BATCH_MAX: Final = 50
"""Products per batch request (the seed's "optimal batch size"; the server's limit)."""


@dataclass(frozen=True)
class Rule:
    """One row of the seed's request-body table."""

    field: str
    type: str
    required: bool
    rule: str


RULES: Final[tuple[Rule, ...]] = (
    Rule("operation", "string", True, "'create' or 'update'"),
    Rule("reference", "string", True, f"1-{MAX_REFERENCE} characters"),
    Rule("name", "string", True, f"1-{MAX_NAME} characters"),
    Rule("description", "string", False, f"at most {MAX_DESCRIPTION} characters"),
    Rule("price", "number", True, ">= 0"),
    Rule("quantity", "number", True, ">= 0, integer"),
    Rule("active", "boolean", False, "default true"),
    Rule("categories", "array", False, "category ids (positive integers) that exist in the shop"),
    Rule("ean13", "string", False, f"{EAN13_LENGTH} characters or empty"),
    Rule("weight", "number", False, ">= 0 (kg); null: none"),
    Rule("brand", "object", False, "{name (required), description}; null: none"),
    Rule(
        "images",
        "array",
        False,
        f"at most {MAX_IMAGES}; each {{fileName (required, extension "
        f"{'/'.join(IMAGE_EXTENSIONS)}), base64 (required, at most 10 MB)}}",
    ),
    Rule(
        "technical_data",
        "array",
        False,
        f"at most {MAX_TECHNICAL_DATA}; each {{Gruppo, Descrizione, Valore (required "
        "strings), Suffisso (string), PrintOrder (integer, default 0)}}",
    ),
)
"""The request-body fields and their rules, as the seed's table has them."""

_FIELDS: Final = frozenset(r.field for r in RULES)
_IMAGE_FIELDS: Final = frozenset({"fileName", "base64"})
_TECH_FIELDS: Final = frozenset({"Gruppo", "Descrizione", "Valore", "Suffisso", "PrintOrder"})
_BRAND_FIELDS: Final = frozenset({"name", "description"})
# base64 of 10 MB: 4 * ceil(n / 3) characters (a little more for line breaks).
_MAX_BASE64_CHARS: Final = 4 * math.ceil(MAX_IMAGE_BYTES / 3) + 1024


@dataclass(frozen=True)
class FieldError:
    """A field that breaks a rule: its JSON path, why, and the server's status for it."""

    field: str
    message: str
    status: int = 422

    def detail(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def error_body(errors: Sequence[FieldError], error: str = "Validation failed") -> dict[str, Any]:
    """The seed's error response for ``errors``."""
    return {"success": False, "error": error, "details": [e.detail() for e in errors]}


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _is_integer(v: Any) -> bool:
    return _is_number(v) and float(v).is_integer()


def _string(
    out: list[FieldError], path: str, v: Any, *, lo: int = 0, hi: int | None = None
) -> None:
    if not isinstance(v, str):
        out.append(FieldError(path, "must be a string", 400))
        return
    if len(v) < lo:
        out.append(FieldError(path, "is required (empty)" if lo == 1 else f"min {lo} chars"))
    if hi is not None and len(v) > hi:
        out.append(FieldError(path, f"must be at most {hi} characters (got {len(v)})"))


def check_product(body: Any, *, image_data: bool = True) -> list[FieldError]:
    """Every rule ``body`` (one product of a sync request) breaks; ``[]`` if none.

    ``image_data=False`` checks images without their ``base64`` (the sink checks the
    count and the file names before downloading the images, the sizes after).
    """
    if not isinstance(body, Mapping):
        return [FieldError("", "a product must be a JSON object", 400)]
    out: list[FieldError] = []
    for key in body:
        if key not in _FIELDS:
            out.append(FieldError(str(key), "unknown field", 400))
    for rule in RULES:
        if rule.required and body.get(rule.field) is None:
            out.append(FieldError(rule.field, "is required", 400))

    op = body.get("operation")
    if op is not None and op not in OPERATIONS:
        out.append(FieldError("operation", "must be 'create' or 'update'", 400))
    if (v := body.get("reference")) is not None:
        _string(out, "reference", v, lo=1, hi=MAX_REFERENCE)
    if (v := body.get("name")) is not None:
        _string(out, "name", v, lo=1, hi=MAX_NAME)
    if (v := body.get("description")) is not None:
        _string(out, "description", v, hi=MAX_DESCRIPTION)
    if (v := body.get("price")) is not None:
        if not _is_number(v):
            out.append(FieldError("price", "must be a number", 400))
        elif v < 0:
            out.append(FieldError("price", "Price must be a positive number (>= 0)"))
    if (v := body.get("quantity")) is not None:
        if not _is_number(v):
            out.append(FieldError("quantity", "must be a number", 400))
        elif not _is_integer(v):
            out.append(FieldError("quantity", f"must be an integer (got {v})"))
        elif v < 0:
            out.append(FieldError("quantity", f"must be >= 0 (got {v})"))
    if (v := body.get("active")) is not None and not isinstance(v, bool):
        out.append(FieldError("active", "must be a boolean", 400))
    if (v := body.get("categories")) is not None:
        if not isinstance(v, list):
            out.append(FieldError("categories", "must be an array of category ids", 400))
        else:
            for i, c in enumerate(v):
                if not _is_integer(c) or isinstance(c, float) or c <= 0:
                    out.append(FieldError(f"categories[{i}]", f"not a category id: {c!r}"))
    if (v := body.get("ean13")) is not None:
        if not isinstance(v, str):
            out.append(FieldError("ean13", "must be a string", 400))
        elif len(v) not in (0, EAN13_LENGTH):
            out.append(FieldError("ean13", f"must be 13 characters or empty (got {len(v)})"))
    if (v := body.get("weight")) is not None:
        if not _is_number(v):
            out.append(FieldError("weight", "must be a number (kg)", 400))
        elif v < 0:
            out.append(FieldError("weight", f"must be >= 0 (got {v})"))
    if (v := body.get("brand")) is not None:
        _check_brand(out, v)
    if (v := body.get("images")) is not None:
        _check_images(out, v, image_data)
    if (v := body.get("technical_data")) is not None:
        _check_technical_data(out, v)
    return out


def _check_brand(out: list[FieldError], v: Any) -> None:
    if not isinstance(v, Mapping):
        out.append(FieldError("brand", "must be an object {name, description}", 400))
        return
    for key in v:
        if key not in _BRAND_FIELDS:
            out.append(FieldError(f"brand.{key}", "unknown field", 400))
    if v.get("name") is None:
        out.append(FieldError("brand.name", "is required", 400))
    else:
        _string(out, "brand.name", v["name"], lo=1)
    if v.get("description") is not None:
        _string(out, "brand.description", v["description"])


def _check_images(out: list[FieldError], v: Any, image_data: bool) -> None:
    if not isinstance(v, list):
        out.append(FieldError("images", "must be an array", 400))
        return
    if len(v) > MAX_IMAGES:
        out.append(FieldError("images", f"at most {MAX_IMAGES} images (got {len(v)})"))
    for i, image in enumerate(v):
        path = f"images[{i}]"
        if not isinstance(image, Mapping):
            out.append(FieldError(path, "must be an object {fileName, base64}", 400))
            continue
        allowed = _IMAGE_FIELDS if image_data else _IMAGE_FIELDS | {"url"}
        for key in image:
            if key not in allowed:
                out.append(FieldError(f"{path}.{key}", "unknown field", 400))
        name = image.get("fileName")
        if name is None:
            out.append(FieldError(f"{path}.fileName", "is required", 400))
        elif not isinstance(name, str):
            out.append(FieldError(f"{path}.fileName", "must be a string", 400))
        else:
            stem, dot, ext = name.rpartition(".")
            if not dot or not stem or ext.lower() not in IMAGE_EXTENSIONS:
                out.append(
                    FieldError(
                        f"{path}.fileName",
                        f"{name!r} has no valid extension ({', '.join(IMAGE_EXTENSIONS)})",
                    )
                )
        if not image_data:
            continue
        data = image.get("base64")
        if data is None:
            out.append(FieldError(f"{path}.base64", "is required", 400))
        elif not isinstance(data, str):
            out.append(FieldError(f"{path}.base64", "must be a string", 400))
        elif len(data) > _MAX_BASE64_CHARS:
            out.append(FieldError(f"{path}.base64", "image larger than 10 MB"))
        else:
            try:
                raw = base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError):
                out.append(FieldError(f"{path}.base64", "not valid base64"))
            else:
                out.extend(check_image_bytes(i, len(raw)))


def check_image_bytes(index: int, size: int) -> list[FieldError]:
    """The size rule of image ``index`` (``size`` bytes, before base64)."""
    if size > MAX_IMAGE_BYTES:
        return [FieldError(f"images[{index}].base64", f"image larger than 10 MB ({size} bytes)")]
    if size == 0:
        return [FieldError(f"images[{index}].base64", "empty image")]
    return []


def _check_technical_data(out: list[FieldError], v: Any) -> None:
    if not isinstance(v, list):
        out.append(FieldError("technical_data", "must be an array", 400))
        return
    if len(v) > MAX_TECHNICAL_DATA:
        out.append(
            FieldError("technical_data", f"at most {MAX_TECHNICAL_DATA} items (got {len(v)})")
        )
    for i, item in enumerate(v):
        path = f"technical_data[{i}]"
        if not isinstance(item, Mapping):
            out.append(FieldError(path, "must be an object {Gruppo, Descrizione, Valore}", 400))
            continue
        for key in item:
            if key not in _TECH_FIELDS:
                out.append(FieldError(f"{path}.{key}", "unknown field", 400))
        for key in ("Gruppo", "Descrizione", "Valore"):
            if item.get(key) is None:
                out.append(FieldError(f"{path}.{key}", "is required", 400))
            else:
                _string(out, f"{path}.{key}", item[key], lo=1)
        if item.get("Suffisso") is not None:
            _string(out, f"{path}.Suffisso", item["Suffisso"])
        order = item.get("PrintOrder")
        if order is not None and not (_is_integer(order) and not isinstance(order, float)):
            out.append(FieldError(f"{path}.PrintOrder", "must be an integer", 400))


def check_batch(body: Any) -> list[FieldError]:
    """The request-level rules of ``POST /api/products/sync/batch``: ``{"products": [...]}``
    with 1 to :data:`BATCH_MAX` products (each then checked with :func:`check_product`)."""
    if not isinstance(body, Mapping) or not isinstance(body.get("products"), list):
        return [FieldError("products", "must be an array of products", 400)]
    extra = [k for k in body if k != "products"]
    if extra:
        return [FieldError(str(k), "unknown field", 400) for k in extra]
    n = len(body["products"])
    if n == 0:
        return [FieldError("products", "at least one product", 400)]
    if n > BATCH_MAX:
        return [FieldError("products", f"at most {BATCH_MAX} products per batch (got {n})", 400)]
    return []
