"""Every statement on a per-user table reaches one shard: what Citus needs to route it to one
node (and the only way it runs `FOR UPDATE SKIP LOCKED`), checked on plain PostgreSQL.

The per-user tables are copied, with their keys and indexes, into a schema of their own,
LIST-partitioned by bucket the way Citus places buckets in 8 shards (its hash of the
smallint, ranges split evenly: `citus_shard`); every named statement of digest/ that reads
or writes one of them (`conftest.named_statements`, the same walk as the SQL uniqueness
test) is EXPLAINed there with sample parameters for one shard, and the partitions its plan
touches must all belong to that shard. Each statement needs an entry in SAMPLES: a new one
fails here until it has one, so none slips by. Statements that write rows must name their
bucket (INSERT and COPY columns, ON CONFLICT targets): Citus routes each row by it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from conftest import Statement, named_statements, statement_text
from sqlalchemy import Connection, Engine, TextClause, text

from digest import claim
from digest.feedback import apply as feedback_apply
from digest.ingest import recipients as recipient_input
from digest.ingest import store
from digest.shards import Buckets, Sharded

SHARDS = 8
PER_USER = ("recipients", "digest_events", "digest_runs", "deliveries")
TOUCHES = re.compile(
    r"\b(?:FROM|JOIN|UPDATE|INTO|COPY)\s+(" + "|".join(PER_USER) + r")\b", re.IGNORECASE
)
# Reads or updates rows of a per-user table (rather than only inserting new ones).
READS = re.compile(r"\b(?:FROM|JOIN|UPDATE)\s+(" + "|".join(PER_USER) + r")\b", re.IGNORECASE)
# Citus's shard of a bucket in a hash-distributed table of SHARDS shards: its hash of the
# smallint (PostgreSQL's hashint2) in SHARDS equal ranges of the 32-bit hash space. The same
# map as `get_shard_id_for_distribution_column` gives on a real cluster (checked on one with
# Citus 13.2 and 32 shards when this test was written).
CITUS_SHARD = text(
    "SELECT CAST(b AS smallint), "
    "       CAST((hashint2(CAST(b AS smallint))::bigint + 2147483648) / (4294967296 / :shards)"
    "            AS int)"
    "  FROM generate_series(0, 4095) AS b"
)
NOW = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)
SHARD = 3  # the shard the samples name

Sample = Callable[[Buckets], dict[str, Any]]


def one_user(b: Buckets) -> dict[str, Any]:
    return {"bucket": b[0], "user_id": "ana"}


def by_id(b: Buckets) -> dict[str, Any]:
    return {"bucket": b[0], "id": 1}


def fence(b: Buckets) -> dict[str, Any]:
    return {"me": "w", "lease": 60.0, "buckets": [b[0], b[1]], "ids": [1, 2], "attempts": [1, 1]}


def users(b: Buckets) -> dict[str, Any]:
    return {"buckets": [b[0], b[1]], "user_ids": ["ana", "ben"]}


def shape(b: Buckets) -> dict[str, Any]:
    fields = (
        "email",
        "name",
        "cadence",
        "timezone",
        "send_hour",
        "weekly_day",
        "locale",
        "muted_categories",
        "quiet_hours",
    )
    return {"shape": 0, "now": NOW, **{f"set_{f}": True for f in fields}}


def outcomes(b: Buckets) -> dict[str, Any]:
    outcome = {"bucket": b[0], "id": 1, "attempt": 1, "status": "sent", "event_count": 2}
    return {"me": "w", "now": NOW, "buckets": [b[0]], "outcomes": json.dumps([outcome])}


def deliveries(b: Buckets) -> dict[str, Any]:
    return {"email": None, "status": None, "since": None, "limit": 50, **one_user(b)}


def nothing(b: Buckets) -> dict[str, Any]:
    return {}


# Sample parameters by statement name: every statement on a per-user table has one.
SAMPLES: dict[str, Sample] = {
    "digest.claim._CLAIM_BATCH_SQL": lambda b: {"me": "w", "lease": 60.0, "cap": 50, "now": NOW},
    "digest.claim.RUN_EXTEND_LEASE": fence,
    "digest.claim.RUN_MARK_SENDING": fence,
    "digest.claim.RUN_RELEASE_MANY": fence,
    "digest.claim.RUN_FINISH_MANY": outcomes,
    "digest.claim.RUN_RELEASE_LEFTOVERS": lambda b: {"me": "w"},
    "digest.content.EVENT_GROUPS_FOR_RUNS": lambda b: {
        "buckets": [b[0]],
        "run_ids": [1, 2],
        "cap": 50,
    },
    "digest.content.EVENT_GROUPS_UNSENT": lambda b: {"cap": 50, **one_user(b)},
    "digest.feedback.apply._BY_RUN": lambda b: {"bucket": b[0], "run_id": 1},
    "digest.feedback.apply.DELIVERY_FIND_BY_RUN": lambda b: {"bucket": b[0], "run_id": 1},
    "digest.feedback.apply.DELIVERY_FIND_BY_RUN_IN_SHARD": lambda b: {"run_id": 1},
    "digest.feedback.apply.DELIVERY_GET_FOR_UPDATE": by_id,
    "digest.feedback.apply.DELIVERY_SET_FEEDBACK_STATUS": lambda b: {
        "status": "delivered",
        "rank": 2,
        "reason": None,
        **by_id(b),
    },
    "digest.ingest.recipients.RECIPIENT_UPSERT_RESCHEDULING": shape,
    "digest.ingest.recipients.RECIPIENT_UPSERT_REST": shape,
    "digest.ingest.recipients._UPSERT": shape,
    "digest.ingest.store.EVENT_COPY": nothing,
    "digest.ingest.store.EVENT_INSERT": lambda b: {
        "category": "like",
        "entity_type": "post",
        "entity_id": "1",
        "actor_id": None,
        "payload": "{}",
        "created_at": None,
        "event_key": "k",
        **one_user(b),
    },
    "digest.ingest.store.EVENT_INSERT_FROM_STAGE": nothing,
    "digest.purge.DELIVERY_PURGE_BATCH": lambda b: {"cutoff": NOW, "batch": 100},
    "digest.purge.EVENT_PURGE_BATCH": lambda b: {"cutoff": NOW, "batch": 100},
    "digest.purge.RUN_PURGE_BATCH": lambda b: {"cutoff": NOW, "batch": 100},
    "digest.recipients.CATEGORY_LIST_RECENT": lambda b: {"days": 90, "limit": 60, **one_user(b)},
    "digest.recipients.RECIPIENT_COUNT_UNSCHEDULABLE": nothing,
    "digest.recipients.RECIPIENT_FIND_BUCKET": lambda b: {"id": 1},
    "digest.recipients.RECIPIENT_GET": one_user,
    "digest.recipients.RECIPIENT_GET_FOR_UPDATE": one_user,
    "digest.recipients.RECIPIENT_GET_FOR_WHY": one_user,
    "digest.recipients.RECIPIENT_GET_PREFERENCES": by_id,
    "digest.recipients.RECIPIENT_GET_PREFERENCES_BY_USER": one_user,
    "digest.recipients.RECIPIENT_LIST_EMAILS": users,
    "digest.recipients.RECIPIENT_LOAD_MANY": users,
    "digest.recipients.RECIPIENT_LOCK_PREFERENCES": by_id,
    "digest.recipients.RECIPIENT_LOCK_PREFERENCES_BY_USER": one_user,
    "digest.recipients.RECIPIENT_SET_CADENCE": lambda b: {"cadence": "daily", **by_id(b)},
    "digest.recipients.RECIPIENT_SET_MUTED": lambda b: {"muted": ["like"], **by_id(b)},
    "digest.recipients.RECIPIENT_SET_QUIET_HOURS": lambda b: {
        "start": "22:00",
        "end": "07:00",
        **by_id(b),
    },
    "digest.recipients.RECIPIENT_UNSUBSCRIBE": by_id,
    "digest.recipients.RECIPIENT_UNSUBSCRIBE_BY_USER": one_user,
    "digest.recipients.RUN_CANCEL_PENDING": one_user,
    "digest.recipients.RUN_CANCEL_PENDING_MANY": users,
    "digest.scheduler.RUN_SCHEDULE_CURRENT": lambda b: {"now": NOW, "spread": 3600},
    "digest.stats.DELIVERY_RATES_BY_DAY": nothing,
    "digest.stats.EVENT_COUNT_WAITING": nothing,
    "digest.stats.QUEUE_GET_NOW": lambda b: {"cap": 1_000_000},
    "digest.stats.RUN_COUNT_BY_STATUS": nothing,
    "digest.stats.RUN_OLDEST_DUE": nothing,
    "digest.support.DELIVERY_GET_LAST_FOR_USER": one_user,
    "digest.support.DELIVERY_LIST": deliveries,
    "digest.support.DELIVERY_LIST_FOR_USER": deliveries,
    "digest.support.EVENT_COUNT_WAITING_FOR_USER": one_user,
    "digest.support.QUEUE_GET_ACTIVITY": nothing,
    "digest.support.RUN_COUNT_DUE_BEFORE": lambda b: {"scheduled_for": NOW},
    "digest.support.RUN_GET_NEXT_PENDING": one_user,
    "digest.support.RUN_LIST_RECENT_FINISHED": lambda b: {"limit": 3, **one_user(b)},
    "digest.watchdog.RUN_RESET_EXPIRED": lambda b: {
        "max_attempts": 5,
        "restart_grace": 0.0,
        "backoff_base": 30.0,
        "backoff_cap": 3600.0,
    },
}


def per_user_statements() -> dict[str, Statement]:
    """The named statements that read or write a per-user table."""
    return {
        name: statement
        for name, statement in named_statements().items()
        if TOUCHES.search(statement_text(statement))
    }


def bound(name: str, statement: Statement, buckets: Buckets) -> TextClause:
    """The statement as it runs for a shard of `buckets` (templates rendered)."""
    if name == "digest.claim._CLAIM_BATCH_SQL":
        return claim.claim_statement(100, buckets)
    if name == "digest.feedback.apply._BY_RUN":
        return feedback_apply.DELIVERY_FIND_BY_RUN
    if name == "digest.ingest.recipients._UPSERT":
        return recipient_input.RECIPIENT_UPSERT_REST
    if isinstance(statement, Sharded):
        return statement.bind(buckets)
    if isinstance(statement, TextClause):
        return statement
    return text(statement)


@pytest.fixture
def partitioned(engine: Engine) -> Iterator[tuple[Connection, dict[str, int], Buckets]]:
    """A connection whose per-user tables are LIST-partitioned copies by Citus's shard map
    (schema `routable`, first on the search path), with the staging tables the imports use;
    the partition name -> shard map; and the buckets of shard SHARD."""
    with engine.connect() as conn:
        by_shard: dict[int, list[int]] = {}
        for bucket, shard in conn.execute(CITUS_SHARD, {"shards": SHARDS}):
            by_shard.setdefault(shard, []).append(bucket)
        assert sorted(by_shard) == list(range(SHARDS))
        conn.execute(text("CREATE SCHEMA routable"))
        partitions: dict[str, int] = {}
        for table in PER_USER:
            conn.execute(
                text(
                    f"CREATE TABLE routable.{table} (LIKE public.{table} INCLUDING ALL)"
                    " PARTITION BY LIST (bucket)"
                )
            )
            for shard, buckets in by_shard.items():
                name = f"{table}_s{shard}"
                partitions[name] = shard
                conn.execute(
                    text(
                        f"CREATE TABLE routable.{name} PARTITION OF routable.{table}"
                        f" FOR VALUES IN ({','.join(map(str, buckets))})"
                    )
                )
        conn.execute(text("SET search_path = routable, public"))
        conn.execute(recipient_input.RECIPIENT_STAGE_CREATE)
        conn.execute(store.EVENT_STAGE_CREATE)
        yield conn, partitions, tuple(sorted(by_shard[SHARD]))
        conn.rollback()


def relations(plan: Any) -> Iterator[tuple[str, str]]:
    """(schema, relation) of every node of an EXPLAIN (VERBOSE, FORMAT JSON) plan."""
    if isinstance(plan, dict):
        if "Relation Name" in plan:
            yield plan.get("Schema", ""), plan["Relation Name"]
        for value in plan.values():
            yield from relations(value)
    elif isinstance(plan, list):
        for value in plan:
            yield from relations(value)


def test_every_statement_on_a_per_user_table_has_sample_parameters() -> None:
    """A statement added without an entry in SAMPLES fails here (and an entry whose
    statement is gone too): nothing escapes the check below."""
    assert sorted(per_user_statements()) == sorted(SAMPLES)


def test_every_statement_on_a_per_user_table_touches_one_shard(
    partitioned: tuple[Connection, dict[str, int], Buckets],
) -> None:
    """Planned against tables partitioned as Citus places the buckets, each statement reads
    and writes partitions of the one shard its parameters name, and no other (one that only
    inserts shows no partition in its plan: its rows are routed by the bucket they name)."""
    conn, partitions, buckets = partitioned
    wrong: dict[str, set[int]] = {}
    checked = 0
    for name, statement in sorted(per_user_statements().items()):
        if name not in SAMPLES or statement_text(statement).lstrip().startswith("COPY"):
            continue  # the test above fails for the former; COPY routes by the row
        sql = bound(name, statement, buckets)
        plan = conn.execute(
            text("EXPLAIN (VERBOSE, FORMAT JSON) " + sql.text), SAMPLES[name](buckets)
        ).scalar_one()
        touched = [r for r in relations(plan) if r[1] in partitions or r[1] in PER_USER]
        assert all(schema == "routable" for schema, _ in touched), (name, touched)
        shards = {partitions[r] for _, r in touched if r in partitions}
        if shards != ({SHARD} if READS.search(sql.text) else shards & {SHARD}):
            wrong[name] = shards
        checked += 1
    assert wrong == {}
    assert checked == len(SAMPLES) - 1  # all but the COPY


def test_every_row_written_names_its_bucket() -> None:
    """INSERT and COPY into a per-user table write the bucket column, and every ON CONFLICT
    target holds it: Citus routes each row, and checks each key, by the bucket."""
    for name, statement in per_user_statements().items():
        sql = " ".join(statement_text(statement).split())
        for table, columns in re.findall(
            r"(?:INSERT INTO|COPY)\s+(" + "|".join(PER_USER) + r")\b(?:\s+AS\s+\w+)?\s*\(([^)]*)\)",
            sql,
            re.IGNORECASE,
        ):
            assert "bucket" in [c.strip() for c in columns.split(",")], (name, table)
        for target in re.findall(r"ON CONFLICT\s*\(([^)]*)\)", sql, re.IGNORECASE):
            if TOUCHES.search(sql) and "sns_message_id" not in target and "email" not in target:
                assert "bucket" in [c.strip() for c in target.split(",")], (name, target)
