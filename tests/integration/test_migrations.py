"""The schema comes from alembic migrations that go up, down and up again cleanly."""

from __future__ import annotations

from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, event, inspect, text

from digest import migrate
from digest.buckets import bucket_of
from digest.schema import metadata

TABLES = {
    "delivery_provider_ids",
    "recipients",
    "digest_events",
    "digest_runs",
    "deliveries",
    "suppressions",
    "feedback_events",
    "bounce_streaks",
}


def test_upgrade_downgrade_upgrade(engine: Engine) -> None:
    """A full round trip leaves the same tables, and `upgrade` twice is a no-op."""
    assert migrate.current(engine) == migrate.head()
    migrate.downgrade(engine, "base")
    assert migrate.current(engine) is None
    assert TABLES.isdisjoint(inspect(engine).get_table_names())
    migrate.upgrade(engine)
    migrate.upgrade(engine)
    assert migrate.current(engine) == migrate.head()
    assert set(inspect(engine).get_table_names()) >= TABLES


def test_migrations_match_schema_module(engine: Engine) -> None:
    """`digest/schema.py` and the migrations describe the same tables and indexes."""
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_upgrade_gives_back_events_stranded_on_cancelled_runs(engine: Engine) -> None:
    """0005 releases events stranded on cancelled runs, unless the run may have sent them."""
    migrate.downgrade(engine, "0004")
    with engine.begin() as conn:
        conn.execute(
            text(
                """
                INSERT INTO digest_runs (id, user_id, cadence, period_start, scheduled_for,
                                         status, sending_attempt)
                VALUES (1, 'u', 'daily', now(), now(), 'cancelled', NULL),
                       (2, 'u', 'daily', now() - interval '1 day', now(), 'cancelled', 1),
                       (3, 'u', 'daily', now() - interval '2 days', now(), 'sent', NULL);
                INSERT INTO digest_events (user_id, category, entity_type, entity_id,
                                           digest_run_id)
                VALUES ('u', 'like', 'post', 'p', 1), ('u', 'like', 'post', 'p', 2),
                       ('u', 'like', 'post', 'p', 3)
                """
            )
        )
    migrate.upgrade(engine)
    with engine.connect() as conn:
        attached = conn.execute(text("SELECT digest_run_id FROM digest_events ORDER BY id"))
        assert list(attached.scalars()) == [None, 2, 3]


SEED_0006 = """
INSERT INTO recipients (user_id, email, cadence, muted_categories, quiet_start, quiet_end)
SELECT (ARRAY['u', 'é', '日本', '😀'])[1 + g % 4] || g, g || '@example.com',
       CASE WHEN g % 7 = 0 THEN 'off' ELSE 'daily' END,
       CASE WHEN g % 5 = 0 THEN ARRAY['like', 'follow'] ELSE '{}' END,
       CASE WHEN g % 3 = 0 THEN time '22:00' END, CASE WHEN g % 3 = 0 THEN time '07:00' END
  FROM generate_series(1, 250) g;
INSERT INTO digest_runs (user_id, cadence, period_start, scheduled_for, status,
                         muted_categories)
SELECT user_id, 'daily', now(), now(),
       CASE WHEN cadence = 'daily' THEN 'pending' ELSE 'sent' END,
       nullif(muted_categories, '{}')
  FROM recipients;
INSERT INTO digest_events (user_id, category, entity_type, entity_id)
SELECT r.user_id, 'like', 'post', 'p' || e FROM recipients r, generate_series(1, 3) e;
INSERT INTO deliveries (run_id, user_id, recipient, transport, provider_message_id, attempt,
                        status)
SELECT id, user_id, user_id || '@example.com', 'ses', 'ses-' || id, 1, 'sent'
  FROM digest_runs WHERE status = 'sent';
INSERT INTO feedback_events (sns_message_id, event_type, raw, orphan)
VALUES ('sns-1', 'Delivery', '{}', true), (NULL, 'Delivery', '{}', true);
"""
COUNTS = """
SELECT (SELECT count(*) FROM recipients), (SELECT count(*) FROM digest_runs),
       (SELECT count(*) FROM digest_events), (SELECT count(*) FROM deliveries),
       (SELECT count(*) FROM feedback_events)
"""
# What 0006 added (muted categories, quiet hours) survives 0007 both ways.
PREFERENCES_0006 = """
SELECT (SELECT count(*) FROM recipients WHERE muted_categories = ARRAY['like', 'follow']),
       (SELECT count(*) FROM recipients WHERE quiet_start = '22:00' AND quiet_end = '07:00'),
       (SELECT count(*) FROM digest_runs WHERE muted_categories IS NOT NULL)
"""
PER_USER = ("recipients", "digest_events", "digest_runs", "deliveries")


