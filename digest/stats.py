"""`digest stats`: the health of the queue in a few numbers (`collect`; the CLI prints them),
and the few `digest work` shows live on a terminal every second (`queue_now`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection

from digest import recipients, shards
from digest.models import DeliveryStatus, RunStatus
from digest.shards import Sharded

# Each figure is asked of every shard in turn (`{shard:…}`, `digest.shards`) and added up:
# a user's rows all lie in one shard, so the counts of distinct users add up too.
RUN_COUNT_BY_STATUS = Sharded(
    "SELECT status, count(*) FROM digest_runs WHERE {shard:bucket} GROUP BY status"
)

RUN_OLDEST_DUE = Sharded(
    """
    SELECT min(scheduled_for) AS oldest_due, count(*) AS due,
           extract(epoch FROM now() - min(scheduled_for)) AS lag_seconds
      FROM digest_runs
     WHERE {shard:bucket} AND status = 'pending' AND scheduled_for <= now()
    """
)

# Read every second by a worker on a terminal, so each part walks an index, not the table:
# the due count stops at DUE_COUNT_CAP + 1 (a backlog of millions is shown as "1,000,000+"),
# the oldest and next due times are the ends of the due index, and the runs held by
# workers are the lease index's rows. Asked of each shard in turn, like the figures below.
DUE_COUNT_CAP = 1_000_000
QUEUE_GET_NOW = Sharded(
    """
    SELECT (SELECT count(*) FROM (SELECT 1 FROM digest_runs
                                   WHERE {shard:bucket} AND status = 'pending'
                                     AND scheduled_for <= now()
                                   LIMIT :cap + 1) AS due) AS due,
           (SELECT count(*) FROM digest_runs
             WHERE {shard:bucket} AND lease_expires_at IS NOT NULL) AS claimed,
           extract(epoch FROM now() - (SELECT min(scheduled_for) FROM digest_runs
                                        WHERE {shard:bucket} AND status = 'pending'
                                          AND scheduled_for <= now()))
               AS lag_seconds,
           extract(epoch FROM (SELECT min(scheduled_for) FROM digest_runs
                                WHERE {shard:bucket} AND status = 'pending'
                                  AND scheduled_for > now()) - now())
               AS next_due_seconds
    """
)

EVENT_COUNT_WAITING = Sharded(
    """
    SELECT count(*) AS events, count(DISTINCT user_id) AS users
      FROM digest_events WHERE {shard:bucket} AND digest_run_id IS NULL
    """
)

# Messages a provider accepted, whatever feedback said about them afterwards.
DELIVERY_RATES_BY_DAY = Sharded(
    """
    SELECT date_trunc('day', created_at AT TIME ZONE 'UTC')::date AS day,
           count(*) FILTER (WHERE status IN ('sent', 'delivered', 'bounced', 'complained'))
               AS sent,
           count(*) FILTER (WHERE status = 'delivered') AS delivered,
           count(*) FILTER (WHERE status = 'bounced') AS bounced,
           count(*) FILTER (WHERE status = 'complained') AS complained
      FROM deliveries
     WHERE {shard:bucket} AND created_at >= now() - interval '7 days'
     GROUP BY 1
     ORDER BY 1
    """
)

# Gmail and Yahoo ask bulk senders to stay under 0.3% complaints; SES reviews accounts
# over 0.1% complaints or 5% bounces. Warn before that.
COMPLAINT_WARN = 0.001
BOUNCE_WARN = 0.04

RATE_KEYS = (
    DeliveryStatus.SENT,
    DeliveryStatus.DELIVERED,
    DeliveryStatus.BOUNCED,
    DeliveryStatus.COMPLAINED,
)
STATUSES = tuple(RunStatus)


@dataclass(frozen=True)
class QueueNow:
    """The queue as `digest work` shows it: runs due, runs claimed by any worker, how late
    the oldest due run is, and when the next one falls due (None: none pending)."""

    due: int
    due_capped: bool  # more than DUE_COUNT_CAP are due
    claimed: int
    lag_seconds: float | None
    next_due_seconds: float | None


def queue_now(conn: Connection) -> QueueNow:
    """The queue now, in one cheap statement per shard."""
    due = claimed = 0
    lag: float | None = None
    next_due: float | None = None
    for buckets in shards.for_connection(conn).shards:
        row = conn.execute(QUEUE_GET_NOW.bind(buckets), {"cap": DUE_COUNT_CAP}).one()
        due += int(row.due)
        claimed += int(row.claimed)
        if row.lag_seconds is not None:
            lag = max(float(row.lag_seconds), lag or 0.0)
        if row.next_due_seconds is not None:
            found = float(row.next_due_seconds)
            next_due = found if next_due is None else min(found, next_due)
    return QueueNow(
        due=min(due, DUE_COUNT_CAP),
        due_capped=due > DUE_COUNT_CAP,
        claimed=claimed,
        lag_seconds=lag,
        next_due_seconds=next_due,
    )


def collect(conn: Connection) -> dict[str, Any]:
    """Every figure of the report, as plain data (for --json)."""
    by_status = dict.fromkeys(STATUSES, 0)
    oldest_due: datetime | None = None
    due = events = users = 0
    lag = 0.0
    by_day: dict[date, dict[str, int]] = {}
    for buckets in shards.for_connection(conn).shards:
        for status, count in conn.execute(RUN_COUNT_BY_STATUS.bind(buckets)):
            by_status[status] = by_status.get(status, 0) + count
        oldest = conn.execute(RUN_OLDEST_DUE.bind(buckets)).one()
        due += oldest.due
        if oldest.oldest_due is not None:
            oldest_due = min(oldest.oldest_due, oldest_due or oldest.oldest_due)
            lag = max(lag, float(oldest.lag_seconds))
        waiting = conn.execute(EVENT_COUNT_WAITING.bind(buckets)).one()
        events, users = events + waiting.events, users + waiting.users
        for row in conn.execute(DELIVERY_RATES_BY_DAY.bind(buckets)):
            day = by_day.setdefault(row.day, dict.fromkeys(RATE_KEYS, 0))
            for key in RATE_KEYS:
                day[key] += int(getattr(row, key))
    days: list[dict[str, Any]] = [{"day": day.isoformat(), **by_day[day]} for day in sorted(by_day)]
    sent = sum(d[DeliveryStatus.SENT] for d in days)
    complaint_rate = sum(d[DeliveryStatus.COMPLAINED] for d in days) / sent if sent else 0.0
    bounce_rate = sum(d[DeliveryStatus.BOUNCED] for d in days) / sent if sent else 0.0
    warnings = []
    if complaint_rate > COMPLAINT_WARN:
        warnings.append(
            f"complaint rate over the last 7 days is {complaint_rate:.2%} "
            f"(above {COMPLAINT_WARN:.1%})"
        )
    if bounce_rate > BOUNCE_WARN:
        warnings.append(
            f"bounce rate over the last 7 days is {bounce_rate:.2%} (above {BOUNCE_WARN:.0%})"
        )
    return {
        "deliveries_by_day": days,
        "complaint_rate_7d": complaint_rate,
        "bounce_rate_7d": bounce_rate,
        "warnings": warnings,
        "runs": by_status,
        "due_now": due,
        "oldest_due_pending": oldest_due.isoformat() if oldest_due else None,
        "oldest_due_lag_seconds": lag,
        "events_waiting": events,
        "users_with_events_waiting": users,
        "recipients_with_unknown_timezone": recipients.count_unschedulable(conn),
    }
