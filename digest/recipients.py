"""Every read of `recipients`, and the preference changes a recipient makes themselves.

One home for the statements: the recipient a claim loads with each run (`recipient_of`,
also for `digest preview`), the row `digest recipients show` prints, the preferences the
unsubscribe pages show and change, the facts `digest why` explains, and the unsubscribe a
complaint makes, each with the cancel of pending runs it implies (`cancel_pending_runs`).
Imports and `digest recipients set` write through `digest.ingest.recipients`, and cancel
the same way. Every statement names the user's bucket (`digest.buckets`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, time
from typing import Any, Final

from sqlalchemy import Connection, Engine, Row, RowMapping, text

from digest import shards
from digest.buckets import bucket_of
from digest.ingest.fields import text_field
from digest.models import Recipient
from digest.shards import Sharded


def recipient_of(bucket: str, user_id: str, shard: str = "true") -> str:
    """A subquery for `LATERAL`: the recipient `bucket` and `user_id` (SQL expressions of
    this module or `digest.claim`, never user input) name, as `Recipient`'s fields after the
    user id, with any suppression of the address (suppressions: a reference table on
    Citus). `shard` is the claim's shard filter on `p.bucket`. Looked up by key: the LIMIT
    keeps the planner from hashing whole tables."""
    return f"""(
        SELECT p.email, p.name, p.cadence, p.timezone, p.locale, p.unsubscribed_at,
               (SELECT s.reason FROM suppressions s WHERE s.email = lower(p.email))
                   AS suppressed_reason,
               p.id AS recipient_id, p.subscription_version
          FROM recipients p
         WHERE {shard} AND p.bucket = {bucket} AND p.user_id = {user_id}
         LIMIT 1)"""


def muted_of(bucket: str, user_id: str, shard: str = "true") -> str:
    """A scalar subquery: the categories the recipient `bucket` and `user_id` (SQL
    expressions of this module, `digest.claim` or `digest.content`, never user input) name
    has muted, or NULL when none. `shard` is the claim's shard filter on `p.bucket`."""
    return f"""(
        SELECT nullif(p.muted_categories, '{{}}')
          FROM recipients p
         WHERE {shard} AND p.bucket = {bucket} AND p.user_id = {user_id}
         LIMIT 1)"""


# Quiet hours as people write them, `22:00-07:00`, or NULL for none.
QUIET_HOURS_TEXT = (
    "CASE WHEN quiet_start IS NOT NULL"
    " THEN to_char(quiet_start, 'HH24:MI') || '-' || to_char(quiet_end, 'HH24:MI') END"
)


RECIPIENT_LOAD_MANY = text(
    f"""
    SELECT u.user_id, p.*
      FROM unnest(CAST(:buckets AS smallint[]), CAST(:user_ids AS text[])) AS u(bucket, user_id)
     CROSS JOIN LATERAL {
        recipient_of("u.bucket", "u.user_id", "p.bucket = ANY(CAST(:buckets AS smallint[]))")
    } p
    """
)
_COLUMNS = f"""user_id, email, name, cadence, timezone, send_hour, weekly_day, locale,
           muted_categories, {QUIET_HOURS_TEXT} AS quiet_hours,
           unsubscribed_at, created_at, updated_at"""
RECIPIENT_GET = text(
    f"""
    SELECT {_COLUMNS}
      FROM recipients
     WHERE bucket = :bucket AND user_id = :user_id
    """
)
RECIPIENT_GET_FOR_UPDATE = text(
    f"""
    SELECT {_COLUMNS}
      FROM recipients
     WHERE bucket = :bucket AND user_id = :user_id
       FOR UPDATE
    """
)
# Unsubscribe tokens name the recipient by bucket and id; tokens of format 1 by id alone
# (RECIPIENT_FIND_BUCKET finds its bucket, shard by shard), legacy ones by user id. A
# change locks the row first: the version it checks is the one the update sees.
_PREFERENCES = """id, user_id, email, name, cadence, unsubscribed_at, subscription_version,
           timezone, muted_categories, quiet_start, quiet_end"""
