"""SES events, parsed: an SNS Notification envelope or a bare event (either the `eventType`
or the older `notificationType` shape), checked and reduced to what ingestion needs. Pure:
no database (`digest.feedback.apply` records and applies them)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from digest import untrusted
from digest.buckets import BUCKETS
from digest.channels.email.mime import parse_message_id
from digest.errors import ValidationError
from digest.models import FEEDBACK_EVENT_TYPES

MAX_BODY_BYTES = 256 * 1024  # SNS messages are at most 256 KB
MAX_REASON = 500  # as suppressions.MAX_LABEL
# The per-type object each event carries, by type.
DETAIL_KEYS: Final[Mapping[str, str]] = {
    "Bounce": "bounce",
    "Complaint": "complaint",
    "Delivery": "delivery",
    "Reject": "reject",
    "DeliveryDelay": "deliveryDelay",
    "Send": "send",
}


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
    bucket: int | None = None  # the run's, from our tags or our Message-ID


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
    run_id, bucket = _run_of(mail)
    return SesEvent(
        event_type=kind,
        provider_message_id=message_id or None,
        run_id=run_id,
        recipients=recipients,
        bounce_type=bounce_type,
        reason=short(reason),
        raw=event,
        bucket=bucket,
    )


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


def _run_of(mail: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """(run id, bucket) of the message: from our tags, else from our Message-ID in its
    headers (mail sent before the bucket tag has a run id and no bucket)."""
    run_id, bucket = _tag(mail, "run_id", 19), _tag(mail, "bucket", 5)
    if run_id is not None and bucket is not None and bucket < BUCKETS:
        return run_id, bucket
    for value in _message_ids(mail):
        found = parse_message_id(value)
        if found is not None:
            return found
    return run_id, None


def _tag(mail: Mapping[str, Any], name: str, digits: int) -> int | None:
    """A number tag: SES sends tag values as lists of strings."""
    tags = mail.get("tags")
    if not isinstance(tags, Mapping):
        return None
    value = tags.get(name)
    if isinstance(value, list):
        value = value[0] if value else None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < digits:
        return int(value)
    return None


def _message_ids(mail: Mapping[str, Any]) -> Iterator[str]:
    """The Message-ID header values SES quotes (`commonHeaders`, else `headers`)."""
    common = mail.get("commonHeaders")
    if isinstance(common, Mapping) and isinstance(common.get("messageId"), str):
        yield common["messageId"]
    headers = mail.get("headers")
    if isinstance(headers, list):
        for header in headers:
            if (
                isinstance(header, Mapping)
                and isinstance(header.get("name"), str)
                and header["name"].lower() == "message-id"
                and isinstance(header.get("value"), str)
            ):
                yield header["value"]


def short(value: str | None) -> str | None:
    """`value` on one line, cut to MAX_REASON characters."""
    if value is None:
        return None
    cleaned = " ".join(value.split())
    return cleaned[: MAX_REASON - 1] + "…" if len(cleaned) > MAX_REASON else cleaned
