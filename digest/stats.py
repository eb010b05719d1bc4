"""`digest stats`: the health of the queue in a few numbers."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import Connection, text

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

RECIPIENT_COUNT_UNSCHEDULABLE = text(
    """
    SELECT count(*) FROM recipients
     WHERE timezone NOT IN (SELECT name FROM pg_timezone_names)
    """
)

STATUSES = ("pending", "processing", "sent", "skipped", "failed", "cancelled")


def collect(conn: Connection) -> dict[str, Any]:
    """Every figure of the report, as plain data (for --json)."""
    by_status = dict.fromkeys(STATUSES, 0)
    by_status.update({row.status: row.count for row in conn.execute(RUN_COUNT_BY_STATUS)})
    oldest = conn.execute(RUN_OLDEST_DUE).one()
    waiting = conn.execute(EVENT_COUNT_WAITING).one()
    return {
        "runs": by_status,
        "due_now": oldest.due,
        "oldest_due_pending": oldest.oldest_due.isoformat() if oldest.oldest_due else None,
        "oldest_due_lag_seconds": float(oldest.lag_seconds) if oldest.lag_seconds else 0.0,
        "events_waiting": waiting.events,
        "users_with_events_waiting": waiting.users,
        "recipients_with_unknown_timezone": conn.execute(
            RECIPIENT_COUNT_UNSCHEDULABLE
        ).scalar_one(),
    }


def print_report(report: dict[str, Any], console: Console | None = None) -> None:
    """A small table for people."""
    console = console or Console()
    runs = Table(title="digest runs", show_header=True)
    for status in STATUSES:
        runs.add_column(status, justify="right")
    runs.add_row(*(str(report["runs"][s]) for s in STATUSES))
    console.print(runs)
    lag = report["oldest_due_lag_seconds"]
    console.print(
        f"due now: {report['due_now']}"
        + (f" (oldest due {report['oldest_due_pending']}, {lag:.0f}s late)" if lag else "")
    )
    console.print(
        f"events waiting: {report['events_waiting']} "
        f"for {report['users_with_events_waiting']} users"
    )
    if report["recipients_with_unknown_timezone"]:
        console.print(
            f"[yellow]warning:[/] {report['recipients_with_unknown_timezone']} recipients have a "
            "time zone PostgreSQL does not know; they are not scheduled"
        )