RECIPIENT_GET_PREFERENCES = text(
    f"SELECT {_PREFERENCES} FROM recipients WHERE bucket = :bucket AND id = :id"
)
RECIPIENT_GET_PREFERENCES_BY_USER = text(
    f"SELECT {_PREFERENCES} FROM recipients WHERE bucket = :bucket AND user_id = :user_id"
)
RECIPIENT_LOCK_PREFERENCES = text(
    f"SELECT {_PREFERENCES} FROM recipients WHERE bucket = :bucket AND id = :id FOR UPDATE"
)
RECIPIENT_LOCK_PREFERENCES_BY_USER = text(
    f"""
    SELECT {_PREFERENCES} FROM recipients
     WHERE bucket = :bucket AND user_id = :user_id
       FOR UPDATE
    """
)
RECIPIENT_FIND_BUCKET = Sharded("SELECT bucket FROM recipients WHERE {shard:bucket} AND id = :id")
# One-click unsubscribe (the pages) and a complaint (SES feedback). The caller then
# cancels the pending runs (`cancel_pending_runs`).
RECIPIENT_UNSUBSCRIBE = text(
    """
    UPDATE recipients
       SET unsubscribed_at = now(), updated_at = now()
     WHERE bucket = :bucket AND id = :id AND unsubscribed_at IS NULL
    RETURNING id
    """
)
RECIPIENT_UNSUBSCRIBE_BY_USER = text(
    """
    UPDATE recipients
       SET unsubscribed_at = now(), updated_at = now()
     WHERE bucket = :bucket AND user_id = :user_id AND unsubscribed_at IS NULL
    RETURNING user_id
    """
)
# daily/weekly re-subscribes; off keeps whatever unsubscribed_at is. A choice that changes
# nothing writes nothing. Getting digests again after none (unsubscribed, or off) grows
# the subscription version: links issued before stop changing anything (on the right of
# SET, the columns hold the row as it was).
RECIPIENT_SET_CADENCE = text(
    """
    UPDATE recipients
       SET cadence = CAST(:cadence AS text),
           unsubscribed_at = CASE WHEN CAST(:cadence AS text) = 'off' THEN unsubscribed_at END,
           subscription_version = subscription_version
               + CASE WHEN (unsubscribed_at IS NOT NULL OR cadence = 'off')
                       AND CAST(:cadence AS text) <> 'off' THEN 1 ELSE 0 END,
           updated_at = now()
     WHERE bucket = :bucket AND id = :id
       AND (cadence <> CAST(:cadence AS text)
            OR (CAST(:cadence AS text) <> 'off' AND unsubscribed_at IS NOT NULL))
    RETURNING id
    """
)
# The page's own choices: which categories to leave out, and quiet hours. Neither moves a
# run, so neither cancels pending runs (`cancel_pending_runs`); a choice that changes
# nothing writes nothing.
RECIPIENT_SET_MUTED = text(
    """
    UPDATE recipients
       SET muted_categories = CAST(:muted AS text[]), updated_at = now()
     WHERE bucket = :bucket AND id = :id AND muted_categories <> CAST(:muted AS text[])
    RETURNING id
    """
)
RECIPIENT_SET_QUIET_HOURS = text(
    """
    UPDATE recipients
       SET quiet_start = CAST(:start AS time), quiet_end = CAST(:end AS time),
           updated_at = now()
     WHERE bucket = :bucket AND id = :id
       AND (quiet_start IS DISTINCT FROM CAST(:start AS time)
            OR quiet_end IS DISTINCT FROM CAST(:end AS time))
    RETURNING id
    """
)
# The categories of a user's events of the last CATEGORY_DAYS days, on runs (through the
# runs' user index and the events' run index: no scan of the events table) or waiting.
CATEGORY_LIST_RECENT = text(
    """
    SELECT category FROM (
        SELECT e.category
          FROM digest_runs r
          JOIN digest_events e ON e.bucket = r.bucket AND e.digest_run_id = r.id
         WHERE r.bucket = :bucket AND r.user_id = :user_id
           AND r.created_at >= now() - make_interval(days => :days)
           AND e.created_at >= now() - make_interval(days => :days)
        UNION
        SELECT e.category
          FROM digest_events e
         WHERE e.bucket = :bucket AND e.user_id = :user_id AND e.digest_run_id IS NULL
           AND e.created_at >= now() - make_interval(days => :days)
    ) seen
     ORDER BY category
     LIMIT :limit
    """
)
RECIPIENT_GET_FOR_WHY = text(
    f"""
    SELECT r.user_id, r.email, r.cadence, r.timezone, r.send_hour, r.weekly_day,
           r.unsubscribed_at,
           r.timezone IN (SELECT name FROM pg_timezone_names) AS timezone_known,
           r.muted_categories, {QUIET_HOURS_TEXT} AS quiet_hours
      FROM recipients r
     WHERE r.bucket = :bucket AND r.user_id = :user_id
    """
)
RECIPIENT_COUNT_UNSCHEDULABLE = Sharded(
    """
    SELECT count(*) FROM recipients
     WHERE {shard:bucket} AND timezone NOT IN (SELECT name FROM pg_timezone_names)
    """
)

