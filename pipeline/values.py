"""PostgreSQL text-format values: raw tuples, and their conversion to Python objects.

The contract the reader and the codec share (beside :mod:`pipeline.events`, inside
neither): the reader decodes pgoutput into raw tuples (:data:`RawTuple`) and converts
them to rows; the codec's raw encoder (:mod:`pipeline.codec.raw`) writes them straight
to Avro with the same converters, and both report a value that does not convert with
the same :class:`ValueConversionError` (:func:`raise_conversion_error`).

pgoutput sends column values in the *text* output format of their type (unless the
``binary`` option is on, which this module does not support).  :func:`converter_for`
returns, for a type OID, one callable ``bytes -> object``; callers look it up once per
column and reuse it for every value.  NULL and unchanged-TOAST markers never reach a
converter.

Mapping (see also :mod:`pipeline.events`):

===============================  ==========================================================
int2, int4, int8, oid            ``int``
numeric                          ``decimal.Decimal``, exact, ``NaN``/``Infinity`` included
float4, float8                   ``float`` (``nan``/``inf`` included); a float4 becomes
                                 the double nearest to its shortest decimal text
text, varchar, bpchar, name,     ``str`` (bpchar keeps its padding)
char, unknown/user types
bool                             ``bool``
timestamptz                      aware ``datetime`` in UTC, whatever offset was sent
timestamp                        naive ``datetime``
date                             ``datetime.date``
time / timetz                    ``datetime.time`` (naive / with a fixed-offset tzinfo)
json, jsonb                      parsed JSON; non-integral numbers as ``Decimal``
                                 (``parse_float=Decimal``: jsonb stores numbers as
                                 numeric, so this is exact), integers as ``int``
uuid                             ``uuid.UUID``
bytea                            ``bytes`` (hex output format, ``bytea_output = hex``)
arrays of the above              ``list`` of converted elements (``None`` for NULL),
                                 nested for multi-dimensional arrays; lower bounds of a
                                 ``[lo:hi]=`` prefix are parsed and dropped
===============================  ==========================================================

Decisions on values Python cannot represent exactly:

* ``infinity`` / ``-infinity`` map to ``datetime.max`` / ``datetime.min`` (UTC-aware for
  timestamptz, naive for timestamp) and ``date.max`` / ``date.min``.  They are the only
  values that do, so a real ``9999-12-31 23:59:59.999999`` is indistinguishable from
  infinity -- accepted, because infinity is a common "valid forever" marker and must not
  stop the pipeline.
* BC dates, years above 9999 and ``24:00:00`` times have no Python equivalent: their
  converters raise ``ValueError`` (the reader reports a ValueConversionError and stops).

Assumptions about the replication session: DateStyle ``ISO`` (the default),
``bytea_output = hex`` (the default), database encoding UTF8.  The session's TimeZone
may be anything: timestamptz offsets (``+00``, ``+05:30``, ``-04:56:02``) are honoured.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Final, NoReturn, TypeAlias
from uuid import UUID, SafeUUID

from pipeline.errors import CatalogCdcError
from pipeline.events import UNCHANGED_TOAST, Column, TableSchema, UnchangedToast

__all__ = [
    "BUILTIN_TYPE_NAMES",
    "BUILTIN_TYPE_OIDS",
    "CONVERSION_ERRORS",
    "BinaryValue",
    "Converter",
    "Datum",
    "RawTuple",
    "SchemaMismatchError",
    "ValueConversionError",
    "array_converter",
    "convert_text",
    "converter_for",
    "parse_array",
    "raise_conversion_error",
]


# ------------------------------------------------------------------ raw tuples


@dataclass(frozen=True, slots=True)
class BinaryValue:
    """A column value sent in binary format (``'b'``; only with the ``binary`` option)."""

    data: bytes


Datum: TypeAlias = bytes | BinaryValue | UnchangedToast | None
"""One raw tuple column: text bytes, binary value, unchanged TOAST marker or NULL."""

RawTuple: TypeAlias = tuple[Datum, ...]
"""The columns of one TupleData, in the order of the Relation message's columns."""


class SchemaMismatchError(CatalogCdcError):
    """A tuple does not match the newest Relation message of its table."""


class ValueConversionError(CatalogCdcError):
    """A column value could not be converted to its Python type.

    The message names the table, the column, the PostgreSQL type and the offending text
    (truncated).  The reader stops on it: a value is never skipped or nulled.
    """


Converter: TypeAlias = Callable[[bytes], Any]
"""Turns one non-NULL text-format value into its Python value; raises on bad input."""

CONVERSION_ERRORS: Final[tuple[type[BaseException], ...]] = (
    ValueError,  # incl. UnicodeDecodeError and json.JSONDecodeError
    TypeError,
    ArithmeticError,  # incl. decimal.InvalidOperation
    LookupError,
    AttributeError,  # a BinaryValue handed to a text converter
    RecursionError,  # absurdly deep JSON
)
"""The exceptions a converter raises for a value it cannot convert."""


