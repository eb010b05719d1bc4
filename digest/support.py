"""Support queries: `digest deliveries` (what was sent to whom) and `digest why` (in words).

The SQL is named here; `explain` is a pure function of the facts one user's few queries
return, so every sentence it can say is testable without a database.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Connection, text

from digest import recipients, shards
from digest.buckets import bucket_of
from digest.errors import DigestError, ValidationError
from digest.models import Cadence, DeliveryStatus, RunStatus
from digest.recipients import RecipientFacts
from digest.shards import Sharded
from digest.terminal import plural

RECENT_RUNS = 3
# A delivery this recent means workers were sending moments ago (`digest why`).
RECENT_DELIVERY = timedelta(minutes=5)
WEEKDAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")

# Every filter is optional: a NULL parameter switches it off. LIMIT NULL is no limit.
# One user's deliveries are in the shard of their bucket; without a user, each shard is
# asked in turn and the newest kept (`list_deliveries`).
_DELIVERY_FILTERS = """
       AND (CAST(:email AS text) IS NULL OR lower(recipient) = lower(:email))
       AND (CAST(:status AS text) IS NULL OR status = :status)
       AND (CAST(:since AS timestamptz) IS NULL OR created_at >= :since)
     ORDER BY created_at DESC, id DESC
     LIMIT CAST(:limit AS bigint)
"""
_DELIVERY_COLUMNS = """id, created_at, run_id, user_id, recipient, transport, status,
           provider_message_id, reason"""
DELIVERY_LIST_FOR_USER = text(
    f"""
    SELECT {_DELIVERY_COLUMNS}
      FROM deliveries
     WHERE bucket = :bucket AND user_id = :user_id{_DELIVERY_FILTERS}"""
)
DELIVERY_LIST = Sharded(
    f"""
    SELECT {_DELIVERY_COLUMNS}
      FROM deliveries
     WHERE {{shard:bucket}}{_DELIVERY_FILTERS}"""
)

SUPPRESSION_GET_FOR_ADDRESS = text(
    "SELECT email, reason, source, created_at FROM suppressions WHERE email = lower(:email)"
)

# The events a run attached but left out of its digest: those of the categories muted when
# it first froze them (the claim's rule, `digest.claim`). The run's bucket is the user's
# (:bucket, in both statements below): named as the parameter so that the planner, and
# Citus, see one shard.
RUN_MUTED_EVENTS = (
    "CASE WHEN r.muted_categories IS NULL THEN 0 ELSE (SELECT count(*) FROM digest_events e"
    " WHERE e.bucket = :bucket AND e.digest_run_id = r.id"
    " AND e.category = ANY(r.muted_categories)) END"
)

# The earliest pending run is the next digest; the others are history, newest first.
RUN_GET_NEXT_PENDING = text(
    f"""
    SELECT id, cadence, status, scheduled_for, attempt, locked_by, lease_expires_at,
           completed_at, last_error, event_count, muted_categories,
           {RUN_MUTED_EVENTS} AS muted_events
      FROM digest_runs r
     WHERE bucket = :bucket AND user_id = :user_id AND status = 'pending'
     ORDER BY scheduled_for, id
     LIMIT 1
    """
)
RUN_LIST_RECENT_FINISHED = text(
    f"""
    SELECT id, cadence, status, scheduled_for, attempt, locked_by, lease_expires_at,
           completed_at, last_error, event_count, muted_categories,
           {RUN_MUTED_EVENTS} AS muted_events
      FROM digest_runs r
     WHERE bucket = :bucket AND user_id = :user_id AND status <> 'pending'
     ORDER BY id DESC
     LIMIT :limit
    """
)

DELIVERY_GET_LAST_FOR_USER = text(
    """
    SELECT id, created_at, run_id, user_id, recipient, transport, status,
           provider_message_id, reason
      FROM deliveries
     WHERE bucket = :bucket AND user_id = :user_id
     ORDER BY created_at DESC, id DESC
     LIMIT 1
    """
)

# Is anyone working the queue? The runs being processed are exactly those with a lease (a
# small partial index), and the newest delivery is the last by id: both cheap on a big table.
# Asked of each shard in turn (`queue_facts` adds them up).
QUEUE_GET_ACTIVITY = Sharded(
    """
    SELECT now() AS now,
           (SELECT count(*) FROM digest_runs
             WHERE {shard:bucket} AND lease_expires_at IS NOT NULL) AS processing,
           (SELECT max(started_at) FROM digest_runs
             WHERE {shard:bucket} AND lease_expires_at IS NOT NULL) AS latest_claim_at,
           (SELECT created_at FROM deliveries WHERE {shard:bucket} ORDER BY id DESC LIMIT 1)
               AS last_delivery_at
    """
)
RUN_COUNT_DUE_BEFORE = Sharded(
    """
    SELECT count(*) FROM digest_runs
     WHERE {shard:bucket} AND status = 'pending' AND scheduled_for < :scheduled_for
    """
)

EVENT_COUNT_WAITING_FOR_USER = text(
    """
    SELECT count(*) AS events, min(created_at) AS oldest
      FROM digest_events
     WHERE bucket = :bucket AND user_id = :user_id AND digest_run_id IS NULL
    """
)


@dataclass(frozen=True)
class DeliveryRow:
    """One message handed to a transport, and what became of it."""

    id: int
    created_at: datetime
    run_id: int
    user_id: str
    recipient: str
    transport: str
    status: str
    provider_message_id: str | None
    reason: str | None


@dataclass(frozen=True)
class SuppressionFacts:
    """Why an address is never mailed."""

    email: str
    reason: str
    source: str
    created_at: datetime


@dataclass(frozen=True)
class RunFacts:
    """One digest run as the queue holds it."""

    id: int
    cadence: str
    status: str
    scheduled_for: datetime
    attempt: int
    locked_by: str | None
    lease_expires_at: datetime | None
    completed_at: datetime | None
    last_error: str | None
    event_count: int | None
    muted_categories: list[str] | None = None  # what its first attempt left out
    muted_events: int = 0


@dataclass(frozen=True)
class QueueFacts:
    """Whether workers are taking runs, as of the database's `now`."""

    now: datetime
    processing: int  # runs any worker holds now
    latest_claim_at: datetime | None  # of those
    last_delivery_at: datetime | None  # of any user
    due_before: int  # pending runs due before the user's next one


