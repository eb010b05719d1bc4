"""The view model: a digest as the plain strings, numbers, flags and lists the templates
render (`digest_context`), built from the digest's groups and its recipient.

Payload keys used: `title`, `url` (absolute http/https only), `excerpt` (else `text`);
actor names come from grouping (`actor_name`). Anything else in a payload is ignored, and
values that are not strings or numbers count as missing.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from digest.models import DigestRequest, Group, RunCadence
from digest.render.text import clean_text, safe_url, truncate

KNOWN_CATEGORIES = ("comment", "like", "mention", "follow")
DEFAULT_PRODUCT_NAME = "Digest"
TITLE_LIMIT = 140
SUBJECT_TITLE_LIMIT = 50
EXCERPT_LIMIT = 280
NAME_LIMIT = 40
_COUNT_NOUNS = {"comment": "comments", "like": "likes", "mention": "mentions", "follow": "follows"}
_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
_HEADINGS: Mapping[str, str] = {
    RunCadence.DAILY: "Your daily digest",
    RunCadence.WEEKLY: "Your weekly digest",
}
_CADENCE_PHRASES: Mapping[str, str] = {
    RunCadence.DAILY: "daily digest",
    RunCadence.WEEKLY: "weekly digest",
}
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def actor_phrase(names: tuple[str, ...], actor_count: int) -> str:
    """'Ana', 'Ana and Ben', 'Ana, Ben and Cy' or 'Ana, Ben and 7 others'."""
    shown = [n for n in (clean_text(n, NAME_LIMIT) for n in names) if n]
    total = max(actor_count, len(shown))
    if not shown:
        if total == 0:
            return "Someone"
        return "1 person" if total == 1 else f"{total} people"
    if total > len(shown):  # unnamed actors: name at most two, count the rest
        shown = shown[:2]
        others = total - len(shown)
        return f"{', '.join(shown)} and {others} {'other' if others == 1 else 'others'}"
    if len(shown) == 1:
        return shown[0]
    return f"{', '.join(shown[:-1])} and {shown[-1]}"


def digest_context(
    request: DigestRequest, product_name: str = DEFAULT_PRODUCT_NAME
) -> dict[str, Any]:
    """The view model every template renders from: plain strings, numbers, flags and lists."""
    recipient, content, cadence, period_start, base_url, unsubscribe_url = request
    groups = [_group_context(g) for g in content.groups]
    more = max(content.more_groups, 0)
    others = max(content.total_groups - 1, 0)
    heading = _HEADINGS.get(cadence, "Your digest")
    period_label = _period_label(cadence, period_start, recipient.timezone)
    greeting = clean_text(recipient.name, NAME_LIMIT) or clean_text(
        recipient.email.rpartition("@")[0] or recipient.email, NAME_LIMIT
    )
    activity_url = f"{base_url.rstrip('/')}/activity"
    return {
        "product_name": clean_text(product_name, 60) or DEFAULT_PRODUCT_NAME,
        "heading": heading,
        "period_label": period_label,
        "cadence_phrase": _CADENCE_PHRASES.get(cadence, "email"),
        "greeting_name": greeting or "there",
        "email": clean_text(recipient.email, 254),
        "preheader": f"Hi {greeting or 'there'}, here’s what you missed — {period_label}.",
        "groups": groups,
        "has_groups": bool(groups),
        "top": groups[:1],
        "has_others": others > 0,
        "others_count": others,
        "others_noun": "update" if others == 1 else "updates",
        "has_more": more > 0,
        "more": more,
        "more_label": f"{more} more {'update' if more == 1 else 'updates'}",
        "more_url": activity_url,
        "activity_url": activity_url,
        "unsubscribe_url": unsubscribe_url,
        "total_events": content.total_events,
    }


def _group_context(group: Group) -> dict[str, Any]:
    """One ranked group as the partials see it; every key always present."""
    payload: Mapping[str, Any] = group.payload if isinstance(group.payload, Mapping) else {}
    category = group.category if group.category in KNOWN_CATEGORIES else "generic"
    real_title = clean_text(payload.get("title"), TITLE_LIMIT)
    title = real_title or _a_thing(group.entity_type)
    subject_title = truncate(real_title, SUBJECT_TITLE_LIMIT)
    excerpt = clean_text(payload.get("excerpt"), EXCERPT_LIMIT) or clean_text(
        payload.get("text"), EXCERPT_LIMIT
    )
    url = safe_url(payload.get("url"))
    count = group.event_count
    noun = _COUNT_NOUNS.get(group.category, "updates")
    return {
        "is_comment": category == "comment",
        "is_like": category == "like",
        "is_mention": category == "mention",
        "is_follow": category == "follow",
        "is_generic": category == "generic",
        "category_label": _category_label(group.category),
        "actor_phrase": actor_phrase(group.actor_names, group.actor_count),
        "has_actors": group.actor_count > 0 or any(group.actor_names),
        "title": title,
        "title_quoted": f"“{real_title}”" if real_title else title,
        "subject_title": f"“{subject_title}”" if subject_title else title,
        "has_excerpt": bool(excerpt),
        "excerpt": excerpt,
        "has_url": url is not None,
        "url": url or "",
        "count": count,
        "multiple": count > 1,
        "count_label": f"{count} {noun}",
    }


@lru_cache(maxsize=256)
def _category_label(category: str) -> str:
    """'Shared post' for `shared_post`: how the generic partial names an unknown category."""
    return clean_text(category.replace("_", " "), 40).capitalize() or "Activity"


@lru_cache(maxsize=256)
def _a_thing(entity_type: str) -> str:
    """'a post', 'an album' — the fallback title of an entity without one."""
    noun = clean_text(entity_type.replace("_", " "), 40) or "item"
    return f"{'an' if noun[0].lower() in 'aeiou' else 'a'} {noun}"


@lru_cache(maxsize=512)
def _zone(name: str) -> ZoneInfo:
    """The user's zone, or UTC when the name is unknown (a bad zone must not block a digest)."""
    try:
        return ZoneInfo(name)
    except (ValueError, KeyError, OSError):
        return ZoneInfo("UTC")


def _period_label(cadence: str, period_start: datetime, timezone: str) -> str:
    """'Tuesday, 3 March 2026' in the user's zone; weekly: 'Week ending Tuesday, 3 March 2026'."""
    if period_start.tzinfo is None:
        period_start = period_start.replace(tzinfo=UTC)
    local = period_start.astimezone(_zone(timezone))
    day = f"{_WEEKDAYS[local.weekday()]}, {local.day} {_MONTHS[local.month - 1]} {local.year}"
    return f"Week ending {day}" if cadence == RunCadence.WEEKLY else day
