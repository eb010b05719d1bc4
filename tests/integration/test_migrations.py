"""The schema comes from alembic migrations that go up, down and up again cleanly."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect

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
