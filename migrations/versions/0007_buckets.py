"""A bucket on every per-user table, keys that hold it, and no triggers: ready for Citus.

`bucket smallint` = `digest_bucket(user_id)` (`digest.buckets`: the first 16 bits of the
MD5 of the user id, mod 4,096) on recipients, digest_events, digest_runs and deliveries;
part of every primary and unique key, the first column of the indexes the freeze and the
claim read by user (recipients' key, the events not yet sent, the events of a run), last
elsewhere (keys on an identity keep growing at their right edge). The claim's index of
due runs stays on `scheduled_for` alone. Citus distributes the tables by it; on one
PostgreSQL it is only a column. docs/performance.md, "The bucket", has the measurements.

The column is added empty, then filled in batches of BATCH_ROWS rows in key order, each
batch committed on its own (a statement per batch, so the rows it rewrites can be vacuumed
while the next ones are written, and nothing holds a lock for long); rows written
meanwhile by a worker still running the previous release are filled in the last
transaction, which then sets NOT NULL and rebuilds the keys under an exclusive lock. On
the 2-core test machine, 1 million events and 100,000 each of recipients, runs and
deliveries: 17–23 s to fill the events, 5–6 s the rest, then 3 s in the last
transaction, during which writers wait (docs/performance.md).

The triggers on recipients go: Citus runs no triggers on distributed tables. What they did
is now explicit in every write path of recipients, in the same transaction
(`digest.recipients`): a changed schedule or an unsubscribe cancels the pending runs and
gives their events back; a re-subscribe grows `subscription_version`. A row changed by
hand in SQL no longer does either.

Feedback: deliveries lose their index on the provider's message id to a lookup table,
`delivery_provider_ids`, keyed by it (on Citus, distributed by it); it is filled from the
deliveries already sent. `feedback_events` is keyed by its SNS MessageId (its primary key,
not only unique: Citus needs the distribution column in every key); events stored
without one get `local:` and a random UUID.

0006 (muted categories and quiet hours) added columns only, on recipients and digest_runs:
their rows get their bucket with the rest, and no key of 0006 needs one. The downgrade
returns to 0006: the triggers it brings back never fired on those columns.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

import os

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import TIMESTAMP

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# Rows per batch of the fill (DIGEST_MIGRATION_BATCH_ROWS overrides it: tests use small ones).
BATCH_ROWS = int(os.environ.get("DIGEST_MIGRATION_BATCH_ROWS", "50000"))

# `digest.buckets.SQL_FUNCTION` as this revision defines it (a migration never changes).
BUCKET_FUNCTION = """
    CREATE OR REPLACE FUNCTION digest_bucket(user_id text) RETURNS smallint
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT CAST(CAST(CAST('x' || substr(md5(convert_to(user_id, 'UTF8')), 1, 4)
                                AS bit(16)) AS int) % 4096 AS smallint) $$
"""

# One batch: the next BATCH_ROWS keys after :after (NULL: from the start), filled; returns
# the last key of the batch and how many rows it had (fewer than BATCH_ROWS: the last). The
# table and key names are this module's.
FILL_BATCH = """
    WITH batch AS (
        SELECT {key} FROM {table}
         WHERE CAST(:after AS {key_type}) IS NULL OR {key} > :after
         ORDER BY {key}
         LIMIT :rows
    ), filled AS (
        UPDATE {table} t SET bucket = digest_bucket(t.user_id)
          FROM batch WHERE t.{key} = batch.{key}
    )
    SELECT max({key}), count(*) FROM batch
