"""SES feedback: parse SES events, apply them to deliveries and suppressions, serve the webhook.

An event is recorded in `feedback_events` in the same transaction as its effects; with an SNS
MessageId it is recorded at most once, so an SNS retry changes nothing. Events find their
delivery by the provider message id, else by the `run_id` tag SES echoes back; an event that
matches nothing is kept as an orphan, and still suppresses the addresses it names.

Effects: Delivery -> `delivered` (and resets the address's transient bounce streak);
permanent Bounce -> `bounced` + suppression; transient (or undetermined) Bounce -> `bounced`,
and `transient_limit` in a row suppress; Complaint -> `complained` + suppression + the
matched user unsubscribed; Reject -> `rejected`; DeliveryDelay -> `deferred`; Send -> none.
A status never moves backwards: a late Delivery does not undo a Complaint.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import Connection, Engine, text
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from digest import recipients, sns, suppressions, untrusted
from digest.config import Settings
from digest.db import atomic
from digest.errors import ValidationError
from digest.models import DeliveryStatus
from digest.schema import FEEDBACK_EVENT_TYPES

log = logging.getLogger(__name__)

TRANSIENT_LIMIT = 3
SOURCE: Final = "ses"
WEBHOOK_PATH: Final = "/webhooks/ses"
MAX_BODY_BYTES = 256 * 1024  # SNS messages are at most 256 KB
MAX_REASON = 500  # as suppressions.MAX_LABEL
TOPICS_ENV: Final = "DIGEST_SNS_TOPICS"
# The per-type object each event carries, by type.
DETAIL_KEYS: Final[Mapping[str, str]] = {
    "Bounce": "bounce",
    "Complaint": "complaint",
    "Delivery": "delivery",
    "Reject": "reject",
    "DeliveryDelay": "deliveryDelay",
    "Send": "send",
}
STATUS_BY_TYPE: Final[Mapping[str, DeliveryStatus]] = {
    "Bounce": DeliveryStatus.BOUNCED,
    "Complaint": DeliveryStatus.COMPLAINED,
    "Delivery": DeliveryStatus.DELIVERED,
    "Reject": DeliveryStatus.REJECTED,
    "DeliveryDelay": DeliveryStatus.DEFERRED,
}

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
# Locked so that two events for one delivery apply one after the other.
DELIVERY_FIND_BY_PROVIDER_ID = text(
    """
    SELECT id, run_id, user_id, recipient
      FROM deliveries
     WHERE provider_message_id = :provider_message_id
     ORDER BY id DESC
     LIMIT 1
       FOR UPDATE
    """
)
# The tag fallback only takes a delivery that has no provider id of its own: one with
# another id is another send of the run, and this event is not about it.
DELIVERY_FIND_BY_RUN = text(
    """
    SELECT id, run_id, user_id, recipient
      FROM deliveries
     WHERE run_id = :run_id AND provider_message_id IS NULL
     ORDER BY id DESC
     LIMIT 1
       FOR UPDATE
    """
)
# Statuses only move forward: sent/unknown < deferred < delivered < bounced/rejected <
# complained. Worker outcomes (failed, suppressed) are never overwritten.
DELIVERY_SET_FEEDBACK_STATUS = text(
    """
    UPDATE deliveries
       SET status = CAST(:status AS text),
           reason = COALESCE(CAST(:reason AS text), reason),
           updated_at = now()
     WHERE id = :id
       AND (CASE status WHEN 'sent' THEN 0 WHEN 'unknown' THEN 0 WHEN 'deferred' THEN 1
                        WHEN 'delivered' THEN 2 WHEN 'bounced' THEN 3 WHEN 'rejected' THEN 3
                        WHEN 'complained' THEN 4 ELSE 99 END)
         < (CASE CAST(:status AS text) WHEN 'deferred' THEN 1 WHEN 'delivered' THEN 2
                        WHEN 'bounced' THEN 3 WHEN 'rejected' THEN 3 WHEN 'complained' THEN 4
                        ELSE -1 END)
    RETURNING id
    """
)
BOUNCE_STREAK_BUMP = text(
    """
    INSERT INTO bounce_streaks (email, count) VALUES (:email, 1)
    ON CONFLICT (email) DO UPDATE
       SET count = bounce_streaks.count + 1, updated_at = now()
    RETURNING count
    """
)
BOUNCE_STREAK_RESET = text("DELETE FROM bounce_streaks WHERE email = ANY(:emails)")


class FeedbackError(ValidationError):
    """A document that is not an SES event (or an SNS envelope holding one)."""


@dataclass(frozen=True)
class SesEvent:
    """What ingestion needs from one SES event, in either shape."""

    event_type: str
    provider_message_id: str | None
    run_id: int | None
    recipients: tuple[str, ...]  # the addresses this event is about
    bounce_type: str | None
    reason: str | None
    raw: Mapping[str, Any]


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
    run_id: int
    user_id: str
    recipient: str


def unwrap(document: Any) -> tuple[Mapping[str, Any], str | None]:
    """The SES event in `document` (an SNS Notification or a bare event) and its MessageId."""
    if not isinstance(document, Mapping):
        raise FeedbackError("expected a JSON object")
    if "Type" in document and "Message" in document:
        if document["Type"] != "Notification":
            raise FeedbackError(f"SNS message of Type {document['Type']!r} is not a Notification")
        message_id = document.get("MessageId")
        if not isinstance(message_id, str) or not message_id:
            raise FeedbackError("SNS Notification has no MessageId")
        body = document["Message"]
        if not isinstance(body, str):
            raise FeedbackError("SNS Message must be a string holding the SES event")
        try:
            event = untrusted.loads(body, max_bytes=MAX_BODY_BYTES)
        except untrusted.JsonError as exc:
            raise FeedbackError(f"SNS Message: {exc}") from None
        if not isinstance(event, Mapping):
            raise FeedbackError("SNS Message must hold a JSON object")
        return event, message_id
    return document, None


def parse_event(event: Mapping[str, Any]) -> SesEvent:
    """An SES event (`eventType` or `notificationType`), checked; FeedbackError if not one."""
    try:
        untrusted.check(event)  # what the database could not store (NUL, lone surrogates, ...)
    except untrusted.JsonError as exc:
        raise FeedbackError(str(exc)) from None
    kind = event.get("eventType", event.get("notificationType"))
    if kind not in FEEDBACK_EVENT_TYPES:
        raise FeedbackError(
            f"eventType/notificationType must be one of {', '.join(FEEDBACK_EVENT_TYPES)}, "
            f"got {kind!r}"
        )
    mail = event.get("mail")
    if not isinstance(mail, Mapping):
        raise FeedbackError(f"{kind} event has no mail object")
    message_id = mail.get("messageId")
    if message_id is not None and not isinstance(message_id, str):
        raise FeedbackError("mail.messageId must be a string")
    detail = event.get(DETAIL_KEYS[kind], {})
    if not isinstance(detail, Mapping):
        raise FeedbackError(f"{DETAIL_KEYS[kind]} must be an object")
    recipients, bounce_type, reason = _details(kind, detail, mail)
    return SesEvent(
        event_type=kind,
        provider_message_id=message_id or None,
        run_id=_run_tag(mail.get("tags")),
        recipients=recipients,
        bounce_type=bounce_type,
        reason=_short(reason),
        raw=event,
    )


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
                "sns_message_id": message_id,
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
            log.info("feedback_replay sns_message_id=%s", message_id)
            return IngestResult(event.event_type, None)
        result = _apply(conn, event, match, transient_limit)
    log.info(
        "feedback event_type=%s delivery_id=%s orphan=%s status=%s suppressed=%d",
        event.event_type,
        match.id if match else None,
        match is None,
        result.status,
        len(result.suppressed),
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
            {"id": match.id, "status": STATUS_BY_TYPE[kind], "reason": event.reason},
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
            count = conn.execute(BOUNCE_STREAK_BUMP, {"email": address}).scalar_one()
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
        row = conn.execute(
            DELIVERY_FIND_BY_PROVIDER_ID, {"provider_message_id": event.provider_message_id}
        ).first()
    if row is None and event.run_id is not None:
        row = conn.execute(DELIVERY_FIND_BY_RUN, {"run_id": event.run_id}).first()
    return None if row is None else _Match(*row)


def _details(
    kind: str, detail: Mapping[str, Any], mail: Mapping[str, Any]
) -> tuple[tuple[str, ...], str | None, str | None]:
    """(addresses, bounce type, reason) from the event's per-type object."""
    if kind == "Bounce":
        bounce_type = detail.get("bounceType")
        if bounce_type not in ("Permanent", "Transient", "Undetermined"):
            raise FeedbackError(
                f"bounce.bounceType must be Permanent, Transient or "
                f"Undetermined, got {bounce_type!r}"
            )
        people = _list(detail, "bouncedRecipients")
        addresses = tuple(_address(p, "bouncedRecipients") for p in people)
        diagnostics = [p.get("diagnosticCode") for p in people]
        diagnostic = next((d for d in diagnostics if isinstance(d, str) and d), None)
        sub_type = detail.get("bounceSubType")
        reason = diagnostic or f"{bounce_type}/{sub_type or 'General'}"
        return addresses, bounce_type, reason
    if kind == "Complaint":
        people = _list(detail, "complainedRecipients")
        addresses = tuple(_address(p, "complainedRecipients") for p in people)
        feedback_type = detail.get("complaintFeedbackType")
        return addresses, None, feedback_type if isinstance(feedback_type, str) else "abuse"
    if kind == "Delivery":
        found = _list(detail, "recipients")
        if not all(isinstance(a, str) for a in found):
            raise FeedbackError("delivery.recipients must be a list of addresses")
        smtp = detail.get("smtpResponse")
        return tuple(found), None, smtp if isinstance(smtp, str) else None
    if kind == "Reject":
        why = detail.get("reason")
        return _destination(mail), None, why if isinstance(why, str) else "rejected"
    if kind == "DeliveryDelay":
        people = _list(detail, "delayedRecipients")
        addresses = tuple(_address(p, "delayedRecipients") for p in people)
        delay = detail.get("delayType")
        return addresses, None, delay if isinstance(delay, str) else None
    return _destination(mail), None, None


