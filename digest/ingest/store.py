"""Events into `digest_events`: one INSERT, or many by COPY (straight into the table, or
through a staging table once keyed rows need `ON CONFLICT DO NOTHING`)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from datetime import UTC, datetime
from itertools import islice
from typing import Final, TypeAlias

import psycopg
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from digest.buckets import bucket_of
from digest.db import raw
from digest.errors import DigestError, first_line

# The columns of a stored event, in the order of `EventRow`.
EVENT_FIELDS: Final = (
    "user_id",
    "category",
    "entity_type",
    "entity_id",
    "actor_id",
    "payload",
    "created_at",
    "event_key",
)
# Rows flow through COPY in chunks: memory stays flat however long the input is.
CHUNK_ROWS: Final = 20_000

# Every row carries its user's bucket (`digest.buckets`), computed here: producers never
# pass one.
EVENT_INSERT = text(
    """
    INSERT INTO digest_events
           (bucket, user_id, category, entity_type, entity_id, actor_id, payload, created_at,
            event_key)
    VALUES (:bucket, :user_id, :category, :entity_type, :entity_id, :actor_id,
            CAST(:payload AS jsonb), COALESCE(CAST(:created_at AS timestamptz), now()),
            :event_key)
    ON CONFLICT (bucket, user_id, event_key) WHERE event_key IS NOT NULL DO NOTHING
    RETURNING id
    """
)
TRANSACTION_NOW = text("SELECT now()")
# ON COMMIT DROP: nothing is left behind on a pooled connection, even after a rollback.
EVENT_STAGE_CREATE = text(
    """
    CREATE TEMP TABLE IF NOT EXISTS digest_events_stage (
        bucket smallint, user_id text, category text, entity_type text, entity_id text,
        actor_id text, payload jsonb, created_at timestamptz, event_key text
    ) ON COMMIT DROP
    """
)
# TRUNCATE, not DELETE: temp tables are never autovacuumed, dead rows would pile up.
EVENT_STAGE_TRUNCATE = text("TRUNCATE digest_events_stage")
EVENT_INSERT_FROM_STAGE: Final = """
    INSERT INTO digest_events
           (bucket, user_id, category, entity_type, entity_id, actor_id, payload, created_at,
            event_key)
    SELECT bucket, user_id, category, entity_type, entity_id, actor_id, payload, created_at,
           event_key
      FROM digest_events_stage
    ON CONFLICT (bucket, user_id, event_key) WHERE event_key IS NOT NULL DO NOTHING
    """
# Pipeline mode needs libpq 14 or later (the psycopg[binary] wheels bundle one).
PIPELINE: Final = psycopg.Pipeline.is_supported()
_COLUMNS = (
    "bucket, user_id, category, entity_type, entity_id, actor_id, payload, created_at, event_key"
)
EVENT_COPY: Final = f"COPY digest_events ({_COLUMNS}) FROM STDIN"
EVENT_STAGE_COPY: Final = f"COPY digest_events_stage ({_COLUMNS}) FROM STDIN"

# One validated event in EVENT_FIELDS order, payload serialized; created_at None = now().
EventRow: TypeAlias = tuple[str, str, str, str, str | None, str, datetime | None, str | None]
# A row as COPY sends it: its bucket first, created_at filled in, now() as ISO 8601 text
# (psycopg dumps text much faster than a datetime: docs/performance.md).
CopyRow: TypeAlias = tuple[int, str, str, str, str, str | None, str, datetime | str, str | None]


def insert_one(conn: Connection, row: EventRow) -> int | None:
    """Insert one validated event; its id, or None when its key was already stored."""
    params: dict[str, object] = dict(zip(EVENT_FIELDS, row, strict=True))
    params["bucket"] = bucket_of(row[0])
    new_id = conn.execute(EVENT_INSERT, params).scalar_one_or_none()
    return None if new_id is None else int(new_id)


def store_rows(conn: Connection, rows: Iterable[EventRow]) -> tuple[int, int]:
    """COPY validated rows inside `conn`'s transaction; returns (inserted, ignored duplicates).

    Keyless rows stream straight into digest_events (nothing can conflict with them). From
    the first keyed row on, rows go in chunks through a temporary staging table and
    `INSERT ... ON CONFLICT DO NOTHING`, because COPY itself cannot skip a duplicate.
    """
    # now() is the transaction's start time: exactly what the column default would give.
    now = conn.execute(TRANSACTION_NOW).scalar_one().astimezone(UTC).isoformat()
    pending: Iterator[CopyRow] = (
        (bucket_of(row[0]), *row[:6], row[6] or now, row[7]) for row in rows
    )
    driver = raw(conn)
    inserted = ignored = 0
    try:
        with driver.cursor() as cursor:
            chunk: list[CopyRow] = []
            # `rows` is usually a validating generator: it runs inside the COPY block, so the
            # server ingests what was sent while Python parses the next rows.
            with cursor.copy(EVENT_COPY) as copy:
                for row in pending:
                    if row[8] is not None:
                        chunk.append(row)
                        break
                    copy.write_row(row)
                    inserted += 1
            chunk.extend(islice(pending, CHUNK_ROWS - len(chunk)) if chunk else ())
            while chunk:
                conn.execute(EVENT_STAGE_CREATE)
                conn.execute(EVENT_STAGE_TRUNCATE)
                with cursor.copy(EVENT_STAGE_COPY) as copy:
                    for row in chunk:
                        copy.write_row(row)
                # Pipeline mode sends the INSERT without waiting for it: the next chunk is
                # validated while the server inserts this one.
                with driver.pipeline() if PIPELINE else nullcontext():
                    cursor.execute(EVENT_INSERT_FROM_STAGE)
                    following = list(islice(pending, CHUNK_ROWS))
                inserted += cursor.rowcount
                ignored += len(chunk) - cursor.rowcount
                chunk = following
    except (psycopg.DataError, psycopg.IntegrityError) as exc:
        raise DigestError(f"the database refused the events: {first_line(exc)}") from exc
    except DBAPIError as exc:
        if isinstance(exc.orig, psycopg.DataError | psycopg.IntegrityError):
            raise DigestError(f"the database refused the events: {first_line(exc.orig)}") from exc
        raise
    return inserted, ignored
