"""A cancelled run gives its frozen events back.

The trigger on recipients cancelled a user's pending runs but left their events attached:
a run waiting for a retry (its events frozen by the first attempt) lost them to the cancelled
run, and the run that replaced it had nothing to send. The trigger now detaches them in the
same statement, so they wait for the next run; it clears the cancelled run's `frozen_at`
and `event_count`, which described those events. A pending run whose last attempt reached
the send step (`sending_attempt` set: the mail may be out) is no longer cancelled: the
worker's delivery setting decides it, as it would have without the change (at-most-once
fails it, at-least-once resends the same message), rather than a new run sending its events
again. The upgrade also gives back the events already stranded on cancelled runs.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# The cancel and the release are one statement: the events are never seen attached to a
# cancelled run, and a claim that won the row lock first keeps both its run and its events.
RECIPIENT_CHANGED_RELEASING = """
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
RECIPIENT_CHANGED_0001 = """
    CREATE OR REPLACE FUNCTION digest_recipient_changed() RETURNS trigger
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
# Events left on runs the old trigger cancelled. A run cancelled while marked as sending may
# have delivered them: those stay where they are.
EVENT_RELEASE_STRANDED = """
    UPDATE digest_events e
       SET digest_run_id = NULL
      FROM digest_runs r
     WHERE r.id = e.digest_run_id AND r.status = 'cancelled' AND r.sending_attempt IS NULL
"""


def upgrade() -> None:
    op.execute(RECIPIENT_CHANGED_RELEASING)
    op.execute(EVENT_RELEASE_STRANDED)


def downgrade() -> None:
    # Released events stay waiting: attaching them to cancelled runs again would strand them.
    op.execute(RECIPIENT_CHANGED_0001)
