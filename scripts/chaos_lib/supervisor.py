"""The workers kept running: each exit noted (how, and the leases it left), a new worker
started in its place; `digest watchdog` run as from cron."""

from __future__ import annotations

import signal
from pathlib import Path

from sqlalchemy import Engine

from chaos_lib import logs, sql
from chaos_lib.cluster import Postgres, retrying
from chaos_lib.processes import Proc, Processes
from chaos_lib.records import Attempt, Tally
from chaos_lib.settings import TRANSPORTS


class Supervisor:
    """Starts and replaces workers, and tells the tally how each one ended."""

    def __init__(self, procs: Processes, engine: Engine, pg: Postgres, tally: Tally) -> None:
        self.procs = procs
        self.engine = engine
        self.pg = pg
        self.tally = tally
        self.deferred: list[tuple[int, str]] = []  # (pid, how) of workers gone in the outage

    def start_workers(self, count: int) -> None:
        """`count` workers, one transport each in turn (TRANSPORTS)."""
        for slot in range(count):
            self.procs.start_worker(TRANSPORTS[slot % len(TRANSPORTS)])
            self.tally.workers_started += 1

    def supervise(self) -> None:
        """Replace the workers that exited; count the watchdog runs that finished."""
        self.keep_workers()
        self.reap_watchdogs()

    def keep_workers(self) -> None:
        """Note the workers that exited (and the runs they left leased); start new ones."""
        for proc in self.note_exits():
            self.procs.start_worker(proc.name.removeprefix("work-").replace("+", ","))
            self.tally.workers_started += 1

    def note_exits(self) -> list[Proc]:
        """The workers that exited: how (told or not), and the runs each left leased."""
        gone = self.procs.exited()
        for proc in gone:
            code = proc.popen.returncode
            if proc.told == "kill" and code == -signal.SIGKILL:
                how = "killed"
            elif proc.told == "term" and code == 0:
                how = "stopped"
            elif proc.told == "term" and code == -signal.SIGTERM:
                how = "stopped while starting"  # before its handler was installed
            else:
                how = f"exit {code}"
                self.tally.unexpected_exits.append(f"{Path(proc.log.name).name}: exit {code}")
            self.tally.exits[how] += 1
            if self.pg.down:  # looked up when the server is back, before any is taken back
                self.deferred.append((proc.pid, how))
                continue
            for run_id, attempt in retrying(self.engine, sql.orphans_of(proc.pid)):
                self.tally.orphans[(run_id, attempt)] = how
        return gone

    def find_deferred(self) -> list[Attempt]:
        """The leases of the workers that exited while the server was down (it is back)."""
        found: list[Attempt] = []
        for pid, how in self.deferred:
            for run_id, attempt in retrying(self.engine, sql.orphans_of(pid)):
                self.tally.orphans[(run_id, attempt)] = how
                found.append((run_id, attempt))
        self.deferred.clear()
        return found

    def watchdog(self) -> None:
        """One `digest watchdog` run, as cron would start it."""
        self.procs.commands.append(self.procs.spawn("watchdog", "watchdog"))

    def reap_watchdogs(self) -> None:
        """Count the watchdog runs that finished, and what they requeued."""
        for proc, output in self.procs.reap_commands():
            self.tally.watchdog_runs += 1
            if proc.popen.returncode != 0:
                self.tally.watchdog_failures += 1
            else:
                self.tally.watchdog_requeued += logs.requeued(output)

    def wait_watchdogs(self) -> None:
        """Let the watchdog runs in progress finish, and count them."""
        for proc in self.procs.commands:
            proc.popen.wait()
        self.reap_watchdogs()

    def note_stuck(self) -> None:
        """For the post-mortem: runs still in flight at the deadline, and who holds them."""
        held = {str(p.pid): f"{Path(p.log.name).name} (alive)" for p in self.procs.workers}
        with self.engine.connect() as conn:
            rows = conn.execute(sql.STUCK).all()
        for row in rows:
            pid = (row.locked_by or "").split(":")[1:2]
            holder = held.get(pid[0], "a dead worker") if pid else "nobody"
            self.tally.stuck.append(
                f"run {row.id} attempt {row.attempt} held by {row.locked_by} = {holder}, "
                f"lease {row.lease_left:+.0f}s, started {row.started_ago:.0f}s ago"
            )
