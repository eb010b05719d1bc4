"""Boundary validation of events and recipients, and the line readers: no database."""

from __future__ import annotations

import json
from collections import OrderedDict
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from digest.ingest.events import EventIn, validate_event
from digest.ingest.lines import read_jsonl
from digest.ingest.recipients import read_csv, validate_recipient

BASE: dict[str, Any] = {
    "user_id": "u1",
    "category": "comment",
    "entity_type": "post",
    "entity_id": 7,
}


def test_ids_given_as_ints_become_text() -> None:
    """Integer ids are accepted and stored as their decimal text."""
    row = validate_event({**BASE, "user_id": 42, "actor_id": 9, "event_key": 5})
    assert (row[0], row[3], row[4], row[7]) == ("42", "7", "9", "5")


def test_booleans_are_not_ids() -> None:
    """True is not user 1."""
    with pytest.raises(match="user_id must be a string, got a boolean"):
        validate_event({**BASE, "user_id": True})


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("2026-01-02T03:04:05", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2026-01-02T03:04:05Z", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2026-01-02", datetime(2026, 1, 2, tzinfo=UTC)),
        (
            datetime(2026, 1, 2, 3, tzinfo=timezone(timedelta(hours=9))),
            datetime(2026, 1, 1, 18, tzinfo=UTC),
        ),
    ],
)
def test_created_at_without_offset_is_utc(given: object, expected: datetime) -> None:
    """created_at: naive means UTC; an offset is kept; the instant is what counts."""
    moment = validate_event({**BASE, "created_at": given})[6]
    assert moment == expected
    assert moment is not None
    assert moment.tzinfo is not None


def test_missing_created_at_is_left_to_the_database() -> None:
    """Without created_at the row carries None, filled with the transaction's now()."""
    assert validate_event(BASE)[6] is None


def test_payload_is_serialized_compactly_and_verbatim() -> None:
    """The payload is stored as compact JSON, HTML and non-ASCII untouched."""
    payload = OrderedDict([("html", '<a href="x">Zoë & co</a>'), ("n", 1)])
    assert validate_event({**BASE, "payload": payload})[5] == (
        '{"html":"<a href=\\"x\\">Zoë & co</a>","n":1}'
    )


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"x": float("nan")}, "payload is not valid JSON"),
        ({"x": object()}, "payload is not valid JSON"),
        ({"x": "é" * 33_000}, "payload is 66008 bytes serialized"),
        ({"x\u0000": 1}, "payload contains a NUL character"),
        ({"x": "\ud800"}, "payload is not valid Unicode"),
    ],
)
def test_payload_rules(payload: dict[str, Any], reason: str) -> None:
    """NaN, non-JSON values, > 64 KB (counted in UTF-8 bytes), NUL and lone surrogates fail."""
    with pytest.raises(match=reason):
        validate_event({**BASE, "payload": payload})


def test_nul_is_found_in_any_mapping_payload() -> None:
    """A NUL inside a non-dict Mapping payload is caught like in a dict."""
    with pytest.raises(match="payload contains a NUL character"):
        validate_event({**BASE, "payload": OrderedDict([("x", ["a\u0000"])])})


def test_escaped_backslash_u0000_is_not_a_nul() -> None:
    """The text backslash-u-0-0-0-0 in a payload is not mistaken for a NUL character."""
    assert "\\\\u0000" in validate_event({**BASE, "payload": {"x": "\\u0000"}})[5]


def test_category_allow_list_names_the_allowed() -> None:
    """An allow-list refuses other categories and lists the allowed ones."""
    allowed = frozenset({"like", "comment"})
    assert validate_event(BASE, allowed=allowed)[1] == "comment"
    with pytest.raises(match=r"unknown category 'share' \(allowed: comment, like\)"):
        validate_event({**BASE, "category": "share"}, allowed=allowed)


@pytest.mark.parametrize("category", ["a" * 64, "post.liked", "x-y_z.1"])
def test_category_names_that_pass(category: str) -> None:
    """Lower-case names with digits, '_', '.', '-' up to 64 characters are categories."""
    assert validate_event({**BASE, "category": category})[1] == category