# A changed schedule (cadence, zone, hour, day) or an unsubscribe cancels the user's
# pending runs, in the transaction that changed the recipient: every write path of
# recipients calls `cancel_pending_runs` (this was a trigger until Citus, which runs none
# on distributed tables). Runs already processing are left alone, and so is a pending run
# whose last attempt reached the send step (`sending_attempt`: the mail may be out), which
# the delivery setting decides as usual. The cancel and the release are one statement: the
# events a cancelled run had frozen wait for the next run, never seen attached to a
# cancelled one, and a claim that won the row lock first keeps both its run and its events.
RUN_CANCEL_PENDING = text(
    """
    WITH cancelled AS (
        UPDATE digest_runs
           SET status = 'cancelled', completed_at = now(),
               last_error = 'preferences changed', frozen_at = NULL, event_count = NULL
         WHERE bucket = :bucket AND user_id = :user_id
           AND status = 'pending'
           AND cadence IN ('daily', 'weekly')
           AND sending_attempt IS NULL
        RETURNING id
    ), released AS (
        UPDATE digest_events
           SET digest_run_id = NULL
         WHERE bucket = :bucket AND digest_run_id = ANY(ARRAY(SELECT id FROM cancelled))
    )
    SELECT count(*) FROM cancelled
    """
)
# The same for many users at once (an import), all in one shard.
RUN_CANCEL_PENDING_MANY = text(
    """
    WITH cancelled AS (
        UPDATE digest_runs r
           SET status = 'cancelled', completed_at = now(),
               last_error = 'preferences changed', frozen_at = NULL, event_count = NULL
          FROM unnest(CAST(:buckets AS smallint[]), CAST(:user_ids AS text[])) AS u(bucket, user_id)
         WHERE r.bucket = ANY(CAST(:buckets AS smallint[]))
           AND r.bucket = u.bucket AND r.user_id = u.user_id
           AND r.status = 'pending'
           AND r.cadence IN ('daily', 'weekly')
           AND r.sending_attempt IS NULL
        RETURNING r.bucket, r.id
    ), released AS (
        UPDATE digest_events e
           SET digest_run_id = NULL
          FROM cancelled c
         WHERE e.bucket = ANY(CAST(:buckets AS smallint[]))
           AND e.bucket = c.bucket AND e.digest_run_id = c.id
    )
    SELECT count(*) FROM cancelled
    """
)
# Users all in one shard (`emails_of`).
RECIPIENT_LIST_EMAILS = text(
    """
    SELECT user_id, email FROM recipients
     WHERE bucket = ANY(CAST(:buckets AS smallint[])) AND user_id = ANY(CAST(:user_ids AS text[]))
    """
)


# The categories every recipient is offered on the page, in this order, before the rest.
KNOWN_CATEGORIES: Final = ("comment", "like", "mention", "follow")
# How far back the page looks for the categories a recipient has received.
CATEGORY_DAYS: Final = 90
# At most this many categories on the page (its form's size is bounded); muted ones first.
MAX_CATEGORIES_SHOWN: Final = 60


@dataclass(frozen=True)
class Preferences:
    """What the unsubscribe page shows about a recipient, and what its tokens name."""

    id: int
    bucket: int
    user_id: str
    email: str
    name: str | None
    cadence: str
    unsubscribed: bool
    subscription_version: int
    timezone: str = "UTC"
    muted_categories: tuple[str, ...] = ()
    quiet_start: time | None = None  # both or neither, local time
    quiet_end: time | None = None


