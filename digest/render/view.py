"""The view model: a digest as the plain strings, numbers, flags and lists the templates
render (`digest_context`), built from the digest's groups, its recipient's words
(`digest.render.locale`) and the product's branding.

Payload keys used: `title`, `url` (absolute http/https only), `excerpt` (else `text`);
actor names come from grouping (`actor_name`, "" for an actor without one). Anything else
in a payload is ignored, and values that are not strings or numbers count as missing.

Each group says what happened as a sentence of the recipient's language cut around its
slots (`lead`, the actors, `middle`, the title, `tail`: see `locale.Sentence`), so the
templates put the actors and the linked title where the language wants them without
building HTML from text.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from digest.models import DigestRequest, FoldedLikes, Group, RunCadence
from digest.render.locale import Catalog
from digest.render.text import clean_text, safe_url, truncate

KNOWN_CATEGORIES = ("comment", "like", "mention", "follow")
TITLE_LIMIT = 140
SUBJECT_TITLE_LIMIT = 50
EXCERPT_LIMIT = 280
NAME_LIMIT = 40
_HEADINGS: Mapping[str, str] = {
    RunCadence.DAILY: "heading_daily",
    RunCadence.WEEKLY: "heading_weekly",
}
_REASONS: Mapping[str, str] = {
    RunCadence.DAILY: "reason_daily",
    RunCadence.WEEKLY: "reason_weekly",
}


def actor_phrase(
    names: tuple[str, ...], actor_count: int, catalog: Catalog, *, first: bool = True
) -> str:
    """'Ana', 'Ana and Ben', 'Ana, Ben and Cy' or 'Ana, Ben and 7 others'; an actor without
    a name is counted, never named; no actor at all is 'Someone' ('someone' when not
    `first` in its sentence). Names are cut only between words."""
    shown = [n for n in (clean_text(n, NAME_LIMIT, whole_words=True) for n in names) if n]
    total = max(actor_count, len(shown))
    if not shown:
        if total <= 1:
            return catalog.someone_first if first else catalog.someone
        return catalog.phrase("people", total)
    separator = catalog.separator
    if total > len(shown):  # unnamed actors: name at most two, count the rest
        shown = shown[:2]
        others = total - len(shown)
        return catalog.phrase("names_and_others", others).replace("{names}", separator.join(shown))
    if len(shown) == 1:
        return shown[0]
    return f"{separator.join(shown[:-1])}{catalog.last}{shown[-1]}"


def first_name(name: object) -> str:
    """The first word of a recipient's name ("Maximilian" of "Maximilian Alexander Kurz"),
    or "" when there is no name."""
    words = clean_text(name, NAME_LIMIT * 4).split(" ", 1)
    return clean_text(words[0], NAME_LIMIT)


def digest_context(
    request: DigestRequest, catalog: Catalog, brand: Mapping[str, Any]
) -> dict[str, Any]:
    """The view model every template renders from: plain strings, numbers, flags and lists
    (and the catalog, under `catalog`, which no template shows)."""
    recipient, content, cadence, period_start, base_url, unsubscribe_url = request
    groups = [_group_context(g, catalog) for g in content.groups]
    folded = [_folded_context(content.folded_likes, catalog)] if content.folded_likes else []
    more = max(content.more_groups, 0)
    top = (groups or folded)[:1]
    others = max(content.total_groups - 1, 0) if groups else max(content.more_groups, 0)
    period_label = _period_label(cadence, period_start, recipient.timezone, catalog)
    name = first_name(recipient.name)
    activity_url = f"{base_url.rstrip('/')}/activity"
    email = clean_text(recipient.email, 254)
    subject_top = ""
    if top:
        subject_top = top[0]["sentence"].text(top[0]["actor_phrase"], top[0]["subject_title"])
        if others:
            subject_top = catalog.phrase("subject_more", others).replace("{sentence}", subject_top)
    return {
        **brand,
        "catalog": catalog,
        "t": catalog.strings,
        "lang": catalog.language,
        "heading": catalog.phrase(_HEADINGS.get(cadence, "heading_other")),
        "period_label": period_label,
        "greeting": catalog.phrase("greeting").replace("{name}", name)
        if name
        else catalog.phrase("greeting_nameless"),
        "email": email,
        "reason": catalog.phrase(_REASONS.get(cadence, "reason_other")).replace("{email}", email),
        "preheader": catalog.phrase("preheader").replace("{period}", period_label),
        "groups": groups,
        "has_groups": bool(groups or folded),
        "folded": folded,
        "top": top,
        "subject_top": subject_top,
        "has_more": more > 0,
        "more": more,
        "more_label": catalog.phrase("more_updates", more) if more else "",
        "more_url": activity_url,
        "activity_url": activity_url,
        "unsubscribe_url": unsubscribe_url,
        "total_events": content.total_events,
    }


def with_more(ctx: dict[str, Any], more: int) -> dict[str, Any]:
    """`ctx` saying "…and `more` more updates" (what fitting sizes the tail with)."""
    label = ctx["catalog"].phrase("more_updates", more)
    return {**ctx, "has_more": more > 0, "more": more, "more_label": label}


def _group_context(group: Group, catalog: Catalog) -> dict[str, Any]:
    """One ranked group as the partials see it; every key always present."""
    payload: Mapping[str, Any] = group.payload if isinstance(group.payload, Mapping) else {}
    category = group.category if group.category in KNOWN_CATEGORIES else "generic"
    real_title = clean_text(payload.get("title"), TITLE_LIMIT)
    title = real_title or catalog.untitled(_thing(group.entity_type))
    subject_title = truncate(real_title, SUBJECT_TITLE_LIMIT)
    excerpt = clean_text(payload.get("excerpt"), EXCERPT_LIMIT) or clean_text(
        payload.get("text"), EXCERPT_LIMIT
    )
    url = safe_url(payload.get("url"))
    count = group.event_count
    nobody = group.actor_count == 0 and not any(group.actor_names)
    label = _category_words(group.category)
    sentence = catalog.sentence(group.category, label, max(group.actor_count, 1), nobody)
    quote = catalog.quote
    return {
        "is_comment": category == "comment",
        "is_like": category == "like",
        "is_mention": category == "mention",
        "is_follow": category == "follow",
        "is_generic": category == "generic",
        "sentence": sentence,
        "lead": sentence.lead,
        "middle": sentence.middle,
        "tail": sentence.tail,
        "show_actor": sentence.actor,
        "show_title": sentence.title,
        "actor_phrase": actor_phrase(
            group.actor_names, group.actor_count, catalog, first=not sentence.lead
        ),
        "title": title,
        "title_quoted": quote(real_title) if real_title else title,
        "subject_title": quote(subject_title) if subject_title else title,
        "has_excerpt": bool(excerpt),
        "excerpt": excerpt,
        "excerpt_quoted": quote(excerpt),
        "has_url": url is not None,
        "url": url or "",
        "count": count,
        "multiple": count > 1,
        "count_label": catalog.count(group.category, count),
    }


def _folded_context(folded: FoldedLikes, catalog: Catalog) -> dict[str, Any]:
    """The line of single likes: "Ana, Ben and 5 others liked 7 of your posts"."""
    # The verb agrees with the actors (German: "hat" or "haben"); {count} is the posts.
    pattern = catalog.form("folded_likes", max(folded.actor_count, 1))
    sentence = catalog.sentence_of(pattern.replace("{count}", catalog.number(folded.posts)))
    return {
        "sentence": sentence,
        "lead": sentence.lead,
        "middle": sentence.middle,
        "tail": sentence.tail,
        "actor_phrase": actor_phrase(
            folded.actor_names, folded.actor_count, catalog, first=not sentence.lead
        ),
        "subject_title": "",
    }


@lru_cache(maxsize=256)
def _category_words(category: str) -> str:
    """'shared album' for `shared_album`: an unknown category in words."""
    words = clean_text(category.replace("_", " ").replace(".", " "), 40)
    return words.lower() or "activity"


@lru_cache(maxsize=256)
def _thing(entity_type: str) -> str:
    """'post', 'photo album': an entity type in words (the title of an untitled entity)."""
    return clean_text(entity_type.replace("_", " "), 40) or "item"


@lru_cache(maxsize=512)
def _zone(name: str) -> ZoneInfo:
    """The user's zone, or UTC when the name is unknown (a bad zone must not block a digest)."""
    try:
        return ZoneInfo(name)
    except (ValueError, KeyError, OSError):
        return ZoneInfo("UTC")


def _period_label(cadence: str, period_start: datetime, timezone: str, catalog: Catalog) -> str:
    """The period's date in the user's zone and language ("Tuesday, March 3, 2026");
    weekly: "Week ending Tuesday, March 3, 2026"."""
    if period_start.tzinfo is None:
        period_start = period_start.replace(tzinfo=UTC)
    day = catalog.date(period_start.astimezone(_zone(timezone)).date())
    if cadence == RunCadence.WEEKLY:
        return catalog.phrase("period_weekly").replace("{date}", day)
    return day