# ------------------------------------------------------------------ scalar converters


def _text(value: bytes) -> str:
    return value.decode()


def _numeric(value: bytes) -> Decimal:
    return Decimal(value.decode("ascii"))


_DASH: Final = 0x2D  # -
_BOOLS: Final = {b"t": True, b"f": False}


def _bool(value: bytes) -> bool:
    return _BOOLS[value]


_new_object = object.__new__
_set_attribute = object.__setattr__
_SAFE_UNKNOWN: Final = SafeUUID.unknown


def _uuid(value: bytes) -> UUID:
    # PostgreSQL prints UUIDs canonically (8-4-4-4-12 lower-case hex): build the UUID
    # from its integer without UUID.__init__'s generic parsing (3x faster).  Anything
    # else takes the validating constructor.
    if len(value) == 36 and value[8] == value[13] == value[18] == value[23] == _DASH:
        digits = value.replace(b"-", b"")
        if len(digits) == 32 and digits.isalnum():
            uuid = _new_object(UUID)
            _set_attribute(uuid, "int", int(digits, 16))
            _set_attribute(uuid, "is_safe", _SAFE_UNKNOWN)
            return uuid
    return UUID(value.decode("ascii"))


_JSON_DECODER: Final = json.JSONDecoder(parse_float=Decimal)
"""Built once: ``json.loads`` with arguments builds a new decoder per call (3x slower)."""


def _json(value: bytes) -> Any:
    return _JSON_DECODER.decode(value.decode())


def _bytea(value: bytes) -> bytes:
    if value[:2] != b"\\x":
        raise ValueError("bytea value is not in hex format (set bytea_output = 'hex')")
    return bytes.fromhex(value[2:].decode("ascii"))


def _out_of_range(value: bytes, kind: str) -> ValueError:
    if value.endswith(b" BC"):
        return ValueError(f"{kind} before year 1 (BC) cannot be represented in Python")
    return ValueError(
        f"not an ISO {kind} within years 1-9999 (DateStyle must be ISO; "
        "Python cannot represent years after 9999)"
    )


_DATETIME_MAX_UTC: Final = datetime.max.replace(tzinfo=UTC)
_DATETIME_MIN_UTC: Final = datetime.min.replace(tzinfo=UTC)


def _timestamptz(value: bytes) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.decode("ascii"))
    except ValueError:
        if value == b"infinity":
            return _DATETIME_MAX_UTC
        if value == b"-infinity":
            return _DATETIME_MIN_UTC
        raise _out_of_range(value, "timestamptz") from None
    tz = parsed.tzinfo
    if tz is UTC:
        return parsed
    if tz is None:
        raise ValueError("timestamptz value carries no UTC offset (DateStyle must be ISO)")
    return parsed.astimezone(UTC)


def _timestamp(value: bytes) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.decode("ascii"))
    except ValueError:
        if value == b"infinity":
            return datetime.max
        if value == b"-infinity":
            return datetime.min
        raise _out_of_range(value, "timestamp") from None
    if parsed.tzinfo is not None:
        raise ValueError("timestamp (without time zone) value carries a UTC offset")
    return parsed


def _date(value: bytes) -> date:
    try:
        return date.fromisoformat(value.decode("ascii"))
    except ValueError:
        if value == b"infinity":
            return date.max
        if value == b"-infinity":
            return date.min
        raise _out_of_range(value, "date") from None


def _time(value: bytes) -> time:
    try:
        return time.fromisoformat(value.decode("ascii"))
    except ValueError:
        if value.startswith(b"24:00:00"):
            raise ValueError("time 24:00:00 cannot be represented in Python") from None
        raise


# ------------------------------------------------------------------------------ arrays

_LBRACE: Final = 0x7B  # {
_RBRACE: Final = 0x7D  # }
_QUOTE: Final = 0x22  # "
_BACKSLASH: Final = 0x5C  # \
_COMMA: Final = 0x2C  # ,
_N: Final = 0x4E  # N


def parse_array(value: bytes, element: Converter) -> list[Any]:
    """Parse an array's text output, converting each non-NULL element with ``element``.

    Handles quoted elements with backslash escapes, ``NULL`` elements (unquoted; a quoted
    ``"NULL"`` is the string), empty arrays, nested (multi-dimensional) arrays and the
    ``[lo:hi]...=`` dimension prefix (checked, then dropped: Python lists start at 0).
    Works on bytes: UTF-8 never puts ASCII bytes inside a multi-byte character, so the
    delimiters cannot be confused with parts of other characters.  Raises ``ValueError``
    on malformed input.  The delimiter is ``,`` (every built-in type but ``box``).
    """
    if value[:1] == b"[":
        value = _strip_dimensions(value)
    if value[:1] != b"{" or value[-1:] != b"}":
        raise ValueError("array value does not start with '{' and end with '}'")
    try:
        result, end = _parse_level(value, 0, element)
    except IndexError:
        raise ValueError("truncated array value") from None
    if end != len(value):
        raise ValueError(f"unexpected text after the array's closing brace at byte {end}")
    return result


