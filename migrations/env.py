"""Alembic environment: runs on the connection `digest.migrate` hands over."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from digest.schema import metadata

connection: Connection | None = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only through `digest migrate`
    raise RuntimeError("run migrations through `digest migrate`")

context.configure(connection=connection, target_metadata=metadata, transaction_per_migration=True)
with context.begin_transaction():
    context.run_migrations()
