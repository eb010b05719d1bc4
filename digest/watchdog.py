"""Return runs whose worker vanished: an expired lease goes back to `pending`, or to
`failed` once it has used `max_attempts` (a dead letter with its reason, never silent).

No lease is taken back until the server has been up for `restart_grace` seconds
(DIGEST_RESTART_GRACE, 60): a worker cannot extend a lease while PostgreSQL is down, so a
lease that ran out during a stop or restart is not a sign that its worker died. The worker
keeps the outcomes of what it sent and records them as soon as the server answers
(`digest.worker`), within that grace, so a long outage does not turn into mail sent twice.
"""

from __future__ import annotations

import logging

from sqlalchemy import Connection

from digest import logs, shards
from digest.shards import Sharded

log = logging.getLogger(__name__)

# Two updates over disjoint runs (attempts left or not) rather than one with a CASE per
# column: no now() inside a CASE. A run back to pending waits what `retry.backoff` gives a
# transient failure of the same attempt, with a jitter of 0.5 to 1 times it from a hash of
# (id, attempt), so a run that kills its worker does not hit the next one at once, and a
# dead worker's batch does not come due all at the same instant. Not random(): Citus
# refuses volatile functions in an UPDATE, and `now() + interval` with a column in it (a
# stable operator); the due time is `to_timestamp` of epoch seconds instead, which Citus
# evaluates on the node. The exponent stops at 60: past it any base is over any cap, and
# 2^1024 would overflow. One statement per shard (`{shard:…}`).
RUN_RESET_EXPIRED = Sharded(
    """
    WITH requeued AS (
        UPDATE digest_runs
           SET status = 'pending',
               scheduled_for = to_timestamp(extract(epoch FROM now())
                   + least(CAST(:backoff_cap AS float8),
                           CAST(:backoff_base AS float8)
                           * 2 ^ least(greatest(attempt - 1, 0), 60))
                     * (0.5 + (hashint8(id * 64 + attempt) & 65535) / 131072.0)),
               last_error = 'lease expired (worker ' || coalesce(locked_by, '?') || ' lost it)',
               locked_by = NULL,
               lease_expires_at = NULL
         WHERE {shard:bucket}
           AND status = 'processing' AND lease_expires_at < now() AND attempt < :max_attempts
           AND pg_postmaster_start_time() < now() - make_interval(secs => :restart_grace)
        RETURNING id, status
    ), failed AS (
        UPDATE digest_runs
           SET status = 'failed',
               completed_at = now(),
               last_error = 'lease expired ' || attempt || ' times (worker '
                            || coalesce(locked_by, '?') || ' was last)',
               locked_by = NULL,
               lease_expires_at = NULL
         WHERE {shard:bucket}
           AND status = 'processing' AND lease_expires_at < now() AND attempt >= :max_attempts
           AND pg_postmaster_start_time() < now() - make_interval(secs => :restart_grace)
        RETURNING id, status
    )
    SELECT id, status FROM requeued
    UNION ALL
    SELECT id, status FROM failed
    """
)


def reset_expired_once(
    conn: Connection,
    max_attempts: int,
    *,
    restart_grace: float = 0.0,
    backoff_base: float = 0.0,
    backoff_cap: float = 0.0,
) -> tuple[int, int]:
    """One pass, none until the server has been up `restart_grace` seconds; a run back to
    pending is due after `retry.backoff(attempt, backoff_base, backoff_cap)` (0: at once);
    returns (runs back to pending, runs failed)."""
    params = {
        "max_attempts": max_attempts,
        "restart_grace": restart_grace,
        "backoff_base": float(backoff_base),
        "backoff_cap": float(backoff_cap),
    }
    rows: list[tuple[int, str]] = []
    with conn.begin():
        for buckets in shards.for_connection(conn).shards:
            found = conn.execute(RUN_RESET_EXPIRED.bind(buckets), params)
            rows += [(run_id, status) for run_id, status in found]
    pending = sum(1 for _, status in rows if status == "pending")
    failed = len(rows) - pending
    for run_id, status in rows:
        logs.event(log, "run_lease_expired", logging.WARNING, run_id=run_id, status=status)
    return pending, failed
