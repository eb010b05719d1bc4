"""Fallback between transports and the send-rate token bucket: pure logic, fake clocks."""

from __future__ import annotations

import threading

import pytest

from digest.channels.base import SendError
from digest.channels.fallback import FallbackTransport
from digest.channels.ratelimit import DestinationBuckets, TokenBucket
from digest.models import OutgoingMessage, SendResult


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Fake:
    """A transport that fails with a given error, or delivers."""

    def __init__(self, name: str, error: SendError | None = None):
        self.name = name
        self.error = error
        self.calls = 0
        self.closed = False

    def send(self, message: OutgoingMessage) -> SendResult:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return SendResult(self.name, f"{self.name}-id")

    def close(self) -> None:
        self.closed = True


MESSAGE = OutgoingMessage(1, 1, "u", "u@example.com", "<m@x>", "k", b"", "", 0)


def test_next_transport_takes_over_when_one_is_down() -> None:
    """SES down (connection refused): SMTP delivers, and the result says which one did."""
    ses, smtp = Fake("ses", SendError("transient", "connection refused", down=True)), Fake("smtp")
    result = FallbackTransport([ses, smtp]).send(MESSAGE)
    assert result == SendResult("smtp", "smtp-id")


@pytest.mark.parametrize(
    "error",
    [
        SendError("permanent", "550 user unknown"),
        SendError("unknown", "reply lost after DATA"),
        SendError("fatal", "SendingPaused"),
        SendError("transient", "451 greylisted"),
    ],
)
def test_recipient_failures_and_unknown_outcomes_do_not_fall_through(error: SendError) -> None:
    """Only a transport that is down is skipped: anything else would send a second copy."""
    first, second = Fake("ses", error), Fake("smtp")
    with pytest.raises(SendError) as raised:
        FallbackTransport([first, second]).send(MESSAGE)
    assert raised.value is error
    assert second.calls == 0


def test_all_down_is_transient_with_every_reason() -> None:
    """Every transport down: a transient error naming each one's reason."""
    down = [Fake(n, SendError("transient", f"{n} refused", down=True)) for n in ("ses", "smtp")]
    with pytest.raises(SendError) as raised:
        FallbackTransport(down).send(MESSAGE)
    assert raised.value.kind == "transient"
    assert "ses: ses refused" in raised.value.reason
    assert "smtp: smtp refused" in raised.value.reason


def test_a_down_transport_is_skipped_during_its_cooldown() -> None:
    """After a failure the broken transport is not retried for every message."""
    clock = Clock()
    ses, smtp = Fake("ses", SendError("transient", "timeout", down=True)), Fake("smtp")
    fallback = FallbackTransport([ses, smtp], cooldown=30, clock=clock)
    fallback.send(MESSAGE)
    fallback.send(MESSAGE)
    assert (ses.calls, smtp.calls) == (1, 2)
    clock.now += 31
    ses.error = None
    assert fallback.send(MESSAGE).transport == "ses"
    fallback.close()
    assert ses.closed
    assert smtp.closed


def test_token_bucket_allows_the_rate_and_a_burst() -> None:
    """10/s: ten at once, then one every 0.1 s."""
    clock = Clock()
    bucket = TokenBucket(10, clock=clock)
    assert [bucket.try_acquire() for _ in range(10)] == [0.0] * 10
    assert bucket.try_acquire() == pytest.approx(0.1)
    clock.now += 0.1
    assert bucket.try_acquire() == 0.0
    assert bucket.try_acquire() > 0


def test_token_bucket_acquire_gives_up_when_stopped() -> None:
    """A stop request wakes a thread waiting for a token."""
    bucket = TokenBucket(0.001, burst=1)
    stop = threading.Event()
    assert bucket.acquire(stop)
    stop.set()
    assert not bucket.acquire(stop)


def test_two_transports_of_one_kind_keep_separate_cooldowns() -> None:
    """Two SMTP relays: the broken one cools down, the working one keeps delivering."""
    clock = Clock()
    broken, working = Fake("smtp", SendError("transient", "refused", down=True)), Fake("smtp")
    fallback = FallbackTransport([broken, working], cooldown=30, clock=clock)
    for _ in range(3):
        assert fallback.send(MESSAGE).provider_message_id == "smtp-id"
    assert (broken.calls, working.calls) == (1, 3)


def slot(reserved: tuple[bool, float]) -> tuple[bool, float]:
    """A reservation with its wait rounded to the millisecond (float sums fall just short)."""
    free, wait = reserved
    return free, round(wait, 3)


def test_destination_buckets_reserve_a_slot_within_the_wait_then_refuse() -> None:
    """1/s per destination, waits up to 1 s: the second message waits 1 s for its slot, the
    third (2 s away) gets none and takes nothing, so a fourth still sees 2 s."""
    clock = Clock()
    buckets = DestinationBuckets(1.0, clock=clock)
    assert slot(buckets.reserve("C1", max_wait=1.0)) == (True, 0.0)
    assert slot(buckets.reserve("C1", max_wait=1.0)) == (True, 1.0)
    assert slot(buckets.reserve("C1", max_wait=1.0)) == (False, 2.0)
    assert slot(buckets.reserve("C1", max_wait=1.0)) == (False, 2.0)
    clock.now += 2.0
    assert slot(buckets.reserve("C1", max_wait=1.0)) == (True, 0.0)


def test_destination_buckets_are_independent() -> None:
    """A busy channel does not slow a message to another channel."""
    clock = Clock()
    buckets = DestinationBuckets(1.0, clock=clock)
    assert slot(buckets.reserve("C1", max_wait=0.0)) == (True, 0.0)
    assert slot(buckets.reserve("C1", max_wait=0.0)) == (False, 1.0)
    assert slot(buckets.reserve("C2", max_wait=0.0)) == (True, 0.0)


def test_destination_buckets_forget_idle_destinations() -> None:
    """One bucket per destination ever seen would grow without end: idle ones are dropped
    once there are more than `limit`, busy ones are kept."""
    clock = Clock()
    buckets = DestinationBuckets(1.0, clock=clock, limit=3)
    for key in ("a", "b", "c"):
        buckets.reserve(key, max_wait=0.0)
    clock.now += 5.0  # a, b, c are full again: nothing to remember
    buckets.reserve("d", max_wait=0.0)
    buckets.reserve("e", max_wait=0.0)  # past the limit: a, b, c go; d (busy) stays
    assert len(buckets) == 2
    assert slot(buckets.reserve("d", max_wait=0.0)) == (False, 1.0)
