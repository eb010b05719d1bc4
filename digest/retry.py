"""What to do after a send attempt: a pure function of the failure and the attempt number."""

from __future__ import annotations

import random

from digest.models import FailureKind, RetryDecision, RunStatus


def backoff(attempt: int, base: float, cap: float, rand: random.Random) -> float:
    """Exponential backoff with full jitter in [0.5, 1.0] x base * 2^(attempt-1), capped."""
    ceiling: float = min(cap, base * 2.0 ** max(attempt - 1, 0))
    return ceiling * (0.5 + rand.random() / 2)


def decide(
    kind: FailureKind,
    reason: str,
    *,
    attempt: int,
    max_attempts: int,
    base: float,
    cap: float,
    at_most_once: bool = False,
    retry_after: float | None = None,
    rand: random.Random | None = None,
) -> RetryDecision:
    """Transient and (at-least-once) unknown outcomes retry until `max_attempts`; the rest fail."""
    if kind == "permanent":
        return RetryDecision(RunStatus.FAILED, 0.0, f"permanent: {reason}")
    if kind == "unknown" and at_most_once:
        return RetryDecision(RunStatus.FAILED, 0.0, f"unknown_outcome: {reason}")
    if attempt >= max_attempts:
        return RetryDecision(RunStatus.FAILED, 0.0, f"gave up after {attempt} attempts: {reason}")
    delay = backoff(attempt, base, cap, rand or random.Random())
    if retry_after is not None:
        delay = max(delay, retry_after)
    return RetryDecision(RunStatus.PENDING, delay, f"{kind}: {reason}")