@dataclass(frozen=True)
class RecipientFacts:
    """The preferences that decide when a user's digest goes out (`digest why`)."""

    user_id: str
    email: str
    cadence: str
    timezone: str
    send_hour: int
    weekly_day: int
    unsubscribed_at: datetime | None
    timezone_known: bool
    muted_categories: Sequence[str] = ()
    quiet_hours: str | None = None  # `22:00-07:00`, local time


def load_many(conn: Connection, user_ids: Sequence[str]) -> dict[str, Recipient]:
    """Recipients by user id, as a claim loads them, one query per shard."""
    found: dict[str, Recipient] = {}
    for _, users in shards.for_connection(conn).group(set(user_ids), bucket_of):
        params = {"buckets": [bucket_of(u) for u in users], "user_ids": users}
        found.update(
            {row.user_id: Recipient(*row) for row in conn.execute(RECIPIENT_LOAD_MANY, params)}
        )
    return found


def get(conn: Connection, user_id: str, *, lock: bool = False) -> RowMapping | None:
    """The stored recipient (locked for update with `lock`), or None."""
    statement = RECIPIENT_GET_FOR_UPDATE if lock else RECIPIENT_GET
    params = {"bucket": bucket_of(user_id), "user_id": user_id}
    return conn.execute(statement, params).mappings().first()


def get_recipient(target: Connection | Engine, user_id: str | int) -> dict[str, Any] | None:
    """The stored recipient as a dict, or None."""
    uid = text_field("user_id", user_id)
    if isinstance(target, Engine):
        with target.connect() as conn:
            row = get(conn, uid)
    else:
        row = get(target, uid)
    return None if row is None else dict(row)


def find_bucket(conn: Connection, recipient_id: int) -> int | None:
    """The bucket of the recipient with `recipient_id` (for tokens of format 1, which name
    no bucket), asking shard by shard; None when there is none."""
    for buckets in shards.for_connection(conn).shards:
        found = conn.execute(RECIPIENT_FIND_BUCKET.bind(buckets), {"id": recipient_id}).first()
        if found is not None:
            return int(found.bucket)
    return None


def preferences(
    conn: Connection,
    *,
    recipient_id: int | None = None,
    bucket: int | None = None,
    user_id: str | None = None,
    lock: bool = False,
) -> Preferences | None:
    """The preferences of the recipient with `bucket` and `recipient_id`, else of `user_id`
    (locked for update with `lock`), or None."""
    if recipient_id is not None:
        statement = RECIPIENT_LOCK_PREFERENCES if lock else RECIPIENT_GET_PREFERENCES
        row = conn.execute(statement, {"bucket": bucket, "id": recipient_id}).first()
    else:
        assert user_id is not None
        by_user = RECIPIENT_LOCK_PREFERENCES_BY_USER if lock else RECIPIENT_GET_PREFERENCES_BY_USER
        row = conn.execute(by_user, {"bucket": bucket_of(user_id), "user_id": user_id}).first()
    return _preferences(row)


def _preferences(row: Row[Any] | None) -> Preferences | None:
    if row is None:
        return None
    return Preferences(
        row.id,
        bucket_of(row.user_id),
        row.user_id,
        row.email,
        row.name,
        row.cadence,
        row.unsubscribed_at is not None,
        row.subscription_version,
        row.timezone,
        tuple(row.muted_categories),
        row.quiet_start,
        row.quiet_end,
    )


def cancel_pending_runs(conn: Connection, user_id: str) -> int:
    """Cancel the user's pending runs after a change of schedule or an unsubscribe, giving
    their events back (see RUN_CANCEL_PENDING); returns how many were cancelled."""
    params = {"bucket": bucket_of(user_id), "user_id": user_id}
    return int(conn.execute(RUN_CANCEL_PENDING, params).scalar_one())


def cancel_pending_runs_of(conn: Connection, user_ids: Sequence[str]) -> int:
    """`cancel_pending_runs` for many users, one statement per shard."""
    cancelled = 0
    for _, users in shards.for_connection(conn).group(user_ids, bucket_of):
        params = {"buckets": [bucket_of(u) for u in users], "user_ids": users}
        cancelled += int(conn.execute(RUN_CANCEL_PENDING_MANY, params).scalar_one())
    return cancelled


