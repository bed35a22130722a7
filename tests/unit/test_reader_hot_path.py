"""The reader's streaming hot path for Inserts against its general path, without services.

``Reader._insert`` (generated tuple parser, raw encoder's ``event``, partition memo,
one delivery callback per transaction) must produce exactly the messages the general
path (``decode_message`` -> ``_on_insert`` -> ``_change`` -> ``_emit_raw``) produces:
same topic, partition, key and value (``ts_ms`` aside), and the same error for a row
that cannot be encoded.  The stream is driven through ``Reader._stream`` with an
in-memory replication connection and producer.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pipeline.codec import InMemorySchemaStore, SingleObjectCodec
from pipeline.events import UNCHANGED_TOAST
from pipeline.reader import pgoutput as po
from pipeline.reader.errors import ReaderError
from pipeline.reader.replication import XLogData
from pipeline.reader.service import Reader
from pipeline.reader.settings import ReaderSettings

PREFIX = "hot"
RELID = 16_401
TOPIC = f"{PREFIX}.public.product_variants"
COLUMNS = [  # (flags, name, type oid, typmod), as pgoutput sends product_variants
    (1, "id", 20, -1),
    (0, "product_id", 20, -1),
    (0, "sku", 25, -1),
    (0, "price", 1700, -1),
    (0, "quantity", 23, -1),
    (0, "attributes", 3802, -1),
]


def _s(text: str) -> bytes:
    return text.encode() + b"\x00"


def _tuple(values: tuple[po.Datum, ...]) -> bytes:
    out = [struct.pack(">H", len(values))]
    for value in values:
        if value is None:
            out.append(b"n")
        elif value is UNCHANGED_TOAST:
            out.append(b"u")
        elif isinstance(value, po.BinaryValue):
            out.append(b"b" + struct.pack(">I", len(value.data)) + value.data)
        else:
            assert isinstance(value, bytes)
            out.append(b"t" + struct.pack(">I", len(value)) + value)
    return b"".join(out)


def _relation() -> bytes:
    body = [b"R", struct.pack(">I", RELID), _s("public"), _s("product_variants"), b"f"]
    body.append(struct.pack(">H", len(COLUMNS)))
    for flags, name, oid, typmod in COLUMNS:
        body.append(bytes([flags]) + _s(name) + struct.pack(">Ii", oid, typmod))
    return b"".join(body)


def _insert(values: tuple[po.Datum, ...]) -> bytes:
    return b"I" + struct.pack(">I", RELID) + b"N" + _tuple(values)


def _stream(rows: list[tuple[po.Datum, ...]]) -> list[tuple[int, bytes]]:
    """(LSN, payload) of Begin, Relation, one Insert per row, Commit."""
    msgs = [b"B" + struct.pack(">QqI", 9_000, 700_000_000_000_000, 77), _relation()]
    msgs += [_insert(row) for row in rows]
    msgs.append(b"C" + struct.pack(">BQQq", 0, 9_000, 9_100, 700_000_000_000_000))
    return [(1_000 + i * 10, m) for i, m in enumerate(msgs)]


class _Repl:
    def __init__(self, messages: list[tuple[int, bytes]], stop: threading.Event) -> None:
        self._it: Iterator[tuple[int, bytes]] = iter(messages)
        self._stop = stop
        self.received_lsn = self.flushed_lsn = self.reported_lsn = 0

    def read_raw(self, timeout: float) -> tuple[int, bytes] | None:
        for lsn, payload in self._it:
            self.received_lsn = lsn
            return lsn, payload
        self._stop.set()
        return None

    def confirm(self, lsn: int) -> None:
        self.flushed_lsn = max(self.flushed_lsn, lsn)

    def maybe_send_status(self, interval: float | None = None) -> None:
        self.reported_lsn = self.flushed_lsn

    def send_status(self, *, force: bool = False) -> None:
        self.reported_lsn = self.flushed_lsn


class _Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes, int]] = []
        self._due: list[Callable[[Any, Any], None]] = []

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes,
        partition: int,
        on_delivery: Callable[[Any, Any], None],
    ) -> None:
        self.sent.append((topic, value, key, partition))
        self._due.append(on_delivery)

    def poll(self, timeout: float = 0) -> int:
        due, self._due = self._due, []
        for callback in due:
            callback(None, None)
        return len(due)

    def flush(self, timeout: float = 0) -> int:
        self.poll()
        return 0


class _NoIncremental:
    confirm_ceiling = None
    chunk = None

    def watching(self, schema: Any) -> bool:
        return False

    def step(self) -> None:
        pass


def _run(rows: list[tuple[po.Datum, ...]], *, general: bool) -> tuple[Reader, _Producer]:
    codec = SingleObjectCodec(InMemorySchemaStore(), PREFIX)
    reader = Reader(
        dsn="",
        bootstrap="",
        topic_prefix=PREFIX,
        settings=ReaderSettings(heartbeat_interval=0),
        codec=codec,
    )
    producer = _Producer()
    reader._producer = producer  # type: ignore[assignment]
    reader._primary_keys[("public", "product_variants")] = ("id",)
    reader._partitions[TOPIC] = 6
    reader.incremental = _NoIncremental()  # type: ignore[assignment]
    reader._db = "shop"
    if general:

        def insert(payload: bytes, lsn: int) -> None:
            msg = po.decode_message(payload)
            assert isinstance(msg, po.Insert)
            reader._on_insert(msg, XLogData(lsn, lsn, 0, payload))

        reader._insert = insert  # type: ignore[method-assign]
    stop = threading.Event()
    reader._stream(_Repl(_stream(rows), stop), stop)  # type: ignore[arg-type]
    return reader, producer


def _decoded(reader: Reader, producer: _Producer) -> list[str]:
    out = []
    for topic, value, key, partition in producer.sent:
        event = reader.codec.decode(key, value)
        assert event is not None
        # repr: Decimal('NaN') != Decimal('NaN'), but they print the same
        out.append(repr((topic, partition, key, event.key, event.before, event.after)))
        out.append(repr(event.source))
    return out


ROWS: list[tuple[po.Datum, ...]] = [
    (b"1", b"1", b"SKU-1", b"1.99", b"1", b'{"n": 1, "size": "M"}'),
    (b"2", b"1", b"SKU-2", b"2.99", b"2", b'{"n": 2}'),
    (b"3", b"7", "Größe-3".encode(), b"-0.5", b"-3", b"[1, 2.50, null]"),
    (b"4", b"7", b"SKU-4", b"NaN", None, None),
    (b"5", None, b"", b"100000000000000000000.01", b"2147483647", b"{}"),
    (b"9223372036854775807", b"8", b"x" * 300, b"0", b"0", b'"text"'),
    (b"-64", b"-1", b"SKU", b"1", b"63", b"null"),
    (b"6", b"7", UNCHANGED_TOAST, b"1", b"1", UNCHANGED_TOAST),
    (b"7", b"7", b"SKU-7", b"1", b"1", b'{"deep": ' + b"[" * 300 + b"]" * 300 + b"}"),
]


@pytest.mark.parametrize("first", [0, 4, 7], ids=["text", "null-partition", "toast"])
def test_hot_path_inserts_are_the_general_paths_messages(first: int) -> None:
    rows = ROWS[first:] + ROWS[:first]  # the partition memo starts on each kind
    hot_reader, hot = _run(rows, general=False)
    gen_reader, gen = _run(rows, general=True)
    assert len(hot.sent) == len(rows)
    assert _decoded(hot_reader, hot) == _decoded(gen_reader, gen)
    # source.lsn is the commit LSN (Begin's final_lsn), not each change record's own.
    lsns = {hot_reader.codec.decode(k, v).source.lsn for _, v, k, _ in hot.sent}  # type: ignore[union-attr]
    assert lsns == {9_000}
    # Every event acknowledged -> the commit's end LSN is confirmable, nothing in flight.
    assert hot_reader.tracker.confirmable == gen_reader.tracker.confirmable == 9_100
    assert hot_reader.tracker.in_flight == 0


@pytest.mark.parametrize(
    ("column", "text"),
    [("quantity", b"2147483648"), ("price", b"1.2.3"), ("id", None), ("product_id", b"x")],
)
def test_hot_path_stops_with_the_general_paths_error(column: str, text: Any) -> None:
    names = [c[1] for c in COLUMNS]
    bad = list(ROWS[0])
    bad[names.index(column)] = text
    rows = [ROWS[1], tuple(bad), ROWS[2]]
    errors = []
    for general in (False, True):
        with pytest.raises(ReaderError) as info:
            _run(rows, general=general)
        errors.append(str(info.value))
    assert errors[0] == errors[1]
    assert "public.product_variants" in errors[0]
    assert 'key={"id": ' in errors[0]
    assert repr(column) in errors[0] or text is None  # NULL key: the codec's message
