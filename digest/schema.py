"""Tables as SQLAlchemy Core metadata: the one description the migrations are written from.

`tests/integration/test_migrations.py` checks that the migrated database matches it.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Identity,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    Table,
    Text,
    Time,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TIMESTAMP

from digest.models import FEEDBACK_EVENT_TYPES, Cadence, DeliveryStatus, RunCadence, RunStatus

metadata = MetaData()

TZ = TIMESTAMP(timezone=True)
NOW = text("now()")

# The CHECK constraints' value lists, from the enums in `digest.models`.
CADENCES = tuple(c.value for c in Cadence)
RUN_CADENCES = tuple(c.value for c in RunCadence)
RUN_STATUSES = tuple(s.value for s in RunStatus)
DELIVERY_STATUSES = tuple(s.value for s in DeliveryStatus)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


# Every per-user table has a `bucket` (`digest.buckets`): part of every primary and unique
# key (Citus distributes the tables by it, and a key must hold the distribution column),
# and the first column of the indexes the claim and the freeze read by user. Elsewhere it
# comes last: keys on an identity grow at their right edge as before (a bucket first
# spread every insert over 4,096 places: COPY of events 20% slower, the scheduler's insert
# 34%), and a lookup that names every column reads the same index either way
# (docs/performance.md, "The bucket").
recipients = Table(
    "recipients",
    metadata,
    Column("bucket", SmallInteger, primary_key=True),
    Column("user_id", Text, primary_key=True),
    Column("email", Text, nullable=False),
    Column("name", Text),
    Column("cadence", Text, nullable=False, server_default="daily"),
    Column("timezone", Text, nullable=False, server_default="UTC"),
    Column("send_hour", SmallInteger, nullable=False, server_default="8"),
    Column("weekly_day", SmallInteger, nullable=False, server_default="1"),
    Column("locale", Text, nullable=False, server_default="en"),
    Column("unsubscribed_at", TZ),
    Column("created_at", TZ, nullable=False, server_default=NOW),
    Column("updated_at", TZ, nullable=False, server_default=NOW),
    # What unsubscribe tokens name instead of the user id (`digest.unsubscribe`).
    Column("id", BigInteger, Identity(always=False), nullable=False),
    # Grows by one each time the recipient gets digests again after none (every write path
    # in `digest.recipients`; until 0007 a trigger); a token issued for an older
    # version changes nothing.
    Column("subscription_version", Integer, nullable=False, server_default="0"),
    # Categories left out of the recipient's digests (migration 0006); empty: none.
    Column("muted_categories", ARRAY(Text), nullable=False, server_default=text("'{}'::text[]")),
    # Quiet hours in the recipient's local time, both or neither: alerts wait for their end.
    Column("quiet_start", Time),
    Column("quiet_end", Time),
    CheckConstraint(_in("cadence", CADENCES), name="recipients_cadence_check"),
    CheckConstraint("send_hour BETWEEN 0 AND 23", name="recipients_send_hour_check"),
    CheckConstraint("weekly_day BETWEEN 1 AND 7", name="recipients_weekly_day_check"),
    CheckConstraint(
        "(quiet_start IS NULL AND quiet_end IS NULL) "
        "OR (quiet_start IS NOT NULL AND quiet_end IS NOT NULL AND quiet_start <> quiet_end)",
        name="recipients_quiet_hours_check",
    ),
    CheckConstraint(
        "cardinality(muted_categories) <= 100", name="recipients_muted_categories_check"
    ),
    # Tokens name the recipient by (bucket, id); legacy tokens (format 1) by id alone, hence
    # id first: one probe whatever the bucket.
    Index("recipients_id_key", "id", "bucket", unique=True),
)

digest_events = Table(
    "digest_events",
    metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    Column("bucket", SmallInteger, primary_key=True),
    Column("user_id", Text, nullable=False),
    Column("category", Text, nullable=False),
    Column("entity_type", Text, nullable=False),
    Column("entity_id", Text, nullable=False),
    Column("actor_id", Text),
    Column("payload", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("created_at", TZ, nullable=False, server_default=NOW),
    Column("event_key", Text),
    Column("digest_run_id", BigInteger),
    CheckConstraint("jsonb_typeof(payload) = 'object'", name="digest_events_payload_check"),
    Index(
        "digest_events_unsent_idx",
        "bucket",
        "user_id",
        "created_at",
        postgresql_where=text("digest_run_id IS NULL"),
    ),
    Index(
        "digest_events_run_idx",
        "bucket",
        "digest_run_id",
        postgresql_where=text("digest_run_id IS NOT NULL"),
    ),
    Index(
        "digest_events_event_key_idx",
        "user_id",
        "event_key",
        "bucket",
        unique=True,
        postgresql_where=text("event_key IS NOT NULL"),
    ),
)

digest_runs = Table(
    "digest_runs",
    metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    Column("bucket", SmallInteger, primary_key=True),
    Column("user_id", Text, nullable=False),
    Column("cadence", Text, nullable=False),
    Column("period_start", TZ, nullable=False),
    Column("scheduled_for", TZ, nullable=False),
    Column("status", Text, nullable=False, server_default="pending"),
    Column("attempt", Integer, nullable=False, server_default="0"),
    Column("locked_by", Text),
    Column("lease_expires_at", TZ),
    Column("frozen_at", TZ),
    Column("started_at", TZ),
    Column("completed_at", TZ),
    Column("event_count", Integer),
    Column("message_id", Text),
    Column("last_error", Text),
    Column("created_at", TZ, nullable=False, server_default=NOW),
    Column("sending_attempt", Integer),
    # The recipient's muted categories when the run first froze its events (NULL: none), so
    # a retry leaves out what the first attempt did.
    Column("muted_categories", ARRAY(Text)),
    CheckConstraint(_in("cadence", RUN_CADENCES), name="digest_runs_cadence_check"),
    CheckConstraint(_in("status", RUN_STATUSES), name="digest_runs_status_check"),
    # One live run per user, cadence and period; a cancelled run frees its slot so that a
    # preference changed back and forth gets its run again.
    Index(
        "digest_runs_period_key",
        "user_id",
        "cadence",
        "period_start",
        "bucket",
        unique=True,
        postgresql_where=text("status <> 'cancelled'"),
    ),
    # The claim reads only this small index: finished runs leave it. Not led by bucket: a
    # claim names all the buckets of a shard, and only this order gives their due runs in
    # due order without sorting them all (docs/performance.md, "The bucket").
    Index("digest_runs_due_idx", "scheduled_for", postgresql_where=text("status = 'pending'")),
    # The watchdog's index: runs with a lease (exactly the processing ones). Not keyed on
    # the status, so that statements fenced by it look their runs up by id (migration 0004).
    Index(
        "digest_runs_lease_idx",
        "lease_expires_at",
        postgresql_where=text("lease_expires_at IS NOT NULL"),
    ),
    Index("digest_runs_user_idx", "user_id", "id"),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    Column("bucket", SmallInteger, primary_key=True),
    Column("run_id", BigInteger, nullable=False),
    Column("user_id", Text, nullable=False),
    Column("recipient", Text, nullable=False),
    Column("transport", Text, nullable=False),
    Column("message_id", Text),
    Column("provider_message_id", Text),
    Column("attempt", Integer, nullable=False),
    Column("status", Text, nullable=False),
    Column("reason", Text),
    Column("created_at", TZ, nullable=False, server_default=NOW),
    Column("updated_at", TZ, nullable=False, server_default=NOW),
    CheckConstraint(_in("status", DELIVERY_STATUSES), name="deliveries_status_check"),
    Index("deliveries_run_idx", "run_id"),
    Index("deliveries_user_idx", "user_id", "created_at"),
)

# A delivery by its provider's message id, for feedback that carries neither our tags nor
# our Message-ID (`digest.feedback.apply`). Keyed by the provider id, so that on Citus it
# is distributed by it and a lookup reaches one node; written with the delivery.
delivery_provider_ids = Table(
    "delivery_provider_ids",
    metadata,
    Column("provider_message_id", Text, primary_key=True),
    Column("delivery_id", BigInteger, primary_key=True),
    Column("bucket", SmallInteger, nullable=False),
    Column("created_at", TZ, nullable=False, server_default=NOW),
    Index("delivery_provider_ids_created_idx", "created_at"),
)

suppressions = Table(
    "suppressions",
    metadata,
    Column("email", Text, primary_key=True),
    Column("reason", Text, nullable=False),
    Column("source", Text, nullable=False),
    Column("created_at", TZ, nullable=False, server_default=NOW),
)

# Every SES event received, matched to its delivery or kept as an orphan. Keyed by the SNS
# MessageId: an SNS retry of the same message finds its row and changes nothing (and on
# Citus the table is distributed by it). An event that came without one gets a key of its
# own, `local:` and a random UUID, and so is never taken for a replay.
feedback_events = Table(
    "feedback_events",
    metadata,
    Column("id", BigInteger, Identity(always=False), nullable=False),
    Column("sns_message_id", Text, primary_key=True),
    Column("event_type", Text, nullable=False),
    Column("provider_message_id", Text),
    Column("run_id", BigInteger),
    Column("delivery_id", BigInteger),
    Column("recipient", Text),
    Column("bounce_type", Text),
    Column("reason", Text),
    Column("raw", JSONB, nullable=False),
    Column("orphan", Boolean, nullable=False),
    Column("created_at", TZ, nullable=False, server_default=NOW),
    CheckConstraint(_in("event_type", FEEDBACK_EVENT_TYPES), name="feedback_events_type_check"),
    Index(
        "feedback_events_provider_message_idx",
        "provider_message_id",
        postgresql_where=text("provider_message_id IS NOT NULL"),
    ),
    Index("feedback_events_orphan_idx", "created_at", postgresql_where=text("orphan")),
)

# Transient bounces in a row per address (suppression key form); a Delivery resets it.
bounce_streaks = Table(
    "bounce_streaks",
    metadata,
    Column("email", Text, primary_key=True),
    Column("count", Integer, nullable=False),
    Column("updated_at", TZ, nullable=False, server_default=NOW),
)
