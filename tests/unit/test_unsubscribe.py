"""Unsubscribe tokens: round trip, and nothing else verifies."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from digest.unsubscribe import make_token, unsubscribe_url, verify_token

SECRET = "s3cret-key"


@pytest.mark.parametrize("user_id", ["42", "user-7f3a", "ünïcödé 😀", "a" * 300, "a.b/c?d"])
def test_round_trip(user_id: str) -> None:
    """A token made for a user verifies back to that user id."""
    token = make_token(SECRET, user_id)
    assert verify_token(SECRET, token) == user_id


def test_token_is_url_safe() -> None:
    """Tokens use only base64url characters and one dot: safe in a path and a mailto subject."""
    token = make_token(SECRET, "ünïcödé 😀/+=")
    assert re.fullmatch(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", token)


def test_url() -> None:
    """The URL is base_url/u/TOKEN, with no double slash."""
    token = make_token(SECRET, "42")
    assert unsubscribe_url("https://app.example.com/", SECRET, "42") == (
        f"https://app.example.com/u/{token}"
    )


def test_tampered_tokens_fail() -> None:
    """Changing any character of the user part or the MAC makes the token invalid."""
    token = make_token(SECRET, "42")
    for index, char in enumerate(token):
        if char == ".":
            continue
        for replacement in ("A", "b", "-"):
            if replacement != char:
                forged = token[:index] + replacement + token[index + 1 :]
                assert verify_token(SECRET, forged) is None, forged


def test_other_users_mac_does_not_fit() -> None:
    """A valid MAC moved onto another user id does not verify."""
    mine, theirs = make_token(SECRET, "42"), make_token(SECRET, "43")
    assert verify_token(SECRET, f"{theirs.split('.')[0]}.{mine.split('.')[1]}") is None


def test_truncated_tokens_fail() -> None:
    """Every prefix of a token is rejected."""
    token = make_token(SECRET, "42")
    for end in range(len(token)):
        assert verify_token(SECRET, token[:end]) is None


def test_wrong_purpose_fails() -> None:
    """A token for one purpose does not verify for another."""
    token = make_token(SECRET, "42", purpose="digest")
    assert verify_token(SECRET, token, purpose="alerts") is None
    assert verify_token(SECRET, make_token(SECRET, "42", purpose="alerts"), "alerts") == "42"


def test_wrong_key_fails() -> None:
    """A token signed with another key does not verify."""
    assert verify_token("other-key", make_token(SECRET, "42")) is None


def test_non_canonical_base64_fails() -> None:
    """Another spelling of the same bytes (padding, trailing bits) is not accepted."""
    user, mac = make_token(SECRET, "42").split(".")
    assert verify_token(SECRET, f"{user}==.{mac}") is None
    assert verify_token(SECRET, f"{user}.{mac}=") is None
    last = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".index(mac[-1])
    sibling = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[last ^ 1]
    assert verify_token(SECRET, f"{user}.{mac[:-1]}{sibling}") is None


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
        "NDI." + "A" * 5000,
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
        make_token("", "42")
    with pytest.raises(ValueError, match="secret"):
        verify_token("", make_token(SECRET, "42"))