def unsubscribe(conn: Connection, who: Preferences) -> bool:
    """Unsubscribe the recipient and cancel their pending runs; False when they already were."""
    params = {"bucket": who.bucket, "id": who.id}
    if conn.execute(RECIPIENT_UNSUBSCRIBE, params).first() is None:
        return False
    cancel_pending_runs(conn, who.user_id)
    return True


def unsubscribe_user(conn: Connection, user_id: str) -> bool:
    """Unsubscribe the recipient of `user_id` and cancel their pending runs; False when there
    is none or they already were."""
    params = {"bucket": bucket_of(user_id), "user_id": user_id}
    if conn.execute(RECIPIENT_UNSUBSCRIBE_BY_USER, params).first() is None:
        return False
    cancel_pending_runs(conn, user_id)
    return True


def set_cadence(conn: Connection, who: Preferences, cadence: str) -> bool:
    """Set the cadence (daily and weekly also re-subscribe), cancelling the pending runs
    when it changed; False when nothing changed. `who` is the row as locked before."""
    params = {"bucket": who.bucket, "id": who.id, "cadence": cadence}
    if conn.execute(RECIPIENT_SET_CADENCE, params).first() is None:
        return False
    if cadence != who.cadence:
        cancel_pending_runs(conn, who.user_id)
    return True


def set_muted(conn: Connection, who: Preferences, muted: Iterable[str]) -> bool:
    """Leave exactly the categories `muted` out of the recipient's digests (no run is
    cancelled: the next claim leaves them out); False when that was already so."""
    params = {"bucket": who.bucket, "id": who.id, "muted": sorted(set(muted))}
    return conn.execute(RECIPIENT_SET_MUTED, params).first() is not None


def set_quiet_hours(conn: Connection, who: Preferences, hours: tuple[time, time] | None) -> bool:
    """Set the recipient's quiet hours (start, end; None: none; no run is cancelled);
    False when unchanged."""
    start, end = hours if hours is not None else (None, None)
    params = {"bucket": who.bucket, "id": who.id, "start": start, "end": end}
    return conn.execute(RECIPIENT_SET_QUIET_HOURS, params).first() is not None


def categories_for(
    conn: Connection,
    user_id: str,
    muted: Iterable[str],
    offered: Sequence[str] = KNOWN_CATEGORIES,
) -> list[str]:
    """The categories the page offers: `offered` first (the known ones, or the allow-list),
    then the muted ones and those of the user's events of the last CATEGORY_DAYS days, by
    name; at most MAX_CATEGORIES_SHOWN."""
    params = {
        "bucket": bucket_of(user_id),
        "user_id": user_id,
        "days": CATEGORY_DAYS,
        "limit": MAX_CATEGORIES_SHOWN,
    }
    seen = conn.execute(CATEGORY_LIST_RECENT, params).scalars().all()
    first = list(dict.fromkeys(offered))[:MAX_CATEGORIES_SHOWN]
    muted = sorted(set(muted) - set(first))
    rest = sorted(set(seen) - set(first) - set(muted))
    # The muted ones before the others, so a long list never hides one that is switched off.
    kept = sorted([*muted, *rest][: MAX_CATEGORIES_SHOWN - len(first)])
    return [*first, *kept]


def facts(conn: Connection, user_id: str) -> RecipientFacts | None:
    """What `digest why` says about the recipient of `user_id`, or None."""
    params = {"bucket": bucket_of(user_id), "user_id": user_id}
    row = conn.execute(RECIPIENT_GET_FOR_WHY, params).one_or_none()
    return RecipientFacts(**row._asdict()) if row else None


def count_unschedulable(conn: Connection) -> int:
    """Recipients whose time zone PostgreSQL does not know (`digest schedule` skips them)."""
    return sum(
        int(conn.execute(RECIPIENT_COUNT_UNSCHEDULABLE.bind(buckets)).scalar_one())
        for buckets in shards.for_connection(conn).shards
    )


def emails_of(conn: Connection, user_ids: Collection[str]) -> dict[str, str]:
    """The stored email of each of `user_ids` that has a recipient, one query per shard."""
    found: dict[str, str] = {}
    for _, users in shards.for_connection(conn).group(set(user_ids), bucket_of):
        params = {"buckets": sorted({bucket_of(u) for u in users}), "user_ids": users}
        found.update(
            {row.user_id: row.email for row in conn.execute(RECIPIENT_LIST_EMAILS, params)}
        )
    return found