def _strip_dimensions(value: bytes) -> bytes:
    equals = value.find(b"=")
    if equals < 0:
        raise ValueError("array dimension prefix without '='")
    prefix = value[:equals]
    if not prefix.startswith(b"[") or not prefix.endswith(b"]"):
        raise ValueError("malformed array dimension prefix")
    for dim in prefix[1:-1].split(b"]["):
        lower, sep, upper = dim.partition(b":")
        if not sep or int(lower) > int(upper):
            raise ValueError(f"malformed array dimension {dim!r}")
    return value[equals + 1 :]


def _parse_level(value: bytes, pos: int, element: Converter) -> tuple[list[Any], int]:
    """Parse the ``{...}`` starting at ``pos``; return the list and the offset after it."""
    out: list[Any] = []
    pos += 1
    if value[pos] == _RBRACE:
        return out, pos + 1
    while True:
        char = value[pos]
        if char == _LBRACE:
            sub, pos = _parse_level(value, pos, element)
            out.append(sub)
        elif char == _QUOTE:
            start = pos + 1
            parts: list[bytes] = []
            while True:
                quote = value.find(b'"', start)
                if quote < 0:
                    raise ValueError("unterminated quoted array element")
                backslash = value.find(b"\\", start, quote)
                if backslash < 0:
                    parts.append(value[start:quote])
                    pos = quote + 1
                    break
                parts.append(value[start:backslash])
                parts.append(value[backslash + 1 : backslash + 2])
                start = backslash + 2
            out.append(element(b"".join(parts)))
        elif char in (_COMMA, _RBRACE):
            raise ValueError(f"empty array element at byte {pos}")
        else:
            comma = value.find(b",", pos)
            brace = value.find(b"}", pos)
            end = brace if comma < 0 or 0 <= brace < comma else comma
            if end < 0:
                raise ValueError("unterminated array")
            item = value[pos:end]
            if item == b"NULL":
                out.append(None)
            else:
                if b"\\" in item or b"{" in item or b'"' in item:
                    raise ValueError(f"unexpected character in unquoted array element {item!r}")
                out.append(element(item))
            pos = end
        char = value[pos]
        if char == _COMMA:
            pos += 1
        elif char == _RBRACE:
            return out, pos + 1
        else:
            raise ValueError(f"expected ',' or '}}' at byte {pos}")


def _flat_quoted(inner: bytes, element: Converter) -> list[Any] | None:
    """Fast path for a one-dimensional array with quoted elements and no escapes.

    ``inner`` is the text between the outer braces, without backslashes.  Splitting on
    ``"`` alternates unquoted regions (even) and quoted elements (odd).  Returns ``None``
    for anything else -- nested arrays, malformed text -- which the full parser handles.
    """
    regions = inner.split(b'"')
    last = len(regions) - 1
    if last & 1:  # unbalanced quotes
        return None
    out: list[Any] = []
    for index, region in enumerate(regions):
        if index & 1:
            out.append(element(region))
            continue
        if _LBRACE in region or _RBRACE in region:
            return None
        pieces = region.split(b",")
        # After a closing quote comes ',' (or the end); before an opening quote, ','.
        if index > 0:
            if pieces[0] or (index < last and len(pieces) < 2):
                return None
            del pieces[0]
        if index < last:
            if pieces[-1]:
                return None
            del pieces[-1]
        if pieces:
            if b"" in pieces:
                return None
            out.extend(None if item == b"NULL" else element(item) for item in pieces)
    return out


def array_converter(element: Converter) -> Converter:
    """Return a converter for arrays whose elements ``element`` converts."""

    def convert_array(value: bytes) -> list[Any]:
        # Inlined fast path of parse_array for the common one-dimensional, unquoted case.
        # (int-in-bytes tests are memchr calls; bytes-in-bytes ones cost ten times more.)
        if value and value[0] == _LBRACE and value[-1] == _RBRACE:
            inner = value[1:-1]
            if not inner:
                return []
            if _BACKSLASH not in inner:
                if _QUOTE in inner:
                    flat = _flat_quoted(inner, element)
                    if flat is not None:
                        return flat
                elif _LBRACE not in inner and _RBRACE not in inner:
                    items = inner.split(b",")
                    if b"" not in items:  # else malformed: let parse_array say where
                        if _N not in inner:  # no NULL element
                            return list(map(element, items))
                        return [None if item == b"NULL" else element(item) for item in items]
        return parse_array(value, element)

    return convert_array


