"""The generated row writers of :mod:`pipeline.codec.raw`: raw tuple -> Avro ``Value``.

Per table version, :func:`raw_row_writer` (a raw tuple) and :func:`insert_row_writer`
(an Insert's pgoutput payload, parsed in the same pass) are generated as straight-line
Python, one block per column specialised to its kind (:func:`column_kind`).  They raise
one of :data:`FAST_ERRORS` on any value they do not handle themselves; the raw encoder
then takes the general path (module doc of :mod:`pipeline.codec.raw`).

Per column, compiled once:

* **text** (``text``, ``varchar``, ``bpchar``, ``name``, ``"char"``, ``xml``, ``inet``,
  ``interval``... and unknown/user types: converter ``bytes.decode``, Avro ``string``):
  written through after a UTF-8 check (``isascii()``, else ``decode()``): the bytes the
  general path writes are the same;
* **numeric** (Avro decimal string): written through when it is plain decimal text
  (``-?digits[.digits]``, always the case for PostgreSQL's output).  The decoder's
  ``Decimal(text)`` is the converter's ``Decimal(text)``; the general path writes
  ``str(Decimal(text))``, which may differ in spelling (``1E-7`` for ``0.0000001``) but
  decodes to the identical ``Decimal``.  ``NaN``/``Infinity`` take the converter path;
* **uuid** (Avro ``string``/``uuid``): written through when it is 32 lower-case hex
  digits and 4 dashes (PostgreSQL's output); the decoded ``UUID`` is the same;
* **json/jsonb** (Avro string marked ``io.debezium.data.Json``): written through after a
  UTF-8 check.  PostgreSQL only outputs valid JSON, and the codec decodes JSON text with
  ``json.loads(parse_float=Decimal)``, the reader's own parser, so the decoded value is
  the converter's: the general path's compact re-dump only respells it.  The JSON text
  is trusted, not parsed, except where valid PostgreSQL JSON can fail Python's parser:
  a text longer than Python's integer-digit limit (4300 by default), or one that may
  nest deeply (over 256 ``[``/``{``), is parsed with the converter first;
* **NULL** -> the null branch; **unchanged TOAST** -> the ``Unavailable`` branch; a
  :class:`~pipeline.values.BinaryValue` -> the converter path's
  "binary format" ValueConversionError;
* **everything else** (integers, floats, bool, dates and times, bytea, arrays...): the
  column's converter, then :class:`~pipeline.codec.table_codec.TableCodec`'s own field
  writer (:func:`~pipeline.codec.table_codec.value_field_writers`).  For the costly ones
  (all but int, float and bool) the column's last text and the bytes written for it are
  memoized: an equal text (``now()`` is constant within a transaction) reuses them, as
  converters are deterministic functions of the text.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, Final

from pipeline.codec.avro_schema import DECIMAL_MARK, JSON_MARK, AvroSchema
from pipeline.codec.avro_writer import FieldWriter, write_int, write_long
from pipeline.events import UNCHANGED_TOAST
from pipeline.values import CONVERSION_ERRORS, Converter, RawTuple, converter_for

# Column kinds: how a non-NULL, non-TOAST value is written.
KIND_CONVERT: Final = 0  # converter, then the codec's field writer
KIND_TEXT: Final = 1  # written through (UTF-8 checked)
KIND_NUMERIC: Final = 2  # written through when plain decimal text
KIND_UUID: Final = 3  # written through when canonical lower-case
KIND_JSON: Final = 4  # written through (UTF-8 checked; long/deep text parsed first)
KIND_MEMO: Final = 5  # converter + field writer, the column's last text memoized

_TEXT_CONVERTER: Final = converter_for(25)
_NUMERIC_CONVERTER: Final = converter_for(1700)
_UUID_CONVERTER: Final = converter_for(2950)
_JSON_CONVERTERS: Final = (converter_for(114), converter_for(3802))
_CHEAP_CONVERTERS: Final = (converter_for(20), converter_for(700), converter_for(16))
"""int, float, bool: cheaper to convert than to memoize (see :data:`KIND_MEMO`)."""

_JSON_MAX_OPEN: Final = 256
"""JSON texts with more ``[``/``{`` than this may nest too deeply for Python: parse them."""
JSON_SMALL: Final = 2 * _JSON_MAX_OPEN
"""JSON texts up to this size cannot hold more brackets than :data:`_JSON_MAX_OPEN`."""
_DEFAULT_INT_DIGITS: Final = 4300
HEX_DIGITS: Final = b"0123456789abcdef"
DASHES: Final = b"----"
MINUS: Final = 0x2D
FAST_ERRORS: Final = CONVERSION_ERRORS
"""What the fast path may raise on an unusual value: the general path then decides."""


INT_BOUNDS: Final[dict[Any, tuple[int, int]]] = {
    write_long: (-(1 << 63), (1 << 63) - 1),
    write_int: (-(1 << 31), (1 << 31) - 1),
}
"""Avro ``long``/``int`` writers -> the range they accept (outside it they raise)."""

_U32: Final = struct.Struct(">I").unpack_from
SMALL_VARINTS: Final = tuple(
    bytes([(n << 1) if n >= 0 else ((-n << 1) - 1)]) for n in range(-64, 64)
)


def varint(n: int) -> bytes:
    out = bytearray()
    write_long(out, n)
    return bytes(out)


SMALL_LENGTHS: Final = 64
"""String lengths below this have a 1-byte varint: prefixes precomputed per column."""


def column_kind(convert: Converter, avro_type: AvroSchema) -> int:
    """How a column of converter ``convert`` and Avro type ``avro_type`` is written."""
    if isinstance(avro_type, str):
        if avro_type == "string" and convert is _TEXT_CONVERTER:
            return KIND_TEXT
    elif isinstance(avro_type, dict) and avro_type.get("type") == "string":
        mark = avro_type.get("connect.name")
        logical = avro_type.get("logicalType")
        if mark == DECIMAL_MARK and logical is None and convert is _NUMERIC_CONVERTER:
            return KIND_NUMERIC
        if mark == JSON_MARK and logical is None and convert in _JSON_CONVERTERS:
            return KIND_JSON
        if mark is None and logical == "uuid" and convert is _UUID_CONVERTER:
            return KIND_UUID
    return KIND_CONVERT


# One step per column: (kind, null_tag, value_tag, toast_tag, convert, write, prefixes, memo)
# ``prefixes[n]`` = value_tag + varint(n), for a written-through string of n < 64 bytes;
# ``memo[0]`` = (last text, its encoded field) of a KIND_MEMO column.
Step = tuple[
    int,
    bytes,
    bytes,
    bytes,
    Converter,
    Callable[[bytearray, Any], None],
    tuple[bytes, ...],
    list[tuple[object, bytes]],
]


def column_step(field: FieldWriter, convert: Converter) -> Step:
    kind = column_kind(convert, field.avro_type)
    if kind == KIND_CONVERT and convert not in _CHEAP_CONVERTERS:
        # Timestamps, dates, arrays...: costly to convert, and often equal from row to
        # row (``now()`` is constant in a transaction): the same text encodes the same.
        kind = KIND_MEMO
    tag = field.value_tag
    prefixes = tuple(tag + varint(n) for n in range(SMALL_LENGTHS))
    memo: list[tuple[object, bytes]] = [(None, b"")]
    return (kind, field.null_tag, tag, field.toast_tag, convert, field.write, prefixes, memo)


def _row_env(steps: tuple[Step, ...], json_max: int) -> dict[str, Any]:
    """The names the generated row writers use: shared constants, per-column tags."""
    env: dict[str, Any] = {
        "toast": UNCHANGED_TOAST,
        "small": SMALL_LENGTHS,
        "max_open": _JSON_MAX_OPEN,
        "small_json": JSON_SMALL,
        "json_max": json_max,
        "hex_digits": HEX_DIGITS,
        "dashes": DASHES,
        "minus": MINUS,
        "write_long": write_long,
        "small_varints": SMALL_VARINTS,
    }
    for i, (_, null_tag, value_tag, toast_tag, convert, write, prefixes, memo) in enumerate(steps):
        env.update(
            {
                f"N{i}": null_tag,
                f"V{i}": value_tag,
                f"T{i}": toast_tag,
                f"C{i}": convert,
                f"W{i}": write,
                f"P{i}": prefixes,
                f"M{i}": memo,
            }
        )
    return env


def _value_lines(i: int, step: Step, indent: int) -> list[str]:
    """Source lines writing column ``i``'s non-NULL, non-TOAST value ``v{i}``."""
    kind, convert, write = step[0], step[4], step[5]
    v = f"v{i}"
    lines: list[str]
    bounds = INT_BOUNDS.get(write) if convert is int else None
    if kind == KIND_CONVERT and bounds is not None:
        # An integer column: the zig-zag varint inline (the writer only for the
        # out-of-range value, to raise its error).
        lines = [
            f"x = C{i}({v})",
            f"out += V{i}",
            "if -64 <= x < 64:",
            "    out += small_varints[x + 64]",
            f"elif {bounds[0]} <= x <= {bounds[1]}:",
            "    z = (x << 1) ^ (x >> 63)",
            "    while z > 0x7F:",
            "        out.append((z & 0x7F) | 0x80)",
            "        z >>= 7",
            "    out.append(z)",
            "else:",
            f"    W{i}(out, x)",
        ]
    elif kind == KIND_CONVERT:
        lines = [
            f"x = C{i}({v})",  # a BinaryValue raises: see module doc
            "if x is None:",  # JSON null
            f"    out += N{i}",
            "else:",
            f"    out += V{i}",
            f"    W{i}(out, x)",
        ]
    elif kind == KIND_MEMO:
        lines = [
            f"last = M{i}[0]",
            f"if {v} == last[0]:",  # same text, same bytes (converters are deterministic)
            "    out += last[1]",
            "else:",
            "    start = len(out)",
            f"    x = C{i}({v})",
            "    if x is None:",
            f"        out += N{i}",
            "    else:",
            f"        out += V{i}",
            f"        W{i}(out, x)",
            f"    M{i}[0] = ({v}, bytes(out[start:]))",  # one swap: thread-safe
        ]
    else:
        through = [
            f"    size = len({v})",
            "    if size < small:",
            f"        out += P{i}[size]",
            "    else:",
            f"        out += V{i}",
            "        write_long(out, size)",
            f"    out += {v}",
        ]
        if kind == KIND_TEXT:
            lines = [
                f"if not {v}.isascii():",  # a BinaryValue raises AttributeError
                f"    {v}.decode()",
                "if True:",
            ]
        elif kind == KIND_NUMERIC:
            lines = [
                f"digits = {v}[1:] if {v}[0] == minus else {v}",
                'if not digits.replace(b".", b"", 1).isdigit():',
                f"    out += V{i}",
                f"    W{i}(out, C{i}({v}))",
                "else:",
            ]
        elif kind == KIND_UUID:
            lines = [
                f"if len({v}) != 36 or {v}.translate(None, hex_digits) != dashes:",
                f"    out += V{i}",
                f"    W{i}(out, C{i}({v}))",
                "else:",
            ]
        else:  # JSON
            lines = [
                f"size = len({v})",
                "if size > small_json and (",
                f'    size > json_max or {v}.count(b"[") + {v}.count(b"{{") > max_open',
                "):",
                f"    C{i}({v})",  # may not parse in Python: validate (raises if so)
                f"elif not {v}.isascii():",
                f"    {v}.decode()",
                "if True:",
            ]
        lines += through
    pad = " " * indent
    return [pad + line for line in lines]


def _compile(lines: list[str], env: dict[str, Any], name: str, what: str) -> Any:
    exec(compile("\n".join(lines) + "\n", what, "exec"), env)
    return env[name]


def raw_row_writer(steps: tuple[Step, ...], json_max: int) -> Callable[[bytearray, RawTuple], None]:
    """The fast writer of one ``Value`` record from a raw tuple (see the module doc).

    Generated once per table version as straight-line Python (one block per column,
    specialised to the column's kind), so the per-row cost is the columns' own work, not
    a loop over step tuples.  The caller checks the tuple's width first.

    Raises one of CONVERSION_ERRORS on any value it does not handle itself.
    """
    lines = ["def write_row(out, raw):"]
    if steps:
        lines.append("    " + "".join(f"v{i}, " for i in range(len(steps))) + "= raw")
    else:
        lines.append("    pass")
    for i, step in enumerate(steps):
        lines += [
            f"    if v{i} is None:",
            f"        out += N{i}",
            f"    elif v{i} is toast:",
            f"        out += T{i}",
            "    else:",
            *_value_lines(i, step, 8),
        ]
    writer: Callable[[bytearray, RawTuple], None] = _compile(
        lines, _row_env(steps, json_max), "write_row", "<raw row writer>"
    )
    return writer


def insert_row_writer(
    steps: tuple[Step, ...], json_max: int
) -> Callable[[bytes, bytearray], RawTuple | None]:
    """Parse an Insert's pgoutput payload and write its new row in one pass.

    ``(payload, out)``: reads the TupleData after ``'I'``, the relation id and ``'N'``
    (as :func:`~pipeline.reader.pgoutput.decode_insert`), appends the ``Value`` record
    (as :func:`raw_row_writer`) and returns the tuple -- or ``None`` for anything unusual
    (another width, a binary value, a malformed message), leaving ``out`` to be thrown
    away.  Raises one of CONVERSION_ERRORS on any value it does not handle itself.
    """
    width = len(steps)
    lines = [
        "def parse_write(buf, out):",
        "    try:",
        f"        if buf[5] != 0x4E or buf[6] != {width >> 8} or buf[7] != {width & 0xFF}:",
        "            return None",
        "        off = 8",
    ]
    for i, step in enumerate(steps):
        lines += [
            "        kind = buf[off]",
            "        if kind == 0x74:",
            "            (n,) = u32(buf, off + 1)",
            "            off += 5",
            "            end = off + n",
            f"            v{i} = buf[off:end]",
            "            off = end",
            *_value_lines(i, step, 12),
            "        elif kind == 0x6E:",
            f"            v{i} = None",
            f"            out += N{i}",
            "            off += 1",
            "        elif kind == 0x75:",
            f"            v{i} = toast",
            f"            out += T{i}",
            "            off += 1",
            "        else:",
            "            return None",
        ]
    lines += [
        "    except (IndexError, struct_error):",
        "        return None",
        "    if off != len(buf):",  # a short last value, or trailing bytes
        "        return None",
        "    return (" + "".join(f"v{i}, " for i in range(width)) + ")",
    ]
    env = _row_env(steps, json_max)
    env.update({"u32": _U32, "struct_error": struct.error})
    parse_write: Callable[[bytes, bytearray], RawTuple | None] = _compile(
        lines, env, "parse_write", "<raw insert writer>"
    )
    return parse_write
