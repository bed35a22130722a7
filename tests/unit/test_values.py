"""Unit tests of the text-format value converters (pipeline.values)."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.reader.pgoutput import BinaryValue
from pipeline.values import (
    BUILTIN_TYPE_NAMES,
    BUILTIN_TYPE_OIDS,
    CONVERSION_ERRORS,
    convert_text,
    converter_for,
    parse_array,
)

INT2, INT4, INT8, OID, NUMERIC, FLOAT4, FLOAT8 = 21, 23, 20, 26, 1700, 700, 701
TEXT, VARCHAR, BPCHAR, NAME, BOOL, BYTEA = 25, 1043, 1042, 19, 16, 17
TIMESTAMPTZ, TIMESTAMP, DATE, TIME, TIMETZ = 1184, 1114, 1082, 1083, 1266
JSON, JSONB, UUID_OID = 114, 3802, 2950


@pytest.mark.parametrize(
    ("oid", "text", "expected"),
    [
        (INT2, b"-32768", -32768),
        (INT4, b"2147483647", 2147483647),
        (INT8, b"-9223372036854775808", -9223372036854775808),
        (OID, b"4294967295", 4294967295),
        (NUMERIC, b"12345678901234567890.12345678901234567890", None),
        (NUMERIC, b"-0.000", Decimal("-0.000")),
        (FLOAT8, b"3.141592653589793", 3.141592653589793),
        (FLOAT4, b"1.5", 1.5),
        (FLOAT8, b"-Infinity", -math.inf),
        (FLOAT8, b"1e-308", 1e-308),
        (TEXT, "grüße \U0001f600".encode(), "grüße \U0001f600"),
        (VARCHAR, b"", ""),
        (BPCHAR, b"ab   ", "ab   "),
        (NAME, b"pg_class", "pg_class"),
        (BOOL, b"t", True),
        (BOOL, b"f", False),
        (BYTEA, b"\\x00ff10", b"\x00\xff\x10"),
        (BYTEA, b"\\x", b""),
        (
            UUID_OID,
            b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        ),
        (DATE, b"2024-02-29", date(2024, 2, 29)),
        (DATE, b"infinity", date.max),
        (DATE, b"-infinity", date.min),
        (TIME, b"23:59:59.999999", time(23, 59, 59, 999999)),
        (TIME, b"00:00:00", time(0, 0)),
        (TIMETZ, b"12:00:00+05:30", time(12, 0, tzinfo=timezone(timedelta(hours=5, minutes=30)))),
        (TIMESTAMP, b"2024-01-02 03:04:05.5", datetime(2024, 1, 2, 3, 4, 5, 500000)),
        (TIMESTAMP, b"infinity", datetime.max),
        (TIMESTAMP, b"-infinity", datetime.min),
        (99999, b"happy", "happy"),  # unknown OID (enum, user type): str
        (1186, b"1 day 02:00:00", "1 day 02:00:00"),  # built-in without converter: str
    ],
)
def test_scalars(oid: int, text: bytes, expected: Any) -> None:
    if expected is None:
        expected = Decimal(text.decode())
    result = convert_text(oid, text)
    assert result == expected
    assert type(result) is type(expected)


def test_numeric_exact_and_special() -> None:
    value = convert_text(NUMERIC, b"12345678901234567890.12345678901234567890")
    assert str(value) == "12345678901234567890.12345678901234567890"
    assert convert_text(NUMERIC, b"NaN").is_nan()
    assert convert_text(NUMERIC, b"Infinity") == Decimal("Infinity")
    assert convert_text(NUMERIC, b"-Infinity") == Decimal("-Infinity")
    assert str(convert_text(NUMERIC, b"1.50")) == "1.50"  # scale kept


def test_float_special() -> None:
    assert math.isnan(convert_text(FLOAT8, b"NaN"))
    assert convert_text(FLOAT4, b"Infinity") == math.inf


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"2024-02-29 12:34:56.789012+00", datetime(2024, 2, 29, 12, 34, 56, 789012, tzinfo=UTC)),
        (b"2024-02-29 18:04:56+05:30", datetime(2024, 2, 29, 12, 34, 56, tzinfo=UTC)),
        (b"2024-02-29 09:34:56-03", datetime(2024, 2, 29, 12, 34, 56, tzinfo=UTC)),
        (b"1900-01-01 05:53:28+05:53:28", datetime(1900, 1, 1, tzinfo=UTC)),
        (b"0001-01-01 00:00:00+00", datetime(1, 1, 1, tzinfo=UTC)),
        (b"infinity", datetime.max.replace(tzinfo=UTC)),
        (b"-infinity", datetime.min.replace(tzinfo=UTC)),
    ],
)
def test_timestamptz(text: bytes, expected: datetime) -> None:
    result = convert_text(TIMESTAMPTZ, text)
    assert result == expected
    assert result.tzinfo is UTC


@pytest.mark.parametrize(
    ("oid", "text", "message"),
    [
        (TIMESTAMPTZ, b"0044-03-15 12:00:00+00 BC", "BC"),
        (TIMESTAMPTZ, b"10000-01-01 00:00:00+00", "after 9999"),
        (TIMESTAMPTZ, b"2024-01-01 00:00:00", "no UTC offset"),
        (TIMESTAMP, b"2024-01-01 00:00:00+00", "carries a UTC offset"),
        (TIMESTAMP, b"0001-12-31 00:00:00 BC", "BC"),
        (DATE, b"4713-01-01 BC", "BC"),
        (DATE, b"01/02/2024", "DateStyle must be ISO"),
        (TIME, b"24:00:00", "24:00:00"),
        (BYTEA, b"\\000", "hex format"),
        (UUID_OID, b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1_", None),
        (UUID_OID, b"not-a-uuid", None),
        (NUMERIC, b"12,5", None),
        (INT4, b"1.5", None),
        (JSONB, b"{", None),
    ],
)
def test_unrepresentable_or_malformed_values_raise(
    oid: int, text: bytes, message: str | None
) -> None:
    if message is None:
        with pytest.raises(CONVERSION_ERRORS):
            convert_text(oid, text)
    else:
        with pytest.raises(ValueError, match=message):
            convert_text(oid, text)


def test_bool_rejects_other_text() -> None:
    with pytest.raises(CONVERSION_ERRORS):
        convert_text(BOOL, b"true")


def test_json_keeps_numbers_exact() -> None:
    raw = b'{"i": 12345678901234567890123, "f": 0.1, "big": 1e400, "l": [1, 2.50, null, true]}'
    assert convert_text(JSONB, raw) == {
        "i": 12345678901234567890123,
        "f": Decimal("0.1"),
        "big": Decimal("1E+400"),
        "l": [1, Decimal("2.50"), None, True],
    }
    assert convert_text(JSON, b'"text"') == "text"
    assert convert_text(JSONB, b"null") is None


def test_converter_lookup_is_stable() -> None:
    assert converter_for(INT4) is converter_for(INT4)
    assert converter_for(1007) is converter_for(1007)
    assert converter_for(123456) is converter_for(654321)  # the str converter


def test_builtin_maps_are_consistent() -> None:
    for oid, name in BUILTIN_TYPE_NAMES.items():
        assert BUILTIN_TYPE_OIDS[name] == oid
    assert BUILTIN_TYPE_NAMES[1231] == "_numeric"
    assert BUILTIN_TYPE_NAMES[3807] == "_jsonb"


def test_every_converter_rejects_binary_values() -> None:
    # RelationCache relies on this to report binary-format values (see relations.row).
    for oid in [*BUILTIN_TYPE_NAMES, 99999]:
        with pytest.raises(CONVERSION_ERRORS):
            converter_for(oid)(BinaryValue(b"\x00\x00\x00\x01"))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- arrays


@pytest.mark.parametrize(
    ("oid", "text", "expected"),
    [
        (1005, b"{1,-2,NULL}", [1, -2, None]),
        (1007, b"{}", []),
        (1016, b"{{1,2},{3,4}}", [[1, 2], [3, 4]]),
        (1016, b"{{{1},{2}},{{3},{4}}}", [[[1], [2]], [[3], [4]]]),
        (1007, b"[0:2]={1,2,3}", [1, 2, 3]),
        (1007, b"[-1:0][2:3]={{1,2},{3,4}}", [[1, 2], [3, 4]]),
        (1231, b"{1.5,NaN,Infinity,-Infinity,NULL}", None),
        (
            1009,
            b'{"a,b","q\\"uote","back\\\\slash","{x}",NULL,"NULL","",\xc3\xbcn,"  s p  "}',
            ["a,b", 'q"uote', "back\\slash", "{x}", None, "NULL", "", "ün", "  s p  "],
        ),
        (1015, b'{plain,"with space"}', ["plain", "with space"]),
        (1014, b'{"ab  ",c}', ["ab  ", "c"]),
        (1000, b"{t,f,NULL}", [True, False, None]),
        (
            2951,
            b"{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11,NULL}",
            [UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"), None],
        ),
        (
            3807,
            b'{"{\\"a\\": 1.5}","[1, 2]",null,NULL,"\\"NULL\\""}',
            [{"a": Decimal("1.5")}, [1, 2], None, None, "NULL"],
        ),
        (1182, b"{2024-02-29,infinity}", [date(2024, 2, 29), date.max]),
        (
            1185,
            b'{"2024-02-29 18:04:56+05:30",NULL}',
            [datetime(2024, 2, 29, 12, 34, 56, tzinfo=UTC), None],
        ),
        (1022, b"{1.5,-Infinity,1e+300}", [1.5, -math.inf, 1e300]),
        (1001, b'{"\\\\x00ff",NULL}', [b"\x00\xff", None]),
        (1187, b'{"1 day","2 mons"}', ["1 day", "2 mons"]),
        (99999, b"{a,b}", "{a,b}"),  # unknown (e.g. enum array): its text
    ],
)
def test_arrays(oid: int, text: bytes, expected: Any) -> None:
    result = convert_text(oid, text)
    if expected is None:  # the numeric case: NaN never equals itself
        assert result[0] == Decimal("1.5") and result[1].is_nan()
        assert result[2:] == [Decimal("Infinity"), Decimal("-Infinity"), None]
        return
    assert result == expected


@pytest.mark.parametrize(
    "text",
    [
        b"",
        b"1,2",
        b"{1,2",
        b"{1,2}}",
        b"{1,,2}",
        b"{,}",
        b'{"abc}',
        b'{"a"b}',
        b"{{1},2",
        b"{a}x",
        b"[1:2={1,2}",
        b"[2:1]={1}",
        b"[1:x]={1}",
        b"{{1,2},{3,4}",
    ],
)
def test_malformed_arrays_raise_value_error(text: bytes) -> None:
    with pytest.raises(ValueError):
        parse_array(text, bytes.decode)
    with pytest.raises(CONVERSION_ERRORS):
        convert_text(1009, text)


# ------------------------------------------------------------------ property tests

_ARRAY_SPACE = " \t\n\r\v\f"


def pg_array_text(value: list[Any]) -> bytes:
    """Format like PostgreSQL's array_out (delimiter ',')."""

    def element(item: Any) -> str:
        if isinstance(item, list):
            return "{" + ",".join(element(i) for i in item) + "}"
        if item is None:
            return "NULL"
        text = str(item)
        needs_quotes = (
            text == ""
            or text.upper() == "NULL"
            or any(c in '{}",\\' or c in _ARRAY_SPACE for c in text)
        )
        if needs_quotes:
            return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return text

    return element(value).encode()