@dataclass(frozen=True)
class UserFacts:
    """Everything `explain` needs to say about one user's digest."""

    user_id: str
    recipient: RecipientFacts | None
    suppression: SuppressionFacts | None
    next_run: RunFacts | None
    recent_runs: tuple[RunFacts, ...]  # newest first, pending ones excluded
    last_delivery: DeliveryRow | None
    events_waiting: int
    oldest_event_at: datetime | None
    queue: QueueFacts | None = None  # None: not read (`explain` then gives no due times)

    @property
    def is_unknown(self) -> bool:
        """No recipient and no trace of one: nothing to explain."""
        return (
            self.recipient is None
            and self.next_run is None
            and not self.recent_runs
            and self.last_delivery is None
            and self.events_waiting == 0
        )


_RELATIVE = re.compile(r"^\s*(\d+)\s*([dhm])\s*$", re.IGNORECASE)
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


def parse_since(value: str, now: datetime) -> datetime:
    """`7d`, `24h`, `30m` before `now`, or an ISO 8601 time (UTC when it names no zone)."""
    if match := _RELATIVE.match(value):
        amount, unit = int(match.group(1)), match.group(2).lower()
        try:
            return now - timedelta(**{_UNITS[unit]: amount})
        except OverflowError:  # before year 1, or more days than a timedelta holds
            raise ValidationError(f"--since: {value.strip()} reaches too far back") from None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValidationError(
            f"--since: expected an ISO 8601 time or a span like 7d, 24h, 30m: {value!r}"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def list_deliveries(
    conn: Connection,
    *,
    user_id: str | None = None,
    email: str | None = None,
    status: str | None = None,
    since: datetime | None = None,
    limit: int | None = 50,
) -> list[DeliveryRow]:
    """Deliveries matching every given filter, newest first."""
    params = {
        "email": email.strip() if email else None,
        "status": status,
        "since": since,
        "limit": limit,
    }
    if user_id is not None:
        params |= {"bucket": bucket_of(user_id), "user_id": user_id}
        rows = list(conn.execute(DELIVERY_LIST_FOR_USER, params))
    else:
        rows = [
            row
            for buckets in shards.for_connection(conn).shards
            for row in conn.execute(DELIVERY_LIST.bind(buckets), params)
        ]
        rows.sort(key=lambda row: (row.created_at, row.id), reverse=True)
        rows = rows[:limit] if limit is not None else rows
    return [DeliveryRow(**row._asdict()) for row in rows]


def load_facts(conn: Connection, user_id: str) -> UserFacts:
    """The facts about `user_id`'s digest, read in a handful of small queries."""
    params: dict[str, Any] = {"bucket": bucket_of(user_id), "user_id": user_id}
    recipient = recipients.facts(conn, user_id)
    suppression = _suppression(conn, recipient)
    pending = conn.execute(RUN_GET_NEXT_PENDING, params).one_or_none()
    recent = conn.execute(RUN_LIST_RECENT_FINISHED, {**params, "limit": RECENT_RUNS})
    last = conn.execute(DELIVERY_GET_LAST_FOR_USER, params).one_or_none()
    waiting = conn.execute(EVENT_COUNT_WAITING_FOR_USER, params).one()
    queue = _queue_facts(conn, pending.scheduled_for if pending is not None else None)
    return UserFacts(
        user_id=user_id,
        recipient=recipient,
        suppression=suppression,
        next_run=RunFacts(**pending._asdict()) if pending else None,
        recent_runs=tuple(RunFacts(**row._asdict()) for row in recent),
        last_delivery=DeliveryRow(**last._asdict()) if last else None,
        events_waiting=int(waiting.events),
        oldest_event_at=waiting.oldest,
        queue=queue,
    )


def _queue_facts(conn: Connection, due_at: datetime | None) -> QueueFacts:
    """Whether workers are taking runs, every shard asked in turn; `due_at`: the user's
    next run's due time, to count the overdue runs before it."""
    now: datetime | None = None
    processing = 0
    latest_claim_at: datetime | None = None
    last_delivery_at: datetime | None = None
    shard_map = shards.for_connection(conn)
    for buckets in shard_map.shards:
        row = conn.execute(QUEUE_GET_ACTIVITY.bind(buckets)).one()
        now = row.now if now is None else max(now, row.now)
        processing += int(row.processing)
        latest_claim_at = _latest(latest_claim_at, row.latest_claim_at)
        last_delivery_at = _latest(last_delivery_at, row.last_delivery_at)
    assert now is not None  # a shard map has at least one shard
    due_before = 0
    if due_at is not None and due_at <= now:
        for buckets in shard_map.shards:
            found = conn.execute(RUN_COUNT_DUE_BEFORE.bind(buckets), {"scheduled_for": due_at})
            due_before += int(found.scalar_one())
    return QueueFacts(now, processing, latest_claim_at, last_delivery_at, due_before)


def _latest(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else max(a, b)


def _suppression(conn: Connection, recipient: RecipientFacts | None) -> SuppressionFacts | None:
    if recipient is None:
        return None
    found = conn.execute(SUPPRESSION_GET_FOR_ADDRESS, {"email": recipient.email.strip()})
    row = found.one_or_none()
    return SuppressionFacts(**row._asdict()) if row else None


def preview_warnings(conn: Connection, user_id: str) -> list[str]:
    """Why a preview of `user_id`'s digest shows mail that would not be sent, if it does."""
    recipient = recipients.facts(conn, user_id)
    if recipient is None:
        return []
    suppression = _suppression(conn, recipient)
    warnings = []
    if recipient.cadence == Cadence.OFF:
        warnings.append(
            f"user {user_id} has cadence off, so no digest is sent to them; "
            "this is what a daily digest would hold"
        )
    if recipient.unsubscribed_at is not None:
        warnings.append(
            f"user {user_id} unsubscribed at {_when(recipient.unsubscribed_at, _zone(recipient))}, "
            "so no digest is sent to them"
        )
    if suppression is not None:
        warnings.append(
            f"{suppression.email} is suppressed ({suppression.reason}), so it is never mailed"
        )
    return warnings


def why(conn: Connection, user_id: str) -> tuple[UserFacts, list[str]]:
    """The facts and their explanation, or DigestError when the user is unknown."""
    facts = load_facts(conn, user_id)
    if facts.is_unknown:
        raise DigestError(f"no recipient with user id {user_id}")
    return facts, explain(facts)


# -- the explanation (pure) -------------------------------------------------------------


def explain(facts: UserFacts) -> list[str]:
    """One plain-language sentence per fact about the user's last expected digest."""
    recipient = facts.recipient
    zone = _zone(recipient)
    sentences: list[str] = []
    if recipient is None:
        sentences.append(f"There is no recipient with user id {facts.user_id}.")
    else:
        sentences.extend(_recipient_sentences(recipient, zone))
    if facts.suppression is not None:
        s = facts.suppression
        sentences.append(
            f"The address {s.email} is suppressed since {_when(s.created_at, zone)} "
            f"(reason: {s.reason}; source: {s.source}), so it is never mailed; "
            f"remove with `digest suppress remove {s.email}`."
        )
    sentences.append(_next_run_sentence(facts, zone))
    if (workers := _workers_sentence(facts, zone)) is not None:
        sentences.append(workers)
    sentences.extend(_run_sentence(run, zone) + _muted_sentence(run) for run in facts.recent_runs)
    sentences.append(_delivery_sentence(facts.last_delivery, zone))
    sentences.append(_events_sentence(facts, zone))
    return sentences


def _zone(recipient: RecipientFacts | None) -> ZoneInfo:
    if recipient is None or not recipient.timezone_known:
        return ZoneInfo("UTC")
    try:
        return ZoneInfo(recipient.timezone)
    except (ZoneInfoNotFoundError, ValueError):  # PostgreSQL knows it, Python does not
        return ZoneInfo("UTC")


def _when(moment: datetime, zone: ZoneInfo) -> str:
    """`2026-11-24 12:00 UTC (21:00 Asia/Tokyo)`, or just UTC for UTC users."""
    utc = moment.astimezone(UTC)
    shown = f"{utc:%Y-%m-%d %H:%M} UTC"
    if zone.key == "UTC":
        return shown
    local = moment.astimezone(zone)
    same_day = local.date() == utc.date()
    local_text = f"{local:%H:%M}" if same_day else f"{local:%Y-%m-%d %H:%M}"
    return f"{shown} ({local_text} {zone.key})"


def _recipient_sentences(recipient: RecipientFacts, zone: ZoneInfo) -> list[str]:
    who = f"User {recipient.user_id} ({recipient.email})"
    hour = f"{recipient.send_hour:02d}:00"
    if recipient.cadence == Cadence.WEEKLY:
        day = WEEKDAY_NAMES[recipient.weekly_day - 1]
        schedule = f"a weekly digest on {day}s at {hour} {recipient.timezone} local time"
    elif recipient.cadence == Cadence.DAILY:
        schedule = f"a daily digest at {hour} {recipient.timezone} local time"
    else:
        schedule = f"cadence {recipient.cadence} (time zone {recipient.timezone}, send hour {hour})"
    sentences = [f"{who} has {schedule}."]
    if not recipient.timezone_known:
        sentences.append(
            f"PostgreSQL does not know the time zone {recipient.timezone!r}, "
            "so `digest schedule` leaves this user out."
        )
    if recipient.cadence == Cadence.OFF:
        sentences.append("Their cadence is off, so no digests are scheduled.")
    if recipient.unsubscribed_at is not None:
        sentences.append(
            f"They unsubscribed at {_when(recipient.unsubscribed_at, zone)}, "
            "so no digests are scheduled or sent."
        )
    if recipient.muted_categories:
        muted = ", ".join(sorted(recipient.muted_categories))
        sentences.append(f"Their digests leave out the muted categories {muted}.")
    if recipient.quiet_hours:
        sentences.append(
            f"Quiet hours {recipient.quiet_hours} {recipient.timezone} local time: "
            "alerts wait until they end; digests keep their send hour."
        )
    return sentences


def span(seconds: float) -> str:
    """A duration as people say it, to the minute: `13 minutes`, `2 hours 5 minutes`, `3 days`."""
    seconds = abs(seconds)
    if seconds < 60:
        return plural(int(seconds), "second")
    minutes = int(seconds // 60)
    if minutes < 60:
        return plural(minutes, "minute")
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return plural(hours, "hour") + (f" {plural(minutes, 'minute')}" if minutes else "")
    days, hours = divmod(hours, 24)
    return plural(days, "day") + (f" {plural(hours, 'hour')}" if hours else "")


def _overdue(run: RunFacts, queue: QueueFacts | None) -> bool:
    return queue is not None and run.scheduled_for <= queue.now


def _muted_sentence(run: RunFacts) -> str:
    """` N events of muted categories (…) were left out.`, or nothing."""
    if not run.muted_events:
        return ""
    count = run.muted_events
    events = plural(count, "event")
    muted = ", ".join(sorted(run.muted_categories or ()))
    return f" {events} of muted categories ({muted}) {'was' if count == 1 else 'were'} left out."


def _next_run_sentence(facts: UserFacts, zone: ZoneInfo) -> str:
    run, queue = facts.next_run, facts.queue
    if run is not None:
        head = (
            f"The next digest is run {run.id} ({run.cadence}), pending and due at "
            f"{_when(run.scheduled_for, zone)}"
        )
        if queue is None:
            return f"{head}."
        if not _overdue(run, queue):
            return f"{head} (in {span((run.scheduled_for - queue.now).total_seconds())})."
        late = span((queue.now - run.scheduled_for).total_seconds())
        before = (
            f", with {plural(queue.due_before, 'run')} due before it" if queue.due_before else ""
        )
        return f"{head}, overdue by {late}{before}."
    recipient = facts.recipient
    if recipient is None:
        return (
            "`digest schedule` creates no run without a recipient "
            f"(`digest recipients set {facts.user_id} --email ...` creates one)."
        )
    if recipient.cadence == Cadence.OFF or recipient.unsubscribed_at:
        return "No digest run is pending, and none will be while that stays so."
    if not facts.recent_runs:
        return "Never scheduled yet — `digest schedule` runs from cron and creates the first run."
    return (
        "No digest run is pending; the next `digest schedule` (from cron) creates one "
        "at the next send time."
    )


def _workers_sentence(facts: UserFacts, zone: ZoneInfo) -> str | None:
    """For an overdue run: whether any worker is taking runs, so support knows whom to ask."""
    run, queue = facts.next_run, facts.queue
    if run is None or queue is None or not _overdue(run, queue):
        return None
    if queue.processing and queue.latest_claim_at is not None:
        ago = span((queue.now - queue.latest_claim_at).total_seconds())
        return (
            f"Workers are busy: {plural(queue.processing, 'run is', 'runs are')} being "
            f"processed, the latest claimed at {_when(queue.latest_claim_at, zone)} ({ago} ago)."
        )
    if queue.last_delivery_at is None:
        last = "no delivery has ever been recorded"
    else:
        ago = span((queue.now - queue.last_delivery_at).total_seconds())
        last = (
            "the last delivery of any user was recorded at "
            f"{_when(queue.last_delivery_at, zone)} ({ago} ago)"
        )
        if queue.now - queue.last_delivery_at < RECENT_DELIVERY:
            return f"No worker holds a run right now; {last}."
    return (
        f"No worker has claimed a run lately: none is being processed, and {last}; "
        "is `digest work` running?"
    )


def _run_sentence(run: RunFacts, zone: ZoneInfo) -> str:
    # A finished run says when it finished; one without that time says when it was due.
    if run.completed_at:
        head, at = f"Run {run.id} ({run.cadence})", f" at {_when(run.completed_at, zone)}"
    else:
        head, at = f"Run {run.id} ({run.cadence}), due at {_when(run.scheduled_for, zone)},", ""
    attempt = f"attempt {run.attempt}"
    reason = run.last_error or "no reason recorded"
    if run.status == RunStatus.SENT:
        events = f" with {plural(run.event_count, 'event')}" if run.event_count is not None else ""
        return f"{head} was sent{at}{events} ({attempt})."
    if run.status == RunStatus.SKIPPED:
        why = "there was nothing new to send" if run.last_error == "no events" else reason
        return f"{head} was skipped{at} ({attempt}): {why}."
    if run.status == RunStatus.FAILED:
        return f"{head} failed{at} ({attempt}): {reason}."
    if run.status == RunStatus.PROCESSING:
        until = _when(run.lease_expires_at, zone) if run.lease_expires_at else "an unknown time"
        return (
            f"{head} is being processed ({attempt}): worker {run.locked_by or '?'} "
            f"holds the lease until {until}."
        )
    if run.status == RunStatus.CANCELLED:
        return f"{head} was cancelled{at} because the user's preferences changed."
    return f"{head} is {run.status} ({attempt})."


_DELIVERY_OUTCOMES: Mapping[str, str] = {
    DeliveryStatus.SENT: "was accepted by the provider; no delivery report has arrived yet",
    DeliveryStatus.DELIVERED: "was delivered to the mailbox",
    DeliveryStatus.BOUNCED: "bounced",
    DeliveryStatus.COMPLAINED: "was reported as spam by the recipient",
    DeliveryStatus.REJECTED: "was rejected by the provider",
    DeliveryStatus.FAILED: "failed",
    DeliveryStatus.SUPPRESSED: "was not sent because the address is blocked",
    DeliveryStatus.DEFERRED: "was deferred by the receiving server and may still arrive",
    DeliveryStatus.UNKNOWN: "has an unknown outcome",
}


def _delivery_sentence(delivery: DeliveryRow | None, zone: ZoneInfo) -> str:
    if delivery is None:
        return "No delivery has been recorded for this user."
    outcome = _DELIVERY_OUTCOMES.get(delivery.status, f"has status {delivery.status}")
    provider_id = (
        f", provider message id {delivery.provider_message_id}"
        if delivery.provider_message_id
        else ""
    )
    reason = f": {delivery.reason}" if delivery.reason else ""
    return (
        f"The last delivery (run {delivery.run_id}, to {delivery.recipient} via "
        f"{delivery.transport} at {_when(delivery.created_at, zone)}{provider_id}) "
        f"{outcome}{reason}."
    )


def _events_sentence(facts: UserFacts, zone: ZoneInfo) -> str:
    if facts.events_waiting == 0 or facts.oldest_event_at is None:
        return "No events are waiting for the next digest."
    waiting = plural(facts.events_waiting, "event is", "events are")
    if facts.recipient is None:
        return (
            f"{waiting} waiting, but no digest is sent to a user id without a recipient; "
            f"the oldest is from {_when(facts.oldest_event_at, zone)}."
        )
    return (
        f"{waiting} waiting for the next digest, the oldest from "
        f"{_when(facts.oldest_event_at, zone)}."
    )
