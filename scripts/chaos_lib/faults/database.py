"""Database faults: PostgreSQL restarted under the workers (`-m fast`, or `-m immediate`: a
crash), and once, the long outage: stopped for longer than a worker used to wait."""

from __future__ import annotations

import random
import signal
import time
from contextlib import suppress

from rich.console import Console
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from chaos_lib import sql
from chaos_lib.cluster import Postgres, retrying
from chaos_lib.faults import Fault
from chaos_lib.faults.workers import signal_one
from chaos_lib.records import Tally
from chaos_lib.supervisor import Supervisor

PG_RESTART_GAP = 6.0  # seconds at least between two PostgreSQL restarts
# The long outage starts OUTAGE_AT seconds into the faults, which go on for at least
# AFTER_OUTAGE seconds after it.
OUTAGE_AT = 20.0
AFTER_OUTAGE = 15.0
# Worker kills and SIGTERMs pause from this many seconds before the outage (the leases of
# killed workers, 8 s, are recovered by then, so what is in flight when it begins is held
# by live workers) to its end, but for one SIGTERM TERM_BEFORE_BACK seconds before the
# server is back (within the worker's 20 s stop grace).
QUIET_BEFORE_OUTAGE = 11.0
TERM_BEFORE_BACK = 8.0


class Restarts(Fault):
    """`pg_ctl restart` under the workers; the attempts in flight then are at risk."""

    kind = "restart"

    def __init__(self, pg: Postgres, engine: Engine, rand: random.Random, tally: Tally) -> None:
        self.pg = pg
        self.engine = engine
        self.rand = rand
        self.tally = tally

    def fire(self, now: float, gap: float) -> float:
        self.restart(self.rand.choice(("fast", "immediate")))
        return time.monotonic() + max(gap, PG_RESTART_GAP)

    def restart(self, mode: str) -> None:
        """Restart the server under the workers; remember the attempts it may cut short."""
        with suppress(SQLAlchemyError):
            self.tally.at_risk.update(sql.in_flight(self.engine))
        self.pg.restart(mode)
        self.tally.faults[f"postgres restart -m {mode}"] += 1
        self.tally.at_risk.update(retrying(self.engine, sql.in_flight))


class Outage:
    """The long outage: PostgreSQL stopped OUTAGE_AT s into the faults for `seconds`
    (none if 0), with one worker sent SIGTERM shortly before it is back."""

    def __init__(
        self,
        seconds: float,
        start: float,
        pg: Postgres,
        engine: Engine,
        supervisor: Supervisor,
        rand: random.Random,
        tally: Tally,
        console: Console,
    ) -> None:
        self.seconds = seconds
        self.start = start
        self.at: float | None = start + OUTAGE_AT if seconds else None  # None once begun
        self.ends = 0.0  # monotonic, once begun
        self.pg = pg
        self.engine = engine
        self.supervisor = supervisor
        self.rand = rand
        self.tally = tally
        self.console = console
        self._began = 0.0
        self._termed = False

    @property
    def down(self) -> bool:
        return self.pg.down

    def quiet(self, now: float) -> bool:
        """No worker is killed or stopped from shortly before the outage to its end."""
        return self.down or (self.at is not None and now >= self.at - QUIET_BEFORE_OUTAGE)

    def tick(self, now: float) -> bool:
        """Begin, end, or SIGTERM a worker when it is time; True when it just began."""
        began = False
        if self.at is not None and now >= self.at:
            self.at = None
            self.begin(now - self.start)
            self.ends = time.monotonic() + self.seconds
            began = True
        if self.down and now >= self.ends:
            self.end()
        if self.down and now >= self.ends - TERM_BEFORE_BACK and not self._termed:
            # one SIGTERM while the database is away: the worker must wait for it (its
            # grace) to record what it sent, then exit 0
            self._termed = True
            procs = self.supervisor.procs
            if signal_one(procs, self.rand, signal.SIGTERM, (None,)):
                self.tally.faults["worker SIGTERM during the outage"] += 1
        return began

    def begin(self, elapsed: float) -> None:
        """Remember the attempts in flight, stop the server."""
        with suppress(SQLAlchemyError):
            self.tally.outage_at_risk.update(sql.in_flight(self.engine))
        self.tally.outage_orphans = self.tally.outage_at_risk & set(self.tally.orphans)
        self.pg.stop()
        self.tally.outage_began = elapsed
        self.tally.outage_window = (time.time(), 0.0)
        self._began = time.monotonic()
        self.tally.faults["postgres down (long outage)"] += 1
        self.console.print(
            f"  {elapsed:3.0f}s: PostgreSQL stopped for {self.seconds:.0f}s", markup=False
        )

    def end(self) -> None:
        """Start the server, note what was in flight through it and the leases of workers
        that exited meanwhile (their runs are still held: the watchdog takes none back for
        a lease)."""
        self.pg.start()
        self.tally.outage_seconds = time.monotonic() - self._began
        assert self.tally.outage_window is not None
        self.tally.outage_window = (self.tally.outage_window[0], time.time())
        self.tally.outage_at_risk.update(retrying(self.engine, sql.in_flight))
        self.tally.outage_orphans.update(self.supervisor.find_deferred())
        self.console.print(
            f"  PostgreSQL back after {self.tally.outage_seconds:.0f}s; "
            f"{len(self.tally.outage_at_risk)} attempts were in flight",
            markup=False,
        )

    def finish(self) -> None:
        """The faults are over: the server runs again."""
        if self.down:
            self.end()
