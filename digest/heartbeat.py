"""The worker's heartbeat: a side thread that extends the leases of the runs a worker holds,
so a slow batch (a slow provider, a long outage of the provider) keeps them."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from digest import claim, logs
from digest.claim import Held
from digest.errors import first_line

log = logging.getLogger(__name__)

# After a missed heartbeat, the next one comes this soon (not a third of the lease later).
MISSED_BEAT_RETRY_SECONDS = 2.0


@dataclass
class Heartbeat:
    """Extends the lease of in-flight runs from a side thread, so a slow batch keeps them.

    Runs are held as (bucket, id, attempt): a run the worker claimed again after its lease
    ran out is two entries, and the stale batch's end drops only its own."""

    engine: Engine
    me: str
    lease_seconds: float
    in_flight: set[Held] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)

    def add(self, held: list[Held]) -> None:
        """Keep the leases of these runs."""
        with self.lock:
            self.in_flight.update(held)

    def drop(self, held: list[Held]) -> None:
        """Stop keeping these leases (their outcomes are recorded, or given back)."""
        with self.lock:
            self.in_flight.difference_update(held)

    def run(self) -> None:
        """Beat every third of a lease until `stop` is set (sooner after a missed beat)."""
        interval = max(self.lease_seconds / 3, 0.5)
        wait = interval
        while not self.stop.wait(wait):
            wait = interval
            with self.lock:
                held = sorted(self.in_flight)
            if not held:
                continue
            try:
                with self.engine.connect() as conn:
                    claim.extend_lease(conn, self.me, held, self.lease_seconds)
            except OperationalError as exc:
                # A missed beat is survivable, but beat again soon: once the server is back
                # the leases must be extended within the watchdog's restart grace.
                wait = min(interval, MISSED_BEAT_RETRY_SECONDS)
                logs.event(
                    log, "heartbeat_missed", logging.WARNING, runs=len(held), error=first_line(exc)
                )
            except Exception:
                logs.exception(log, "heartbeat_failed", runs=len(held))
