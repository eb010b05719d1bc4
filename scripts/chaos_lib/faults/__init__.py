"""The faults, one module per kind, each kind on its own random clock.

workers.py: SIGKILL or SIGTERM a worker. database.py: restart PostgreSQL under the workers,
and the long outage (stopped once, for a minute or more). smtp.py, ses.py: the providers
misbehave for a few seconds.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

# Mean seconds between two faults of each kind (each kind on its own random clock). The
# order is the order of the seed's draws.
FAULT_EVERY = {"kill": 4.0, "term": 15.0, "restart": 12.0, "smtp": 6.0, "ses": 6.0}


class Fault:
    """One kind of fault (`kind`, a key of FAULT_EVERY): fired when its clock says so."""

    kind: str

    def fire(self, now: float, gap: float) -> float:
        """Do it now; return when it is next due (monotonic), `gap` drawn from its clock."""
        raise NotImplementedError

    def tick(self, now: float) -> None:
        """Called on every turn of the loop: end a spell that is over."""

    def calm(self) -> None:
        """The faults are over: leave things as they were."""


class Schedule:
    """Every kind of fault at random moments: exponential gaps, FAULT_EVERY on average."""

    def __init__(
        self, faults: Sequence[Fault], rand: random.Random, start: float, quick: bool
    ) -> None:
        order = list(FAULT_EVERY)
        self.faults = sorted(faults, key=lambda f: order.index(f.kind))
        self.rand = rand
        scale = 0.75 if quick else 1.0
        self.every = {f.kind: FAULT_EVERY[f.kind] * scale for f in self.faults}
        self.due = {
            f.kind: start + 2 + rand.expovariate(1 / self.every[f.kind]) for f in self.faults
        }

    def tick(self, now: float) -> None:
        """End the spells that are over, fire the faults that are due."""
        for fault in self.faults:
            fault.tick(now)
        for fault in self.faults:
            if now >= self.due[fault.kind]:
                gap = self.rand.expovariate(1 / self.every[fault.kind])
                self.due[fault.kind] = fault.fire(now, gap)

    def postpone(self, kind: str, until: float) -> None:
        """No fault of `kind` before `until`."""
        self.due[kind] = max(self.due[kind], until)

    def calm(self) -> None:
        """The faults are over: every provider back to normal."""
        for fault in self.faults:
            fault.calm()