def _list(detail: Mapping[str, Any], key: str) -> list[Any]:
    value = detail.get(key, [])
    if not isinstance(value, list):
        raise FeedbackError(f"{key} must be a list")
    return value


def _address(person: Any, key: str) -> str:
    if not isinstance(person, Mapping) or not isinstance(person.get("emailAddress"), str):
        raise FeedbackError(f"each of {key} must be an object with an emailAddress")
    address: str = person["emailAddress"]
    return address


def _destination(mail: Mapping[str, Any]) -> tuple[str, ...]:
    found = mail.get("destination", [])
    if not isinstance(found, list) or not all(isinstance(a, str) for a in found):
        raise FeedbackError("mail.destination must be a list of addresses")
    return tuple(found)


def _run_tag(tags: Any) -> int | None:
    """The `run_id` tag: SES sends tag values as lists of strings."""
    if not isinstance(tags, Mapping):
        return None
    value = tags.get("run_id")
    if isinstance(value, list):
        value = value[0] if value else None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 19:
        return int(value)
    return None


def _keys(addresses: Collection[str]) -> Iterator[str]:
    """Suppression keys of the usable addresses; redacted or malformed ones are skipped."""
    seen: set[str] = set()
    for address in addresses:
        try:
            key = suppressions.normalise(address)
        except ValidationError:
            log.info("feedback_unusable_address")  # may be redacted; never logged itself
            continue
        if key not in seen:
            seen.add(key)
            yield key


