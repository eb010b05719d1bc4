"""The run lifecycle in SQL: claim, freeze, heartbeat, finish, release.

Every state change after the claim is fenced by owner and attempt
(`locked_by = :me AND attempt = :attempt AND status = 'processing'`): zero rows means the
lease was lost to the watchdog and another claim, this worker's own included; the late
batch changes nothing. (Only RUN_RELEASE_LEFTOVERS names no attempt: see there why.)
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

import orjson
from sqlalchemy import Connection, TextClause, text

from digest import content, recipients, shards
from digest.models import EMPTY_DIGEST, ClaimedRun, Outcome, Recipient
from digest.shards import ALL, Buckets, Sharded

# One statement claims a batch, freezes its events and loads what its digests need: one
# round trip, atomic on its own. `due` walks the small partial index of pending runs in due
# order and skips rows other workers hold; the update then finds those runs by key (joined
# to `due` alone, it read and hashed the whole runs table on every claim).
#
# Freeze once: a run's first attempt attaches the user's waiting events to it before anything
# is sent, so a retry renders the same events. Rows are attached by identity, not by an id
# range, so an event whose transaction commits later (ids are not committed in order) is
# simply not visible yet and waits for the next run; concurrent freezes for the same user
# re-check `digest_run_id IS NULL` under the row lock and never attach an event twice. The
# claim stamps `frozen_at` on a run's first attempt only; that stamp is also the message's
# Date, so a retry sends the same bytes.
#
# The statement's parts all see the snapshot it started with, so the grouping reads the
# events this attempt attached from the freeze's RETURNING, and a retry's from the table;
# each run comes back with its recipient (and any suppression of the address) and its
# digest (`digest.content`).
#
# Muted categories: every waiting event is attached, but the grouping skips the categories
# the recipient had muted when the run first froze (kept on the run, so a retry leaves out
# the same ones and sends the same bytes); the run's event count is the shown events, and
# `digest why` counts the rest as muted. An event left waiting instead would wait forever.
#
# The batch size is written into the statement (`claim_statement`): with it a parameter,
# the generic plan PostgreSQL would cache cannot know the LIMIT and scans both tables, so
# every claim was planned afresh. So are the shard's buckets (`digest.shards`): every table
# the claim reads is filtered to them, so that Citus routes the whole statement to the node
# holding that shard (its only way to run FOR UPDATE SKIP LOCKED); on one PostgreSQL the
# filter is `bucket BETWEEN 0 AND 4095`. `frozen_at` comes in as :now (Citus refuses now()
# in COALESCE).
#
# The parts come from `digest.content` (the grouping) and `digest.recipients` (the
# recipient): docs/sql/claim_batch.sql shows the whole statement as PostgreSQL gets it, and
# tests/unit/test_sql.py fails when that file and the statement part ways.
_CLAIM_BATCH_SQL = """
    WITH due AS MATERIALIZED (
        SELECT bucket, id, frozen_at FROM digest_runs
         WHERE {shard:bucket} AND status = 'pending' AND scheduled_for <= now()
         ORDER BY scheduled_for
         LIMIT {n:d}
         FOR UPDATE SKIP LOCKED
    ), claimed AS (
        UPDATE digest_runs r
           SET status = 'processing',
               attempt = r.attempt + 1,
               locked_by = :me,
               lease_expires_at = now() + make_interval(secs => :lease),
               started_at = now(),
               frozen_at = coalesce(r.frozen_at, CAST(:now AS timestamptz)),
               muted_categories = CASE WHEN due.frozen_at IS NULL THEN {muted}
                                       ELSE r.muted_categories END
          FROM due
         WHERE {shard:r.bucket} AND r.id = ANY(ARRAY(SELECT id FROM due))
           AND r.bucket = due.bucket AND r.id = due.id
        RETURNING r.bucket, r.id, r.user_id, r.cadence, r.period_start, r.attempt, r.frozen_at,
                  r.sending_attempt, due.frozen_at IS NULL AS fresh,
                  r.muted_categories AS muted
    ), frozen AS (
        UPDATE digest_events e
           SET digest_run_id = c.id
          FROM claimed c
         WHERE c.fresh
           AND {shard:e.bucket}
           AND e.bucket = c.bucket
           AND e.user_id = c.user_id
           AND e.digest_run_id IS NULL
           AND e.created_at <= now()
        RETURNING e.digest_run_id AS run_id, {columns}
    ), attached AS (
        SELECT * FROM frozen
        UNION ALL
        SELECT e.digest_run_id, {columns}
          FROM claimed c JOIN digest_events e ON e.bucket = c.bucket AND e.digest_run_id = c.id
         WHERE NOT c.fresh AND {shard:e.bucket}
    ), shown AS (
        SELECT a.* FROM attached a
         WHERE NOT EXISTS (SELECT FROM claimed c
                            WHERE c.id = a.run_id AND a.category = ANY(c.muted))
    ), {grouping}
    SELECT c.bucket, c.id, c.user_id, c.cadence, c.period_start, c.attempt, c.frozen_at,
           c.sending_attempt, d.total_groups, d.total_events, d.groups, d.folded_likes, p.*
      FROM claimed c
      LEFT JOIN digests d ON d.run_id = c.id
      LEFT JOIN LATERAL {recipient} p ON true
