"""SES events applied: recorded in `feedback_events` and turned into delivery statuses,
suppressions and unsubscribes, all in one transaction (the rules are in the package
docstring, `digest.feedback`)."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import Connection, Engine, text

from digest import logs, recipients, shards, suppressions
from digest.db import atomic
from digest.errors import ValidationError
from digest.feedback.ses import SesEvent, parse_event, short, unwrap
from digest.models import DeliveryStatus
from digest.shards import Sharded

log = logging.getLogger(__name__)

TRANSIENT_LIMIT = 3
SOURCE: Final = "ses"
STATUS_BY_TYPE: Final[Mapping[str, DeliveryStatus]] = {
    "Bounce": DeliveryStatus.BOUNCED,
    "Complaint": DeliveryStatus.COMPLAINED,
    "Delivery": DeliveryStatus.DELIVERED,
    "Reject": DeliveryStatus.REJECTED,
    "DeliveryDelay": DeliveryStatus.DEFERRED,
}

# Keyed by the SNS MessageId: a replay conflicts and changes nothing. An event that came
# without one is stored under `local:` and a random UUID (never a replay).
FEEDBACK_RECORD = text(
    """
    INSERT INTO feedback_events (sns_message_id, event_type, provider_message_id, run_id,
                                 delivery_id, recipient, bounce_type, reason, raw, orphan)
    VALUES (:sns_message_id, :event_type, :provider_message_id, :run_id, :delivery_id,
            :recipient, :bounce_type, :reason, CAST(:raw AS jsonb), :orphan)
    ON CONFLICT (sns_message_id) DO NOTHING
    RETURNING id
    """
)
# A delivery by its provider's message id: the lookup table names its bucket and id (on
# Citus it is distributed by the provider id, so this reaches one node; so does the
# delivery, by its bucket). Locked so that two events for one delivery apply one after
# the other.
DELIVERY_LOOKUP_FIND = text(
    """
    SELECT bucket, delivery_id FROM delivery_provider_ids
     WHERE provider_message_id = :provider_message_id
     ORDER BY delivery_id DESC
     LIMIT 1
    """
)
DELIVERY_GET_FOR_UPDATE = text(
    """
    SELECT id, bucket, run_id, user_id, recipient
      FROM deliveries
     WHERE bucket = :bucket AND id = :id
       FOR UPDATE
    """
)
# The fallback by run (the bucket and run id from our tags or our Message-ID) only takes a
# delivery that has no provider id of its own: one with another id is another send of the
# run, and this event is not about it.
_BY_RUN = """
    SELECT id, bucket, run_id, user_id, recipient
      FROM deliveries
     WHERE {where} AND run_id = :run_id AND provider_message_id IS NULL
     ORDER BY id DESC
     LIMIT 1
       FOR UPDATE