text_element = st.one_of(st.none(), st.text(alphabet=st.characters(exclude_categories=["Cs"])))


@given(st.lists(text_element, max_size=12))
def test_text_array_round_trip(items: list[str | None]) -> None:
    assert convert_text(1009, pg_array_text(items)) == items


@given(
    st.integers(1, 4).flatmap(
        lambda width: st.lists(
            st.lists(
                st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
                min_size=width,
                max_size=width,
            ),
            min_size=1,
            max_size=4,
        )
    ),
    st.integers(-5, 5),
)
def test_two_dimensional_int8_round_trip(rows: list[list[int | None]], lower: int) -> None:
    text = pg_array_text(rows)
    assert convert_text(1016, text) == rows
    prefixed = f"[{lower}:{lower + len(rows) - 1}][1:{len(rows[0])}]=".encode() + text
    assert convert_text(1016, prefixed) == rows


finite_decimals = st.decimals(allow_nan=False, allow_infinity=False)


@given(st.lists(st.one_of(st.none(), finite_decimals), max_size=8))
def test_numeric_array_round_trip(items: list[Decimal | None]) -> None:
    result = convert_text(1231, pg_array_text(items))
    assert result == items
    assert [str(r) for r in result] == [str(i) for i in items]


@given(finite_decimals)
def test_numeric_round_trip_keeps_digits(value: Decimal) -> None:
    result = convert_text(NUMERIC, str(value).encode())
    assert str(result) == str(value)


