"""Retry decisions and backoff: pure functions of the failure and the attempt."""

from __future__ import annotations

import random
from typing import Any

from digest.retry import backoff, decide

KW: dict[str, Any] = {"max_attempts": 5, "base": 30.0, "cap": 3600.0}


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    """Attempt n waits between half and all of base * 2^(n-1), never more than the cap."""
    rand = random.Random(7)
    for attempt in range(1, 12):
        ceiling = min(3600.0, 30.0 * 2 ** (attempt - 1))
        for _ in range(50):
            assert ceiling / 2 <= backoff(attempt, 30.0, 3600.0, rand) <= ceiling


def test_transient_retries_until_max_attempts() -> None:
    """Transient failures go back to pending until the last attempt, then fail with the reason."""
    first = decide("transient", "451 try later", attempt=1, **KW)
    assert (first.status, first.error) == ("pending", "transient: 451 try later")
    assert 15 <= first.retry_in <= 30
    last = decide("transient", "451 try later", attempt=5, **KW)
    assert (last.status, last.error) == ("failed", "gave up after 5 attempts: 451 try later")


def test_permanent_fails_at_once() -> None:
    """A permanent failure is never retried."""
    assert decide("permanent", "550 no such user", attempt=1, **KW).status == "failed"


def test_retry_after_is_honoured() -> None:
    """A provider's Retry-After is a floor for the delay."""
    assert decide("transient", "throttled", attempt=1, retry_after=900, **KW).retry_in >= 900


def test_unknown_outcome_depends_on_delivery_mode() -> None:
    """at-least-once resends after an unknown outcome; at-most-once fails it."""
    assert decide("unknown", "lost reply", attempt=1, **KW).status == "pending"
    at_most = decide("unknown", "lost reply", attempt=1, at_most_once=True, **KW)
    assert (at_most.status, at_most.error) == ("failed", "unknown_outcome: lost reply")