@pytest.mark.parametrize("category", ["a" * 65, "Comment", "1st", "with space", 5])
def test_category_names_that_fail(category: object) -> None:
    """Anything else is refused with the rule in the message."""
    with pytest.raises(match="category must be a name"):
        validate_event({**BASE, "category": category})


def test_event_in_is_validated_like_a_mapping() -> None:
    """An EventIn goes through exactly the same rules as a dict."""
    event = EventIn(user_id=1, category="comment", entity_type="post", entity_id=7)
    assert validate_event(event) == validate_event({**BASE, "user_id": 1})
    with pytest.raises(match="payload must be a JSON object"):
        validate_event(EventIn(1, "comment", "post", 7, payload=[1]))  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["a\tb", "a\nb", "tab\t"])
def test_control_characters_in_ids_fail(value: str) -> None:
    """Ids with tabs or line breaks are refused."""
    with pytest.raises(match="entity_type contains a control character"):
        validate_event({**BASE, "entity_type": value})


def test_non_ascii_ids_pass() -> None:
    """Ids are not limited to ASCII."""
    assert validate_event({**BASE, "entity_id": "café-日本"})[3] == "café-日本"


def test_read_jsonl_line_numbers_and_reasons() -> None:
    """read_jsonl skips blanks, accepts BOM on line 1 and CRLF, and numbers physical lines."""
    lines = [
        b'\xef\xbb\xbf{"a": 1}\r\n',
        b"\r\n",
        b'{"a": 2}\n',
        b"\xff\n",
        b'{"a": }\n',
        b'\xef\xbb\xbf{"a": 3}\n',
    ]
    assert list(read_jsonl(lines)) == [
        (1, {"a": 1}, None),
        (3, {"a": 2}, None),
        (4, None, "not valid UTF-8 (byte 1)"),
        (5, None, "invalid JSON: Expecting value (column 7)"),
        (6, None, "byte order mark (BOM) is only allowed at the start of the file"),
    ]


def test_recipient_given_fields_and_defaults() -> None:
    """Only fields present (and not null) are given; the rest carry the defaults."""
    person = validate_recipient(
        {"user_id": 3, "email": "A@EXAMPLE.com", "cadence": None, "weekly_day": "Sunday"}
    )
    assert person.user_id == "3"
    assert person.email == "A@example.com"
    assert person.given == frozenset({"email", "weekly_day"})
    assert (person.cadence, person.weekly_day, person.send_hour) == ("daily", 7, 8)


def test_recipient_empty_name_means_no_name() -> None:
    """A null or empty name is given and clears the name."""
    for name in (None, "", "  "):
        person = validate_recipient({"user_id": 1, "email": "a@example.com", "name": name})
        assert person.name is None
        assert "name" in person.given


def test_read_csv_quoted_newlines_and_short_rows() -> None:
    """CSV records may span lines; a row with the wrong field count is a bad line."""
    lines = [b"user_id,email,name\n", b'1,a@example.com,"two\n', b'lines"\n', b"2,b@example.com\n"]
    assert list(read_csv(lines, "f.csv")) == [
        (3, {"user_id": "1", "email": "a@example.com", "name": "two\nlines"}, None),
        (4, None, "has 2 fields, the header has 3"),
    ]


def test_csv_nul_in_a_name_is_refused() -> None:
    """A NUL byte in a CSV cell never reaches PostgreSQL (which refuses it in text)."""
    ((number, row, reason),) = read_csv([b"user_id,email,name\n", b"1,a@example.com,x\x00y\n"], "f")
    assert (number, reason) == (2, None)
    with pytest.raises(match="name contains a line break or control character"):
        validate_recipient(row)


def test_jsonl_round_trip_of_unicode_escapes() -> None:
    """JSON \\u escapes decode to the characters they name."""
    ((_, value, _),) = read_jsonl([json.dumps({"name": "Zoë"}).encode()])
    assert value == {"name": "Zoë"}
