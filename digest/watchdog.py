"""Return runs whose worker vanished: an expired lease goes back to `pending`, or to
`failed` once it has used `max_attempts` (a dead letter with its reason, never silent).

No lease is taken back until the server has been up for `restart_grace` seconds (one
lease): a worker cannot extend a lease while PostgreSQL is down, so a lease that ran out
during a stop or restart is not a sign that its worker died. The worker keeps the outcomes
of what it sent and records them as soon as the server answers (`digest.worker`), within
that grace, so a long outage does not turn into mail sent twice.
"""

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
       AND pg_postmaster_start_time() < now() - make_interval(secs => :restart_grace)
    RETURNING id, status
    """
)


def reset_expired_once(
    conn: Connection, max_attempts: int, *, restart_grace: float = 0.0
) -> tuple[int, int]:
    """One pass, none until the server has been up `restart_grace` seconds; returns (runs
    back to pending, runs failed)."""
    params = {"max_attempts": max_attempts, "restart_grace": restart_grace}
    with conn.begin():
        rows = conn.execute(RUN_RESET_EXPIRED, params).all()
    pending = sum(1 for _, status in rows if status == "pending")
    failed = len(rows) - pending
    for run_id, status in rows:
        log.warning("run_lease_expired run_id=%s status=%s", run_id, status)
    return pending, failed