"""
DELIVERY_FIND_BY_RUN = text(_BY_RUN.format(where="bucket = :bucket"))
# Mail sent before the bucket tag names only its run: each shard is asked in turn.
DELIVERY_FIND_BY_RUN_IN_SHARD = Sharded(_BY_RUN.format(where="{shard:bucket}"))
# Statuses only move forward: sent/unknown < deferred < delivered < bounced/rejected <
# complained. Worker outcomes (failed, suppressed) are never overwritten. The new status's
# rank comes in as :rank (STATUS_RANK); the stored one's is a searched CASE: Citus 13.2
# sends a simple `CASE status WHEN …` in the WHERE of a statement with parameters to its
# worker nodes as `text = boolean`.
DELIVERY_SET_FEEDBACK_STATUS = text(
    """
    UPDATE deliveries
       SET status = CAST(:status AS text),
           reason = COALESCE(CAST(:reason AS text), reason),
           updated_at = now()
     WHERE bucket = :bucket AND id = :id
       AND (CASE WHEN status IN ('sent', 'unknown') THEN 0
                 WHEN status = 'deferred' THEN 1
                 WHEN status = 'delivered' THEN 2
                 WHEN status IN ('bounced', 'rejected') THEN 3
                 WHEN status = 'complained' THEN 4
                 ELSE 99 END) < CAST(:rank AS int)
    RETURNING id
    """
)
STATUS_RANK: Final[Mapping[str, int]] = {
    DeliveryStatus.DEFERRED: 1,
    DeliveryStatus.DELIVERED: 2,
    DeliveryStatus.BOUNCED: 3,
    DeliveryStatus.REJECTED: 3,
    DeliveryStatus.COMPLAINED: 4,
}
# The time comes in as :now: Citus refuses now() in ON CONFLICT DO UPDATE.
BOUNCE_STREAK_BUMP = text(
    """
    INSERT INTO bounce_streaks (email, count) VALUES (:email, 1)
    ON CONFLICT (email) DO UPDATE
       SET count = bounce_streaks.count + 1, updated_at = CAST(:now AS timestamptz)
    RETURNING count
    """
)
BOUNCE_STREAK_RESET = text("DELETE FROM bounce_streaks WHERE email = ANY(:emails)")


@dataclass(frozen=True)
class IngestResult:
    """What one `ingest` did."""

    event_type: str
    event_id: int | None  # None: a replay, nothing changed
    delivery_id: int | None = None
    orphan: bool = False
    status: str | None = None  # the delivery's new status, when it changed
    suppressed: tuple[str, ...] = ()  # addresses newly suppressed
    unsubscribed: str | None = None  # user id newly unsubscribed

    @property
    def replay(self) -> bool:
        """Whether this SNS MessageId had been recorded before."""
        return self.event_id is None


@dataclass(frozen=True)
class _Match:
    id: int
    bucket: int
    run_id: int
    user_id: str
    recipient: str


def ingest(
    target: Connection | Engine,
    document: Any,
    *,
    sns_message_id: str | None = None,
    transient_limit: int = TRANSIENT_LIMIT,
) -> IngestResult:
    """Record one SES event (bare or in an SNS envelope) and apply it, in one transaction.

    `sns_message_id` defaults to the envelope's MessageId; with one, a replay changes nothing.
    """
    if transient_limit < 1:
        raise ValidationError(f"transient_limit must be at least 1, got {transient_limit}")
    event_doc, envelope_id = unwrap(document)
    event = parse_event(event_doc)
    message_id = sns_message_id or envelope_id
    with atomic(target) as conn:
        match = _match(conn, event)
        event_id = conn.execute(
            FEEDBACK_RECORD,
            {
                "sns_message_id": message_id or f"local:{uuid.uuid4()}",
                "event_type": event.event_type,
                "provider_message_id": event.provider_message_id,
                "run_id": match.run_id if match else event.run_id,
                "delivery_id": match.id if match else None,
                "recipient": event.recipients[0] if event.recipients else None,
                "bounce_type": event.bounce_type,
                "reason": event.reason,
                "raw": json.dumps(event.raw),
                "orphan": match is None,
            },
        ).scalar()
        if event_id is None:
            logs.event(log, "feedback_replay", sns_message_id=message_id)
            return IngestResult(event.event_type, None)
        result = _apply(conn, event, match, transient_limit)
    logs.event(
        log,
        "feedback_applied",
        event_type=event.event_type,
        delivery_id=match.id if match else None,
        orphan=match is None,
        status=result.status,
        suppressed=len(result.suppressed),
    )
    return IngestResult(
        event.event_type,
        event_id,
        delivery_id=match.id if match else None,
        orphan=match is None,
        status=result.status,
        suppressed=tuple(result.suppressed),
        unsubscribed=result.unsubscribed,
    )


@dataclass
class _Effects:
    status: str | None = None
    suppressed: list[str] = field(default_factory=list)
    unsubscribed: str | None = None


def _apply(conn: Connection, event: SesEvent, match: _Match | None, limit: int) -> _Effects:
    effects = _Effects()
    kind = event.event_type
    if match is not None and kind in STATUS_BY_TYPE:
        changed = conn.execute(
            DELIVERY_SET_FEEDBACK_STATUS,
            {
                "bucket": match.bucket,
                "id": match.id,
                "status": STATUS_BY_TYPE[kind],
                "rank": STATUS_RANK[STATUS_BY_TYPE[kind]],
                "reason": event.reason,
            },
        ).first()
        if changed is not None:
            effects.status = STATUS_BY_TYPE[kind]
    addresses = list(_keys(event.recipients))
    if kind == "Delivery" and addresses:
        conn.execute(BOUNCE_STREAK_RESET, {"emails": addresses})
    elif kind == "Bounce":
        label = f"ses bounce {event.bounce_type or 'Undetermined'}"
        for address in addresses:
            if event.bounce_type == "Permanent":
                _suppress(conn, effects, address, _reason(label, event.reason))
                continue
            params = {"email": address, "now": datetime.now(UTC)}
            count = conn.execute(BOUNCE_STREAK_BUMP, params).scalar_one()
            if count >= limit:
                why = f"ses: {count} transient bounces in a row"
                _suppress(conn, effects, address, _reason(why, event.reason))
    elif kind == "Complaint":
        # ISPs may redact the complainant: the matched delivery's address is the one.
        if not addresses and match is not None:
            addresses = list(_keys((match.recipient,)))
        for address in addresses:
            _suppress(conn, effects, address, _reason("ses complaint", event.reason))
        if match is not None and recipients.unsubscribe_user(conn, match.user_id):
            effects.unsubscribed = match.user_id
    return effects


def _suppress(conn: Connection, effects: _Effects, address: str, reason: str) -> None:
    if suppressions.add(conn, address, reason, SOURCE):
        effects.suppressed.append(address)


def _match(conn: Connection, event: SesEvent) -> _Match | None:
    row = None
    if event.provider_message_id is not None:
        lookup = {"provider_message_id": event.provider_message_id}
        found = conn.execute(DELIVERY_LOOKUP_FIND, lookup).first()
        if found is not None:
            key = {"bucket": found.bucket, "id": found.delivery_id}
            row = conn.execute(DELIVERY_GET_FOR_UPDATE, key).first()
    if row is None and event.run_id is not None:
        if event.bucket is not None:
            by_run = {"bucket": event.bucket, "run_id": event.run_id}
            row = conn.execute(DELIVERY_FIND_BY_RUN, by_run).first()
        else:
            for buckets in shards.for_connection(conn).shards:
                statement = DELIVERY_FIND_BY_RUN_IN_SHARD.bind(buckets)
                row = conn.execute(statement, {"run_id": event.run_id}).first()
                if row is not None:
                    break
    return None if row is None else _Match(*row)


def _keys(addresses: Collection[str]) -> Iterator[str]:
    """Suppression keys of the usable addresses; redacted or malformed ones are skipped."""
    seen: set[str] = set()
    for address in addresses:
        try:
            key = suppressions.normalise(address)
        except ValidationError:
            logs.event(log, "feedback_unusable_address")  # may be redacted; never logged itself
            continue
        if key not in seen:
            seen.add(key)
            yield key


def _reason(label: str, detail: str | None) -> str:
    return short(f"{label}: {detail}" if detail else label) or label
