"""The fast JSON helpers of pipeline.jsonify: the same results as the standard library.

The assembler's content hashes (kept in its state and in the document topic's
``digest`` header) are taken of :func:`canonical`: a different byte would make every
document look changed after an upgrade.
"""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.assembler.state import serialize_row
from pipeline.jsonify import canonical, loads


def _standard(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


json_native = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.text(),  # any code point but lone surrogates (not UTF-8: neither encodes them)
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(json_native)
def test_canonical_is_the_standard_encoding(value: Any) -> None:
    assert canonical(value) == _standard(value)


def test_canonical_falls_back_for_what_orjson_refuses() -> None:
    for value in ({"n": 2**70}, [-(2**64)], {"b": [1, {"c": 2**65}]}):
        assert canonical(value) == _standard(value)


@settings(max_examples=300, deadline=None)
@given(json_native)
def test_loads_reads_what_the_standard_encoder_wrote(value: Any) -> None:
    text = json.dumps(value, ensure_ascii=False)
    assert loads(text) == json.loads(text)


def test_loads_falls_back_for_nan_infinity_and_lone_surrogates() -> None:
    assert math.isnan(loads('{"w": NaN}')["w"])
    assert loads("[Infinity, -Infinity]") == [math.inf, -math.inf]
    assert loads('["\\ud800"]') == ["\ud800"]


def test_serialize_row_text_does_not_depend_on_the_fast_path() -> None:
    # Native values take orjson, a float the standard encoder: both give the same text.
    native = {"id": 7, "name": "Café «x»\n", "active": True, "note": None}
    assert serialize_row("products", "7", native, None) == json.dumps(
        native, separators=(",", ":"), ensure_ascii=False
    )
    with_float = {**native, "ratio": 1e16, "nan": math.nan}
    text = serialize_row("products", "7", with_float, None)
    assert text == json.dumps(with_float, separators=(",", ":"), ensure_ascii=False)
    assert math.isnan(loads(text)["nan"])
