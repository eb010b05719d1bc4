"""Mark runs whose attempt reached the send step, for at-most-once delivery.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Set (committed) just before a batch's messages go out, cleared when the outcome
    # commits: still set at the next claim means the last attempt may have sent the mail.
    op.add_column("digest_runs", sa.Column("sending_attempt", sa.Integer))


def downgrade() -> None:
    op.drop_column("digest_runs", "sending_attempt")
