"""What to do after a send attempt: the run's outcome, a pure function of what the transport
said and the attempt number (transient and unknown failures retry with backoff and jitter
until `max_attempts`, permanent ones fail at once)."""

from __future__ import annotations

import random

from digest.channels.base import SendError
from digest.models import (
    ClaimedRun,
    Delivery,
    DeliveryStatus,
    FailureKind,
    Outcome,
    OutgoingMessage,
    RetryDecision,
    RunStatus,
    SendResult,
)


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


def after_failure(
    run: ClaimedRun,
    outgoing: OutgoingMessage,
    error: SendError,
    transport: str,
    event_count: int,
    *,
    max_attempts: int,
    base: float,
    cap: float,
    rand: random.Random,
    at_most_once: bool,
) -> Outcome:
    """The outcome of a send `transport` refused (anything but `fatal`), with the delivery
    row it leaves: deferred while the run retries, failed, or unknown."""
    decision = decide(
        error.kind,
        error.reason,
        attempt=run.attempt,
        max_attempts=max_attempts,
        base=base,
        cap=cap,
        retry_after=error.retry_after,
        rand=rand,
        at_most_once=at_most_once,
    )
    if error.kind == "unknown":
        delivery_status = DeliveryStatus.UNKNOWN
    elif decision.status == RunStatus.PENDING:
        delivery_status = DeliveryStatus.DEFERRED
    else:
        delivery_status = DeliveryStatus.FAILED
    return Outcome(
        run,
        decision.status,
        event_count,
        message_id=outgoing.message_id,
        error=decision.error,
        retry_in=decision.retry_in,
        delivery=Delivery(
            outgoing.to_address,
            transport,
            delivery_status,
            message_id=outgoing.message_id,
            reason=error.reason,
        ),
    )


def after_success(
    run: ClaimedRun, outgoing: OutgoingMessage, result: SendResult, event_count: int
) -> Outcome:
    """The outcome of a message the provider accepted."""
    return Outcome(
        run,
        RunStatus.SENT,
        event_count,
        message_id=outgoing.message_id,
        delivery=Delivery(
            outgoing.to_address,
            result.transport,
            DeliveryStatus.SENT,
            message_id=outgoing.message_id,
            provider_message_id=result.provider_message_id,
        ),
    )
