"""`digest.db.read_json`: orjson's speed, json's values."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from digest.db import read_json

# What jsonb can hold: no NaN or infinities, integers of any size, any text.
values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


def typed(value: Any) -> Any:
    """`value` with every number tagged by its type (1 == 1.0 == True otherwise)."""
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [typed(v) for v in value]
    return (type(value).__name__, repr(value))


@given(values)
def test_reads_what_json_reads(value: Any) -> None:
    data = json.dumps(value, ensure_ascii=False).encode()
    assert typed(read_json(data)) == typed(json.loads(data))


def test_big_integers_stay_exact() -> None:
    """orjson alone would read these as floats."""
    assert read_json(b'{"n": 123456789012345678901234567890}') == {
        "n": 123456789012345678901234567890
    }
    assert read_json(b"[18446744073709551616, -9223372036854775809]") == [
        18446744073709551616,
        -9223372036854775809,
    ]


def test_what_orjson_refuses_is_read_by_json() -> None:
    assert read_json(b"[1e400]") == [float("inf")]
