"""Return runs whose worker vanished: an expired lease goes back to `pending`, or to
`failed` once it has used `max_attempts` (a dead letter with its reason, never silent)."""

from __future__ import annotations

import logging

from sqlalchemy import Connection, text

log = logging.getLogger(__name__)

RUN_RESET_EXPIRED = text(
    """
    UPDATE digest_runs
       SET status = CASE WHEN attempt >= :max_attempts THEN 'failed' ELSE 'pending' END,
           completed_at = CASE WHEN attempt >= :max_attempts THEN now() END,
           last_error = CASE WHEN attempt >= :max_attempts
                             THEN 'lease expired ' || attempt || ' times (worker '
                                  || coalesce(locked_by, '?') || ' was last)'
                             ELSE 'lease expired (worker ' || coalesce(locked_by, '?')
                                  || ' lost it)' END,
           locked_by = NULL,
           lease_expires_at = NULL
     WHERE status = 'processing' AND lease_expires_at < now()
    RETURNING id, status
    """
)


def reset_expired_once(conn: Connection, max_attempts: int) -> tuple[int, int]:
    """One pass; returns (runs back to pending, runs failed)."""
    with conn.begin():
        rows = conn.execute(RUN_RESET_EXPIRED, {"max_attempts": max_attempts}).all()
    pending = sum(1 for _, status in rows if status == "pending")
    failed = len(rows) - pending
    for run_id, status in rows:
        log.warning("run_lease_expired run_id=%s status=%s", run_id, status)
    return pending, failed
