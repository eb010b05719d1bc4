"""The harness's SQL: what it reads while the faults go on, and the end state it audits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, text

from chaos_lib.records import Attempt, Delivery, EndState, Left, Run

# Recipients whose runs are skipped: no events at all, or a suppressed address.
SEED_EXTRAS = (
    """
    INSERT INTO recipients (bucket, user_id, email, name)
    SELECT digest_bucket('quiet' || g), 'quiet' || g, 'quiet' || g || '@example.com',
           'Quiet ' || g
      FROM generate_series(1, 5) g
    """,
    """
    INSERT INTO recipients (bucket, user_id, email, name)
    VALUES (digest_bucket('bounced'), 'bounced', 'bounced@example.com', 'Bounced')
    """,
    """
    INSERT INTO digest_events (bucket, user_id, category, entity_type, entity_id, payload)
    VALUES (digest_bucket('bounced'), 'bounced', 'comment', 'post', 'p1', '{"title": "Lost"}')
    """,
    """
    INSERT INTO suppressions (email, reason, source)
    VALUES ('bounced@example.com', 'hard bounce', 'chaos')
    """,
)

ORPHANS_OF = text(
    """
    SELECT id, attempt FROM digest_runs
     WHERE status = 'processing' AND split_part(locked_by, ':', 2) = :pid
    """
)
IN_FLIGHT = text("SELECT id, attempt FROM digest_runs WHERE status = 'processing'")
LEFT = text(
    """
    SELECT count(*) FILTER (WHERE status = 'processing') AS processing,
           count(*) FILTER (WHERE status = 'pending' AND scheduled_for <= now()) AS due,
           count(*) FILTER (WHERE status = 'pending' AND scheduled_for > now()) AS later
      FROM digest_runs
    """
)
STUCK = text(
    """
    SELECT id, attempt, locked_by,
           extract(epoch FROM lease_expires_at - now()) AS lease_left,
           extract(epoch FROM now() - started_at) AS started_ago
      FROM digest_runs WHERE status = 'processing' ORDER BY id LIMIT 20
    """
)
# Where every event ended up; the states the audit accepts are in audit.EVENT_STATES_OK.
EVENT_STATES = text(
    """
    SELECT CASE
             WHEN e.digest_run_id IS NULL THEN
               CASE WHEN EXISTS (SELECT 1 FROM digest_runs d
                                  WHERE d.user_id = e.user_id
                                    AND (d.status = 'processing'
                                         OR (d.status = 'pending' AND d.scheduled_for <= now())))
                    THEN 'waiting although a run is due' ELSE 'waiting' END
             WHEN r.id IS NULL THEN 'in a run that does not exist'
             WHEN r.status IN ('sent', 'failed', 'skipped')
                  AND (r.status = 'sent' OR coalesce(btrim(r.last_error), '') <> '')
               THEN 'in a ' || r.status || ' run'
             WHEN r.status IN ('failed', 'skipped') THEN 'in a ' || r.status || ' run, no reason'
             WHEN r.status = 'pending' AND r.scheduled_for > now() THEN 'waiting for a retry'
             ELSE 'in a ' || r.status || ' run'
           END AS state, count(*)
      FROM digest_events e LEFT JOIN digest_runs r ON r.id = e.digest_run_id
     GROUP BY 1
    """
)
RUNS = text(
    """
    SELECT r.id, r.status, r.attempt, r.last_error, r.event_count,
           (SELECT count(*) FROM digest_events e WHERE e.digest_run_id = r.id) AS attached,
           extract(epoch FROM r.completed_at) AS completed
      FROM digest_runs r
    """
)
DELIVERIES = text("SELECT run_id, attempt, status, transport FROM deliveries")
PRODUCED_KEYS = text(
    "SELECT user_id || '/' || event_key FROM digest_events WHERE event_key LIKE 'chaos-%'"
)


def gather(engine: Engine) -> EndState:
    """What the database holds at the end, as plain data for the audit."""
    with engine.connect() as conn:
        event_states = {str(s): int(n) for s, n in conn.execute(EVENT_STATES)}
        left = Left(*(int(n) for n in conn.execute(LEFT).one()))
        runs = {
            int(row.id): Run(
                id=int(row.id),
                status=str(row.status),
                attempt=int(row.attempt),
                last_error=row.last_error,
                event_count=None if row.event_count is None else int(row.event_count),
                attached=int(row.attached),
                completed=None if row.completed is None else float(row.completed),
            )
            for row in conn.execute(RUNS)
        }
        deliveries = [
            Delivery(int(d.run_id), int(d.attempt), str(d.status), str(d.transport))
            for d in conn.execute(DELIVERIES)
        ]
        keys = {str(k) for k in conn.execute(PRODUCED_KEYS).scalars()}
    return EndState(event_states, left, runs, deliveries, keys)


def in_flight(engine: Engine) -> list[Attempt]:
    """The attempts in flight now."""
    return fetch_attempts(engine, IN_FLIGHT)


def orphans_of(pid: int) -> Callable[[Engine], list[Attempt]]:
    """A query for the runs still leased by worker process `pid`."""
    return lambda engine: fetch_attempts(engine, ORPHANS_OF, pid=str(pid))


def left(engine: Engine) -> tuple[int, int, int]:
    """(processing, due, waiting for a retry) now."""
    with engine.connect() as conn:
        a, b, c = conn.execute(LEFT).one()
        return int(a), int(b), int(c)


def fetch_attempts(engine: Engine, statement: Any, **params: Any) -> list[Attempt]:
    """The (run id, attempt) pairs `statement` returns."""
    with engine.connect() as conn:
        return [(int(a), int(b)) for a, b in conn.execute(statement, params)]
