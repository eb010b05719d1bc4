"""Worker faults: SIGKILL (kind "kill") or SIGTERM ("term") a random live worker; the
supervisor starts another in its place."""

from __future__ import annotations

import random
import signal
import time
from typing import TYPE_CHECKING

from chaos_lib.faults import Fault
from chaos_lib.processes import Processes
from chaos_lib.records import Tally

if TYPE_CHECKING:
    from chaos_lib.faults.database import Outage


class WorkerSignal(Fault):
    """Signals a random worker, but none about the long outage."""

    def __init__(
        self, kind: str, procs: Processes, outage: Outage, rand: random.Random, tally: Tally
    ) -> None:
        self.kind = kind
        self.sig = signal.SIGKILL if kind == "kill" else signal.SIGTERM
        # alive, and not told already (a stopping worker may still be killed)
        self.told = (None, "term") if kind == "kill" else (None,)
        self.procs = procs
        self.outage = outage
        self.rand = rand
        self.tally = tally

    def fire(self, now: float, gap: float) -> float:
        if self.outage.quiet(now):
            # none about the outage: a worker killed then loses what it holds, and the
            # outage is what this run measures
            return max(now, self.outage.ends) + gap
        if signal_one(self.procs, self.rand, self.sig, self.told):
            self.tally.faults[f"worker {self.sig.name}"] += 1
        return time.monotonic() + gap


def signal_one(
    procs: Processes, rand: random.Random, sig: signal.Signals, told: tuple[str | None, ...]
) -> bool:
    """Send `sig` to a random running worker already told one of `told`; False if none."""
    alive = [p for p in procs.workers if p.told in told and p.popen.poll() is None]
    if not alive:
        return False
    procs.signal(rand.choice(alive), sig)
    return True
