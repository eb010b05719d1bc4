"""The worker's heartbeat: a side thread that extends the leases of the runs a worker holds,
so a slow batch (a slow provider, a long outage of the provider) keeps them."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from digest import claim
from digest.errors import first_line

log = logging.getLogger(__name__)


@dataclass
class Heartbeat:
    """Extends the lease of in-flight runs from a side thread, so a slow batch keeps them."""

    engine: Engine
    me: str
    lease_seconds: float
    in_flight: set[int] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)

    def add(self, ids: list[int]) -> None:
        """Keep the leases of these runs."""
        with self.lock:
            self.in_flight.update(ids)

    def drop(self, ids: list[int]) -> None:
        """Stop keeping the leases of these runs (their outcomes are recorded, or given up)."""
        with self.lock:
            self.in_flight.difference_update(ids)

    def run(self) -> None:
        """Beat every third of a lease until `stop` is set."""
        interval = max(self.lease_seconds / 3, 0.5)
        while not self.stop.wait(interval):
            with self.lock:
                ids = sorted(self.in_flight)
            if not ids:
                continue
            try:
                with self.engine.connect() as conn:
                    claim.extend_lease(conn, self.me, ids, self.lease_seconds)
            except OperationalError as exc:  # a missed beat is survivable; the next one retries
                log.warning("heartbeat_missed runs=%d error=%r", len(ids), first_line(exc))
            except Exception:
                log.exception("heartbeat failed")
