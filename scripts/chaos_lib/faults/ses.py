"""SES faults: for 3-8 s SES answers slowly (below the client's timeout), stalls (beyond it:
the mail is kept, the worker cannot know), throttles (429) or is unavailable (503)."""

from __future__ import annotations

import random
import time

from chaos_lib.faults import Fault
from chaos_lib.providers import SES_MODES, SesServer
from chaos_lib.records import Tally
from chaos_lib.settings import SES_TIMEOUT


class SesFaults(Fault):
    """Spells of SES misbehaviour, each in a mode drawn from SES_MODES."""

    kind = "ses"

    def __init__(self, server: SesServer, rand: random.Random, tally: Tally) -> None:
        self.server = server
        self.rand = rand
        self.tally = tally
        self.until = 0.0  # the spell in progress ends then

    def fire(self, now: float, gap: float) -> float:
        mode = self.rand.choice(SES_MODES)
        # both drawn whatever the mode, so a seed draws the same schedule as it always has
        delay = {"slow": self.rand.uniform(0.5, 2.5), "stall": SES_TIMEOUT + 1.5}
        self.server.set_mode(mode, delay.get(mode, 0.0))
        lasts = self.rand.uniform(3, 8)
        self.until = now + lasts
        self.tally.faults[f"ses {mode}"] += 1
        return time.monotonic() + gap + lasts

    def tick(self, now: float) -> None:
        if self.until and now >= self.until:
            self.server.set_mode("normal")
            self.until = 0.0

    def calm(self) -> None:
        self.server.set_mode("normal")