def _reason(label: str, detail: str | None) -> str:
    return _short(f"{label}: {detail}" if detail else label) or label


def _short(value: str | None) -> str | None:
    if value is None:
        return None
    cleaned = " ".join(value.split())
    return cleaned[: MAX_REASON - 1] + "…" if len(cleaned) > MAX_REASON else cleaned


# ---------------------------------------------------------------------------- webhook


def ses_webhook_route(
    engine: Engine,
    settings: Settings,
    *,
    topics: Collection[str] | None = None,
    fetch: sns.Fetch = sns.fetch_https,
    confirm: Callable[[str], object] | None = None,
    transient_limit: int | None = None,
) -> Route:
    """`POST /webhooks/ses`: SNS-signed SES feedback, and SNS subscription confirmations.

    Anything unsigned, mis-signed, off-pattern or for another topic gets a 403 and changes
    nothing. `fetch` gets signing certificates; `confirm` visits a SubscribeURL (both
    https-only urllib by default, injectable for tests).
    """
    allowed = frozenset(topics) if topics is not None else settings.sns_topics
    if not allowed:
        log.warning("ses_webhook no SNS topics allowed (%s): every message is refused", TOPICS_ENV)
    limit = settings.transient_bounce_limit if transient_limit is None else transient_limit
    visit = confirm or sns.fetch_https
    cache: sns.KeyCache = {}

    async def endpoint(request: Request) -> Response:
        body = await request.body()  # at most MAX_BODY_BYTES: the route answers 413 beyond
        try:
            envelope = untrusted.loads(body, max_bytes=MAX_BODY_BYTES)
        except untrusted.NotJsonError:  # not an SNS message, like anything unsigned
            return PlainTextResponse("forbidden\n", status_code=403)
        except untrusted.JsonError as exc:  # JSON that would crash us or the database
            log.warning("ses_webhook unusable body: %s", exc)
            return PlainTextResponse(f"{exc}\n", status_code=400)
        try:
            await run_in_threadpool(sns.verify, envelope, topics=allowed, fetch=fetch, cache=cache)
        except sns.SnsError as exc:
            log.warning("ses_webhook refused: %s", exc.reason)
            return PlainTextResponse("forbidden\n", status_code=403)
        kind = envelope["Type"]
        if kind == "SubscriptionConfirmation":
            url = envelope["SubscribeURL"]
            if not sns.is_sns_url(url):
                log.warning("ses_webhook refused: SubscribeURL is not an SNS URL")
                return PlainTextResponse("forbidden\n", status_code=403)
            try:
                await run_in_threadpool(visit, url)
            except Exception as exc:  # SNS sends the confirmation again; say why it failed
                log.warning("ses_webhook subscription not confirmed: %s", exc)
                return PlainTextResponse("could not confirm\n", status_code=502)
            log.info("ses_webhook subscription confirmed topic=%s", envelope["TopicArn"])
            return PlainTextResponse("confirmed\n")
        if kind != "Notification":
            log.info("ses_webhook %s topic=%s", kind, envelope["TopicArn"])
            return PlainTextResponse("ok\n")
        try:
            result = await run_in_threadpool(
                ingest,
                engine,
                envelope,
                sns_message_id=envelope["MessageId"],
                transient_limit=limit,
            )
        except FeedbackError as exc:
            log.warning("ses_webhook unusable notification: %s", exc)
            return PlainTextResponse(f"{exc}\n", status_code=400)
        return PlainTextResponse("replay\n" if result.replay else "ok\n")

    return Route(WEBHOOK_PATH, endpoint, methods=["POST"], max_body_size=MAX_BODY_BYTES)
