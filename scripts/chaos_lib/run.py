"""One chaos run from start to verdict: set up, faults, drain, audit, report."""

from __future__ import annotations

import random
import time

from rich.console import Console
from sqlalchemy import Engine

from chaos_lib import logs, sql
from chaos_lib.audit import Audit
from chaos_lib.backlog import Backlog, Producer
from chaos_lib.cluster import Postgres, retrying
from chaos_lib.faults import Schedule
from chaos_lib.faults.database import AFTER_OUTAGE, PG_RESTART_GAP, Outage, Restarts
from chaos_lib.faults.ses import SesFaults
from chaos_lib.faults.smtp import SmtpFaults
from chaos_lib.faults.workers import WorkerSignal
from chaos_lib.processes import Processes
from chaos_lib.providers import Mailbag, SesServer, SmtpServer
from chaos_lib.records import Tally
from chaos_lib.report import report
from chaos_lib.settings import LOGS, SMTP_TIMEOUT, WATCHDOG_EVERY, Options, worker_env
from chaos_lib.supervisor import Supervisor
from digest import db


class Chaos:
    """One run: the providers, the server and the workers up; faults; drain; the verdict."""

    def __init__(self, options: Options, console: Console) -> None:
        self.o = options
        self.console = console
        self.rand = random.Random(options.seed)
        self.tally = Tally()
        self.bag = Mailbag()

    def run(self) -> int:
        """The whole run; its exit status (0: every check holds)."""
        o = self.o
        self.console.print(
            f"[bold]chaos[/bold] seed={o.seed} workers={o.workers} users={o.users} "
            f"events/user={o.events_per_user} faults for {o.duration:g}s "
            f"delivery={o.delivery}{' (quick)' if o.quick else ''}"
        )
        LOGS.mkdir(parents=True, exist_ok=True)
        for old in LOGS.glob("*.log"):
            old.unlink()
        started = time.monotonic()
        pg: Postgres | None = None
        smtp: SmtpServer | None = None
        ses: SesServer | None = None
        procs: Processes | None = None
        producer: Producer | None = None
        engine: Engine | None = None
        try:
            pg = Postgres()
            url = pg.fresh_database()
            engine = db.make_engine(url)
            backlog = Backlog(engine, o, self.tally, self.console)
            runs = backlog.seed()
            self.console.print(f"seeded {runs} runs in {self.tally.seed_seconds:.1f}s")
            smtp = SmtpServer(self.bag, SMTP_TIMEOUT + 1.5, random.Random(o.seed + 2))
            smtp.start()
            ses = SesServer(self.bag)
            procs = Processes(url, worker_env(o, smtp.port, ses.url))
            supervisor = Supervisor(procs, engine, pg, self.tally)
            producer = Producer(engine, o.users, random.Random(o.seed + 1), self.tally)
            producer.start()
            self.chaos_phase(pg, smtp, ses, supervisor, backlog, engine)
            producer.stop.set()
            producer.join()
            self.drain_phase(supervisor, engine)
            procs.stop_all(grace=30)
            supervisor.note_exits()
            audit = self.audit(engine)
        finally:
            if producer is not None:
                producer.stop.set()
            if procs is not None:
                procs.stop_all(grace=10)
            if engine is not None:
                engine.dispose()
            if smtp is not None:
                smtp.stop()
            if ses is not None:
                ses.close()
            if pg is not None:
                pg.stop()
        return report(self.console, o, audit, self.tally, time.monotonic() - started)

    def chaos_phase(
        self,
        pg: Postgres,
        smtp: SmtpServer,
        ses: SesServer,
        supervisor: Supervisor,
        backlog: Backlog,
        engine: Engine,
    ) -> None:
        """Faults of every kind, each at its own random moments, for `duration` seconds."""
        o, rand, tally = self.o, self.rand, self.tally
        start = time.monotonic()
        end = start + o.duration
        outage = Outage(o.outage, start, pg, engine, supervisor, rand, tally, self.console)
        if outage.at is not None:
            end = max(end, outage.at + o.outage + AFTER_OUTAGE)
        procs = supervisor.procs
        schedule = Schedule(
            [
                WorkerSignal("kill", procs, outage, rand, tally),
                WorkerSignal("term", procs, outage, rand, tally),
                Restarts(pg, engine, rand, tally),
                SmtpFaults(smtp, rand, tally),
                SesFaults(ses, rand, tally),
            ],
            rand,
            start,
            o.quick,
        )
        supervisor.start_workers(o.workers)
        next_watchdog = start + WATCHDOG_EVERY
        next_look, next_line = start + 2, start + 10
        while (now := time.monotonic()) < end:
            supervisor.supervise()
            if now >= next_watchdog:
                supervisor.watchdog()
                next_watchdog = now + WATCHDOG_EVERY
            if outage.tick(now):  # it began: no restart until a while after its end
                schedule.postpone("restart", outage.ends + PG_RESTART_GAP)
            schedule.tick(now)
            if now >= next_look:  # a look every 2 s, a line in the log every 10 s
                backlog.look(now - start, show=now >= next_line)
                next_look = now + 2
                next_line = next_line + 10 if now >= next_line else next_line
            time.sleep(0.1)
        outage.finish()
        schedule.calm()
        tally.chaos_seconds = time.monotonic() - start
        tally.backlog_at_end_of_chaos = sum(retrying(engine, sql.left))

    def drain_phase(self, supervisor: Supervisor, engine: Engine) -> None:
        """No more faults: workers (replaced if they exit) finish every run, or the deadline."""
        start = time.monotonic()
        deadline = start + self.o.drain_timeout
        supervisor.watchdog()
        while time.monotonic() < deadline:
            supervisor.supervise()
            processing, due, later = retrying(engine, sql.left)
            if processing + due + later == 0:
                self.tally.drained = True
                break
            time.sleep(0.5)
        self.tally.drain_seconds = time.monotonic() - start
        if not self.tally.drained:
            supervisor.note_stuck()
        supervisor.wait_watchdogs()

    def audit(self, engine: Engine) -> Audit:
        """Every invariant, from the database, the providers' mail and the worker logs."""
        return Audit(
            sql.gather(engine),
            self.bag.snapshot(),
            self.tally,
            logs.lease_lost_in(LOGS),
            delivery=self.o.delivery,
            outage=bool(self.o.outage),
        )
