"""Webhook messages: the structured content of a digest as JSON (README, "Channels: Slack
and webhooks", has the schema), with the Standard Webhooks id that stays the same on every
retry.

The raw identifiers and counts come from the run's groups; the text a person reads
(`summary`, each group's `text`, the folded likes' `text`, `period.label`) is the email's,
from the same view model, in the recipient's language (`language`).

Pure: no network, no database. The body is built once from the run's frozen content, so a
retry sends the same bytes under the same `webhook-id`; only the timestamp and signature,
made by the sender at each attempt, change. One function per kind (`BUILDERS`): the digest
today; alerts (rule and counts) and reports add theirs beside it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from digest.errors import ValidationError
from digest.models import DigestRequest, FoldedLikes, Group
from digest.render.lines import line
from digest.render.text import URL_LIMIT, clean_text, safe_url
from digest.render.view import EXCERPT_LIMIT, NAME_LIMIT, TITLE_LIMIT
from digest.urls import endpoint_problem

SCHEMA_VERSION = 1
CHANNEL = "webhook"
_CHANNEL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_URL_FORBIDDEN = re.compile(r"[\x00-\x20\x7f-\x9f]")


@dataclass(frozen=True)
class WebhookMessage:
    """One webhook: where it goes, its idempotency key and the exact body bytes to sign."""

    run_id: int
    url: str
    webhook_id: str
    body: bytes


def webhook_id(run_id: int, channel: str = CHANNEL) -> str:
    """The `webhook-id` of `run_id` on `channel`: the receiver's idempotency key, the same on
    every retry. No full stop: the signed content is `id.timestamp.body`."""
    if not _CHANNEL_NAME.fullmatch(channel):
        raise ValueError(f"channel name {channel!r} must match {_CHANNEL_NAME.pattern}")
    return f"digest_{run_id}_{channel}"


def validate_url(url: str) -> str:
    """`url` if a webhook may be sent to it: https, or plain http to this machine only."""
    if len(url) > URL_LIMIT or _URL_FORBIDDEN.search(url):
        problem: str | None = "longer than 2,048 characters, or has spaces or control characters"
    else:
        problem = endpoint_problem(url)
    if problem:
        # Not repeated: a webhook URL often carries a secret in its path or query.
        raise ValidationError(f"webhook URL refused: {problem}")
    return url


def webhook_message(
    run_id: int, url: str, payload: Mapping[str, Any], channel: str = CHANNEL
) -> WebhookMessage:
    """The webhook carrying `payload` for `run_id` to `url`."""
    return WebhookMessage(
        run_id=run_id,
        url=validate_url(url),
        webhook_id=webhook_id(run_id, channel),
        body=orjson.dumps(payload),
    )


def digest_payload(
    request: DigestRequest, context: Mapping[str, Any], run_id: int, frozen_at: datetime
) -> dict[str, Any]:
    """A digest as Standard Webhooks' recommended envelope: type, timestamp (when its content
    was frozen) and data. `context` is the request's view model as `Renderer.context` makes
    it (the email's subject included): it gives the words, the request the ids and counts."""
    content = request.content
    groups = [
        _group(group, view) for group, view in zip(content.groups, context["groups"], strict=True)
    ]
    folded = None
    if content.folded_likes is not None:
        (view,) = context["folded"]
        folded = _folded(content.folded_likes, view)
    return {
        "type": "notification.digest",
        "timestamp": _iso(frozen_at),
        "data": {
            "version": SCHEMA_VERSION,
            "kind": "digest",
            "run_id": run_id,
            "recipient": {"user_id": request.recipient.user_id},
            "language": context["lang"],
            "period": {
                "cadence": request.cadence,
                "start": _iso(request.period_start),
                "label": context["period_label"],
            },
            "summary": context["subject"],
            "counts": {
                "events": content.total_events,
                "groups": content.total_groups,
                "groups_not_listed": max(content.more_groups, 0),
            },
            "groups": groups,
            "folded_likes": folded,
            "links": {
                "activity": context["activity_url"],
                "preferences": context["unsubscribe_url"],
            },
        },
    }


BUILDERS: Mapping[
    str, Callable[[DigestRequest, Mapping[str, Any], int, datetime], dict[str, Any]]
] = {
    "digest": digest_payload,
}


def _names(names: tuple[str, ...]) -> list[str]:
    return [n for n in (clean_text(name, NAME_LIMIT) for name in names) if n]


def _group(group: Group, view: Mapping[str, Any]) -> dict[str, Any]:
    """One group: the raw identifiers and counts, text cleaned as the email cleans it."""
    payload: Mapping[str, Any] = group.payload if isinstance(group.payload, Mapping) else {}
    excerpt = clean_text(payload.get("excerpt"), EXCERPT_LIMIT) or clean_text(
        payload.get("text"), EXCERPT_LIMIT
    )
    return {
        "category": group.category,
        "entity": {"type": group.entity_type, "id": group.entity_id},
        "events": group.event_count,
        "actors": {"count": group.actor_count, "names": _names(group.actor_names)},
        "title": clean_text(payload.get("title"), TITLE_LIMIT) or None,
        "url": safe_url(payload.get("url")),
        "excerpt": excerpt or None,
        "latest_at": _iso(group.latest_at),
        "text": line(view),
    }


def _folded(folded: FoldedLikes, view: Mapping[str, Any]) -> dict[str, Any]:
    """The single likes folded into one line: how many posts, by whom, and the line."""
    return {
        "posts": folded.posts,
        "actors": {"count": folded.actor_count, "names": _names(folded.actor_names)},
        "text": line(view),
    }


def _iso(moment: datetime) -> str:
    """RFC 3339 in UTC with a Z; a naive time is taken as UTC, as the database stores it."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