"""
PER_USER = {"recipients": ("user_id", "text")} | dict.fromkeys(
    ("digest_events", "digest_runs", "deliveries"), ("id", "bigint")
)

TZ = TIMESTAMP(timezone=True)

# The triggers of revisions 0001 and 0005, for the downgrade.
RECIPIENT_CHANGED = """
    CREATE OR REPLACE FUNCTION digest_recipient_changed() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        WITH cancelled AS (
            UPDATE digest_runs
               SET status = 'cancelled', completed_at = now(),
                   last_error = 'preferences changed', frozen_at = NULL, event_count = NULL
             WHERE user_id = NEW.user_id
               AND status = 'pending'
               AND cadence IN ('daily', 'weekly')
               AND sending_attempt IS NULL
            RETURNING id
        )
        UPDATE digest_events
           SET digest_run_id = NULL
         WHERE digest_run_id = ANY(ARRAY(SELECT id FROM cancelled));
        RETURN NULL;
    END $$
"""
RECIPIENT_CHANGED_TRIGGER = """
    CREATE TRIGGER recipients_schedule_changed
    AFTER UPDATE ON recipients
    FOR EACH ROW
    WHEN (OLD.cadence IS DISTINCT FROM NEW.cadence
          OR OLD.timezone IS DISTINCT FROM NEW.timezone
          OR OLD.send_hour IS DISTINCT FROM NEW.send_hour
          OR OLD.weekly_day IS DISTINCT FROM NEW.weekly_day
          OR (OLD.unsubscribed_at IS NULL AND NEW.unsubscribed_at IS NOT NULL))
    EXECUTE FUNCTION digest_recipient_changed()
"""
RECIPIENT_RESUBSCRIBED = """
    CREATE FUNCTION digest_recipient_resubscribed() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        NEW.subscription_version := OLD.subscription_version + 1;
        RETURN NEW;
    END $$
"""
RECIPIENT_RESUBSCRIBED_TRIGGER = """
    CREATE TRIGGER recipients_resubscribed
    BEFORE UPDATE ON recipients
    FOR EACH ROW
    WHEN ((OLD.unsubscribed_at IS NOT NULL OR OLD.cadence = 'off')
          AND NEW.unsubscribed_at IS NULL AND NEW.cadence <> 'off')
    EXECUTE FUNCTION digest_recipient_resubscribed()
