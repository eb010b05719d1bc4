"""Counts in English: the one helper every CLI summary and `digest why` sentence uses."""

from __future__ import annotations

import pytest

from digest.terminal import plural


@pytest.mark.parametrize(
    ("count", "noun", "expected"),
    [
        (0, "event", "0 events"),
        (1, "event", "1 event"),
        (2, "event", "2 events"),
        (1, "new run", "1 new run"),
        (3, "new run", "3 new runs"),
        (1, "delivery", "1 delivery"),
        (2, "delivery", "2 deliveries"),
        (2, "address", "2 addresses"),
        (2, "day", "2 days"),
        (12_345, "recipient", "12,345 recipients"),
        (-1, "event", "-1 events"),
    ],
)
def test_plural_reads_as_english(count: int, noun: str, expected: str) -> None:
    """One takes the singular, every other count the plural (y -> ies, s -> ses), with commas."""
    assert plural(count, noun) == expected


def test_plural_takes_an_irregular_form() -> None:
    """A noun English does not pluralise by rule gives its plural."""
    assert plural(1, "was", "were") == "1 was"
    assert plural(2, "bad line was", "bad lines were") == "2 bad lines were"
