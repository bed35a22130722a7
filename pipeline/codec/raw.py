"""Raw-tuple encoding: pgoutput text values straight to Avro, without a Python row.

The reader's general path converts every text value of a tuple to Python
(:meth:`~pipeline.reader.relations.RelationCache.row`), then the codec encodes the
Python values again (:meth:`~pipeline.codec.avro_schema.TableCodec.write_value`).  For
the columns whose Avro type is a *string* that round trip is wasted work: the text
PostgreSQL sends already is the string the codec would write, or one that decodes to
the same value.  :class:`RawTableEncoder` (built once per table version with
:func:`compile_raw`) writes those bytes through and converts only the other columns.

**Invariant.**  For raw tuples that the general path encodes, decoding what this module
writes (:class:`~pipeline.codec.avro_schema.EnvelopeDecoder` /
:class:`~pipeline.codec.avro_schema.KeyDecoder`, i.e. ``decode_value`` / ``decode_key``
of either codec) gives exactly the event and key of the general path::

    decode(raw.value(op, before, kind, after, source, ts_ms))
        == decode(TableCodec.write_value(ChangeEvent(op, source, ts_ms,
                                                     row(before, kind), row(after))))

where ``row`` is ``RelationCache.row`` with the same converters.  Tuples the general
path rejects raise the same errors: :class:`~pipeline.reader.errors.
ValueConversionError` (same message: table, column, type, offending text) for a value
that does not convert, a :class:`~pipeline.codec.errors.EncodeError` for one that does
not fit its Avro type, :class:`~pipeline.reader.errors.SchemaMismatchError` for a tuple
of the wrong width.  Whenever the fast path meets anything unusual it reruns the general
path (convert the rows, ``TableCodec.write_value``), which returns its bytes or raises
its error: the fast path never has to reproduce an error itself.

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
  :class:`~pipeline.reader.pgoutput.BinaryValue` -> the converter path's
  "binary format" ValueConversionError;
* **everything else** (integers, floats, bool, dates and times, bytea, arrays...): the
  column's converter, then :class:`~pipeline.codec.avro_schema.TableCodec`'s own field
  writer (:func:`~pipeline.codec.avro_schema.value_field_writers`).  For the costly ones
  (all but int, float and bool) the column's last text and the bytes written for it are
  memoized: an equal text (``now()`` is constant within a transaction) reuses them, as
  converters are deterministic functions of the text.

An old tuple of kind ``'K'`` carries the key columns only: its other columns are
written as NULL, as the general path writes a row image that lacks them.

One divergence, in the fast path's favour: a ``json`` (not ``jsonb``) value holding a
lone UTF-16 surrogate escape (``"\\ud800"``, which PostgreSQL's ``json`` type accepts)
makes the general path fail (its re-dump cannot be UTF-8 encoded); the fast path writes
the text through, and it decodes to the converter's value.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal, NoReturn

from pipeline.codec.avro_schema import (
    DECIMAL_MARK,
    JSON_MARK,
    AvroSchema,
    FieldWriter,
    TableCodec,
    _write_int,
    compile_table,
    encode_error,
    key_field_writers,
    value_field_writers,
    write_long,
    write_string,
)
from pipeline.events import (
    UNCHANGED_TOAST,
    ChangeEvent,
    Column,
    Op,
    Row,
    SnapshotMarker,
    Source,
    TableSchema,
)
from pipeline.reader.errors import SchemaMismatchError
from pipeline.reader.pgoutput import RawTuple
from pipeline.reader.relations import raise_conversion_error
from pipeline.reader.values import CONVERSION_ERRORS, Converter, converter_for

__all__ = [
    "FramedRawEncoder",
    "OldKind",
    "RawTableEncoder",
    "compile_raw",
]

OldKind = Literal["O", "K"]
"""Kind of an old tuple: ``'O'`` the whole old row, ``'K'`` the key columns only."""

ConverterOf = Callable[[int], Converter]
"""Type OID -> converter (``converter_for``, or ``RelationCache.converter``)."""

# Column kinds: how a non-NULL, non-TOAST value is written.
_CONVERT: Final = 0  # converter, then the codec's field writer
_TEXT: Final = 1  # written through (UTF-8 checked)
_NUMERIC: Final = 2  # written through when plain decimal text
_UUID: Final = 3  # written through when canonical lower-case
_JSON: Final = 4  # written through (UTF-8 checked; long/deep text parsed first)
_MEMO: Final = 5  # converter + field writer, the column's last text memoized

_TEXT_CONVERTER: Final = converter_for(25)
_NUMERIC_CONVERTER: Final = converter_for(1700)
_UUID_CONVERTER: Final = converter_for(2950)
_JSON_CONVERTERS: Final = (converter_for(114), converter_for(3802))
_CHEAP_CONVERTERS: Final = (converter_for(20), converter_for(700), converter_for(16))
"""int, float, bool: cheaper to convert than to memoize (see :data:`_MEMO`)."""

_JSON_MAX_OPEN: Final = 256
"""JSON texts with more ``[``/``{`` than this may nest too deeply for Python: parse them."""
_JSON_SMALL: Final = 2 * _JSON_MAX_OPEN
"""JSON texts up to this size cannot hold more brackets than :data:`_JSON_MAX_OPEN`."""
_DEFAULT_INT_DIGITS: Final = 4300
_HEX_DIGITS: Final = b"0123456789abcdef"
_DASHES: Final = b"----"
_MINUS: Final = 0x2D
_FAST_ERRORS: Final = CONVERSION_ERRORS
"""What the fast path may raise on an unusual value: the general path then decides."""


_INT_BOUNDS: Final[dict[Any, tuple[int, int]]] = {
    write_long: (-(1 << 63), (1 << 63) - 1),
    _write_int: (-(1 << 31), (1 << 31) - 1),
}
"""Avro ``long``/``int`` writers -> the range they accept (outside it they raise)."""
_LSN_MAX: Final = (1 << 63) - 1
_U32: Final = struct.Struct(">I").unpack_from
_SMALL_VARINTS: Final = tuple(
    bytes([(n << 1) if n >= 0 else ((-n << 1) - 1)]) for n in range(-64, 64)
)


def _varint(n: int) -> bytes:
    out = bytearray()
    write_long(out, n)
    return bytes(out)


_SMALL_LENGTHS: Final = 64
"""String lengths below this have a 1-byte varint: prefixes precomputed per column."""


def _kind(convert: Converter, avro_type: AvroSchema) -> int:
    """How a column of converter ``convert`` and Avro type ``avro_type`` is written."""
    if isinstance(avro_type, str):
        if avro_type == "string" and convert is _TEXT_CONVERTER:
            return _TEXT
    elif isinstance(avro_type, dict) and avro_type.get("type") == "string":
        mark = avro_type.get("connect.name")
        logical = avro_type.get("logicalType")
        if mark == DECIMAL_MARK and logical is None and convert is _NUMERIC_CONVERTER:
            return _NUMERIC
        if mark == JSON_MARK and logical is None and convert in _JSON_CONVERTERS:
            return _JSON
        if mark is None and logical == "uuid" and convert is _UUID_CONVERTER:
            return _UUID
    return _CONVERT


# One step per column: (kind, null_tag, value_tag, toast_tag, convert, write, prefixes, memo)
# ``prefixes[n]`` = value_tag + varint(n), for a written-through string of n < 64 bytes;
# ``memo[0]`` = (last text, its encoded field) of a _MEMO column.
_Step = tuple[
    int,
    bytes,
    bytes,
    bytes,
    Converter,
    Callable[[bytearray, Any], None],
    tuple[bytes, ...],
    list[tuple[object, bytes]],
]


def _step(field: FieldWriter, convert: Converter) -> _Step:
    kind = _kind(convert, field.avro_type)
    if kind == _CONVERT and convert not in _CHEAP_CONVERTERS:
        # Timestamps, dates, arrays...: costly to convert, and often equal from row to
        # row (``now()`` is constant in a transaction): the same text encodes the same.
        kind = _MEMO
    tag = field.value_tag
    prefixes = tuple(tag + _varint(n) for n in range(_SMALL_LENGTHS))
    memo: list[tuple[object, bytes]] = [(None, b"")]
    return (kind, field.null_tag, tag, field.toast_tag, convert, field.write, prefixes, memo)


def _row_env(steps: tuple[_Step, ...], json_max: int) -> dict[str, Any]:
    """The names the generated row writers use: shared constants, per-column tags."""
    env: dict[str, Any] = {
        "toast": UNCHANGED_TOAST,
        "small": _SMALL_LENGTHS,
        "max_open": _JSON_MAX_OPEN,
        "small_json": _JSON_SMALL,
        "json_max": json_max,
        "hex_digits": _HEX_DIGITS,
        "dashes": _DASHES,
        "minus": _MINUS,
        "write_long": write_long,
        "small_varints": _SMALL_VARINTS,
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


def _value_lines(i: int, step: _Step, indent: int) -> list[str]:
    """Source lines writing column ``i``'s non-NULL, non-TOAST value ``v{i}``."""
    kind, convert, write = step[0], step[4], step[5]
    v = f"v{i}"
    lines: list[str]
    bounds = _INT_BOUNDS.get(write) if convert is int else None
    if kind == _CONVERT and bounds is not None:
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
    elif kind == _CONVERT:
        lines = [
            f"x = C{i}({v})",  # a BinaryValue raises: see module doc
            "if x is None:",  # JSON null
            f"    out += N{i}",
            "else:",
            f"    out += V{i}",
            f"    W{i}(out, x)",
        ]
    elif kind == _MEMO:
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
        if kind == _TEXT:
            lines = [
                f"if not {v}.isascii():",  # a BinaryValue raises AttributeError
                f"    {v}.decode()",
                "if True:",
            ]
        elif kind == _NUMERIC:
            lines = [
                f"digits = {v}[1:] if {v}[0] == minus else {v}",
                'if not digits.replace(b".", b"", 1).isdigit():',
                f"    out += V{i}",
                f"    W{i}(out, C{i}({v}))",
                "else:",
            ]
        elif kind == _UUID:
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


def _row_writer(steps: tuple[_Step, ...], json_max: int) -> Callable[[bytearray, RawTuple], None]:
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


def _insert_row_writer(
    steps: tuple[_Step, ...], json_max: int
) -> Callable[[bytes, bytearray], RawTuple | None]:
    """Parse an Insert's pgoutput payload and write its new row in one pass.

    ``(payload, out)``: reads the TupleData after ``'I'``, the relation id and ``'N'``
    (as :func:`~pipeline.reader.pgoutput.decode_insert`), appends the ``Value`` record
    (as :func:`_row_writer`) and returns the tuple -- or ``None`` for anything unusual
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


@dataclass(frozen=True, slots=True)
class _Column:
    """What the conversion/diagnosis paths need of one column."""

    index: int
    column: Column
    convert: Converter


class RawTableEncoder:
    """Avro bodies (no header) of one table version's events and keys, from raw tuples.

    Compiled once per (:class:`TableSchema`, topic prefix, converters) with
    :func:`compile_raw`; thread-safe.  Invariant (module doc): the decoded event and key
    are exactly those of the general path (``RelationCache.row`` + ``TableCodec``), and
    tuples the general path rejects raise its errors.
    """

    __slots__ = (
        "_columns",
        "_head",
        "_insert_row",
        "_int_key",
        "_json_max",
        "_key_columns",
        "_key_steps",
        "_mask",
        "_names",
        "_tail",
        "_width",
        "_write_row",
        "codec",
        "table_schema",
    )

    def __init__(self, codec: TableCodec, converter_of: ConverterOf = converter_for) -> None:
        self.codec = codec
        self.table_schema = schema = codec.table_schema
        columns = schema.columns
        converters = tuple(converter_of(c.type_oid) for c in columns)
        fields = value_field_writers(codec)
        if [f.column for f in fields] != [c.name for c in columns]:  # pragma: no cover
            raise ValueError(f"the value schema of {schema.qualified_name} does not match it")
        self._width = len(columns)
        self._columns = tuple(_Column(i, c, converters[i]) for i, c in enumerate(columns))
        self._names = {c.name: col for c, col in zip(columns, self._columns, strict=True)}
        self._key_columns = tuple(col for col in self._columns if col.column.is_key)
        self._mask = tuple(c.is_key for c in columns)
        max_digits = sys.get_int_max_str_digits()
        self._json_max = max_digits if max_digits > 0 else sys.maxsize
        steps = tuple(_step(f, conv) for f, conv in zip(fields, converters, strict=True))
        self._write_row = _row_writer(steps, self._json_max)
        self._insert_row = _insert_row_writer(steps, self._json_max)
        by_name = {c.name: i for i, c in enumerate(columns)}
        lengths = tuple(_varint(n) for n in range(_SMALL_LENGTHS))
        self._key_steps = tuple(
            (i, _kind(converters[i], f.avro_type), converters[i], f.write, lengths)
            for f in key_field_writers(codec)
            for i in (by_name[f.column],)
        )
        self._int_key: tuple[int, int, int] | None = None
        if len(self._key_steps) == 1:
            index, kind, convert, write, _ = self._key_steps[0]
            bounds = _INT_BOUNDS.get(write)
            if kind == _CONVERT and convert is int and bounds is not None:
                self._int_key = (index, *bounds)
        # Envelope tail memos: (key, bytes), swapped whole (atomic for threads).
        self._head: tuple[Any, bytes] = ((), b"")
        self._tail: tuple[Any, bytes] = ((), b"")

    # ------------------------------------------------------------------ values

    def value(
        self,
        op: Op,
        before: RawTuple | None,
        before_kind: OldKind | None,
        after: RawTuple | None,
        source: Source,
        ts_ms: int,
    ) -> bytes:
        """The Avro body of the envelope of a change (see :meth:`write_value`)."""
        out = bytearray()
        self.write_value(out, op, before, before_kind, after, source, ts_ms)
        return bytes(out)

    def write_value(
        self,
        out: bytearray,
        op: Op,
        before: RawTuple | None,
        before_kind: OldKind | None,
        after: RawTuple | None,
        source: Source,
        ts_ms: int,
    ) -> None:
        """Append the Avro body of a change's envelope to ``out``.

        ``before`` is the old tuple (``before_kind`` ``'O'`` whole row, ``'K'`` key columns
        only; ``None`` means ``'O'``), ``after`` the new one.  Decodes to exactly
        ``ChangeEvent(op, source, ts_ms, RelationCache.row(before, kind=before_kind),
        RelationCache.row(after))`` as :meth:`TableCodec.write_value` encodes it.

        Raises ValueConversionError, SchemaMismatchError or EncodeError (see the module).
        """
        self._write(
            out, op, before, before_kind, after, source.db, source.schema, source.table,
            source.lsn, source.tx_id, source.ts_ms, source.snapshot, ts_ms, source,
        )  # fmt: skip

    def write_event(
        self,
        out: bytearray,
        op: Op,
        before: RawTuple | None,
        before_kind: OldKind | None,
        after: RawTuple | None,
        db: str,
        lsn: int,
        tx_id: int | None,
        commit_ts_ms: int,
        snapshot: SnapshotMarker,
        ts_ms: int,
    ) -> None:
        """:meth:`write_value` with ``source = Source(db, table_schema.schema,
        table_schema.table, lsn, tx_id, commit_ts_ms, snapshot)``: the same bytes, without
        building a :class:`Source` per event (the reader's hot path)."""
        schema = self.table_schema
        self._write(
            out, op, before, before_kind, after, db, schema.schema, schema.table, lsn, tx_id,
            commit_ts_ms, snapshot, ts_ms, None,
        )  # fmt: skip

    def _write(
        self,
        out: bytearray,
        op: Op,
        before: RawTuple | None,
        before_kind: OldKind | None,
        after: RawTuple | None,
        db: str,
        schema: str,
        table: str,
        lsn: int,
        tx_id: int | None,
        commit_ts_ms: int,
        snapshot: SnapshotMarker,
        ts_ms: int,
        source: Source | None,
    ) -> None:
        """The envelope: the rows, then ``op``, ``ts_ms`` and ``source`` in
        :func:`~pipeline.codec.avro_schema.value_schema`'s field order.  The parts of the
        tail that repeat from event to event (all but the LSN, within a transaction) are
        memoized.  Anything unusual in the rows: the general path (with ``source``, or
        one built from the fields)."""
        width = self._width
        if after is not None and len(after) != width:
            self._mismatch(after)
        if before is not None and len(before) != width:
            self._mismatch(before)
        start = len(out)
        try:
            if before is None:
                out += b"\x00"
            else:
                out += b"\x02"
                if before_kind == "K":
                    before = self._masked(before)
                self._write_row(out, before)
            if after is None:
                out += b"\x00"
            else:
                out += b"\x02"
                self._write_row(out, after)
        except _FAST_ERRORS:
            del out[start:]
            if source is None:
                source = Source(db, schema, table, lsn, tx_id, commit_ts_ms, snapshot)
            self._write_general(out, op, before, before_kind, after, source, ts_ms)
            return
        self._write_tail(out, op, ts_ms, db, schema, table, lsn, tx_id, commit_ts_ms, snapshot)

    def insert_event(
        self,
        payload: bytes,
        header: bytes,
        db: str,
        lsn: int,
        tx_id: int | None,
        commit_ts_ms: int,
        snapshot: SnapshotMarker,
        ts_ms: int,
    ) -> tuple[bytes, RawTuple] | None:
        """An Insert's pgoutput payload straight to its ``'c'`` event, in one pass.

        ``(header + the body write_event would write, the new tuple decode_insert
        would return)``, or ``None`` when the caller must take the general way
        (``decode_insert``, then :meth:`write_event`, which decodes, writes or raises):
        another width, a binary value, a malformed message, a value the fast writer
        does not handle.  Never raises for the payload's sake.
        """
        out = bytearray(header)
        out += b"\x00\x02"  # before: null; after: the Value record
        try:
            raw = self._insert_row(payload, out)
        except _FAST_ERRORS:
            return None
        if raw is None:
            return None
        schema = self.table_schema
        self._write_tail(
            out, "c", ts_ms, db, schema.schema, schema.table, lsn, tx_id, commit_ts_ms, snapshot
        )
        return bytes(out), raw

    def _write_tail(
        self,
        out: bytearray,
        op: Op,
        ts_ms: int,
        db: str,
        schema: str,
        table: str,
        lsn: int,
        tx_id: int | None,
        commit_ts_ms: int,
        snapshot: SnapshotMarker,
    ) -> None:
        """``op``, ``ts_ms`` and ``source``; the parts that repeat from event to event
        (all but the LSN, within a transaction) are memoized."""
        head = self._head
        if head[0] != (op, ts_ms, db, schema, table):
            buf = bytearray()
            write_string(buf, op)
            write_long(buf, ts_ms)
            write_string(buf, db)
            write_string(buf, schema)
            write_string(buf, table)
            head = self._head = ((op, ts_ms, db, schema, table), bytes(buf))
        out += head[1]
        if 0 <= lsn <= _LSN_MAX:  # an LSN is a u64 < 2**63 in practice: its varint inline
            z = lsn << 1
            while z > 0x7F:
                out.append((z & 0x7F) | 0x80)
                z >>= 7
            out.append(z)
        else:
            write_long(out, lsn)
        tail = self._tail
        if tail[0] != (tx_id, commit_ts_ms, snapshot):
            buf = bytearray()
            if tx_id is None:
                buf += b"\x00"
            else:
                buf += b"\x02"
                write_long(buf, tx_id)
            write_long(buf, commit_ts_ms)
            write_string(buf, snapshot)
            tail = self._tail = ((tx_id, commit_ts_ms, snapshot), bytes(buf))
        out += tail[1]

    def _masked(self, raw: RawTuple) -> RawTuple:
        """A ``'K'`` tuple with its non-key columns NULL (the general path drops them)."""
        return tuple(v if key else None for v, key in zip(raw, self._mask, strict=True))

    # ------------------------------------------------------------------ keys

    def key(self, raw: RawTuple) -> bytes:
        """The Avro body of the key record (key columns = ``Column.is_key``) of ``raw``.

        Same decoded key as :meth:`TableCodec.write_key` of the key columns converted
        from ``raw`` (any tuple kind: the key columns are in every kind).  A NULL or
        unchanged-TOAST key value raises the general path's EncodeError.
        """
        if len(raw) != self._width:
            self._mismatch(raw)
        int_key = self._int_key
        if int_key is not None:  # one integer key column (the usual case)
            index, low, high = int_key
            v = raw[index]
            if v.__class__ is bytes:
                try:
                    n = int(v)
                except _FAST_ERRORS:
                    return self._general_key(raw)
                if -64 <= n < 64:
                    return _SMALL_VARINTS[n + 64]
                if low <= n <= high:
                    out = bytearray()
                    z = (n << 1) ^ (n >> 63)
                    while z > 0x7F:
                        out.append((z & 0x7F) | 0x80)
                        z >>= 7
                    out.append(z)
                    return bytes(out)
            return self._general_key(raw)
        out = bytearray()
        toast = UNCHANGED_TOAST
        try:
            for index, kind, convert, write, prefixes in self._key_steps:
                v = raw[index]
                if v is None or v is toast:
                    return self._general_key(raw)
                if kind == _CONVERT:
                    x = convert(v)  # type: ignore[arg-type]  # BinaryValue raises: fallback
                    if x is None:
                        return self._general_key(raw)
                    write(out, x)
                    continue
                data: bytes = v  # type: ignore[assignment]  # BinaryValue fails: fallback
                if kind in (_TEXT, _JSON):
                    if len(data) > _JSON_SMALL and kind == _JSON:
                        return self._general_key(raw)
                    if not data.isascii():
                        data.decode()
                elif kind == _NUMERIC:
                    digits = data[1:] if data[0] == _MINUS else data
                    if not digits.replace(b".", b"", 1).isdigit():
                        return self._general_key(raw)
                elif len(data) != 36 or data.translate(None, _HEX_DIGITS) != _DASHES:
                    return self._general_key(raw)
                size = len(data)
                if size < _SMALL_LENGTHS:
                    out += prefixes[size]
                else:
                    write_long(out, size)
                out += data
        except _FAST_ERRORS:
            return self._general_key(raw)
        return bytes(out)

    def key_row(self, raw: RawTuple) -> Row:
        """The key columns of ``raw`` as Python values (``RelationCache.row(kind='K')``)."""
        if len(raw) != self._width:
            self._mismatch(raw)
        return self._convert(raw, self._key_columns)

    def column_value(self, raw: RawTuple, name: str, kind: Literal["N", "O", "K"] = "N") -> Any:
        """The Python value of column ``name`` in ``raw``, as ``RelationCache.row`` gives it.

        ``None`` for NULL (and, in a ``'K'`` tuple, for a non-key column: absent there);
        :data:`~pipeline.events.UNCHANGED_TOAST` for an unchanged TOASTed value.  Raises
        KeyError for an unknown column, ValueConversionError for a bad value.
        """
        if len(raw) != self._width:
            self._mismatch(raw)
        column = self._names[name]
        if kind == "K" and not column.column.is_key:
            return None
        return self._convert(raw, (column,))[name]

    def row(self, raw: RawTuple, kind: Literal["N", "O", "K"] = "N") -> Row:
        """The whole row image, exactly as ``RelationCache.row(..., kind=kind)`` gives it."""
        if len(raw) != self._width:
            self._mismatch(raw)
        return self._convert(raw, self._key_columns if kind == "K" else self._columns)

    def fill_toast(self, after: RawTuple, before: RawTuple, before_kind: OldKind) -> RawTuple:
        """``after`` with its unchanged-TOAST values taken from the old tuple ``before``.

        The raw counterpart of the reader's ``_fill_toast(after_row, before_row)``: a
        value is taken from ``before`` only where the old row image has the column (every
        column for ``'O'``, the key columns for ``'K'``); elsewhere it stays unchanged
        TOAST.
        """
        toast = UNCHANGED_TOAST
        if not any(v is toast for v in after):
            return after
        if len(after) != self._width:
            self._mismatch(after)
        if len(before) != self._width:
            self._mismatch(before)
        if before_kind == "K":
            before = tuple(b if key else toast for b, key in zip(before, self._mask, strict=True))
        return tuple(b if a is toast else a for a, b in zip(after, before, strict=True))

    # ------------------------------------------------------------------ general path

    def _convert(self, raw: RawTuple, columns: tuple[_Column, ...]) -> Row:
        toast = UNCHANGED_TOAST
        try:
            return {
                c.column.name: v if v is None or v is toast else c.convert(v)  # type: ignore[arg-type]
                for c in columns
                for v in (raw[c.index],)
            }
        except CONVERSION_ERRORS:
            pass
        self._raise_conversion_error(raw, columns)

    def _write_general(
        self,
        out: bytearray,
        op: Op,
        before: RawTuple | None,
        before_kind: OldKind | None,
        after: RawTuple | None,
        source: Source,
        ts_ms: int,
    ) -> None:
        """The general path: convert (new row first, as the reader does), then encode."""
        after_row = None if after is None else self.row(after)
        before_row = None if before is None else self.row(before, before_kind or "O")
        event = ChangeEvent(op, source, ts_ms, before_row, after_row)
        try:
            self.codec.write_value(out, event)
        except (ValueError, TypeError, AttributeError, OverflowError) as exc:
            raise encode_error(self.table_schema, f"{op!r} event", exc) from exc

    def _general_key(self, raw: RawTuple) -> bytes:
        key_row = self.key_row(raw)
        out = bytearray()
        try:
            self.codec.write_key(out, key_row)
        except (ValueError, TypeError, AttributeError, OverflowError) as exc:
            raise encode_error(self.table_schema, "key", exc) from exc
        return bytes(out)

    def _mismatch(self, raw: RawTuple) -> NoReturn:
        schema = self.table_schema
        raise SchemaMismatchError(
            f"a tuple of {schema.qualified_name} (relation id {schema.relation_id}) has"
            f" {len(raw)} columns but its newest Relation message has {self._width}:"
            " a Relation message was lost or applied out of order"
        )

    def _raise_conversion_error(self, raw: RawTuple, columns: tuple[_Column, ...]) -> NoReturn:
        """The ValueConversionError of the first column that does not convert.

        Same message as ``RelationCache.row``'s (one shared function).
        """
        raise_conversion_error(
            self.table_schema, ((c.column, c.convert, raw[c.index]) for c in columns)
        )


def compile_raw(
    table_schema: TableSchema, topic_prefix: str, converter_of: ConverterOf = converter_for
) -> RawTableEncoder:
    """A :class:`RawTableEncoder` for ``table_schema`` under ``topic_prefix``.

    ``converter_of`` must be the converter lookup of the rows it stands in for (the
    reader's ``RelationCache.converter``; the default is right for built-in types).
    """
    return RawTableEncoder(compile_table(table_schema, topic_prefix), converter_of)


class FramedRawEncoder:
    """A :class:`RawTableEncoder` with a codec's message headers: Kafka key/value bytes.

    Made by ``SingleObjectCodec.raw_encoder`` / ``ConfluentRegistryCodec.raw_encoder``
    once the table's schemas are registered; :meth:`value` / :meth:`key` return exactly
    what ``encode_value`` / ``encode_key`` would for the converted rows (same header,
    body decoding to the same event/key).  Thread-safe.
    """

    __slots__ = ("_key_header", "_value_header", "table")

    def __init__(self, table: RawTableEncoder, key_header: bytes, value_header: bytes) -> None:
        self.table = table
        self._key_header = key_header
        self._value_header = value_header

    @property
    def table_schema(self) -> TableSchema:
        return self.table.table_schema

    def value(
        self,
        op: Op,
        before: RawTuple | None,
        before_kind: OldKind | None,
        after: RawTuple | None,
        source: Source,
        ts_ms: int,
    ) -> bytes:
        """Header + envelope body (see :meth:`RawTableEncoder.write_value`)."""
        out = bytearray(self._value_header)
        self.table.write_value(out, op, before, before_kind, after, source, ts_ms)
        return bytes(out)

    def event(
        self,
        op: Op,
        before: RawTuple | None,
        before_kind: OldKind | None,
        after: RawTuple | None,
        db: str,
        lsn: int,
        tx_id: int | None,
        commit_ts_ms: int,
        snapshot: SnapshotMarker,
        ts_ms: int,
    ) -> bytes:
        """Header + envelope body (see :meth:`RawTableEncoder.write_event`)."""
        out = bytearray(self._value_header)
        table = self.table
        schema = table.table_schema
        table._write(
            out, op, before, before_kind, after, db, schema.schema, schema.table, lsn, tx_id,
            commit_ts_ms, snapshot, ts_ms, None,
        )  # fmt: skip
        return bytes(out)

    def insert_event(
        self,
        payload: bytes,
        db: str,
        lsn: int,
        tx_id: int | None,
        commit_ts_ms: int,
        snapshot: SnapshotMarker,
        ts_ms: int,
    ) -> tuple[bytes, RawTuple] | None:
        """Value bytes and new tuple of an Insert payload (see
        :meth:`RawTableEncoder.insert_event`), or ``None``."""
        return self.table.insert_event(
            payload, self._value_header, db, lsn, tx_id, commit_ts_ms, snapshot, ts_ms
        )

    def key(self, raw: RawTuple) -> bytes:
        """Header + key body (see :meth:`RawTableEncoder.key`)."""
        return self._key_header + self.table.key(raw)

    def key_row(self, raw: RawTuple) -> Row:
        """The key columns of ``raw`` as Python values."""
        return self.table.key_row(raw)

    def fill_toast(self, after: RawTuple, before: RawTuple, before_kind: OldKind) -> RawTuple:
        """See :meth:`RawTableEncoder.fill_toast`."""
        return self.table.fill_toast(after, before, before_kind)

    def column_value(self, raw: RawTuple, name: str, kind: Literal["N", "O", "K"] = "N") -> Any:
        """One column's Python value (see :meth:`RawTableEncoder.column_value`)."""
        return self.table.column_value(raw, name, kind)
