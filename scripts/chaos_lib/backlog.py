"""The work the faults hit: the seeded backlog, more users when the queue runs low, and a
producer recording events while the faults go on."""

from __future__ import annotations

import random
import threading
import time
from datetime import UTC, datetime

from rich.console import Console
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from bench import SEED_EVENTS, SEED_RECIPIENTS  # scripts/ is on sys.path
from chaos_lib import sql
from chaos_lib.records import Tally
from chaos_lib.settings import Options
from digest import migrate
from digest.ingest.events import record_event
from digest.scheduler import schedule_once

# Fewer due or in-flight runs than this during the faults: add users (a new backlog).
LOW_WATER = 300


class Backlog:
    """Recipients u1..uN with their events, and one due run each (as cron would schedule)."""

    def __init__(self, engine: Engine, options: Options, tally: Tally, console: Console) -> None:
        self.engine = engine
        self.o = options
        self.tally = tally
        self.console = console

    def seed(self) -> int:
        started = time.monotonic()
        migrate.upgrade(self.engine)
        with self.engine.begin() as conn:
            for statement in sql.SEED_EXTRAS:
                conn.execute(text(statement))
        runs = self.add_users(self.o.users)
        with self.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE"))
        self.tally.seed_seconds = time.monotonic() - started
        return runs

    def add_users(self, count: int) -> int:
        """`count` more recipients with their events, and their runs (as cron would)."""
        first, last = self.tally.users + 1, self.tally.users + count
        with self.engine.begin() as conn:
            conn.execute(SEED_RECIPIENTS, {"first": first, "last": last})
            conn.execute(
                SEED_EVENTS, {"first": first, "last": last, "per_user": self.o.events_per_user}
            )
            runs = schedule_once(conn, datetime.now(UTC), 0)
        self.tally.users = last
        return runs

    def look(self, elapsed: float, show: bool) -> None:
        """Keep the queue from running dry while faults go on; print where the run is."""
        try:
            processing, due, later = sql.left(self.engine)
            if processing + due < LOW_WATER:
                self.add_users(max(100, self.o.users // 10))
                self.tally.waves += 1
        except SQLAlchemyError:
            return  # a restart in progress: next time
        if show:
            self.console.print(
                f"  {elapsed:3.0f}s: {due} runs due, {processing} in flight, {later} waiting "
                f"for a retry; {sum(self.tally.faults.values())} faults so far",
                markup=False,
            )


class Producer(threading.Thread):
    """Records events through `record_event` while the faults go on, idempotently by key."""

    def __init__(self, engine: Engine, users: int, rand: random.Random, tally: Tally) -> None:
        super().__init__(name="producer", daemon=True)
        self.engine = engine
        self.users = users
        self.rand = rand
        self.tally = tally
        self.stop = threading.Event()

    def run(self) -> None:
        serial = 0
        while not self.stop.wait(0.1):
            serial += 1
            key = f"chaos-{serial}"
            user = f"u{self.rand.randint(1, self.users)}"
            while not self.stop.is_set():
                try:
                    record_event(
                        self.engine,
                        user_id=user,
                        category="comment",
                        entity_type="post",
                        entity_id=f"late{serial % 7}",
                        actor_id="late",
                        payload={"actor_name": "Late Larry", "title": "Late news"},
                        event_key=key,
                    )
                except SQLAlchemyError:
                    # the commit may or may not have happened: the same key again is safe
                    self.tally.producer_errors += 1
                    self.stop.wait(0.5)
                    continue
                self.tally.produced.append(f"{user}/{key}")
                break
