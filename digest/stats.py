"""`digest stats`: the health of the queue in a few numbers (`collect`; the CLI prints them)."""

from __future__ import annotations

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
