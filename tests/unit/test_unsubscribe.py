"""Unsubscribe tokens: round trip, fixed length, expiry, legacy tokens; nothing else verifies."""

from __future__ import annotations

import base64
import re
from datetime import date, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from digest.ingest.fields import MAX_TEXT
from digest.unsubscribe import (
    MAX_AGE_DAYS,
    MAX_TOKEN_LENGTH,
    TOKEN_LENGTH,
    Token,
    make_legacy_token,
    make_token,
    make_token_v1,
    unsubscribe_url,
    verify_token,
)

SECRET = "s3cret-key"
DAY = date(2026, 12, 3)
B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@pytest.mark.parametrize(
    ("bucket", "recipient_id", "version"),
    [(0, 1, 0), (17, 42, 7), (4095, 2**48 - 1, 2**31 - 1), (2048, 981_234, 1)],
)
def test_round_trip(bucket: int, recipient_id: int, version: int) -> None:
    """A token names the recipient and its bucket, the subscription version and the day it
    was issued."""
    token = make_token(SECRET, bucket, recipient_id, version, DAY)
    assert verify_token(SECRET, token) == Token(recipient_id, None, version, DAY, bucket)


@pytest.mark.parametrize(
    ("recipient_id", "version"), [(1, 0), (42, 7), (2**63 - 1, 2**31 - 1), (981_234, 1)]
)
def test_format_1_tokens_still_verify_without_a_bucket(recipient_id: int, version: int) -> None:
    """A token from mail sent before the bucket (format 1) still names its recipient."""
    token = make_token_v1(SECRET, recipient_id, version, DAY)
    assert verify_token(SECRET, token) == Token(recipient_id, None, version, DAY, None)


def test_token_has_a_fixed_length_and_is_url_safe() -> None:
    """Every token is 44 base64url characters, whatever the recipient: safe in a path, a header."""
    tokens = [
        make_token(SECRET, b, rid, v, DAY)
        for b in (0, 4095)
        for rid in (1, 2**40, 2**48 - 1)
        for v in (0, 9)
    ]
    tokens += [make_token_v1(SECRET, rid, 0, DAY) for rid in (1, 2**63 - 1)]
    assert {len(t) for t in tokens} == {TOKEN_LENGTH} == {44}
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", t) for t in tokens)


def test_the_issue_day_is_the_utc_date_of_the_moment_given() -> None:
    """An aware datetime (a run's first attempt) is issued on its UTC day."""
    evening = datetime(2026, 12, 3, 23, 30, tzinfo=timezone(timedelta(hours=-5)))
    token = verify_token(SECRET, make_token(SECRET, 7, 1, 0, evening))
    assert token is not None
    assert token.issued == date(2026, 12, 4)
    with pytest.raises(ValueError, match="aware"):
        make_token(SECRET, 7, 1, 0, datetime(2026, 12, 3, 12))


def test_out_of_range_fields_are_refused() -> None:
    """Buckets, ids, versions and days that do not fit the format raise instead of wrapping
    around."""
    for bucket, recipient_id, version in (
        (0, 0, 0),
        (0, -1, 0),
        (0, 2**48, 0),
        (0, 1, -1),
        (0, 1, 2**31),
        (-1, 1, 0),
        (4096, 1, 0),
    ):
        with pytest.raises(ValueError, match="out of range"):
            make_token(SECRET, bucket, recipient_id, version, DAY)
    with pytest.raises(ValueError, match="out of range"):
        make_token_v1(SECRET, 2**63, 0, DAY)


def test_expiry() -> None:
    """A token works for MAX_AGE_DAYS (at least 60) after its day; a legacy one has no day."""
    assert MAX_AGE_DAYS >= 60
    token = Token(1, None, 0, DAY)
    assert not token.expired(DAY + timedelta(days=MAX_AGE_DAYS))
    assert token.expired(DAY + timedelta(days=MAX_AGE_DAYS + 1))
    assert not token.expired(DAY - timedelta(days=1))  # a clock behind the worker's
    assert not Token(None, "42", 0, None).expired(DAY + timedelta(days=10_000))


def test_url() -> None:
    """The URL is base_url/u/TOKEN, with no double slash."""
    token = make_token(SECRET, 7, 42, 1, DAY)
    assert unsubscribe_url("https://app.example.com/", SECRET, 7, 42, 1, DAY) == (
        f"https://app.example.com/u/{token}"
    )


def test_tampered_tokens_fail() -> None:
    """Changing any character makes the token invalid."""
    token = make_token(SECRET, 7, 42, 3, DAY)
    for index, char in enumerate(token):
        for replacement in ("A", "b", "-"):
            if replacement != char:
                forged = token[:index] + replacement + token[index + 1 :]
                assert verify_token(SECRET, forged) is None, forged


def test_a_mac_does_not_fit_other_fields() -> None:
    """A valid MAC moved onto another bucket, recipient, version or format does not verify."""
    mine = base64.urlsafe_b64decode(make_token(SECRET, 7, 42, 3, DAY))
    for other in (
        make_token(SECRET, 8, 42, 3, DAY),
        make_token(SECRET, 7, 43, 3, DAY),
        make_token(SECRET, 7, 42, 4, DAY),
        make_token_v1(SECRET, 42, 3, DAY),
    ):
        theirs = base64.urlsafe_b64decode(other)
        spliced = base64.urlsafe_b64encode(theirs[:17] + mine[17:]).decode()
        assert verify_token(SECRET, spliced) is None


