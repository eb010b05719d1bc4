"""The one check of JSON from outside: its limits, exactly at their edges, and its messages."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from digest.untrusted import MAX_DEPTH, MAX_NUMBER_CHARS, JsonError, NotJsonError, check, loads

LIMIT = 1 << 20


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_nesting_up_to_the_limit_is_read_and_one_more_is_refused() -> None:
    """64 levels parse; 65 are refused before json recurses, by loads and by check."""
    assert loads(nested(MAX_DEPTH), max_bytes=LIMIT) is not None
    with pytest.raises(JsonError, match=f"nested more than {MAX_DEPTH} levels deep"):
        loads(nested(MAX_DEPTH + 1), max_bytes=LIMIT)
    with pytest.raises(JsonError, match="nested more than"):
        check(json.loads(nested(MAX_DEPTH + 1)))
    check(json.loads(nested(MAX_DEPTH)))


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    """Brackets in strings, escaped quotes included, are text, not nesting."""
    text = json.dumps({"a": '\\"' + "[{" * 500, "b": ["]" * 500]})
    assert loads(text, max_bytes=LIMIT) == json.loads(text)


def test_an_unterminated_string_is_scanned_in_linear_time() -> None:
    """Many escaped quotes after an unclosed one cannot make the nesting scan quadratic."""
    text = '"' + '\\"' * 120_000 + "[" * (MAX_DEPTH + 1)
    started = time.monotonic()
    with pytest.raises(NotJsonError, match="Unterminated string"):
        loads(text, max_bytes=LIMIT)
    assert time.monotonic() - started < 2  # quadratic would be minutes


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("9" * (MAX_NUMBER_CHARS + 1), "a number of 101 characters is over the limit of 100"),
        ("0." + "1" * MAX_NUMBER_CHARS, "a number of 102 characters"),
        ("1e309", "the number 1e309 is out of range"),
        ("-1e400", "the number -1e400 is out of range"),
        ("1e-1000", "the number 1e-1000 is out of range"),
        ("NaN", "NaN is not a JSON number"),
        ("[-Infinity]", "-Infinity is not a JSON number"),
    ],
)
def test_numbers_json_or_jsonb_cannot_take_are_refused(text: str, reason: str) -> None:
    """Over 100 characters, beyond a double, a 4-digit exponent, NaN and infinities."""
    with pytest.raises(JsonError, match=reason):
        loads(text, max_bytes=LIMIT)


@pytest.mark.parametrize("text", ["9" * MAX_NUMBER_CHARS, "1e308", "-1e-999", "0.5", "-0"])
def test_numbers_within_the_limits_are_read_as_json_reads_them(text: str) -> None:
    """Numbers up to the limits are read exactly as json.loads reads them."""
    assert loads(text, max_bytes=LIMIT) == json.loads(text)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ({"mail": {"destination": ["a\x00b"]}}, r"mail\.destination\[0\] contains a NUL"),
        ({"mail": {"messageId": "\ud800"}}, r"mail\.messageId is not valid Unicode"),
        ({"a b": {"x\x00": 1}}, r'a key in \["a b"\] contains a NUL'),
        ({"\udfff": 1}, "a key is not valid Unicode"),
        ("\x00", "the value contains a NUL"),
    ],
)
def test_strings_the_database_refuses_are_named_by_their_path(value: Any, reason: str) -> None:
    """NUL and lone surrogates, in values or keys, are refused naming where they are."""
    with pytest.raises(JsonError, match=reason):
        loads(json.dumps(value), max_bytes=LIMIT)
    with pytest.raises(JsonError, match=reason):
        check(value)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ({"n": 10**200}, "n is a number of more than 100 digits"),
        ({"n": [float("nan")]}, r"n\[0\] is nan"),
        ({"t": object()}, r"t is not a JSON value \(object\)"),
        ({1: "x"}, "a key is not a string"),
    ],
)
def test_check_refuses_python_values_json_cannot_write_back(value: Any, reason: str) -> None:
    """Values handed over from Python (not parsed) get the same limits."""
    with pytest.raises(JsonError, match=reason):
        check(value)


def test_size_is_counted_in_utf8_bytes_for_text_and_bytes() -> None:
    """The limit is on UTF-8 bytes, whether the JSON arrives as text or as bytes."""
    text = json.dumps("é" * 10, ensure_ascii=False)  # 22 bytes, 12 characters
    assert loads(text, max_bytes=22) == "é" * 10
    assert loads(text.encode(), max_bytes=22) == "é" * 10
    for data in (text, text.encode()):
        with pytest.raises(JsonError, match="22 bytes, over the 21-byte limit"):
            loads(data, max_bytes=21)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b'{"a": "\xff"}', r"not UTF-8 \(byte 8\)"),
        ('{"a": "\udcff"}', r"not valid Unicode \(lone surrogate\)"),
        ('{"a": 1,}', r"not valid JSON: Expecting property name .* \(column 9\)"),
        ('{\n"a": x}', r"not valid JSON: Expecting value \(line 2, column 6\)"),
    ],
)
def test_text_that_is_not_json_is_a_not_json_error(data: str | bytes, reason: str) -> None:
    """Bad UTF-8, undecodable command-line bytes and syntax errors say where."""
    with pytest.raises(NotJsonError, match=reason):
        loads(data, max_bytes=LIMIT)