"""


def upgrade() -> None:
    op.execute(BUCKET_FUNCTION)
    for table in PER_USER:
        op.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS bucket smallint")
    with op.get_context().autocommit_block():
        for table, (key, key_type) in PER_USER.items():
            _fill(table, key, key_type)
    for table in PER_USER:
        # rows a worker of the previous release wrote during the fill
        op.execute(f"UPDATE {table} SET bucket = digest_bucket(user_id) WHERE bucket IS NULL")
        op.alter_column(table, "bucket", nullable=False)

    op.execute("DROP TRIGGER recipients_schedule_changed ON recipients")
    op.execute("DROP FUNCTION digest_recipient_changed()")
    op.execute("DROP TRIGGER recipients_resubscribed ON recipients")
    op.execute("DROP FUNCTION digest_recipient_resubscribed()")

    _primary_key("recipients", ["bucket", "user_id"])
    op.drop_index("recipients_id_key", table_name="recipients")
    op.create_index("recipients_id_key", "recipients", ["id", "bucket"], unique=True)

    _primary_key("digest_events", ["id", "bucket"])
    _events_indexes(with_bucket=True)

    _primary_key("digest_runs", ["id", "bucket"])
    _runs_period_key(["bucket"])

    _primary_key("deliveries", ["id", "bucket"])
    op.drop_index("deliveries_provider_message_idx", table_name="deliveries")
    op.create_table(
        "delivery_provider_ids",
        sa.Column("provider_message_id", sa.Text, primary_key=True),
        sa.Column("delivery_id", sa.BigInteger, primary_key=True),
        sa.Column("bucket", sa.SmallInteger, nullable=False),
        sa.Column("created_at", TZ, nullable=False, server_default=sa.text("now()")),
    )
    op.create_index("delivery_provider_ids_created_idx", "delivery_provider_ids", ["created_at"])
    op.execute(
        """
        INSERT INTO delivery_provider_ids (provider_message_id, delivery_id, bucket, created_at)
        SELECT provider_message_id, id, bucket, created_at
          FROM deliveries WHERE provider_message_id IS NOT NULL
        """
    )

    op.execute(
        "UPDATE feedback_events SET sns_message_id = 'local:' || gen_random_uuid() "
        "WHERE sns_message_id IS NULL"
    )
    op.drop_constraint("feedback_events_sns_message_id_key", "feedback_events")
    op.drop_constraint("feedback_events_pkey", "feedback_events")
    op.create_primary_key("feedback_events_pkey", "feedback_events", ["sns_message_id"])


def downgrade() -> None:
    op.drop_constraint("feedback_events_pkey", "feedback_events")
    op.alter_column("feedback_events", "sns_message_id", nullable=True)
    op.execute(
        "UPDATE feedback_events SET sns_message_id = NULL WHERE sns_message_id LIKE 'local:%'"
    )
    op.create_primary_key("feedback_events_pkey", "feedback_events", ["id"])
    op.create_unique_constraint(
        "feedback_events_sns_message_id_key", "feedback_events", ["sns_message_id"]
    )

    op.drop_table("delivery_provider_ids")
    op.create_index(
        "deliveries_provider_message_idx",
        "deliveries",
        ["provider_message_id"],
        postgresql_where=sa.text("provider_message_id IS NOT NULL"),
    )
    _primary_key("deliveries", ["id"])

    _runs_period_key([])
    _primary_key("digest_runs", ["id"])

    _events_indexes(with_bucket=False)
    _primary_key("digest_events", ["id"])

    op.drop_index("recipients_id_key", table_name="recipients")
    op.create_index("recipients_id_key", "recipients", ["id"], unique=True)
    _primary_key("recipients", ["user_id"])

    for table in PER_USER:
        op.drop_column(table, "bucket")
    op.execute(RECIPIENT_CHANGED)
    op.execute(RECIPIENT_CHANGED_TRIGGER)
    op.execute(RECIPIENT_RESUBSCRIBED)
    op.execute(RECIPIENT_RESUBSCRIBED_TRIGGER)
    op.execute("DROP FUNCTION digest_bucket(text)")


def _fill(table: str, key: str, key_type: str) -> None:
    """Fill `table`'s bucket in batches of BATCH_ROWS keys, each its own transaction."""
    statement = sa.text(FILL_BATCH.format(table=table, key=key, key_type=key_type))
    conn = op.get_bind()
    after, count = None, BATCH_ROWS
    while count == BATCH_ROWS:
        after, count = conn.execute(statement, {"after": after, "rows": BATCH_ROWS}).one()


def _primary_key(table: str, columns: list[str]) -> None:
    op.drop_constraint(f"{table}_pkey", table)
    op.create_primary_key(f"{table}_pkey", table, columns)


def _events_indexes(*, with_bucket: bool) -> None:
    """digest_events' indexes by user and by run: the freeze's and the claim's led by the
    bucket, the event key ending with it (or, going down, none of them with it)."""
    lead, tail = (["bucket"], ["bucket"]) if with_bucket else ([], [])
    for name, columns, where in (
        ("digest_events_unsent_idx", [*lead, "user_id", "created_at"], "digest_run_id IS NULL"),
        ("digest_events_run_idx", [*lead, "digest_run_id"], "digest_run_id IS NOT NULL"),
        ("digest_events_event_key_idx", ["user_id", "event_key", *tail], "event_key IS NOT NULL"),
    ):
        op.drop_index(name, table_name="digest_events")
        op.create_index(
            name,
            "digest_events",
            columns,
            unique=name == "digest_events_event_key_idx",
            postgresql_where=sa.text(where),
        )


def _runs_period_key(tail: list[str]) -> None:
    """digest_runs' period key, ending with `tail` (the bucket, or nothing)."""
    op.drop_index("digest_runs_period_key", table_name="digest_runs")
    op.create_index(
        "digest_runs_period_key",
        "digest_runs",
        ["user_id", "cadence", "period_start", *tail],
        unique=True,
        postgresql_where=sa.text("status <> 'cancelled'"),
    )
