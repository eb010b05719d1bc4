"""`digest purge`: retention. Deletes old finished work in small batches, keeps suppressions.

Each batch is its own short transaction, so a purge of millions of rows never holds locks
or a snapshot for long (which would slow the queue's SKIP LOCKED scans and vacuum).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, TextClause, text

from digest import shards
from digest.errors import DigestError
from digest.shards import Sharded

FINISHED = "('sent', 'skipped', 'failed', 'cancelled')"

# Every statement on a per-user table works within one shard (`{shard:…}`, `digest.shards`);
# `purge` runs each shard in turn.
#
# Events of runs finished before the cutoff (the run's outcome is what counts, not the
# event's own age: an old event still waiting for a digest is never purged).
EVENT_PURGE_BATCH = Sharded(
    f"""
    DELETE FROM digest_events
     WHERE {{shard:bucket}}
       AND (bucket, id) IN (SELECT e.bucket, e.id FROM digest_events e
                              JOIN digest_runs r
                                ON r.bucket = e.bucket AND r.id = e.digest_run_id
                             WHERE {{shard:e.bucket}} AND {{shard:r.bucket}}
                               AND r.status IN {FINISHED} AND r.completed_at < :cutoff
                             LIMIT :batch)
    """
)
DELIVERY_PURGE_BATCH = Sharded(
    """
    DELETE FROM deliveries
     WHERE {shard:bucket}
       AND (bucket, id) IN (SELECT bucket, id FROM deliveries
                             WHERE {shard:bucket} AND created_at < :cutoff LIMIT :batch)
    """
)
# The provider ids of those deliveries: the lookup is kept as long as they are.
DELIVERY_LOOKUP_PURGE_BATCH = text(
    """
    DELETE FROM delivery_provider_ids
     WHERE (provider_message_id, delivery_id) IN (
           SELECT provider_message_id, delivery_id FROM delivery_provider_ids
            WHERE created_at < :cutoff LIMIT :batch)
    """
)
# Feedback events are evidence for support; they age out with the deliveries they explain.
FEEDBACK_PURGE_BATCH = text(
    """
    DELETE FROM feedback_events
     WHERE sns_message_id IN (SELECT sns_message_id FROM feedback_events
                               WHERE created_at < :cutoff LIMIT :batch)
    """
)
# The scheduler's `ON CONFLICT` on (user, cadence, period) is what stops a second digest in
# a period, so a run whose period could still be current is never purged, whatever its age:
# the scheduler only creates the period current at its `now`, which started at most 7 days
# and a DST hour ago (a weekly one); 8 days leaves a day for clocks. Cancelled runs hold no
# period (the unique index leaves them out) and may go.
KEEP_PERIODS_DAYS = 8

# A run goes once its events and deliveries are gone.
RUN_PURGE_BATCH = Sharded(
    f"""
    DELETE FROM digest_runs
     WHERE {{shard:bucket}}
       AND (bucket, id) IN (
           SELECT r.bucket, r.id FROM digest_runs r
            WHERE {{shard:r.bucket}}
              AND r.status IN {FINISHED} AND r.completed_at < :cutoff
              AND (r.status = 'cancelled'
                   OR r.period_start < now() - make_interval(days => {KEEP_PERIODS_DAYS}))
              AND NOT EXISTS (SELECT 1 FROM digest_events e
                               WHERE {{shard:e.bucket}}
                                 AND e.bucket = r.bucket AND e.digest_run_id = r.id)
              AND NOT EXISTS (SELECT 1 FROM deliveries d
                               WHERE {{shard:d.bucket}} AND d.bucket = r.bucket
                                 AND d.run_id = r.id)
            LIMIT :batch)
    """
)


@dataclass
class PurgeResult:
    """Rows deleted per table."""

    events: int = 0
    deliveries: int = 0
    feedback: int = 0
    runs: int = 0


def parse_age(value: str) -> timedelta:
    """`90d`, `12h`, `30m` -> a timedelta; anything else is a one-line error."""
    match = re.fullmatch(r"\s*(\d+)\s*([dhm])\s*", value)
    if not match:
        raise DigestError(
            f"--older-than: expected a number and d, h or m (e.g. 90d), got {value!r}"
        )
    amount, unit = int(match[1]), match[2]
    return timedelta(**{{"d": "days", "h": "hours", "m": "minutes"}[unit]: amount})


def purge(engine: Engine, cutoff: datetime, batch: int = 10_000) -> PurgeResult:
    """Delete events of finished runs, deliveries, feedback events and finished runs older
    than `cutoff`; suppressions, bounce streaks and the runs of periods that may still be
    current stay."""
    result = PurgeResult()
    in_shards = shards.for_engine(engine).shards
    steps: list[tuple[str, TextClause]] = [
        *(("events", EVENT_PURGE_BATCH.bind(b)) for b in in_shards),
        *(("deliveries", DELIVERY_PURGE_BATCH.bind(b)) for b in in_shards),
        ("", DELIVERY_LOOKUP_PURGE_BATCH),
        ("feedback", FEEDBACK_PURGE_BATCH),
        *(("runs", RUN_PURGE_BATCH.bind(b)) for b in in_shards),
    ]
    for field, statement in steps:
        while True:
            with engine.begin() as conn:
                deleted = conn.execute(statement, {"cutoff": cutoff, "batch": batch}).rowcount
            if field:
                setattr(result, field, getattr(result, field) + deleted)
            if deleted < batch:
                break
    return result
