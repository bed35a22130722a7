"""Raw-tuple encoding: pgoutput text values straight to Avro, without a Python row.

The reader's general path converts every text value of a tuple to Python
(:meth:`~pipeline.reader.relations.RelationCache.row`), then the codec encodes the
Python values again (:meth:`~pipeline.codec.table_codec.TableCodec.write_value`).  For
the columns whose Avro type is a *string* that round trip is wasted work: the text
PostgreSQL sends already is the string the codec would write, or one that decodes to
the same value.  :class:`RawTableEncoder` (built once per table version with
:func:`compile_raw`) writes those bytes through and converts only the other columns.

**Invariant.**  For raw tuples that the general path encodes, decoding what this module
writes (:class:`~pipeline.codec.avro_decode.EnvelopeDecoder` /
:class:`~pipeline.codec.avro_decode.KeyDecoder`, i.e. ``decode_value`` / ``decode_key``
of either codec) gives exactly the event and key of the general path::

    decode(raw.value(op, before, kind, after, source, ts_ms))
        == decode(TableCodec.write_value(ChangeEvent(op, source, ts_ms,
                                                     row(before, kind), row(after))))

where ``row`` is ``RelationCache.row`` with the same converters.  Tuples the general
path rejects raise the same errors: :class:`~pipeline.values.
ValueConversionError` (same message: table, column, type, offending text) for a value
that does not convert, a :class:`~pipeline.codec.errors.EncodeError` for one that does
not fit its Avro type, :class:`~pipeline.values.SchemaMismatchError` for a tuple
of the wrong width.  Whenever the fast path meets anything unusual it reruns the general
path (convert the rows, ``TableCodec.write_value``), which returns its bytes or raises
its error: the fast path never has to reproduce an error itself.

How each column is written (text, numeric, uuid and json written through, the others
converted) is :mod:`pipeline.codec.raw_writers`', which generates the per-table row
writers; :class:`~pipeline.codec.raw_framed.FramedRawEncoder` adds a codec's message
headers.

An old tuple of kind ``'K'`` carries the key columns only: its other columns are
written as NULL, as the general path writes a row image that lacks them.

One divergence, in the fast path's favour: a ``json`` (not ``jsonb``) value holding a
lone UTF-16 surrogate escape (``"\\ud800"``, which PostgreSQL's ``json`` type accepts)
makes the general path fail (its re-dump cannot be UTF-8 encoded); the fast path writes
the text through, and it decodes to the converter's value.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal, NoReturn

from pipeline.codec.avro_writer import write_long, write_string
from pipeline.codec.raw_writers import (
    DASHES,
    FAST_ERRORS,
    HEX_DIGITS,
    INT_BOUNDS,
    JSON_SMALL,
    KIND_CONVERT,
    KIND_JSON,
    KIND_NUMERIC,
    KIND_TEXT,
    MINUS,
    SMALL_LENGTHS,
    SMALL_VARINTS,
    column_kind,
    column_step,
    insert_row_writer,
    raw_row_writer,
    varint,
)
from pipeline.codec.table_codec import (
    TableCodec,
    compile_table,
    encode_error,
    key_field_writers,
    value_field_writers,
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
from pipeline.values import (
    CONVERSION_ERRORS,
    Converter,
    RawTuple,
    SchemaMismatchError,
    converter_for,
    raise_conversion_error,
)

__all__ = [
    "ConverterOf",
    "OldKind",
    "RawTableEncoder",
    "compile_raw",
]

OldKind = Literal["O", "K"]
"""Kind of an old tuple: ``'O'`` the whole old row, ``'K'`` the key columns only."""

ConverterOf = Callable[[int], Converter]
"""Type OID -> converter (``converter_for``, or ``RelationCache.converter``)."""

_LSN_MAX: Final = (1 << 63) - 1


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
        steps = tuple(column_step(f, conv) for f, conv in zip(fields, converters, strict=True))
        self._write_row = raw_row_writer(steps, self._json_max)
        self._insert_row = insert_row_writer(steps, self._json_max)
        by_name = {c.name: i for i, c in enumerate(columns)}
        lengths = tuple(varint(n) for n in range(SMALL_LENGTHS))
        self._key_steps = tuple(
            (i, column_kind(converters[i], f.avro_type), converters[i], f.write, lengths)
            for f in key_field_writers(codec)
            for i in (by_name[f.column],)
        )
        self._int_key: tuple[int, int, int] | None = None
        if len(self._key_steps) == 1:
            index, kind, convert, write, _ = self._key_steps[0]
            bounds = INT_BOUNDS.get(write)
            if kind == KIND_CONVERT and convert is int and bounds is not None:
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
        except FAST_ERRORS:
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
        except FAST_ERRORS:
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
                except FAST_ERRORS:
                    return self._general_key(raw)
                if -64 <= n < 64:
                    return SMALL_VARINTS[n + 64]
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
                if kind == KIND_CONVERT:
                    x = convert(v)  # type: ignore[arg-type]  # BinaryValue raises: fallback
                    if x is None:
                        return self._general_key(raw)
                    write(out, x)
                    continue
                data: bytes = v  # type: ignore[assignment]  # BinaryValue fails: fallback
                if kind in (KIND_TEXT, KIND_JSON):
                    if len(data) > JSON_SMALL and kind == KIND_JSON:
                        return self._general_key(raw)
                    if not data.isascii():
                        data.decode()
                elif kind == KIND_NUMERIC:
                    digits = data[1:] if data[0] == MINUS else data
                    if not digits.replace(b".", b"", 1).isdigit():
                        return self._general_key(raw)
                elif len(data) != 36 or data.translate(None, HEX_DIGITS) != DASHES:
                    return self._general_key(raw)
                size = len(data)
                if size < SMALL_LENGTHS:
                    out += prefixes[size]
                else:
                    write_long(out, size)
                out += data
        except FAST_ERRORS:
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