@given(st.text(alphabet=st.characters(exclude_categories=["Cs"])))
def test_text_round_trip(value: str) -> None:
    assert convert_text(TEXT, value.encode()) == value


@given(st.datetimes(timezones=st.just(UTC)), st.integers(-15 * 60, 15 * 60))
def test_timestamptz_round_trip_any_offset(moment: datetime, offset_minutes: int) -> None:
    offset = timedelta(minutes=offset_minutes)
    try:
        local = moment.astimezone(timezone(offset))
    except OverflowError:
        return
    sign = "+" if offset_minutes >= 0 else "-"
    hours, minutes = divmod(abs(offset_minutes), 60)
    text = local.replace(tzinfo=None).isoformat(sep=" ") + f"{sign}{hours:02d}:{minutes:02d}"
    assert convert_text(TIMESTAMPTZ, text.encode()) == moment


@given(
    st.lists(text_element, max_size=6),
    st.integers(0, 200),
    st.sampled_from([b",", b'"', b"{", b"}", b"\\", b"", b"N", b"NULL"]),
    st.booleans(),
)
def test_array_fast_paths_agree_with_the_full_parser(
    items: list[str | None], position: int, inserted: bytes, replace: bool
) -> None:
    # Mangle well-formed text at one spot: whatever the full parser (parse_array) says --
    # a list or a ValueError -- the converter's fast paths must say the same.
    text = pg_array_text(items)
    position = min(position, len(text))
    mangled = text[:position] + inserted + text[position + int(replace) :]
    convert = converter_for(1009)
    try:
        expected = parse_array(mangled, bytes.decode)
    except ValueError:
        with pytest.raises(ValueError):
            convert(mangled)
    else:
        assert convert(mangled) == expected
