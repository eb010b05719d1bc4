"""Token buckets: one shared by a worker's sending threads (`--max-send-rate`), and one per
destination (Slack allows about one message a second per channel)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class TokenBucket:
    """At most `rate` acquisitions per second on average, bursts up to `burst`."""

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.capacity = burst if burst is not None else max(1.0, rate)
        self.tokens = self.capacity
        self.clock = clock
        self.updated = clock()
        self.lock = threading.Lock()

    def try_acquire(self) -> float:
        """Take a token and return 0, or return how long to wait before one is there."""
        with self.lock:
            self._refill()
            if self.tokens >= 1 - 1e-9:  # float sums of small intervals fall just short
                self.tokens -= 1
                return 0.0
            return (1 - self.tokens) / self.rate

    def reserve(self, max_wait: float) -> tuple[bool, float]:
        """Take the next token if it comes within `max_wait` seconds: (True, wait before
        using it); else take nothing: (False, seconds until the next free token)."""
        with self.lock:
            self._refill()
            if self.tokens >= 1 - 1e-9:
                self.tokens -= 1
                return True, 0.0
            # Tokens below zero are slots already promised to waiting callers.
            wait = (1 - self.tokens) / self.rate
            if wait > max_wait:
                return False, wait
            self.tokens -= 1
            return True, wait

    def idle(self) -> bool:
        """Full again: forgetting this bucket changes nothing."""
        with self.lock:
            self._refill()
            return self.tokens >= self.capacity - 1e-9

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def acquire(self, stop: threading.Event) -> bool:
        """Block until a token is taken (True) or `stop` is set (False)."""
        while (wait := self.try_acquire()) > 0:
            if stop.wait(wait):
                return False
        return True


class DestinationBuckets:
    """A token bucket per destination, made on first use, shared by a process's threads.

    Idle buckets (full again) are forgotten once more than `limit` are held, so a worker
    that writes to millions of destinations over its life keeps only the busy ones.
    """

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        limit: int = 10_000,
    ):
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.limit = limit
        self._buckets: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._buckets)

    def reserve(self, key: str, max_wait: float) -> tuple[bool, float]:
        """`TokenBucket.reserve` on `key`'s bucket."""
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, self.clock)
                if len(self._buckets) > self.limit:
                    self._forget_idle(keep=key)
        return bucket.reserve(max_wait)

    def _forget_idle(self, keep: str) -> None:
        for key in [k for k, b in self._buckets.items() if k != keep and b.idle()]:
            del self._buckets[key]
