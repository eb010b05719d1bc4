"""`digest schedule`: create the current period's run for every subscribed recipient.

One set-based statement, safe to run twice at once (the unique period key plus
`ON CONFLICT DO NOTHING`), never a Python loop over users. A tick that creates many runs
is bound by the server's inserts into digest_runs' indexes, on one core per statement, so
`schedule` can run the same statement over disjoint slices of the buckets on several
connections at once.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from sqlalchemy import Connection, Engine

from digest import shards
from digest.shards import ALL, Buckets, Sharded

# The current period of a recipient is the latest local send time at or before `now`:
# today's (daily) or this week's `weekly_day` (weekly) at `send_hour`, in the recipient's
# own zone, else the one before. Local date + hour is turned into an instant with
# `AT TIME ZONE`, so DST days neither skip nor double a run: each local date gives one
# period_start. A send hour that does not exist that day (spring forward) maps to the
# next valid instant, as PostgreSQL defines it.
# `scheduled_for` adds a stable per-user stagger of hashtext(user_id) mod spread seconds.
# One statement per slice of buckets, all in one shard (`{shard:…}`, `digest.shards`), so
# that Citus runs it on the node that holds them. Recipients whose zone PostgreSQL does not
# know are left out (and reported by `digest stats`) rather than failing the statement for
# everyone. New runs are counted from RETURNING: on Citus the command tag of an
# `INSERT … SELECT … ON CONFLICT DO NOTHING` counts the conflicting rows too.
RUN_SCHEDULE_CURRENT = Sharded(
    """
    WITH created AS (
        INSERT INTO digest_runs (bucket, user_id, cadence, period_start, scheduled_for)
        SELECT r.bucket, r.user_id, r.cadence, p.period_start,
               p.period_start + make_interval(
                   secs => CASE WHEN :spread > 0
                                THEN mod(abs(hashtext(r.user_id)::bigint), :spread)
                                ELSE 0 END)
          FROM recipients r
          CROSS JOIN LATERAL (
              SELECT (CAST(:now AS timestamptz) AT TIME ZONE r.timezone) AS local_now) l
          CROSS JOIN LATERAL (
              SELECT CASE WHEN r.cadence = 'daily' THEN l.local_now::date
                          ELSE l.local_now::date
                               - (extract(isodow FROM l.local_now)::int - r.weekly_day + 7) % 7
                     END AS day,
                     CASE WHEN r.cadence = 'daily' THEN 1 ELSE 7 END AS period_days) d
          CROSS JOIN LATERAL (
              SELECT CASE
                       WHEN ((d.day + make_time(r.send_hour, 0, 0)) AT TIME ZONE r.timezone)
                            <= CAST(:now AS timestamptz)
                       THEN ((d.day + make_time(r.send_hour, 0, 0)) AT TIME ZONE r.timezone)
                       ELSE ((d.day - d.period_days + make_time(r.send_hour, 0, 0))
                             AT TIME ZONE r.timezone)
                     END AS period_start) p
         WHERE {shard:r.bucket}
           AND r.cadence IN ('daily', 'weekly')
           AND r.unsubscribed_at IS NULL
           AND r.timezone IN (SELECT name FROM pg_timezone_names)
        ON CONFLICT (bucket, user_id, cadence, period_start) WHERE status <> 'cancelled'
        DO NOTHING
        RETURNING 1
    )
    SELECT count(*) FROM created
    """
)


def schedule_once(
    conn: Connection, now: datetime, spread_seconds: int, buckets: Buckets = ALL
) -> int:
    """Create the missing runs for the period current at `now`, for the recipients of
    `buckets` (all in one shard; by default all, which is one PostgreSQL's one shard);
    returns how many were new."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    params = {"now": now, "spread": spread_seconds}
    return int(conn.execute(RUN_SCHEDULE_CURRENT.bind(buckets), params).scalar_one())


def schedule(engine: Engine, now: datetime, spread_seconds: int, jobs: int = 1) -> int:
    """`schedule_once` over slices of the buckets, `jobs` at a time, each slice on its own
    connection and transaction: the shards (Citus), cut into contiguous runs of buckets
    when there are fewer of them than `jobs` (one PostgreSQL: `jobs` bucket ranges).

    The slices are disjoint, so they never wait on each other. If one fails the others
    still commit: the runs they created are right, and the next tick creates the rest.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")

    def one(buckets: Buckets) -> int:
        with engine.begin() as conn:
            return schedule_once(conn, now, spread_seconds, buckets)

    slices = shards.for_engine(engine).slices(jobs)
    if len(slices) == 1:
        return one(slices[0])
    with ThreadPoolExecutor(jobs, thread_name_prefix="schedule") as pool:
        return sum(pool.map(one, slices))
