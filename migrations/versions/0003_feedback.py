"""SES feedback: every event received, and transient bounce streaks per address.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, TIMESTAMP

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TZ = TIMESTAMP(timezone=True)
NOW = sa.text("now()")


def upgrade() -> None:
    op.create_table(
        "feedback_events",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("sns_message_id", sa.Text),
        sa.Column("event_type", sa.Text, nullable=False),
        sa.Column("provider_message_id", sa.Text),
        sa.Column("run_id", sa.BigInteger),
        sa.Column("delivery_id", sa.BigInteger),
        sa.Column("recipient", sa.Text),
        sa.Column("bounce_type", sa.Text),
        sa.Column("reason", sa.Text),
        sa.Column("raw", JSONB, nullable=False),
        sa.Column("orphan", sa.Boolean, nullable=False),
        sa.Column("created_at", TZ, nullable=False, server_default=NOW),
        sa.CheckConstraint(
            "event_type IN ('Bounce', 'Complaint', 'Delivery', 'Reject', 'DeliveryDelay', 'Send')",
            name="feedback_events_type_check",
        ),
        # SNS retries reuse the MessageId: the replay conflicts here and changes nothing.
        sa.UniqueConstraint("sns_message_id", name="feedback_events_sns_message_id_key"),
    )
    op.create_index(
        "feedback_events_provider_message_idx",
        "feedback_events",
        ["provider_message_id"],
        postgresql_where=sa.text("provider_message_id IS NOT NULL"),
    )
    op.create_index(
        "feedback_events_orphan_idx",
        "feedback_events",
        ["created_at"],
        postgresql_where=sa.text("orphan"),
    )
    op.create_table(
        "bounce_streaks",
        sa.Column("email", sa.Text, primary_key=True),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("updated_at", TZ, nullable=False, server_default=NOW),
    )


def downgrade() -> None:
    op.drop_table("bounce_streaks")
    op.drop_table("feedback_events")
