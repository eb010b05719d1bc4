"""The orjson fast path of payload encoding: exactly json's text and refusals, no database."""

from __future__ import annotations

import enum
import json
import uuid
from collections import OrderedDict
from datetime import date
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from digest.errors import ValidationError
from digest.ingest import events
from digest.ingest.events import validate_event

BASE: dict[str, Any] = {"user_id": "u1", "category": "comment", "entity_type": "post"}
REFERENCE = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


class Colour(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


class Text(str):
    pass


class Number(float):
    pass


# Characters where json and orjson could part ways: escapes, NUL, lone surrogates, separators.
SPECIAL = st.sampled_from(
    ["\x00", "\x1f", "\x7f", "\x85", '"', "\\", "/", "\u2028", "\ud800", "\udfff", "é", "😀"]
)
TEXT = st.text(st.characters() | SPECIAL, max_size=12)
# Integers around the 64-bit limits orjson stops at, and beyond.
BIG = st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**40])
# Beyond plain JSON: json writes subclasses as their base type and refuses the rest, some of
# which (enums, UUIDs, dates) orjson would write.
ODD = st.sampled_from(
    [
        Colour.RED,
        Level.HIGH,
        uuid.UUID(int=1),
        date(2026, 1, 2),
        Text("sub"),
        Number(1.5),
        OrderedDict([("a", 1)]),
        b"bytes",
        {1, 2},
        object(),
    ]
)
# Keys json turns into strings (and a str subclass) that orjson refuses.
ODD_KEYS = st.integers() | BIG | st.floats() | st.booleans() | st.none() | st.just(Text("k"))


def nests(keys: st.SearchStrategy[Any], leaves: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Lists, tuples and dicts of `leaves` in any nesting."""
    return st.recursive(
        leaves,
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.lists(inner, max_size=3).map(tuple)
            | st.dictionaries(keys, inner, max_size=4)
        ),
        max_leaves=25,
    )


# Half the payloads are plain JSON-like data (floats, NaN and infinity included), half mix in
# everything orjson and json disagree on.
PLAIN = nests(TEXT, st.none() | st.booleans() | st.integers() | st.floats() | TEXT)
MIXED = nests(
    TEXT | ODD_KEYS, st.none() | st.booleans() | st.integers() | BIG | st.floats() | TEXT | ODD
)
PAYLOADS = st.dictionaries(TEXT, PLAIN, max_size=5) | st.dictionaries(
    TEXT | ODD_KEYS, MIXED, max_size=5
)


def outcome(payload: object) -> tuple[bool, str]:
    """(True, stored payload text) or (False, the ValidationError's message)."""
    try:
        return True, validate_event({**BASE, "entity_id": 1, "payload": payload})[5]
    except ValidationError as exc:
        return False, str(exc)


@settings(max_examples=500, deadline=None)
@given(PAYLOADS)
def test_fast_path_writes_exactly_what_json_writes(payload: dict[Any, Any]) -> None:
    """orjson's text, when it is used, is byte for byte the json encoder's text."""
    fast = events._orjson_encode(payload)
    if fast is not None:
        assert fast == REFERENCE.encode(payload)


@settings(max_examples=500, deadline=None)
@given(PAYLOADS)
def test_payload_outcome_is_the_json_paths(payload: dict[Any, Any]) -> None:
    """Every payload is stored or refused, with the same text or message, as by json alone."""
    with mock.patch.object(events, "_orjson_encode", return_value=None):
        expected = outcome(payload)
    assert outcome(payload) == expected


def test_plain_payloads_take_the_fast_path() -> None:
    """Strings, ints, booleans, nulls, lists and dicts are encoded by orjson."""
    payload = {"title": "Zoë <b>", "n": 2**64 - 1, "ok": True, "none": None, "list": [1, ("a",)]}
    with mock.patch.object(events, "_PAYLOAD_ENCODER") as json_encoder:
        stored = validate_event({**BASE, "entity_id": 1, "payload": payload})[5]
    json_encoder.encode.assert_not_called()
    assert stored == REFERENCE.encode(payload)


def nested(depth: int) -> dict[str, Any]:
    """A payload `depth` objects deep."""
    payload: dict[str, Any] = {}
    for _ in range(depth):
        payload = {"x": payload}
    return payload


@pytest.mark.parametrize(
    ("payload", "stored"),
    [
        ({1: "a", 1.5: "b", False: "c", None: "d"}, '{"1":"a","1.5":"b","false":"c","null":"d"}'),
        ({"big": 2**64, "low": -(2**63) - 1}, f'{{"big":{2**64},"low":{-(2**63) - 1}}}'),
        ({"f": 1e-05, "g": 1e16}, '{"f":1e-05,"g":1e+16}'),
        ({"e": Level.HIGH, "s": Text("x"), "o": OrderedDict(a=1)}, '{"e":3,"s":"x","o":{"a":1}}'),
        (nested(300), '{"x":' * 300 + "{}" + "}" * 300),  # past orjson's depth limit of 255
    ],
)
def test_what_orjson_would_refuse_is_still_stored(payload: dict[Any, Any], stored: str) -> None:
    """Non-str keys, ints beyond 64 bits, float spelling, subclasses, deep nests: json's text."""
    assert validate_event({**BASE, "entity_id": 1, "payload": payload})[5] == stored


def cycle() -> dict[str, Any]:
    """A payload that contains itself."""
    payload: dict[str, Any] = {}
    payload["self"] = [payload]
    return payload


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"x": [float("nan")]}, "payload is not valid JSON: Out of range float values"),
        ({"x": {"y": float("-inf")}}, "payload is not valid JSON: Out of range float values"),
        ({"x": Colour.RED}, "payload is not valid JSON: Object of type Colour is not"),
        ({"x": uuid.UUID(int=1)}, "payload is not valid JSON: Object of type UUID is not"),
        ({"x": date(2026, 1, 2)}, "payload is not valid JSON: Object of type date is not"),
        ({"x": ["\ud800"]}, "payload is not valid Unicode"),
        ({"x": "a\x00"}, "payload contains a NUL character"),
        (cycle(), "payload is not valid JSON: Circular reference detected"),
    ],
)
def test_what_json_refuses_is_still_refused(payload: dict[str, Any], reason: str) -> None:
    """NaN and infinity, enums, UUIDs, dates, lone surrogates, NUL and cycles: refused."""
    with pytest.raises(ValidationError, match=reason):
        validate_event({**BASE, "entity_id": 1, "payload": payload})


def test_size_limit_counts_the_fast_paths_bytes() -> None:
    """64 KB of serialized UTF-8 passes and one byte more fails, on the orjson path too."""
    filler = 64 * 1024 - len('{"x":""}') - 2
    stored = validate_event({**BASE, "entity_id": 1, "payload": {"x": "a" * filler + "é"}})[5]
    assert len(stored.encode()) == 64 * 1024
    with pytest.raises(ValidationError, match="payload is 65537 bytes serialized"):
        validate_event({**BASE, "entity_id": 1, "payload": {"x": "a" * filler + "éa"}})
