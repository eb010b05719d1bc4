"""`digest schedule`: create the current period's run for every subscribed recipient.

One set-based statement, safe to run twice at once (the unique period key plus
`ON CONFLICT DO NOTHING`), never a Python loop over users. A tick that creates many runs
is bound by the server's inserts into digest_runs' indexes, on one core per statement, so
`schedule` can run the same statement over disjoint hash slices of the recipients on
several connections at once.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from sqlalchemy import Connection, Engine, text

# The current period of a recipient is the latest local send time at or before `now`:
# today's (daily) or this week's `weekly_day` (weekly) at `send_hour`, in the recipient's
# own zone, else the one before. Local date + hour is turned into an instant with
# `AT TIME ZONE`, so DST days neither skip nor double a run: each local date gives one
# period_start. A send hour that does not exist that day (spring forward) maps to the
# next valid instant, as PostgreSQL defines it.
# `scheduled_for` adds a stable per-user stagger of hashtext(user_id) mod spread seconds.
# Slice `part` of `parts` holds the recipients whose hashtext(user_id) mod parts is `part`.
# Recipients whose zone PostgreSQL does not know are left out (and reported by
# `digest stats`) rather than failing the statement for everyone.
RUN_SCHEDULE_CURRENT = text(
    """
    INSERT INTO digest_runs (user_id, cadence, period_start, scheduled_for)
    SELECT r.user_id, r.cadence, p.period_start,
           p.period_start + make_interval(
               secs => CASE WHEN :spread > 0
                            THEN mod(abs(hashtext(r.user_id)::bigint), :spread)
                            ELSE 0 END)
      FROM recipients r
      CROSS JOIN LATERAL (
          SELECT (CAST(:now AS timestamptz) AT TIME ZONE r.timezone) AS local_now) l
      CROSS JOIN LATERAL (
          SELECT CASE r.cadence
                   WHEN 'daily' THEN l.local_now::date
                   ELSE l.local_now::date
                        - (extract(isodow FROM l.local_now)::int - r.weekly_day + 7) % 7
                 END AS day,
                 CASE r.cadence WHEN 'daily' THEN 1 ELSE 7 END AS period_days) d
      CROSS JOIN LATERAL (
          SELECT CASE
                   WHEN ((d.day + make_time(r.send_hour, 0, 0)) AT TIME ZONE r.timezone)
                        <= CAST(:now AS timestamptz)
                   THEN ((d.day + make_time(r.send_hour, 0, 0)) AT TIME ZONE r.timezone)
                   ELSE ((d.day - d.period_days + make_time(r.send_hour, 0, 0))
                         AT TIME ZONE r.timezone)
                 END AS period_start) p
     WHERE r.cadence IN ('daily', 'weekly')
       AND r.unsubscribed_at IS NULL
       AND r.timezone IN (SELECT name FROM pg_timezone_names)
       AND mod(abs(hashtext(r.user_id)::bigint), :parts) = :part
    ON CONFLICT (user_id, cadence, period_start) WHERE status <> 'cancelled' DO NOTHING
    """
)


def schedule_once(
    conn: Connection, now: datetime, spread_seconds: int, *, part: int = 0, parts: int = 1
) -> int:
    """Create the missing runs for the period current at `now`, for slice `part` of `parts`
    of the recipients (all of them by default); returns how many were new."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if not 0 <= part < parts:
        raise ValueError(f"part must be in 0..{parts - 1}, got {part}")
    params = {"now": now, "spread": spread_seconds, "part": part, "parts": parts}
    return int(conn.execute(RUN_SCHEDULE_CURRENT, params).rowcount)


def schedule(engine: Engine, now: datetime, spread_seconds: int, jobs: int = 1) -> int:
    """`schedule_once` in `jobs` slices at once, each on its own connection and transaction.

    The slices are disjoint, so they never wait on each other. If one fails the others
    still commit: the runs they created are right, and the next tick creates the rest.
    """

    def one(part: int) -> int:
        with engine.begin() as conn:
            return schedule_once(conn, now, spread_seconds, part=part, parts=jobs)

    if jobs == 1:
        return one(0)
    with ThreadPoolExecutor(jobs, thread_name_prefix="schedule") as pool:
        return sum(pool.map(one, range(jobs)))
