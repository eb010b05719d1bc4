"""`digest schedule`: create the current period's run for every subscribed recipient.

One set-based statement, safe to run twice at once (the unique period key plus
`ON CONFLICT DO NOTHING`), never a Python loop over users.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, text

# The current period of a recipient is the latest local send time at or before `now`:
# today's (daily) or this week's `weekly_day` (weekly) at `send_hour`, in the recipient's
# own zone, else the one before. Local date + hour is turned into an instant with
# `AT TIME ZONE`, so DST days neither skip nor double a run: each local date gives one
# period_start. A send hour that does not exist that day (spring forward) maps to the
# next valid instant, as PostgreSQL defines it.
# `scheduled_for` adds a stable per-user stagger of hashtext(user_id) mod spread seconds.
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
    ON CONFLICT (user_id, cadence, period_start) WHERE status <> 'cancelled' DO NOTHING
    """
)


def schedule_once(conn: Connection, now: datetime, spread_seconds: int) -> int:
    """Create the missing runs for the period current at `now`; returns how many were new."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    result = conn.execute(RUN_SCHEDULE_CURRENT, {"now": now, "spread": spread_seconds})
    return int(result.rowcount)
