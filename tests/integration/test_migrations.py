"""The schema comes from alembic migrations that go up, down and up again cleanly."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, text

from digest import migrate
from digest.schema import metadata

TABLES = {
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
