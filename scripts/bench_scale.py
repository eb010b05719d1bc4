"""`make bench`, rows 5-7: ingest, the scheduler at a million recipients, one very heavy user.

Each runs on a database of its own (`digest_bench_scale`, recreated each time) on the same
server as the other rows, and is emptied between rows with TRUNCATE.

Run as a script, `bench_scale.py worker URL`, it is the fresh worker process of row 7: it
drains the due runs with the null transport and prints its wall time and peak RSS as JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import cycle, islice
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from psycopg.copy import Copy, FileWriter
from sqlalchemy import Engine, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from digest import scheduler  # noqa: E402
from digest.buckets import bucket_of  # noqa: E402
from digest.config import Settings  # noqa: E402
from digest.db import make_engine  # noqa: E402
from digest.ingest.events import record_event, record_events, validate_event  # noqa: E402
from digest.ingest.store import EVENT_COPY  # noqa: E402

DATABASE = "digest_bench_scale"
EMPTY = "TRUNCATE recipients, digest_events, digest_runs, deliveries"
ZONES = (
    "UTC",
    "America/New_York",
    "America/Los_Angeles",
    "Europe/London",
    "Europe/Berlin",
    "Asia/Kolkata",
    "Asia/Tokyo",
    "Australia/Sydney",
)
# One recipient in WEEKLY_EVERY is weekly (on today's local weekday), the rest daily.
WEEKLY_EVERY = 5

SEED_SCHEDULE_RECIPIENTS = text(
    """
    INSERT INTO recipients (bucket, user_id, email, name, cadence, timezone, send_hour,
                            weekly_day)
    SELECT digest_bucket('s' || g), 's' || g, 'user' || g || '@example.com', 'User ' || g,
           CASE WHEN g % :weekly_every = 0 THEN 'weekly' ELSE 'daily' END,
           (CAST(:zones AS text[]))[1 + g % :n_zones],
           (CAST(:hours AS int[]))[1 + g % :n_zones],
           (CAST(:days AS int[]))[1 + g % :n_zones]
      FROM generate_series(1, :n) g
    """
)
RUNS_DUE = text(
    "SELECT count(*) FROM digest_runs WHERE status = 'pending' AND scheduled_for <= :now"
)

HEAVY_USER = "heavy"
SEED_HEAVY_RECIPIENT = text(
    "INSERT INTO recipients (bucket, user_id, email, name) "
    "VALUES (digest_bucket(:user), :user, 'heavy@example.com', 'Heavy User')"
)
# `events` events over 2,000 posts and 5 categories (10,000 groups), 5,000 actors, in the
# last day: grouping, ranking and the cap all have work to do.
SEED_HEAVY_EVENTS = text(
    """
    INSERT INTO digest_events (bucket, user_id, category, entity_type, entity_id, actor_id,
                               payload, created_at)
    SELECT digest_bucket(:user), :user,
           (ARRAY['comment', 'like', 'mention', 'follow', 'share'])[1 + e % 5],
           'post', 'p' || (e % 2000), 'a' || (e % 5000),
           jsonb_build_object('title', 'A post about ' || (e % 2000),
                              'actor_name', 'Actor ' || (e % 5000),
                              'url', 'https://example.com/p/' || (e % 2000),
                              'excerpt', 'Nice one! I would add a few words about it.'),
           now() - interval '1 day' + e * interval '1 millisecond'
      FROM generate_series(1, :events) e
    """
)


@dataclass(frozen=True)
class Timed:
    """`count` things done in `seconds`."""

    count: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class Ingest:
    copy: Timed
    bare: Timed
    copy_keyed: Timed
    single: Timed


@dataclass(frozen=True)
class Heavy:
    events: int
    seconds: float
    peak_rss_mb: float
    idle_rss_mb: float


def _empty(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text(EMPTY))


def _vacuum(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


# -- 5. ingest ------------------------------------------------------------------------------


def _event_pool(size: int = 10_000) -> list[dict[str, Any]]:
    """Distinct producer rows to cycle through: building a million dicts is not the point."""
    return [
        {
            "user_id": f"u{i % 50_000}",
            "category": ("comment", "like", "mention", "follow", "share")[i % 5],
            "entity_type": "post",
            "entity_id": f"p{i % 500}",
            "actor_id": f"a{i % 1000}",
            "payload": {
                "title": f"A post about {i % 500}",
                "actor_name": f"Actor {i % 1000}",
                "url": f"https://example.com/p/{i % 500}",
                "excerpt": "Nice one! I would add a few words about it.",
            },
        }
        for i in range(size)
    ]


def bare_copy(url: str, pool: list[dict[str, Any]], count: int) -> Timed:
    """The pool's rows formatted once, then `count` of them sent by COPY into digest_events
    with no Python per row: what the server alone ingests, the ceiling of record_events."""
    now = datetime.now(UTC).isoformat()
    rows = [(bucket_of(row[0]), *row[:6], now, row[7]) for row in map(validate_event, pool)]
    whole, rest = divmod(count, len(pool))
    with psycopg.connect(url) as conn:
        # psycopg's own COPY text format, written to memory instead of the server
        blocks = []
        for part in (rows, rows[:rest]):
            formatted = io.BytesIO()
            with Copy(conn.cursor(), writer=FileWriter(formatted)) as copy:
                for row in part:
                    copy.write_row(row)
            blocks.append(formatted.getvalue())
        started = time.perf_counter()
        with conn.cursor().copy(EVENT_COPY) as copy:
            for _ in range(whole):
                copy.write(blocks[0])
            copy.write(blocks[1])
        conn.commit()
    return Timed(count, time.perf_counter() - started)


def ingest(engine: Engine, url: str, copy_events: int, keyed_events: int, single: int) -> Ingest:
    """events/s through `record_events` (COPY), the same rows by a bare COPY, unkeyed and
    keyed, and `record_event`."""
    pool = _event_pool()
    _empty(engine)
    _vacuum(url)

    started = time.perf_counter()
    inserted = record_events(engine, islice(cycle(pool), copy_events))
    copy = Timed(inserted, time.perf_counter() - started)

    _empty(engine)
    _vacuum(url)
    bare = bare_copy(url, pool, copy_events)
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT count(*) FROM digest_events")).scalar_one()
    if stored != copy_events:
        raise SystemExit(f"bare COPY went wrong: {stored} rows stored")

    def keyed() -> Iterator[dict[str, Any]]:
        for number, row in enumerate(islice(cycle(pool), keyed_events)):
            yield {**row, "event_key": f"k{number}"}

    started = time.perf_counter()
    inserted_keyed = record_events(engine, keyed())
    copy_keyed = Timed(inserted_keyed, time.perf_counter() - started)

    started = time.perf_counter()
    for row in islice(cycle(pool), single):
        record_event(engine, **row)
    one = Timed(single, time.perf_counter() - started)
    if inserted != copy_events or inserted_keyed != keyed_events:
        raise SystemExit(f"ingest went wrong: {inserted}, {inserted_keyed} rows stored")
    _empty(engine)
    return Ingest(copy, bare, copy_keyed, one)


# -- 6. scheduler ---------------------------------------------------------------------------


def schedule(
    engine: Engine, url: str, recipients: int, stagger: int, jobs: tuple[int, ...]
) -> dict[int, Timed]:
    """One `digest schedule` tick over `recipients` recipients in 8 zones, every one due,
    timed for each number of connections in `jobs` (the same recipients, no runs before).

    Each zone's send hour is its local hour two hours ago (and weekly recipients' day is
    that local day), so every recipient's current period started 2-3 hours ago and its
    staggered run (at most `stagger` seconds later, here an hour) is already due.
    """
    now = datetime.now(UTC)
    before = now - timedelta(seconds=stagger) - timedelta(hours=1)
    local = [before.astimezone(ZoneInfo(zone)) for zone in ZONES]
    _empty(engine)
    with engine.begin() as conn:
        conn.execute(
            SEED_SCHEDULE_RECIPIENTS,
            {
                "n": recipients,
                "weekly_every": WEEKLY_EVERY,
                "zones": list(ZONES),
                "n_zones": len(ZONES),
                "hours": [moment.hour for moment in local],
                "days": [moment.isoweekday() for moment in local],
            },
        )
    timed: dict[int, Timed] = {}
    for count in jobs:
        with engine.begin() as conn:
            conn.execute(text("TRUNCATE digest_runs"))
        _vacuum(url)
        started = time.perf_counter()
        created = scheduler.schedule(engine, now, stagger, count)
        elapsed = time.perf_counter() - started
        with engine.connect() as conn:
            due = conn.execute(RUNS_DUE, {"now": now}).scalar_one()
        if created != recipients or due != recipients:
            raise SystemExit(f"scheduler went wrong: {created} created, {due} due of {recipients}")
        timed[count] = Timed(created, elapsed)
    _empty(engine)
    return timed


# -- 7. one heavy user ----------------------------------------------------------------------


def heavy_user(engine: Engine, url: str, events: int) -> Heavy:
    """Digest one user with `events` events in a fresh worker process; its time and RSS."""
    _empty(engine)
    _vacuum(url)
    idle = _worker_child(url)  # nothing due: what the process costs before any work
    if idle["sent"] != 0:
        raise SystemExit(f"idle worker sent {idle['sent']}")
    with engine.begin() as conn:
        conn.execute(SEED_HEAVY_RECIPIENT, {"user": HEAVY_USER})
        conn.execute(SEED_HEAVY_EVENTS, {"user": HEAVY_USER, "events": events})
        scheduler.schedule_once(conn, datetime.now(UTC), 0)
    _vacuum(url)
    busy = _worker_child(url)
    if busy["sent"] != 1 or busy["events"] != events:
        raise SystemExit(f"heavy user went wrong: {busy}")
    _empty(engine)
    return Heavy(events, busy["seconds"], busy["peak_rss_mb"], idle["peak_rss_mb"])


def _worker_child(url: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "worker", url],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise SystemExit("no VmHWM in /proc/self/status")


def worker_main(url: str) -> None:
    """The child: one worker, null transport, drain, then its figures as one JSON line."""
    from digest.channels.email.null import NullTransport
    from digest.worker import Worker

    engine = make_engine(url)
    worker = Worker(engine, Settings(transport="null", database_url=url), NullTransport())
    started = time.perf_counter()
    stats = worker.run(drain=True)
    elapsed = time.perf_counter() - started
    engine.dispose()
    figures = {
        "seconds": elapsed,
        "peak_rss_mb": _peak_rss_mb(),
        "sent": stats.sent,
        "events": stats.events,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="the fresh worker process of bench row 7")
    parser.add_argument("role", choices=["worker"])
    parser.add_argument("url")
    worker_main(parser.parse_args().url)
