"""Initial schema: recipients, events, runs, deliveries, suppressions.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, TIMESTAMP

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TZ = TIMESTAMP(timezone=True)
NOW = sa.text("now()")


def upgrade() -> None:
    op.create_table(
        "recipients",
        sa.Column("user_id", sa.Text, primary_key=True),
        sa.Column("email", sa.Text, nullable=False),
        sa.Column("name", sa.Text),
        sa.Column("cadence", sa.Text, nullable=False, server_default="daily"),
        sa.Column("timezone", sa.Text, nullable=False, server_default="UTC"),
        sa.Column("send_hour", sa.SmallInteger, nullable=False, server_default="8"),
        sa.Column("weekly_day", sa.SmallInteger, nullable=False, server_default="1"),
        sa.Column("locale", sa.Text, nullable=False, server_default="en"),
        sa.Column("unsubscribed_at", TZ),
        sa.Column("created_at", TZ, nullable=False, server_default=NOW),
        sa.Column("updated_at", TZ, nullable=False, server_default=NOW),
        sa.CheckConstraint(
            "cadence IN ('daily', 'weekly', 'off')", name="recipients_cadence_check"
        ),
        sa.CheckConstraint("send_hour BETWEEN 0 AND 23", name="recipients_send_hour_check"),
        sa.CheckConstraint("weekly_day BETWEEN 1 AND 7", name="recipients_weekly_day_check"),
    )

    op.create_table(
        "digest_events",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("category", sa.Text, nullable=False),
        sa.Column("entity_type", sa.Text, nullable=False),
        sa.Column("entity_id", sa.Text, nullable=False),
        sa.Column("actor_id", sa.Text),
        sa.Column("payload", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("created_at", TZ, nullable=False, server_default=NOW),
        sa.Column("event_key", sa.Text),
        sa.Column("digest_run_id", sa.BigInteger),
        sa.CheckConstraint("jsonb_typeof(payload) = 'object'", name="digest_events_payload_check"),
    )
    op.create_index(
        "digest_events_unsent_idx",
        "digest_events",
        ["user_id", "created_at"],
        postgresql_where=sa.text("digest_run_id IS NULL"),
    )
    op.create_index(
        "digest_events_run_idx",
        "digest_events",
        ["digest_run_id"],
        postgresql_where=sa.text("digest_run_id IS NOT NULL"),
    )
    op.create_index(
        "digest_events_event_key_idx",
        "digest_events",
        ["user_id", "event_key"],
        unique=True,
        postgresql_where=sa.text("event_key IS NOT NULL"),
    )

    op.create_table(
        "digest_runs",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("cadence", sa.Text, nullable=False),
        sa.Column("period_start", TZ, nullable=False),
        sa.Column("scheduled_for", TZ, nullable=False),
        sa.Column("status", sa.Text, nullable=False, server_default="pending"),
        sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
        sa.Column("locked_by", sa.Text),
        sa.Column("lease_expires_at", TZ),
        sa.Column("frozen_at", TZ),
        sa.Column("started_at", TZ),
        sa.Column("completed_at", TZ),
        sa.Column("event_count", sa.Integer),
        sa.Column("message_id", sa.Text),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", TZ, nullable=False, server_default=NOW),
        sa.CheckConstraint(
            "cadence IN ('daily', 'weekly', 'immediate')", name="digest_runs_cadence_check"
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'processing', 'sent', 'skipped', 'failed', 'cancelled')",
            name="digest_runs_status_check",
        ),
        # The queue table churns: vacuum it early and often so dead tuples never pile up
        # under the claim's index scan.
        postgresql_with={
            "autovacuum_vacuum_scale_factor": "0.01",
            "autovacuum_vacuum_threshold": "1000",
            "autovacuum_analyze_scale_factor": "0.02",
            "autovacuum_vacuum_cost_delay": "0",
            "fillfactor": "85",
        },
    )
    op.create_index(
        "digest_runs_period_key",
        "digest_runs",
        ["user_id", "cadence", "period_start"],
        unique=True,
        postgresql_where=sa.text("status <> 'cancelled'"),
    )
    op.create_index(
        "digest_runs_due_idx",
        "digest_runs",
        ["scheduled_for"],
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_index(
        "digest_runs_lease_idx",
        "digest_runs",
        ["lease_expires_at"],
        postgresql_where=sa.text("status = 'processing'"),
    )
    op.create_index("digest_runs_user_idx", "digest_runs", ["user_id", "id"])

    op.create_table(
        "deliveries",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("run_id", sa.BigInteger, nullable=False),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("recipient", sa.Text, nullable=False),
        sa.Column("transport", sa.Text, nullable=False),
        sa.Column("message_id", sa.Text),
        sa.Column("provider_message_id", sa.Text),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("created_at", TZ, nullable=False, server_default=NOW),
        sa.Column("updated_at", TZ, nullable=False, server_default=NOW),
        sa.CheckConstraint(
            "status IN ('sent', 'delivered', 'bounced', 'complained', 'rejected', 'failed', "
            "'suppressed', 'deferred', 'unknown')",
            name="deliveries_status_check",
        ),
    )
    op.create_index("deliveries_run_idx", "deliveries", ["run_id"])
    op.create_index("deliveries_user_idx", "deliveries", ["user_id", "created_at"])
    op.create_index(
        "deliveries_provider_message_idx",
        "deliveries",
        ["provider_message_id"],
        postgresql_where=sa.text("provider_message_id IS NOT NULL"),
    )

    op.create_table(
        "suppressions",
        sa.Column("email", sa.Text, primary_key=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("created_at", TZ, nullable=False, server_default=NOW),
    )

    # A change of schedule (cadence, zone, hour, day) or an unsubscribe cancels the user's
    # pending digest runs, whatever wrote the row; the next `digest schedule` creates the
    # right one. Runs already processing are left alone.
    op.execute(
        """
        CREATE FUNCTION digest_recipient_changed() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            UPDATE digest_runs
               SET status = 'cancelled', completed_at = now(),
                   last_error = 'preferences changed'
             WHERE user_id = NEW.user_id
               AND status = 'pending'
               AND cadence IN ('daily', 'weekly');
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        """
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
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS recipients_schedule_changed ON recipients")
    op.execute("DROP FUNCTION IF EXISTS digest_recipient_changed()")
    for table in ("suppressions", "deliveries", "digest_runs", "digest_events", "recipients"):
        op.drop_table(table)