def user_triggers(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_trigger"
                    " WHERE tgrelid = 'recipients'::regclass AND NOT tgisinternal"
                )
            ).scalar_one()
        )


def test_0007_fills_the_bucket_in_batches_on_a_database_with_data(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a database holding data (0006's preferences included), 0007 fills every row's
    bucket (Python's, Unicode ids included) in batches, keys every table by it, drops the
    triggers and fills the provider id lookup; the downgrade to 0006 keeps every row and
    brings the triggers back; upgrade again."""
    monkeypatch.setenv("DIGEST_MIGRATION_BATCH_ROWS", "100")
    migrate.downgrade(engine, "0006")
    with engine.begin() as conn:
        conn.execute(text(SEED_0006))
        counts = conn.execute(text(COUNTS)).one()
        preferences = conn.execute(text(PREFERENCES_0006)).one()
    assert all(preferences)
    fills: list[str] = []

    def count_fills(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "WITH batch AS" in statement:
            fills.append(statement)

    event.listen(engine, "before_cursor_execute", count_fills)
    migrate.upgrade(engine)
    event.remove(engine, "before_cursor_execute", count_fills)
    # batches of 100 keys, each table until one comes back short
    by_table = [next(t for t in PER_USER if f"FROM {t}" in fill) for fill in fills]
    assert {t: by_table.count(t) for t in PER_USER} == {
        t: n // 100 + 1
        for t, n in zip(PER_USER, (counts[0], counts[2], counts[1], counts[3]), strict=True)
    }
    with engine.connect() as conn:
        assert conn.execute(text(COUNTS)).one() == counts
        assert conn.execute(text(PREFERENCES_0006)).one() == preferences
        for table in PER_USER:
            rows = conn.execute(text(f"SELECT user_id, bucket FROM {table}")).all()
            assert all(bucket == bucket_of(user) for user, bucket in rows), table
        looked_up = conn.execute(
            text(
                "SELECT count(*) FROM delivery_provider_ids l JOIN deliveries d"
                " ON d.bucket = l.bucket AND d.id = l.delivery_id"
                " AND d.provider_message_id = l.provider_message_id"
            )
        ).scalar_one()
        assert looked_up == counts[3]
        keys = conn.execute(text("SELECT sns_message_id FROM feedback_events ORDER BY id"))
        first, second = keys.scalars()
        assert (first, second[:6]) == ("sns-1", "local:")
    inspector = inspect(engine)
    assert inspector.get_pk_constraint("recipients")["constrained_columns"] == ["bucket", "user_id"]
    for table in PER_USER[1:]:
        assert inspector.get_pk_constraint(table)["constrained_columns"] == ["id", "bucket"]
    assert user_triggers(engine) == 0

    migrate.downgrade(engine, "0006")
    assert migrate.current(engine) == "0006"
    with engine.begin() as conn:
        assert conn.execute(text(COUNTS)).one() == counts
        assert conn.execute(text(PREFERENCES_0006)).one() == preferences
        assert "bucket" not in {c["name"] for c in inspect(conn).get_columns("digest_runs")}
        assert list(
            conn.execute(text("SELECT sns_message_id FROM feedback_events ORDER BY id")).scalars()
        ) == ["sns-1", None]
        # the trigger is back: a preference change by hand cancels the pending run again
        pending = conn.execute(
            text("SELECT user_id FROM digest_runs WHERE status = 'pending' LIMIT 1")
        ).scalar_one()
        conn.execute(
            text("UPDATE recipients SET cadence = 'weekly' WHERE user_id = :u"), {"u": pending}
        )
        statuses = conn.execute(
            text("SELECT status FROM digest_runs WHERE user_id = :u"), {"u": pending}
        ).scalars()
        assert list(statuses) == ["cancelled"]
    assert user_triggers(engine) == 2

    migrate.upgrade(engine)
    assert migrate.current(engine) == migrate.head()
    with engine.connect() as conn:
        assert conn.execute(text(COUNTS)).one() == counts
        nulls = conn.execute(text("SELECT count(*) FROM digest_events WHERE bucket IS NULL"))
        assert nulls.scalar_one() == 0
