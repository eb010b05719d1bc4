"""Every read of `recipients`, and the preference changes a recipient makes themselves.

One home for the statements: the recipient a claim loads with each run (`recipient_of`,
also for `digest preview`), the row `digest recipients show` prints, the preferences the
unsubscribe pages show and change, the facts `digest why` explains, and the unsubscribe a
complaint makes. Imports and `digest recipients set` write through `digest.ingest.recipients`.
Every change of cadence or unsubscribe fires the trigger on `recipients` that cancels the
user's pending runs.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, time
from typing import Any, Final

from sqlalchemy import Connection, Engine, Row, RowMapping, text

from digest.ingest.fields import text_field
from digest.models import Recipient


def recipient_of(user_id: str) -> str:
    """A subquery for `LATERAL`: the recipient `user_id` (an SQL expression of this module or
    `digest.claim`, never user input) names, as `Recipient`'s fields after the user id,
    with any suppression of the address. Looked up by key: the LIMIT keeps the planner from
    hashing whole tables."""
    return f"""(
        SELECT p.email, p.name, p.cadence, p.timezone, p.locale, p.unsubscribed_at,
               (SELECT s.reason FROM suppressions s WHERE s.email = lower(p.email))
                   AS suppressed_reason,
               p.id AS recipient_id, p.subscription_version
          FROM recipients p
         WHERE p.user_id = {user_id}
         LIMIT 1)"""


def muted_of(user_id: str) -> str:
    """A scalar subquery: the categories the recipient `user_id` (an SQL expression of this
    module or `digest.claim`, never user input) has muted, or NULL when none."""
    return f"""(
        SELECT nullif(p.muted_categories, '{{}}')
          FROM recipients p
         WHERE p.user_id = {user_id}
         LIMIT 1)"""


# Quiet hours as people write them, `22:00-07:00`, or NULL for none.
QUIET_HOURS_TEXT = (
    "CASE WHEN quiet_start IS NOT NULL"
    " THEN to_char(quiet_start, 'HH24:MI') || '-' || to_char(quiet_end, 'HH24:MI') END"
)


RECIPIENT_LOAD_MANY = text(
    f"""
    SELECT u.user_id, p.*
      FROM unnest(CAST(:user_ids AS text[])) AS u(user_id)
     CROSS JOIN LATERAL {recipient_of("u.user_id")} p
    """
)
RECIPIENT_GET = text(
    f"""
    SELECT user_id, email, name, cadence, timezone, send_hour, weekly_day, locale,
           muted_categories, {QUIET_HOURS_TEXT} AS quiet_hours,
           unsubscribed_at, created_at, updated_at
      FROM recipients
     WHERE user_id = :user_id
    """
)
RECIPIENT_GET_FOR_UPDATE = text(
    f"""
    SELECT user_id, email, name, cadence, timezone, send_hour, weekly_day, locale,
           muted_categories, {QUIET_HOURS_TEXT} AS quiet_hours,
           unsubscribed_at, created_at, updated_at
      FROM recipients
     WHERE user_id = :user_id
       FOR UPDATE
    """
)
# Unsubscribe tokens name the recipient by id; legacy tokens (mail sent before format 1)
# by user id. A change locks the row first: the version it checks is the one the update sees.
_PREFERENCE_COLUMNS = """
    SELECT id, user_id, email, name, cadence, unsubscribed_at, subscription_version,
           timezone, muted_categories, quiet_start, quiet_end
      FROM recipients"""
RECIPIENT_GET_PREFERENCES = text(_PREFERENCE_COLUMNS + " WHERE id = :id")
RECIPIENT_GET_PREFERENCES_BY_USER = text(_PREFERENCE_COLUMNS + " WHERE user_id = :user_id")
RECIPIENT_LOCK_PREFERENCES = text(_PREFERENCE_COLUMNS + " WHERE id = :id FOR UPDATE")
RECIPIENT_LOCK_PREFERENCES_BY_USER = text(
    _PREFERENCE_COLUMNS + " WHERE user_id = :user_id FOR UPDATE"
)
# One-click unsubscribe (the pages) and a complaint (SES feedback).
RECIPIENT_UNSUBSCRIBE = text(
    """
    UPDATE recipients
       SET unsubscribed_at = now(), updated_at = now()
     WHERE id = :id AND unsubscribed_at IS NULL
    RETURNING id
    """
)
RECIPIENT_UNSUBSCRIBE_BY_USER = text(
    """
    UPDATE recipients
       SET unsubscribed_at = now(), updated_at = now()
     WHERE user_id = :user_id AND unsubscribed_at IS NULL
    RETURNING user_id
    """
)
# daily/weekly re-subscribes; off keeps whatever unsubscribed_at is. A choice that changes
# nothing writes nothing.
RECIPIENT_SET_CADENCE = text(
    """
    UPDATE recipients
       SET cadence = CAST(:cadence AS text),
           unsubscribed_at = CASE WHEN CAST(:cadence AS text) = 'off' THEN unsubscribed_at END,
           updated_at = now()
     WHERE id = :id
       AND (cadence <> CAST(:cadence AS text)
            OR (CAST(:cadence AS text) <> 'off' AND unsubscribed_at IS NOT NULL))
    RETURNING id
    """
)
# The page's own choices: which categories to leave out, and quiet hours. Neither moves a
# run, so neither fires the trigger that cancels pending runs; a choice that changes nothing
# writes nothing.
RECIPIENT_SET_MUTED = text(
    """
    UPDATE recipients
       SET muted_categories = CAST(:muted AS text[]), updated_at = now()
     WHERE id = :id AND muted_categories <> CAST(:muted AS text[])
    RETURNING id
    """
)
RECIPIENT_SET_QUIET_HOURS = text(
    """
    UPDATE recipients
       SET quiet_start = CAST(:start AS time), quiet_end = CAST(:end AS time),
           updated_at = now()
     WHERE id = :id
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
          FROM digest_runs r JOIN digest_events e ON e.digest_run_id = r.id
         WHERE r.user_id = :user_id
           AND r.created_at >= now() - make_interval(days => :days)
           AND e.created_at >= now() - make_interval(days => :days)
        UNION
        SELECT e.category
          FROM digest_events e
         WHERE e.user_id = :user_id AND e.digest_run_id IS NULL
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
     WHERE r.user_id = :user_id
    """
)
RECIPIENT_COUNT_UNSCHEDULABLE = text(
    """
    SELECT count(*) FROM recipients
     WHERE timezone NOT IN (SELECT name FROM pg_timezone_names)
    """
)
RECIPIENT_LIST_EMAILS = text(
    "SELECT user_id, email FROM recipients WHERE user_id = ANY(CAST(:user_ids AS text[]))"
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
    """Recipients by user id, as a claim loads them, in one query."""
    rows = conn.execute(RECIPIENT_LOAD_MANY, {"user_ids": list(set(user_ids))}).all()
    return {row.user_id: Recipient(*row) for row in rows}


def get(conn: Connection, user_id: str, *, lock: bool = False) -> RowMapping | None:
    """The stored recipient (locked for update with `lock`), or None."""
    statement = RECIPIENT_GET_FOR_UPDATE if lock else RECIPIENT_GET
    return conn.execute(statement, {"user_id": user_id}).mappings().first()


def get_recipient(target: Connection | Engine, user_id: str | int) -> dict[str, Any] | None:
    """The stored recipient as a dict, or None."""
    uid = text_field("user_id", user_id)
    if isinstance(target, Engine):
        with target.connect() as conn:
            row = get(conn, uid)
    else:
        row = get(target, uid)
    return None if row is None else dict(row)


def preferences(
    conn: Connection,
    *,
    recipient_id: int | None = None,
    user_id: str | None = None,
    lock: bool = False,
) -> Preferences | None:
    """The preferences of the recipient with `recipient_id`, else of `user_id` (locked for
    update with `lock`), or None."""
    if recipient_id is not None:
        statement = RECIPIENT_LOCK_PREFERENCES if lock else RECIPIENT_GET_PREFERENCES
        row = conn.execute(statement, {"id": recipient_id}).first()
    else:
        by_user = RECIPIENT_LOCK_PREFERENCES_BY_USER if lock else RECIPIENT_GET_PREFERENCES_BY_USER
        row = conn.execute(by_user, {"user_id": user_id}).first()
    return _preferences(row)


def _preferences(row: Row[Any] | None) -> Preferences | None:
    if row is None:
        return None
    return Preferences(
        row.id,
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


def unsubscribe(conn: Connection, recipient_id: int) -> bool:
    """Unsubscribe the recipient; False when they already were."""
    return conn.execute(RECIPIENT_UNSUBSCRIBE, {"id": recipient_id}).first() is not None


def unsubscribe_user(conn: Connection, user_id: str) -> bool:
    """Unsubscribe the recipient of `user_id`; False when there is none or they already were."""
    return conn.execute(RECIPIENT_UNSUBSCRIBE_BY_USER, {"user_id": user_id}).first() is not None


def set_cadence(conn: Connection, recipient_id: int, cadence: str) -> bool:
    """Set the cadence (daily and weekly also re-subscribe); False when nothing changed."""
    params = {"id": recipient_id, "cadence": cadence}
    return conn.execute(RECIPIENT_SET_CADENCE, params).first() is not None


def set_muted(conn: Connection, recipient_id: int, muted: Iterable[str]) -> bool:
    """Leave exactly the categories `muted` out of the recipient's digests; False when
    that was already so."""
    params = {"id": recipient_id, "muted": sorted(set(muted))}
    return conn.execute(RECIPIENT_SET_MUTED, params).first() is not None


def set_quiet_hours(conn: Connection, recipient_id: int, hours: tuple[time, time] | None) -> bool:
    """Set the recipient's quiet hours (start, end; None: none); False when unchanged."""
    start, end = hours if hours is not None else (None, None)
    params = {"id": recipient_id, "start": start, "end": end}
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
    params = {"user_id": user_id, "days": CATEGORY_DAYS, "limit": MAX_CATEGORIES_SHOWN}
    seen = conn.execute(CATEGORY_LIST_RECENT, params).scalars().all()
    first = list(dict.fromkeys(offered))[:MAX_CATEGORIES_SHOWN]
    muted = sorted(set(muted) - set(first))
    rest = sorted(set(seen) - set(first) - set(muted))
    # The muted ones before the others, so a long list never hides one that is switched off.
    kept = sorted([*muted, *rest][: MAX_CATEGORIES_SHOWN - len(first)])
    return [*first, *kept]


def facts(conn: Connection, user_id: str) -> RecipientFacts | None:
    """What `digest why` says about the recipient of `user_id`, or None."""
    row = conn.execute(RECIPIENT_GET_FOR_WHY, {"user_id": user_id}).one_or_none()
    return RecipientFacts(**row._asdict()) if row else None


def count_unschedulable(conn: Connection) -> int:
    """Recipients whose time zone PostgreSQL does not know (`digest schedule` skips them)."""
    return int(conn.execute(RECIPIENT_COUNT_UNSCHEDULABLE).scalar_one())


def emails_of(conn: Connection, user_ids: Collection[str]) -> dict[str, str]:
    """The stored email of each of `user_ids` that has a recipient."""
    rows = conn.execute(RECIPIENT_LIST_EMAILS, {"user_ids": list(user_ids)})
    return {row.user_id: row.email for row in rows}
