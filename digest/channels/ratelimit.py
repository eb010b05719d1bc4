"""A token bucket shared by a worker's sending threads (`--max-send-rate`)."""

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
            now = self.clock()
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            if self.tokens >= 1 - 1e-9:  # float sums of small intervals fall just short
                self.tokens -= 1
                return 0.0
            return (1 - self.tokens) / self.rate

    def acquire(self, stop: threading.Event) -> bool:
        """Block until a token is taken (True) or `stop` is set (False)."""
        while (wait := self.try_acquire()) > 0:
            if stop.wait(wait):
                return False
        return True
