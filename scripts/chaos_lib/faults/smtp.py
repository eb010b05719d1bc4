"""SMTP faults: for 3-8 s the SMTP server refuses connections, stalls after DATA (past the
client's timeout: the mail is kept, the worker sees no reply), answers 451, or refuses some
messages with 550."""

from __future__ import annotations

import random
import time

from chaos_lib.faults import Fault
from chaos_lib.providers import SMTP_MODES, SmtpServer
from chaos_lib.records import Tally


class SmtpFaults(Fault):
    """Spells of SMTP misbehaviour, each in a mode drawn from SMTP_MODES."""

    kind = "smtp"

    def __init__(self, server: SmtpServer, rand: random.Random, tally: Tally) -> None:
        self.server = server
        self.rand = rand
        self.tally = tally
        self.until = 0.0  # the spell in progress ends then

    def fire(self, now: float, gap: float) -> float:
        mode = self.rand.choice(SMTP_MODES)
        self.server.set_mode(mode)
        lasts = self.rand.uniform(3, 8)
        self.until = now + lasts
        self.tally.faults[f"smtp {mode}"] += 1
        return time.monotonic() + gap + lasts

    def tick(self, now: float) -> None:
        if self.until and now >= self.until:
            self.server.set_mode("normal")
            self.until = 0.0

    def calm(self) -> None:
        self.server.set_mode("normal")
