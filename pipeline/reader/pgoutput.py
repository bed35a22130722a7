"""Decoder of PostgreSQL's ``pgoutput`` logical replication messages.

:func:`decode_message` turns one pgoutput message -- the payload of an XLogData
(``'w'``) CopyData message after its 25-byte header, or one ``data`` row of
``pg_logical_slot_get_binary_changes`` -- into one of the frozen dataclasses below.
It covers protocol version 1 and the streaming messages of version 2 (``proto_version
'2', streaming 'on'``); two-phase (v3) and parallel-apply (v4) messages are rejected as
unknown/malformed.

Guarantees:

* The whole message is consumed: truncated input, unknown message or tuple-column kinds
  and trailing bytes all raise :class:`~pipeline.reader.errors.PgOutputDecodeError`,
  whose text names the message type and the byte offset that failed.  No other
  exception escapes for malformed input.
* Tuple columns are kept raw (:data:`~pipeline.values.RawTuple`, the reader's and the
  codec's shared contract, re-exported here): ``None`` for NULL (``'n'``),
  :data:`~pipeline.events.UNCHANGED_TOAST` for an unchanged TOASTed value (``'u'``),
  ``bytes`` for a text-format value (``'t'``) and :class:`BinaryValue` for a
  binary-format value (``'b'``).  Conversion to Python values is
  :class:`~pipeline.reader.relations.RelationCache`'s job.
* Inside a v2 stream block (between StreamStart and StreamStop) the caller passes
  ``in_stream=True``; Relation, Type, Insert, Update, Delete, Truncate and Message then
  carry the streamed transaction's ``xid``.  Outside a stream block ``xid`` is ``None``.

Strings (names, prefixes) are decoded as UTF-8: the database encoding must be UTF8.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Final, TypeAlias

from pipeline.events import UNCHANGED_TOAST
from pipeline.reader.errors import PgOutputDecodeError
from pipeline.reader.pgoutput_messages import (
    PG_EPOCH_OFFSET_US,
    Begin,
    Commit,
    Delete,
    Insert,
    Message,
    Origin,
    PgOutputMessage,
    Relation,
    RelationColumn,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    TupleKind,
    Type,
    Update,
    format_lsn,
    pg_timestamp_to_epoch_ms,
)
from pipeline.values import BinaryValue, Datum, RawTuple

__all__ = [
    "PG_EPOCH_OFFSET_US",
    "Begin",
    "BinaryValue",
    "Commit",
    "Datum",
    "Delete",
    "Insert",
    "Message",
    "Origin",
    "PgOutputMessage",
    "RawTuple",
    "Relation",
    "RelationColumn",
    "StreamAbort",
    "StreamCommit",
    "StreamStart",
    "StreamStop",
    "Truncate",
    "Type",
    "Update",
    "decode_insert",
    "decode_message",
    "format_lsn",
    "insert_parser",
    "pg_timestamp_to_epoch_ms",
]

# --------------------------------------------------------------------------- decoding

_u16 = struct.Struct(">H").unpack_from
_u32 = struct.Struct(">I").unpack_from
_u32_u8 = struct.Struct(">IB").unpack_from
_u8_u64 = struct.Struct(">BQ").unpack_from
_u64 = struct.Struct(">Q").unpack_from
_begin = struct.Struct(">QqI").unpack_from
_commit = struct.Struct(">BQQq").unpack_from
_oid_typmod = struct.Struct(">Ii").unpack_from
_stream_commit = struct.Struct(">IBQQq").unpack_from
_u32_u32 = struct.Struct(">II").unpack_from

_MALFORMED = (struct.error, IndexError, ValueError)
"""What reading past the end, a missing string terminator or bad UTF-8 raise."""

_KIND_T: Final = 0x74  # 't'
_KIND_N: Final = 0x6E  # 'n'
_KIND_U: Final = 0x75  # 'u'
_KIND_B: Final = 0x62  # 'b'


def _string(buf: bytes, off: int) -> tuple[str, int]:
    end = buf.index(0, off)
    return buf[off:end].decode(), end + 1


def _tuple(buf: bytes, off: int, what: str) -> tuple[RawTuple, int]:
    """Read one TupleData at ``off``; return it and the offset after it."""
    values: list[Datum] = []
    append = values.append
    column = -1
    try:
        (ncols,) = _u16(buf, off)
        off += 2
        for column in range(ncols):
            kind = buf[off]
            if kind == _KIND_T:
                (length,) = _u32(buf, off + 1)
                off += 5
                end = off + length
                append(buf[off:end])
                off = end
            elif kind == _KIND_N:
                append(None)
                off += 1
            elif kind == _KIND_U:
                append(UNCHANGED_TOAST)
                off += 1
            elif kind == _KIND_B:
                (length,) = _u32(buf, off + 1)
                off += 5
                end = off + length
                append(BinaryValue(buf[off:end]))
                off = end
            else:
                raise PgOutputDecodeError(
                    what,
                    off,
                    f"unknown kind {chr(kind)!r} of tuple column {column} (expected t, n, u, b)",
                )
    except _MALFORMED as exc:
        raise PgOutputDecodeError(
            what, min(off, len(buf)), f"tuple data truncated in column {column} ({exc})"
        ) from exc
    if off > len(buf):
        raise PgOutputDecodeError(
            what, len(buf), f"value of tuple column {column} needs {off - len(buf)} more bytes"
        )
    return tuple(values), off


def _begin_msg(buf: bytes, off: int, xid: int | None) -> tuple[Begin, int]:
    try:
        final_lsn, ts, txid = _begin(buf, off)
    except _MALFORMED as exc:
        raise PgOutputDecodeError("Begin ('B')", off, str(exc)) from exc
    return Begin(final_lsn, ts, txid), off + 20


def _commit_msg(buf: bytes, off: int, xid: int | None) -> tuple[Commit, int]:
    try:
        flags, commit_lsn, end_lsn, ts = _commit(buf, off)
    except _MALFORMED as exc:
        raise PgOutputDecodeError("Commit ('C')", off, str(exc)) from exc
    return Commit(flags, commit_lsn, end_lsn, ts), off + 25


def _origin_msg(buf: bytes, off: int, xid: int | None) -> tuple[Origin, int]:
    try:
        (lsn,) = _u64(buf, off)
        off += 8
        name, off = _string(buf, off)
    except _MALFORMED as exc:
        raise PgOutputDecodeError("Origin ('O')", off, str(exc)) from exc
    return Origin(lsn, name), off


def _relation_msg(buf: bytes, off: int, xid: int | None) -> tuple[Relation, int]:
    try:
        (relid,) = _u32(buf, off)
        off += 4
        namespace, off = _string(buf, off)
        name, off = _string(buf, off)
        identity = chr(buf[off])
        (ncols,) = _u16(buf, off + 1)
        off += 3
        columns = []
        for _ in range(ncols):
            flags = buf[off]
            colname, off = _string(buf, off + 1)
            type_oid, typmod = _oid_typmod(buf, off)
            off += 8
            columns.append(RelationColumn(flags, colname, type_oid, typmod))
    except _MALFORMED as exc:
        raise PgOutputDecodeError("Relation ('R')", off, str(exc)) from exc
    return Relation(relid, namespace, name, identity, tuple(columns), xid), off


def _type_msg(buf: bytes, off: int, xid: int | None) -> tuple[Type, int]:
    try:
        (type_oid,) = _u32(buf, off)
        off += 4
        namespace, off = _string(buf, off)
        name, off = _string(buf, off)
    except _MALFORMED as exc:
        raise PgOutputDecodeError("Type ('Y')", off, str(exc)) from exc
    return Type(type_oid, namespace, name, xid), off


def _insert_msg(buf: bytes, off: int, xid: int | None) -> tuple[Insert, int]:
    try:
        relid, marker = _u32_u8(buf, off)
    except _MALFORMED as exc:
        raise PgOutputDecodeError("Insert ('I')", off, str(exc)) from exc
    if marker != 0x4E:  # 'N'
        raise PgOutputDecodeError("Insert ('I')", off + 4, f"expected 'N', got {chr(marker)!r}")
    new, off = _tuple(buf, off + 5, "Insert ('I')")
    return Insert(relid, new, xid), off


def _update_msg(buf: bytes, off: int, xid: int | None) -> tuple[Update, int]:
    what = "Update ('U')"
    try:
        relid, marker = _u32_u8(buf, off)
        off += 5
        old: RawTuple | None = None
        old_kind: TupleKind | None = None
        if marker == 0x4B or marker == 0x4F:  # 'K', 'O'
            old_kind = "K" if marker == 0x4B else "O"
            old, off = _tuple(buf, off, what)
            marker = buf[off]
            off += 1
    except _MALFORMED as exc:
        raise PgOutputDecodeError(what, off, str(exc)) from exc
    if marker != 0x4E:  # 'N'
        raise PgOutputDecodeError(what, off - 1, f"expected 'K', 'O' or 'N', got {chr(marker)!r}")
    new, off = _tuple(buf, off, what)
    return Update(relid, old_kind, old, new, xid), off


def _delete_msg(buf: bytes, off: int, xid: int | None) -> tuple[Delete, int]:
    what = "Delete ('D')"
    try:
        relid, marker = _u32_u8(buf, off)
    except _MALFORMED as exc:
        raise PgOutputDecodeError(what, off, str(exc)) from exc
    if marker == 0x4B:
        old_kind: TupleKind = "K"
    elif marker == 0x4F:
        old_kind = "O"
    else:
        raise PgOutputDecodeError(what, off + 4, f"expected 'K' or 'O', got {chr(marker)!r}")
    old, off = _tuple(buf, off + 5, what)
    return Delete(relid, old_kind, old, xid), off


def _truncate_msg(buf: bytes, off: int, xid: int | None) -> tuple[Truncate, int]:
    try:
        nrels, options = _u32_u8(buf, off)
        off += 5
        if off + 4 * nrels > len(buf):
            raise PgOutputDecodeError(
                "Truncate ('T')", off, f"{nrels} relation ids announced, buffer too short"
            )
        relids = struct.unpack_from(f">{nrels}I", buf, off)
    except _MALFORMED as exc:
        raise PgOutputDecodeError("Truncate ('T')", off, str(exc)) from exc
    return Truncate(relids, options, xid), off + 4 * nrels


def _message_msg(buf: bytes, off: int, xid: int | None) -> tuple[Message, int]:
    what = "Message ('M')"
    try:
        flags, lsn = _u8_u64(buf, off)
        off += 9
        prefix, off = _string(buf, off)
        (length,) = _u32(buf, off)
        off += 4
    except _MALFORMED as exc:
        raise PgOutputDecodeError(what, off, str(exc)) from exc
    end = off + length
    if end > len(buf):
        raise PgOutputDecodeError(what, off, f"content needs {end - len(buf)} more bytes")
    return Message(bool(flags & 1), lsn, prefix, buf[off:end], xid), end


def _stream_start_msg(buf: bytes, off: int, xid: int | None) -> tuple[StreamStart, int]:
    try:
        txid, first = _u32_u8(buf, off)
    except _MALFORMED as exc:
        raise PgOutputDecodeError("StreamStart ('S')", off, str(exc)) from exc
    return StreamStart(txid, first == 1), off + 5


def _stream_stop_msg(buf: bytes, off: int, xid: int | None) -> tuple[StreamStop, int]:
    return StreamStop(), off


def _stream_commit_msg(buf: bytes, off: int, xid: int | None) -> tuple[StreamCommit, int]:
    try:
        txid, flags, commit_lsn, end_lsn, ts = _stream_commit(buf, off)
    except _MALFORMED as exc:
        raise PgOutputDecodeError("StreamCommit ('c')", off, str(exc)) from exc
    return StreamCommit(txid, flags, commit_lsn, end_lsn, ts), off + 29


def _stream_abort_msg(buf: bytes, off: int, xid: int | None) -> tuple[StreamAbort, int]:
    try:
        txid, subxid = _u32_u32(buf, off)
    except _MALFORMED as exc:
        raise PgOutputDecodeError("StreamAbort ('A')", off, str(exc)) from exc
    return StreamAbort(txid, subxid), off + 8


_Decoder: TypeAlias = Callable[[bytes, int, "int | None"], tuple[PgOutputMessage, int]]

# type byte -> (name for errors, decoder, carries an xid inside a stream block)
_DECODERS: Final[dict[int, tuple[str, _Decoder, bool]]] = {
    ord("B"): ("Begin ('B')", _begin_msg, False),
    ord("C"): ("Commit ('C')", _commit_msg, False),
    ord("O"): ("Origin ('O')", _origin_msg, False),
    ord("R"): ("Relation ('R')", _relation_msg, True),
    ord("Y"): ("Type ('Y')", _type_msg, True),
    ord("I"): ("Insert ('I')", _insert_msg, True),
    ord("U"): ("Update ('U')", _update_msg, True),
    ord("D"): ("Delete ('D')", _delete_msg, True),
    ord("T"): ("Truncate ('T')", _truncate_msg, True),
    ord("M"): ("Message ('M')", _message_msg, True),
    ord("S"): ("StreamStart ('S')", _stream_start_msg, False),
    ord("E"): ("StreamStop ('E')", _stream_stop_msg, False),
    ord("c"): ("StreamCommit ('c')", _stream_commit_msg, False),
    ord("A"): ("StreamAbort ('A')", _stream_abort_msg, False),
}


def decode_message(
    buf: bytes | bytearray | memoryview, *, in_stream: bool = False
) -> PgOutputMessage:
    """Decode one complete pgoutput message.

    ``buf`` starts with the message-type byte.  A ``bytearray``/``memoryview`` is copied
    once to ``bytes`` (one C-level copy is cheaper than a memoryview slice plus a copy
    per column value).  Pass ``in_stream=True`` for messages between StreamStart and
    StreamStop (protocol v2), where the transactional messages carry an xid.

    Raises :class:`~pipeline.reader.errors.PgOutputDecodeError` if the message is
    empty, of an unknown type, truncated, or followed by trailing bytes.
    """
    if type(buf) is not bytes:
        buf = bytes(buf)
    if not buf:
        raise PgOutputDecodeError("(none)", 0, "empty message")
    entry = _DECODERS.get(buf[0])
    if entry is None:
        raise PgOutputDecodeError(
            f"unknown ({chr(buf[0])!r})",
            0,
            "unsupported message type (protocol v3/v4 messages are not supported)",
        )
    name, decoder, streamable = entry
    if in_stream and streamable:
        try:
            (xid,) = _u32(buf, 1)
        except struct.error as exc:
            raise PgOutputDecodeError(name, 1, f"missing stream xid ({exc})") from exc
        message, end = decoder(buf, 5, xid)
    else:
        message, end = decoder(buf, 1, None)
    if end != len(buf):
        raise PgOutputDecodeError(name, end, f"{len(buf) - end} unexpected trailing bytes")
    return message


def decode_insert(buf: bytes) -> tuple[int, RawTuple]:
    """``(relation_id, new tuple)`` of a non-streamed Insert (``buf[0] == ord('I')``).

    The reader's hot path: what ``decode_message(buf)`` gives as an :class:`Insert`,
    without building it, with the same checks and errors.
    """
    try:
        relid, marker = _u32_u8(buf, 1)
    except _MALFORMED as exc:
        raise PgOutputDecodeError("Insert ('I')", 1, str(exc)) from exc
    if marker != 0x4E:  # 'N'
        raise PgOutputDecodeError("Insert ('I')", 5, f"expected 'N', got {chr(marker)!r}")
    new, end = _tuple(buf, 6, "Insert ('I')")
    if end != len(buf):
        raise PgOutputDecodeError(
            "Insert ('I')", end, f"{len(buf) - end} unexpected trailing bytes"
        )
    return relid, new


def insert_parser(ncols: int) -> Callable[[bytes], RawTuple | None]:
    """A parser of the new tuple of Inserts of ``ncols`` columns (the reader's hot path).

    Generated straight-line code for the usual case -- every column text (``'t'``),
    NULL (``'n'``) or unchanged TOAST (``'u'``) -- that returns the tuple
    :func:`decode_insert` would, or ``None`` for anything else (another width, a binary
    value, a malformed message): the caller then calls :func:`decode_insert`, which
    decodes it or raises its error.  It never raises itself.  Compiling one costs about a
    millisecond: make it once per width.
    """
    lines = [
        "def parse(buf):",
        "    try:",
        f"        if buf[5] != 0x4E or buf[6] != {ncols >> 8} or buf[7] != {ncols & 0xFF}:",
        "            return None",
        "        off = 8",
    ]
    for i in range(ncols):
        lines += [
            "        kind = buf[off]",
            "        if kind == 0x74:",
            "            (n,) = u32(buf, off + 1)",
            "            off += 5",
            "            end = off + n",
            f"            v{i} = buf[off:end]",
            "            off = end",
            "        elif kind == 0x6E:",
            f"            v{i} = None",
            "            off += 1",
            "        elif kind == 0x75:",
            f"            v{i} = toast",
            "            off += 1",
            "        else:",
            "            return None",
        ]
    values = "".join(f"v{i}, " for i in range(ncols))
    lines += [
        "    except (IndexError, struct_error):",
        "        return None",
        "    if off != len(buf):",  # truncated (a short last value) or trailing bytes
        "        return None",
        f"    return ({values})",
    ]
    env: dict[str, object] = {
        "u32": _u32,
        "toast": UNCHANGED_TOAST,
        "struct_error": struct.error,
    }
    exec(compile("\n".join(lines) + "\n", f"<insert parser {ncols}>", "exec"), env)
    parser: Callable[[bytes], RawTuple | None] = env["parse"]  # type: ignore[assignment]
    return parser
