"""The pgoutput decoder and value conversion against REAL PostgreSQL output.

A table with every supported type is changed in all the ways a slot can report (insert,
update leaving a TOASTed value untouched, key change, delete, logical messages,
rollback, ALTER TABLE mid-stream, truncate); the raw pgoutput bytes are read from the
slot with ``pg_logical_slot_get_binary_changes`` and the decoded messages and converted
rows are compared exactly.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import psycopg
import pytest

from pipeline.events import UNCHANGED_TOAST, Row
from pipeline.reader.pgoutput import (
    Begin,
    Commit,
    Delete,
    Insert,
    Message,
    PgOutputMessage,
    Relation,
    Truncate,
    Type,
    Update,
    decode_message,
)
from pipeline.reader.relations import RelationCache
from pipeline.values import BUILTIN_TYPE_NAMES

pytestmark = pytest.mark.integration

SCHEMA_SQL = """
CREATE TYPE mood AS ENUM ('sad', 'happy');
CREATE DOMAIN price AS numeric(12, 2) CHECK (VALUE >= 0);
CREATE TABLE product (
    id int8 PRIMARY KEY,
    i2 int2, i4 int4, f4 float4, f8 float8, num numeric(40, 20),
    t text, vc varchar(20), bp char(5), nm name, b bool,
    ts timestamp, tstz timestamptz, d date, tm time,
    j json, jb jsonb, u uuid, by bytea, iv interval, m mood, p price, big text,
    a_i2 int2[], a_i4 int4[], a_i8 int8[], a_num numeric[], a_t text[], a_vc varchar[],
    a_b bool[], a_u uuid[], a_jb jsonb[], a_d date[], a_tstz timestamptz[], a_f8 float8[]
);
ALTER TABLE product ALTER COLUMN big SET STORAGE EXTERNAL;
CREATE PUBLICATION pub FOR TABLE product;
"""

COLUMNS = [
    "id", "i2", "i4", "f4", "f8", "num", "t", "vc", "bp", "nm", "b", "ts", "tstz", "d", "tm",
    "j", "jb", "u", "by", "iv", "m", "p", "big", "a_i2", "a_i4", "a_i8", "a_num", "a_t", "a_vc",
    "a_b", "a_u", "a_jb", "a_d", "a_tstz", "a_f8",
]  # fmt: skip

BIG = "".join(hashlib.sha256(str(i).encode()).hexdigest() for i in range(160))  # 10 kB
UID = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"

ROW1_SQL: dict[str, str | None] = {
    "id": "1",
    "i2": "-32768",
    "i4": "2147483647",
    "f4": "1.5",
    "f8": "3.141592653589793",
    "num": "12345678901234567890.12345678901234567890",
    "t": "grüße 😀 'quoted' \\ back",
    "vc": "varchar",
    "bp": "ab",
    "nm": "pg_name",
    "b": "true",
    "ts": "2024-01-02 03:04:05.123456",
    "tstz": "2024-02-29 12:34:56.789012+00",
    "d": "2024-02-29",
    "tm": "23:59:59.999999",
    "j": '{"b": 1e400, "a": [1, 2.50]}',
    "jb": '{"n": 12345678901234567890123, "f": 0.1, "s": "x"}',
    "u": UID,
    "by": "\\x00ff10",
    "iv": "1 day 02:00:00",
    "m": "happy",
    "p": "12.5",
    "big": BIG,
    "a_i2": "{1,-2,NULL}",
    "a_i4": "[0:2]={1,2,3}",
    "a_i8": "{{1,2},{3,4}}",
    "a_num": "{1.5,NaN,Infinity,-Infinity,NULL}",
    "a_t": '{"a,b","q\\"uote","back\\\\slash","{x}",NULL,"NULL","","ün","  s p  "}',
    "a_vc": '{plain,"with space"}',
    "a_b": "{t,f,NULL}",
    "a_u": "{" + UID + ",NULL}",
    "a_jb": '{"{\\"a\\": 1.5}","[1, 2]",null,NULL}',
    "a_d": "{2024-02-29,infinity}",
    "a_tstz": '{"2024-02-29 12:34:56+00",NULL}',
    "a_f8": "{1.5,-Infinity,NaN}",
}

NAN = "<NaN>"  # NaN never equals itself: compared through this marker

ROW1: Row = {
    "id": 1,
    "i2": -32768,
    "i4": 2147483647,
    "f4": 1.5,
    "f8": 3.141592653589793,
    "num": Decimal("12345678901234567890.12345678901234567890"),
    "t": "grüße 😀 'quoted' \\ back",
    "vc": "varchar",
    "bp": "ab   ",
    "nm": "pg_name",
    "b": True,
    "ts": datetime(2024, 1, 2, 3, 4, 5, 123456),
    "tstz": datetime(2024, 2, 29, 12, 34, 56, 789012, tzinfo=UTC),
    "d": date(2024, 2, 29),
    "tm": datetime(2000, 1, 1, 23, 59, 59, 999999).time(),
    "j": {"b": Decimal("1E+400"), "a": [1, Decimal("2.50")]},
    "jb": {"n": 12345678901234567890123, "f": Decimal("0.1"), "s": "x"},
    "u": UUID(UID),
    "by": b"\x00\xff\x10",
    "iv": "1 day 02:00:00",
    "m": "happy",
    "p": Decimal("12.50"),
    "big": BIG,
    "a_i2": [1, -2, None],
    "a_i4": [1, 2, 3],
    "a_i8": [[1, 2], [3, 4]],
    "a_num": [Decimal("1.5"), NAN, Decimal("Infinity"), Decimal("-Infinity"), None],
    "a_t": ["a,b", 'q"uote', "back\\slash", "{x}", None, "NULL", "", "ün", "  s p  "],
    "a_vc": ["plain", "with space"],
    "a_b": [True, False, None],
    "a_u": [UUID(UID), None],
    "a_jb": [{"a": Decimal("1.5")}, [1, 2], None, None],
    "a_d": [date(2024, 2, 29), date.max],
    "a_tstz": [datetime(2024, 2, 29, 12, 34, 56, tzinfo=UTC), None],
    "a_f8": [1.5, -math.inf, NAN],
}


def _nan_to_marker(value: Any) -> Any:
    if isinstance(value, list):
        return [_nan_to_marker(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_nan_to_marker(v) for v in value)
    if isinstance(value, dict):
        return {k: _nan_to_marker(v) for k, v in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return NAN
    if isinstance(value, Decimal) and value.is_nan():
        return NAN
    return value


def _insert(conn: psycopg.Connection[Any], values: dict[str, str | None]) -> None:
    names = ", ".join(values)
    marks = ", ".join(["%s"] * len(values))
    conn.execute(f"INSERT INTO product ({names}) VALUES ({marks})", list(values.values()))


def _xid(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT txid_current() % 4294967296").fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def conn(pg_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(pg_dsn, autocommit=True) as connection:
        yield connection


def test_real_pgoutput_stream(conn: psycopg.Connection[Any]) -> None:
    conn.execute(SCHEMA_SQL)
    # The slot in a statement of its own: not in a transaction that has written.
    conn.execute("SELECT pg_create_logical_replication_slot('slot', 'pgoutput')")
    started_ms = int(time.time() * 1000) - 1000
    xids: list[int] = []

    with conn.transaction():  # T1: a full row and an all-NULL row
        xids.append(_xid(conn))
        _insert(conn, ROW1_SQL)
        _insert(conn, {"id": "2"})
    with conn.transaction():  # T2: the TOASTed `big` is left unchanged
        xids.append(_xid(conn))
        conn.execute("UPDATE product SET p = 13.75 WHERE id = 1")
    with conn.transaction():  # T3: key change: old key sent
        xids.append(_xid(conn))
        conn.execute("UPDATE product SET id = 10 WHERE id = 1")
    with conn.transaction():  # T4
        xids.append(_xid(conn))
        conn.execute("DELETE FROM product WHERE id = 2")
    with conn.transaction():  # T5: transactional message
        xids.append(_xid(conn))
        conn.execute("SELECT pg_logical_emit_message(true, 'prefix', 'content')")
    conn.execute("SELECT pg_logical_emit_message(false, 'nontx', '\\x00ff'::bytea)")
    with pytest.raises(psycopg.errors.RaiseException), conn.transaction():  # rolled back
        _insert(conn, {"id": "99"})
        conn.execute("DO $$ BEGIN RAISE EXCEPTION 'roll back'; END $$")
    conn.execute("ALTER TABLE product ADD COLUMN extra int4 DEFAULT 7")
    with conn.transaction():  # T6: a row in the new shape, with special values
        xids.append(_xid(conn))
        _insert(
            conn,
            {
                "id": "3",
                "f4": "-Infinity",
                "f8": "NaN",
                "num": "NaN",
                "ts": "-infinity",
                "tstz": "infinity",
                "d": "-infinity",
                "a_i4": "{}",
                "extra": "8",
            },
        )
    with conn.transaction():  # T7
        xids.append(_xid(conn))
        conn.execute("TRUNCATE product RESTART IDENTITY")
    finished_ms = int(time.time() * 1000) + 1000

    # Read as a reader would, in a session whose TimeZone is not UTC: timestamptz text
    # then carries +05:30 offsets that must come back as the same instants in UTC.
    conn.execute("SET TimeZone = 'Asia/Kolkata'")
    rows = conn.execute(
        "SELECT lsn::text, data FROM pg_logical_slot_get_binary_changes('slot', NULL, NULL,"
        " 'proto_version', '1', 'publication_names', 'pub', 'messages', 'true')"
    ).fetchall()
    messages: list[PgOutputMessage] = [decode_message(data) for _lsn, data in rows]

    kinds = [type(m).__name__ for m in messages]
    assert kinds == [
        *["Begin", "Type", "Type", "Relation", "Insert", "Insert", "Commit"],
        *["Begin", "Update", "Commit"],
        *["Begin", "Update", "Commit"],
        *["Begin", "Delete", "Commit"],
        *["Begin", "Message", "Commit"],
        "Message",
        *["Begin", "Type", "Type", "Relation", "Insert", "Commit"],
        # TRUNCATE gives the table a new relfilenode: pgoutput sends its schema again.
        *["Begin", "Type", "Type", "Relation", "Truncate", "Commit"],
    ]

    # --- transactions: xids, LSNs, commit times
    begins = [m for m in messages if isinstance(m, Begin)]
    commits = [m for m in messages if isinstance(m, Commit)]
    assert [b.xid for b in begins] == xids
    for b, c in zip(begins, commits, strict=True):
        assert b.final_lsn == c.commit_lsn < c.end_lsn
        assert b.commit_ts == c.commit_ts
        assert started_ms <= c.commit_ts_ms <= finished_ms
        assert c.flags == 0
    assert [c.commit_lsn for c in commits] == sorted(c.commit_lsn for c in commits)

    # --- types and relations
    oids = conn.execute(
        "SELECT 'product'::regclass::oid, 'mood'::regtype::oid, 'price'::regtype::oid"
    ).fetchone()
    assert oids is not None
    product_oid, mood_oid, price_oid = (int(o) for o in oids)
    types = [m for m in messages if isinstance(m, Type)]
    # A domain is sent with its own OID but its base type's name (pg_catalog = '').
    assert (
        types
        == [
            Type(mood_oid, "public", "mood"),
            Type(price_oid, "", "numeric"),
        ]
        * 3
    )
    relations = [m for m in messages if isinstance(m, Relation)]
    assert [r.relation_id for r in relations] == [product_oid] * 3
    first, second, third = relations
    assert third == second
    assert (first.namespace, first.name, first.replica_identity) == ("public", "product", "d")
    assert [c.name for c in first.columns] == COLUMNS
    assert [c.name for c in second.columns] == [*COLUMNS, "extra"]
    assert [c.is_key for c in first.columns] == [True] + [False] * (len(COLUMNS) - 1)
    typmods = {c.name: c.type_modifier for c in first.columns}
    assert typmods["num"] == ((40 << 16) | 20) + 4
    assert typmods["vc"] == 20 + 4
    assert typmods["bp"] == 5 + 4
    assert typmods["t"] == -1
    type_rows = conn.execute(
        "SELECT a.attname, a.atttypid::int, t.typname FROM pg_attribute a"
        " JOIN pg_type t ON t.oid = a.atttypid"
        " WHERE a.attrelid = 'product'::regclass AND a.attnum > 0 AND NOT a.attisdropped"
        " ORDER BY a.attnum"
    ).fetchall()
    assert [(c.name, c.type_oid) for c in second.columns] == [(n, o) for n, o, _ in type_rows]

    # --- rows, converted with the relation cache applied in stream order
    cache = RelationCache()
    images: list[tuple[str, Row | None, Row | None]] = []
    for m in messages:
        if isinstance(m, Relation | Type):
            cache.apply(m)
        elif isinstance(m, Insert):
            images.append(("I", None, cache.row(m.relation_id, m.new)))
        elif isinstance(m, Update):
            old = None
            if m.old is not None:
                assert m.old_kind is not None
                old = cache.row(m.relation_id, m.old, kind=m.old_kind)
            images.append(("U", old, cache.row(m.relation_id, m.new)))
        elif isinstance(m, Delete):
            images.append(("D", cache.row(m.relation_id, m.old, kind=m.old_kind), None))

    schema = cache.schema(product_oid)
    assert schema.qualified_name == "public.product"
    by_name = {c.name: c for c in schema.columns}
    assert by_name["m"].type_name == "mood"
    assert by_name["p"].type_name == "numeric"
    assert by_name["a_jb"].type_name == "_jsonb"
    assert all(c.type_name == t for c, (_, _, t) in zip(schema.columns, type_rows, strict=True)
               if c.type_oid < 10000)  # fmt: skip

    row2 = dict.fromkeys(COLUMNS) | {"id": 2}
    row1_updated = ROW1 | {"p": Decimal("13.75"), "big": UNCHANGED_TOAST}
    row3 = dict.fromkeys(COLUMNS) | {
        "id": 3,
        "f4": -math.inf,
        "f8": NAN,
        "num": NAN,
        "ts": datetime.min,
        "tstz": datetime.max.replace(tzinfo=UTC),
        "d": date.min,
        "a_i4": [],
        "extra": 8,
    }
    expected_images = [
        ("I", None, ROW1),
        ("I", None, row2),
        ("U", None, row1_updated),
        ("U", {"id": 1}, row1_updated | {"id": 10}),
        ("D", {"id": 2}, None),
        ("I", None, row3),
    ]
    got_images = _nan_to_marker(images)
    assert [(op, old, None if new is None else new["id"]) for op, old, new in got_images] == [
        (op, old, None if new is None else new["id"]) for op, old, new in expected_images
    ]
    for (_, _, got), (_, _, want) in zip(got_images, expected_images, strict=True):
        if want is not None:  # column by column, for a readable failure
            assert got is not None
            assert list(got) == list(want)
            for column, value in want.items():
                assert (column, got[column]) == (column, value)
    # The unchanged TOAST marker is the singleton, never None.
    updates = [new for op, _old, new in images if op == "U"]
    assert all(new is not None and new["big"] is UNCHANGED_TOAST for new in updates)
    assert cache.key(product_oid, ROW1) == {"id": 1}

    # --- messages and truncate
    logical = [m for m in messages if isinstance(m, Message)]
    assert [(m.transactional, m.prefix, m.content) for m in logical] == [
        (True, "prefix", b"content"),
        (False, "nontx", b"\x00\xff"),
    ]
    assert all(m.lsn > 0 and m.xid is None for m in logical)
    (trunc,) = [m for m in messages if isinstance(m, Truncate)]
    assert trunc.relation_ids == (product_oid,)
    assert (trunc.restart_identity, trunc.cascade) == (True, False)


def test_builtin_type_map_matches_the_server(conn: psycopg.Connection[Any]) -> None:
    rows = conn.execute(
        "SELECT oid::int, typname FROM pg_type WHERE oid = ANY(%s)", (list(BUILTIN_TYPE_NAMES),)
    ).fetchall()
    assert dict(rows) == dict(BUILTIN_TYPE_NAMES)


def test_timestamptz_offsets_of_a_real_session(conn: psycopg.Connection[Any]) -> None:
    # Whatever TimeZone the session uses, the instant survives (historic LMT offsets too).
    from pipeline.values import converter_for

    convert = converter_for(1184)
    instant = datetime(1890, 6, 1, 12, 0, tzinfo=UTC)
    for zone in ("UTC", "Asia/Kolkata", "America/St_Johns", "Asia/Kathmandu", "Europe/Amsterdam"):
        conn.execute(f"SET TimeZone = '{zone}'")
        for moment in (
            instant,
            datetime(2024, 3, 31, 1, 30, tzinfo=UTC),
            instant + timedelta(days=50000),
        ):
            row = conn.execute("SELECT %s::timestamptz::text", (moment,)).fetchone()
            assert row is not None
            assert convert(row[0].encode()) == moment, (zone, row[0])