# ---------------------------------------------------------------------------- registry

# (oid, name, converter, array oid) for every built-in type with a dedicated converter.
_SCALARS: Final[tuple[tuple[int, str, Converter, int], ...]] = (
    (16, "bool", _bool, 1000),
    (17, "bytea", _bytea, 1001),
    (18, "char", _text, 1002),
    (19, "name", _text, 1003),
    (20, "int8", int, 1016),
    (21, "int2", int, 1005),
    (23, "int4", int, 1007),
    (25, "text", _text, 1009),
    (26, "oid", int, 1028),
    (114, "json", _json, 199),
    (700, "float4", float, 1021),
    (701, "float8", float, 1022),
    (1042, "bpchar", _text, 1014),
    (1043, "varchar", _text, 1015),
    (1082, "date", _date, 1182),
    (1083, "time", _time, 1183),
    (1114, "timestamp", _timestamp, 1115),
    (1184, "timestamptz", _timestamptz, 1185),
    (1266, "timetz", _time, 1270),
    (1700, "numeric", _numeric, 1231),
    (2950, "uuid", _uuid, 2951),
    (3802, "jsonb", _json, 3807),
)

# Built-in types kept as their text (str), with their array types (lists of str).
_TEXTUAL: Final[tuple[tuple[int, str, int], ...]] = (
    (142, "xml", 143),
    (650, "cidr", 651),
    (790, "money", 791),
    (829, "macaddr", 1040),
    (869, "inet", 1041),
    (1186, "interval", 1187),
    (1560, "bit", 1561),
    (1562, "varbit", 1563),
    (3614, "tsvector", 3643),
)


def _registry() -> tuple[dict[int, Converter], dict[int, str]]:
    converters: dict[int, Converter] = {}
    names: dict[int, str] = {}
    for oid, name, convert, array_oid in _SCALARS:
        converters[oid] = convert
        converters[array_oid] = array_converter(convert)
        names[oid] = name
        names[array_oid] = "_" + name
    for oid, name, array_oid in _TEXTUAL:
        converters[oid] = _text
        converters[array_oid] = array_converter(_text)
        names[oid] = name
        names[array_oid] = "_" + name
    return converters, names


_CONVERTERS, _NAMES = _registry()

BUILTIN_TYPE_NAMES: Final[Mapping[int, str]] = MappingProxyType(_NAMES)
"""OID -> ``pg_type.typname`` of the built-in types this module knows (arrays: ``_x``)."""

BUILTIN_TYPE_OIDS: Final[Mapping[str, int]] = MappingProxyType(
    {name: oid for oid, name in _NAMES.items()}
)
"""``pg_type.typname`` -> OID for the same built-in types."""


def converter_for(type_oid: int) -> Converter:
    """Return the converter for values of ``type_oid``; unknown OIDs give ``str`` values.

    The same OID always returns the same callable, so callers may cache it per column.
    """
    return _CONVERTERS.get(type_oid, _text)


def convert_text(type_oid: int, value: bytes) -> Any:
    """Convert one non-NULL text-format value (a convenience; hot paths cache converters)."""
    return converter_for(type_oid)(value)


# ------------------------------------------------------------------ conversion errors

_SHOWN_TEXT: Final = 80
"""How many characters of an offending value an error message shows."""


def raise_conversion_error(
    schema: TableSchema, cells: Iterable[tuple[Column, Converter, Datum]]
) -> NoReturn:
    """Raise the ValueConversionError of the first cell that does not convert.

    The one message every conversion path gives: column, table, type, offending text.
    """
    for column, convert, value in cells:
        if value is None or value is UNCHANGED_TOAST:
            continue
        type_desc = f"{column.type_name or 'unknown type'} (oid {column.type_oid})"
        where = f"column {column.name!r} of {schema.qualified_name}, type {type_desc}"
        if isinstance(value, BinaryValue):
            raise ValueConversionError(
                f"{where}: value sent in binary format, which is not supported;"
                " start replication with binary 'false'"
            )
        try:
            convert(value)
        except CONVERSION_ERRORS as exc:
            raise ValueConversionError(f"{where}: cannot convert {_show(value)}: {exc}") from exc
    raise ValueConversionError(  # pragma: no cover - converters are deterministic
        f"a value of {schema.qualified_name} failed to convert but none fails on retry"
    )


def _show(value: Datum) -> str:
    """A value's text for an error message, truncated."""
    if not isinstance(value, bytes):
        return repr(value)
    text = value.decode(errors="replace")
    if len(text) > _SHOWN_TEXT:
        return f"{text[:_SHOWN_TEXT]!r}... ({len(value)} bytes)"
    return repr(text)
