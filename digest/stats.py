"""`digest stats`: the health of the queue in a few numbers (`collect`; the CLI prints them),
and the few `digest work` shows live on a terminal every second (`queue_now`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, text

from digest import recipients
from digest.models import DeliveryStatus, RunStatus

RUN_COUNT_BY_STATUS = text("SELECT status, count(*) FROM digest_runs GROUP BY status")

RUN_OLDEST_DUE = text(
    """
    SELECT min(scheduled_for) AS oldest_due,
           count(*) AS due,
           extract(epoch FROM now() - min(scheduled_for)) AS lag_seconds
      FROM digest_runs
     WHERE status = 'pending' AND scheduled_for <= now()
    """
)

# Read every second by a worker on a terminal, so each part walks an index, not the table:
# the due count stops at DUE_COUNT_CAP + 1 (a backlog of millions is shown as "1,000,000+"),
# the oldest and next due times are the ends of the due index, and the runs held by
# workers are the lease index's rows.
DUE_COUNT_CAP = 1_000_000
QUEUE_GET_NOW = text(
    """
    SELECT (SELECT count(*) FROM (SELECT 1 FROM digest_runs
                                   WHERE status = 'pending' AND scheduled_for <= now()
                                   LIMIT :cap + 1) AS due) AS due,
           (SELECT count(*) FROM digest_runs WHERE lease_expires_at IS NOT NULL) AS claimed,
           extract(epoch FROM now() - (SELECT min(scheduled_for) FROM digest_runs
                                        WHERE status = 'pending' AND scheduled_for <= now()))
               AS lag_seconds,
           extract(epoch FROM (SELECT min(scheduled_for) FROM digest_runs
                                WHERE status = 'pending' AND scheduled_for > now()) - now())
               AS next_due_seconds
    """
)

EVENT_COUNT_WAITING = text(
    """
    SELECT count(*) AS events, count(DISTINCT user_id) AS users
      FROM digest_events WHERE digest_run_id IS NULL
    """
)

# Messages a provider accepted, whatever feedback said about them afterwards.
DELIVERY_RATES_BY_DAY = text(
    """
    SELECT date_trunc('day', created_at AT TIME ZONE 'UTC')::date AS day,
           count(*) FILTER (WHERE status IN ('sent', 'delivered', 'bounced', 'complained'))
               AS sent,
           count(*) FILTER (WHERE status = 'delivered') AS delivered,
           count(*) FILTER (WHERE status = 'bounced') AS bounced,
           count(*) FILTER (WHERE status = 'complained') AS complained
      FROM deliveries
     WHERE created_at >= now() - interval '7 days'
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
    """The queue now, in one cheap statement."""
    row = conn.execute(QUEUE_GET_NOW, {"cap": DUE_COUNT_CAP}).one()
    return QueueNow(
        due=min(int(row.due), DUE_COUNT_CAP),
        due_capped=int(row.due) > DUE_COUNT_CAP,
        claimed=int(row.claimed),
        lag_seconds=None if row.lag_seconds is None else float(row.lag_seconds),
        next_due_seconds=None if row.next_due_seconds is None else float(row.next_due_seconds),
    )


def collect(conn: Connection) -> dict[str, Any]:
    """Every figure of the report, as plain data (for --json)."""
    by_status = dict.fromkeys(STATUSES, 0)
    by_status.update({row.status: row.count for row in conn.execute(RUN_COUNT_BY_STATUS)})
    oldest = conn.execute(RUN_OLDEST_DUE).one()
    waiting = conn.execute(EVENT_COUNT_WAITING).one()
    days = [
        {"day": row.day.isoformat(), **{k: int(getattr(row, k)) for k in RATE_KEYS}}
        for row in conn.execute(DELIVERY_RATES_BY_DAY)
    ]
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
        "due_now": oldest.due,
        "oldest_due_pending": oldest.oldest_due.isoformat() if oldest.oldest_due else None,
        "oldest_due_lag_seconds": float(oldest.lag_seconds) if oldest.lag_seconds else 0.0,
        "events_waiting": waiting.events,
        "users_with_events_waiting": waiting.users,
        "recipients_with_unknown_timezone": recipients.count_unschedulable(conn),
    }
