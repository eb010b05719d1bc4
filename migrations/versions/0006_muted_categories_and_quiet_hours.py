"""Per-category opt-out and quiet hours for recipients; the muting a run froze with.

`recipients.muted_categories` lists the categories a recipient does not want in digests
(empty: all); `quiet_start` and `quiet_end` are the recipient's quiet hours in local time,
both NULL for none (stored, shown and editable; alerts will wait for their end).
`digest_runs.muted_categories` is the recipient's list as the run's first attempt found it
(NULL: nothing muted), so a retry leaves out exactly what the first attempt left out.

Adding the columns is a catalog change (no rewrite: the default is a constant); the CHECK
constraints read the recipients table once, under the exclusive lock the ALTER takes
(well under a second for a million recipients). Changing either preference does not fire
the trigger that cancels pending runs: neither moves a run.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-10
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# Both times or neither, and never an empty window (start = end would mean "always" or
# "never" depending on who reads it).
QUIET_HOURS_CHECK = (
    "(quiet_start IS NULL AND quiet_end IS NULL) "
    "OR (quiet_start IS NOT NULL AND quiet_end IS NOT NULL AND quiet_start <> quiet_end)"
)
MUTED_CATEGORIES_CHECK = "cardinality(muted_categories) <= 100"


def upgrade() -> None:
    op.add_column(
        "recipients",
        sa.Column(
            "muted_categories",
            ARRAY(sa.Text),
            nullable=False,
            server_default=sa.text("'{}'::text[]"),
        ),
    )
    op.add_column("recipients", sa.Column("quiet_start", sa.Time))
    op.add_column("recipients", sa.Column("quiet_end", sa.Time))
    op.create_check_constraint("recipients_quiet_hours_check", "recipients", QUIET_HOURS_CHECK)
    op.create_check_constraint(
        "recipients_muted_categories_check", "recipients", MUTED_CATEGORIES_CHECK
    )
    op.add_column("digest_runs", sa.Column("muted_categories", ARRAY(sa.Text)))


def downgrade() -> None:
    op.drop_column("digest_runs", "muted_categories")
    op.drop_constraint("recipients_muted_categories_check", "recipients")
    op.drop_constraint("recipients_quiet_hours_check", "recipients")
    op.drop_column("recipients", "quiet_end")
    op.drop_column("recipients", "quiet_start")
    op.drop_column("recipients", "muted_categories")