"""


@functools.lru_cache(maxsize=256)
def claim_statement(n: int, buckets: Buckets = ALL) -> TextClause:
    """The claim of up to `n` runs of `buckets` (the buckets of one shard)."""
    return text(
        shards.render(
            _CLAIM_BATCH_SQL,
            buckets,
            n=int(n),
            columns=content.EVENT_COLUMNS,
            grouping=content.grouping("shown"),
            recipient=recipients.recipient_of(
                "c.bucket", "c.user_id", shards.predicate("p.bucket", buckets)
            ),
            muted=recipients.muted_of(
                "r.bucket", "r.user_id", shards.predicate("p.bucket", buckets)
            ),
        )
    )


# The statements on held runs below take them as (bucket, id, attempt), three parallel
# arrays: the owner alone does not fence a run this worker claimed again after its lease
# ran out (the stale batch would extend, mark or give back the new attempt), and the
# buckets route the statement (all of one shard: the caller groups them). The runs are
# found by key, as in RUN_FINISH_MANY.
RUN_EXTEND_LEASE = text(
    """
    UPDATE digest_runs r
       SET lease_expires_at = now() + make_interval(secs => :lease)
      FROM unnest(CAST(:buckets AS smallint[]), CAST(:ids AS bigint[]),
                  CAST(:attempts AS int[])) AS h(bucket, id, attempt)
     WHERE r.bucket = ANY(CAST(:buckets AS smallint[])) AND r.id = ANY(CAST(:ids AS bigint[]))
       AND r.bucket = h.bucket AND r.id = h.id AND r.attempt = h.attempt
       AND r.status = 'processing' AND r.locked_by = :me
    """
)

# Finish a whole batch in one round trip: each run's outcome, fenced; a delivery row for
# every run whose outcome landed and that reached the transport (and the provider's
# message id, for feedback to find it by). Returns the runs that landed, and those whose
# same outcome of the same attempt is already stored (a retry after a commit whose
# acknowledgement was lost; no delivery row twice; looked for only when not every run
# landed); any other run of the batch had its lease taken over. The watchdog and the
# shutdown release never store an outcome that looks like ours: they write their own
# reason, or give the attempt back. The outcomes come as one JSON array of objects: one
# parameter, encoded by orjson, instead of sixteen arrays through psycopg's array dumper.
# The time comes in as :now, and a retry's due time with its outcome: Citus refuses now()
# inside CASE.
RUN_FINISH_MANY = text(
    """
    WITH outcome AS (
        SELECT * FROM json_to_recordset(CAST(:outcomes AS json))
               AS o(bucket smallint, id bigint, attempt int, status text, event_count int,
                    message_id text, error text, due_at timestamptz, recipient text,
                    transport text, delivery_message_id text, provider_message_id text,
                    delivery_status text, reason text)
    ), landed AS (
        UPDATE digest_runs r
           SET status = o.status,
               completed_at = CASE WHEN o.status = 'pending' THEN NULL
                                   ELSE CAST(:now AS timestamptz) END,
               scheduled_for = CASE WHEN o.status = 'pending' THEN o.due_at
                                    ELSE r.scheduled_for END,
               event_count = o.event_count,
               message_id = coalesce(o.message_id, r.message_id),
               last_error = o.error,
               locked_by = NULL,
               lease_expires_at = NULL,
               sending_attempt = NULL
          FROM outcome o
         WHERE r.bucket = ANY(CAST(:buckets AS smallint[]))  -- the runs by key, whatever
           AND r.id = ANY(ARRAY(SELECT id FROM outcome))     -- the statistics say of the
           AND r.bucket = o.bucket AND r.id = o.id           -- fence
           AND r.attempt = o.attempt AND r.locked_by = :me AND r.status = 'processing'
        RETURNING r.bucket, r.id, r.user_id, r.attempt, o.recipient, o.transport,
                  o.delivery_message_id, o.provider_message_id, o.delivery_status, o.reason
    ), logged AS (
        INSERT INTO deliveries (bucket, run_id, user_id, recipient, transport, message_id,
                                provider_message_id, attempt, status, reason)
        SELECT bucket, id, user_id, recipient, transport, delivery_message_id,
               provider_message_id, attempt, delivery_status, reason
          FROM landed
         WHERE delivery_status IS NOT NULL
        RETURNING bucket, id, provider_message_id
    ), looked_up AS (
        INSERT INTO delivery_provider_ids (provider_message_id, delivery_id, bucket)
        SELECT provider_message_id, id, bucket FROM logged
         WHERE provider_message_id IS NOT NULL
    ), recorded AS (
        SELECT r.id FROM digest_runs r JOIN outcome o ON r.bucket = o.bucket AND r.id = o.id
         WHERE r.bucket = ANY(CAST(:buckets AS smallint[]))
           AND r.id = ANY(ARRAY(SELECT id FROM outcome))
           AND r.attempt = o.attempt AND r.locked_by IS NULL
           AND r.status = o.status AND r.last_error IS NOT DISTINCT FROM o.error
    )
    SELECT id FROM landed
    UNION ALL
    SELECT id FROM recorded
     WHERE (SELECT count(*) FROM landed) < (SELECT count(*) FROM outcome)
    """
)

# At-most-once: committed before a batch's messages go out. Still set at the next claim
# means the attempt died between send and record, and the mail may be out.
RUN_MARK_SENDING = text(
    """
    UPDATE digest_runs r
       SET sending_attempt = r.attempt
      FROM unnest(CAST(:buckets AS smallint[]), CAST(:ids AS bigint[]),
                  CAST(:attempts AS int[])) AS h(bucket, id, attempt)
     WHERE r.bucket = ANY(CAST(:buckets AS smallint[])) AND r.id = ANY(CAST(:ids AS bigint[]))
       AND r.bucket = h.bucket AND r.id = h.id AND r.attempt = h.attempt
       AND r.status = 'processing' AND r.locked_by = :me
    """
)

# Give runs back without spending an attempt (graceful shutdown before they were sent).
RUN_RELEASE_MANY = text(
    """
    UPDATE digest_runs r
       SET status = 'pending', attempt = r.attempt - 1, locked_by = NULL,
           lease_expires_at = NULL, last_error = 'released at shutdown', sending_attempt = NULL
      FROM unnest(CAST(:buckets AS smallint[]), CAST(:ids AS bigint[]),
                  CAST(:attempts AS int[])) AS h(bucket, id, attempt)
     WHERE r.bucket = ANY(CAST(:buckets AS smallint[])) AND r.id = ANY(CAST(:ids AS bigint[]))
       AND r.bucket = h.bucket AND r.id = h.id AND r.attempt = h.attempt
       AND r.status = 'processing' AND r.locked_by = :me
    """
)

# After an outage, once a worker has recorded everything it holds: runs still held by it
# come from a claim whose reply the outage lost (the claim committed, the worker never saw
# its runs), so nothing was sent for them. Give them back too, rather than let them wait
# out their lease and spend an attempt. `lease_expires_at IS NOT NULL` reads the lease
# index: the processing runs only. Not fenced by attempt: the worker never saw these runs,
# so it knows no attempt to name. The owner fences it: the worker id is this process's
# alone, its only claims are its own database thread's (idle by then, nothing claimed
# ahead), and every run it did see is recorded or given back first, so what is still
# under its name is the lost claim's attempt; a run the watchdog took back meanwhile is
# pending or someone else's, and not touched. One statement per shard.
RUN_RELEASE_LEFTOVERS = Sharded(
    """
    UPDATE digest_runs
       SET status = 'pending', attempt = attempt - 1, locked_by = NULL,
           lease_expires_at = NULL, last_error = 'released: claim reply lost',
           sending_attempt = NULL
     WHERE {shard:bucket} AND lease_expires_at IS NOT NULL AND status = 'processing'
       AND locked_by = :me
    """
)


Held = tuple[int, int, int]
"""A run a worker holds: (bucket, run id, attempt)."""


def _fence(held: Sequence[Held]) -> dict[str, list[int]]:
    """Held runs as the three parallel arrays the fenced statements take."""
    return {
        "buckets": [bucket for bucket, _, _ in held],
        "ids": [run_id for _, run_id, _ in held],
        "attempts": [attempt for _, _, attempt in held],
    }


def claim_batch(
    conn: Connection,
    me: str,
    n: int,
    lease_seconds: float,
    cap: int,
    buckets: Buckets = ALL,
    *,
    now: datetime | None = None,
) -> list[ClaimedRun]:
    """Claim up to `n` due runs of `buckets` (all in one shard), freeze their events, and
    load each run's recipient and digest of at most `cap` groups (the claim holds once the
    caller's transaction commits; one statement, so an autocommit connection needs one
    round trip). `now` stamps a first attempt's `frozen_at`, the message's Date."""
    params = {"me": me, "lease": lease_seconds, "cap": cap, "now": now or datetime.now(UTC)}
    rows = conn.execute(claim_statement(n, buckets), params).all()
    runs = []
    for row in rows:  # the run (8 columns), its digest (4), its recipient (9)
        bucket, run_id, user_id, cadence, period_start, attempt, frozen_at, sending = row[:8]
        runs.append(
            ClaimedRun(
                run_id,
                bucket,
                user_id,
                cadence,
                period_start,
                attempt,
                frozen_at,
                sending,
                recipient=None if row[12] is None else Recipient(user_id, *row[12:]),
                digest=EMPTY_DIGEST if row[10] is None else content.digest_content(*row[8:12]),
            )
        )
    return runs


def holding(runs: Iterable[ClaimedRun]) -> list[Held]:
    """The runs as the fenced statements name them."""
    return [(r.bucket, r.id, r.attempt) for r in runs]


def extend_lease(conn: Connection, me: str, held: Sequence[Held], lease_seconds: float) -> int:
    """Push forward the lease of each held run `me` still holds (they may lie in several
    shards: one statement per shard, one transaction); returns how many are still held."""
    extended = 0
    with conn.begin():
        for _, group in shards.for_connection(conn).group(held, _bucket):
            params = {**_fence(group), "me": me, "lease": lease_seconds}
            extended += int(conn.execute(RUN_EXTEND_LEASE, params).rowcount)
    return extended


def finish_batch(
    conn: Connection, me: str, outcomes: Sequence[Outcome], *, now: datetime | None = None
) -> set[int]:
    """Record every outcome of one batch (one shard) in one transaction; returns the ids
    whose fence held."""
    if not outcomes:
        return set()
    now = now or datetime.now(UTC)
    rows = []
    for o in outcomes:
        row = {
            "bucket": o.run.bucket,
            "id": o.run.id,
            "attempt": o.run.attempt,
            "status": o.status,
            "event_count": o.event_count,
            "message_id": o.message_id,
            "error": o.error,
            "due_at": (now + timedelta(seconds=o.retry_in)).isoformat(),
        }
        if (d := o.delivery) is not None:
            row["recipient"] = d.recipient
            row["transport"] = d.transport
            row["delivery_message_id"] = d.message_id
            row["provider_message_id"] = d.provider_message_id
            row["delivery_status"] = d.status
            row["reason"] = d.reason
        rows.append(row)
    params = {
        "me": me,
        "now": now,
        "outcomes": orjson.dumps(rows).decode(),
        "buckets": sorted({o.run.bucket for o in outcomes}),
    }
    with conn.begin():
        return {row[0] for row in conn.execute(RUN_FINISH_MANY, params)}


def mark_sending(conn: Connection, me: str, runs: Sequence[ClaimedRun]) -> None:
    """Record that these runs' messages are about to leave (at-most-once delivery)."""
    with conn.begin():
        for _, group in shards.for_connection(conn).group(holding(runs), _bucket):
            conn.execute(RUN_MARK_SENDING, {**_fence(group), "me": me})


def release(conn: Connection, me: str, runs: Sequence[Held]) -> int:
    """Give runs back to the queue unsent, without spending their attempt."""
    released = 0
    if not runs:
        return 0
    with conn.begin():
        for _, group in shards.for_connection(conn).group(runs, _bucket):
            released += int(conn.execute(RUN_RELEASE_MANY, {**_fence(group), "me": me}).rowcount)
    return released


def release_leftovers(conn: Connection, me: str) -> int:
    """Give back every run `me` still holds (call only when it holds nothing it knows of),
    shard by shard."""
    released = 0
    with conn.begin():
        for buckets in shards.for_connection(conn).shards:
            statement = RUN_RELEASE_LEFTOVERS.bind(buckets)
            released += int(conn.execute(statement, {"me": me}).rowcount)
    return released


def _bucket(run: Held) -> int:
    return run[0]