def test_truncated_tokens_fail() -> None:
    """Every prefix of a token is rejected."""
    token = make_token(SECRET, 7, 42, 0, DAY)
    for end in range(len(token)):
        assert verify_token(SECRET, token[:end]) is None


def test_wrong_purpose_or_key_fails() -> None:
    """A token for one purpose or key does not verify for another."""
    token = make_token(SECRET, 7, 42, 0, DAY, purpose="digest")
    assert verify_token(SECRET, token, purpose="alerts") is None
    assert verify_token("other-key", token) is None
    alerts = make_token(SECRET, 7, 42, 0, DAY, purpose="alerts")
    assert verify_token(SECRET, alerts, "alerts") == Token(42, None, 0, DAY, 7)


def test_an_unknown_format_fails() -> None:
    """Only formats 1 and 2 are read; another first byte is not a token."""
    raw = bytearray(base64.urlsafe_b64decode(make_token(SECRET, 7, 42, 0, DAY)))
    for first in (0, 3, 255):
        raw[0] = first
        assert verify_token(SECRET, base64.urlsafe_b64encode(bytes(raw)).decode()) is None


def test_non_canonical_base64_fails() -> None:
    """Another spelling of the same bytes (padding, trailing bits) is not accepted."""
    token = make_token(SECRET, 7, 42, 0, DAY)
    assert verify_token(SECRET, token + "=") is None
    sibling = B64URL[B64URL.index(token[-1]) ^ 1]
    assert verify_token(SECRET, token[:-1] + sibling) is None


# ---------------------------------------------------------------------------- legacy tokens


@pytest.mark.parametrize(
    "user_id", ["42", "user-7f3a", "ünïcödé 😀", "a" * MAX_TEXT, "日本語" * (MAX_TEXT // 3)]
)
def test_legacy_tokens_still_verify_as_version_0(user_id: str) -> None:
    """Legacy `base64(user_id).mac` tokens verify as version 0 up to the longest user id."""
    token = make_legacy_token(SECRET, user_id)
    assert len(token) <= MAX_TOKEN_LENGTH
    assert verify_token(SECRET, token) == Token(None, user_id, 0, None)


@pytest.mark.parametrize(
    ("token", "user_id"),
    [
        ("NDI.R0vpHNg_LNgE7v2rgeU0Unml_MsxBNsY-7gy87oKTdE", "42"),
        ("w7xuw69jw7Zkw6kg8J-YgA.eMqbHAKGAXOsO2o-MsdFTRp2QTLzQis40HG_qe3uKj8", "ünïcödé 😀"),
    ],
)
def test_tokens_made_before_the_upgrade_verify(token: str, user_id: str) -> None:
    """Tokens the previous release put in mail (made by its code, kept here) still verify."""
    assert verify_token(SECRET, token) == Token(None, user_id, 0, None)


def test_legacy_tampered_or_spliced_tokens_fail() -> None:
    """A legacy token with any character changed, or another user's MAC, does not verify."""
    token = make_legacy_token(SECRET, "42")
    for index, char in enumerate(token):
        if char != "." and char != "A":
            assert verify_token(SECRET, token[:index] + "A" + token[index + 1 :]) is None
    mine, theirs = make_legacy_token(SECRET, "42"), make_legacy_token(SECRET, "43")
    assert verify_token(SECRET, f"{theirs.split('.')[0]}.{mine.split('.')[1]}") is None
    user, mac = token.split(".")
    assert verify_token(SECRET, f"{user}==.{mac}") is None
    assert verify_token(SECRET, make_legacy_token(SECRET, "42", purpose="alerts")) is None


def test_new_and_legacy_macs_never_stand_in_for_each_other() -> None:
    """A new token's fields and MAC re-spelt as a legacy token do not verify (domain separation)."""
    raw = base64.urlsafe_b64decode(make_token(SECRET, 7, 42, 0, DAY))
    payload, mac = (base64.urlsafe_b64encode(p).rstrip(b"=").decode() for p in (raw[:17], raw[17:]))
    assert verify_token(SECRET, f"{payload}.{mac}") is None


# ---------------------------------------------------------------------------- garbage


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        ".",
        "..",
        "abc",
        "a.b.c",
        "NDI.",
        ".abc",
        "NDI.!!!!",
        "NDI.ä",
        "ü.ü",
        "NDI." + "A" * 6000,
        "A" * 44,
        "A" * 6000,
        "\x00.\x00",
        "NDI.\r\nX",
    ],
)
def test_garbage_is_none(garbage: str) -> None:
    """Garbage gives None, never an exception."""
    assert verify_token(SECRET, garbage) is None


def test_non_string_token_is_none() -> None:
    """A token that is not even a string gives None."""
    assert verify_token(SECRET, None) is None  # type: ignore[arg-type]
    assert verify_token(SECRET, b"NDI.abc") is None  # type: ignore[arg-type]


@given(st.text(max_size=200))
def test_verify_never_raises(token: str) -> None:
    """No text makes verification raise or accept."""
    assert verify_token(SECRET, token) is None


def test_empty_secret_is_refused() -> None:
    """An empty key is a configuration error, reported loudly rather than signing with it."""
    with pytest.raises(ValueError, match="secret"):
        make_token("", 7, 42, 0, DAY)
    with pytest.raises(ValueError, match="secret"):
        verify_token("", make_token(SECRET, 7, 42, 0, DAY))
