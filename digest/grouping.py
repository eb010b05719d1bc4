"""Group and rank a user's events: pure functions, no database.

The worker does the same aggregation in SQL (`digest.content`), so a user with 100,000
events costs one aggregate; a test checks both give the same digest. This module is the
reference for that behaviour, and what the naive benchmark and the property tests use.

Rules:
- a group is one `(category, entity_type, entity_id)`;
- its actors are the distinct non-null `actor_id`s, latest first, named by the
  `actor_name` of that actor's latest event, or "" (unnamed: the email says "someone",
  never the raw id);
- its payload is the payload of its latest event;
- likes alone on their post (one event), when there are two or more, fold into one
  summary (`FoldedLikes`: posts, distinct actors, the latest three actors' names) outside
  the cap;
- the other groups rank by category (`PRIORITY`: mentions, comments, any other category,
  likes), then event count, latest event time and latest event id (descending):
  deterministic, so a retried run renders the same bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from digest.models import DigestContent, Event, FoldedLikes, Group

MAX_ACTOR_NAMES = 3
# Rank of a category in a digest: what someone wrote to or about the user first, likes last
# (`digest.content` has the same CASE). Any category not listed ranks as OTHER.
PRIORITY = {"mention": 0, "comment": 1, "like": 3}
OTHER = 2


def actor_name(payload: Mapping[str, Any]) -> str:
    """The display name of an event's actor: `payload.actor_name` if it is a non-empty
    string, else "" (unnamed).

    A payload that is not a mapping (the database only stores objects, but a caller of the
    pure functions may pass anything) has no name in it.
    """
    name = payload.get("actor_name") if isinstance(payload, Mapping) else None
    if isinstance(name, str) and name.strip():
        return name
    return ""


def group_events(events: Iterable[Event]) -> list[Group]:
    """Collapse events into one `Group` per entity and category (unranked)."""
    buckets: dict[tuple[str, str, str], list[Event]] = {}
    for event in events:
        buckets.setdefault((event.category, event.entity_type, event.entity_id), []).append(event)
    groups = []
    for (category, entity_type, entity_id), members in buckets.items():
        members.sort(key=lambda e: (e.created_at, e.id), reverse=True)
        latest_by_actor: dict[str, Event] = {}
        for event in members:  # newest first: the first event seen per actor is its latest
            if event.actor_id is not None and event.actor_id not in latest_by_actor:
                latest_by_actor[event.actor_id] = event
        names = [actor_name(e.payload) for e in list(latest_by_actor.values())[:MAX_ACTOR_NAMES]]
        newest = members[0]
        groups.append(
            Group(
                category=category,
                entity_type=entity_type,
                entity_id=entity_id,
                event_count=len(members),
                actor_count=len(latest_by_actor),
                actor_names=tuple(names),
                latest_at=newest.created_at,
                last_event_id=newest.id,
                payload=newest.payload,
            )
        )
    return groups


def rank(groups: Iterable[Group]) -> list[Group]:
    """By category (`PRIORITY`), then most events, most recent, highest event id."""
    return sorted(
        groups,
        key=lambda g: (
            -PRIORITY.get(g.category, OTHER),
            g.event_count,
            g.latest_at,
            g.last_event_id,
        ),
        reverse=True,
    )


def is_single_like(group: Group) -> bool:
    """A like alone on its post: what `build_digest` folds when there are two or more."""
    return group.category == "like" and group.event_count == 1


def build_digest(events: Iterable[Event], cap: int) -> DigestContent:
    """Group, fold the single likes (two or more), rank and keep the top `cap` other groups."""
    events = list(events)
    groups = group_events(events)
    single = [g for g in groups if is_single_like(g)]
    folded = None
    if len(single) >= 2:
        groups = [g for g in groups if not is_single_like(g)]
        folded = _fold(single, events)
    ranked = rank(groups)
    return DigestContent(
        groups=tuple(ranked[:cap]),
        total_groups=len(ranked) + (folded.posts if folded else 0),
        total_events=len(events),
        folded_likes=folded,
    )


def _fold(single: list[Group], events: list[Event]) -> FoldedLikes:
    """The summary of single-like groups: posts, distinct actors, the latest actors' names."""
    actor_of = {e.id: e.actor_id for e in events}  # each group's only event is its last
    names: dict[str, str] = {}
    for group in sorted(single, key=lambda g: (g.latest_at, g.last_event_id), reverse=True):
        actor = actor_of[group.last_event_id]
        if actor is not None and actor not in names:
            names[actor] = group.actor_names[0]
    return FoldedLikes(len(single), len(names), tuple(list(names.values())[:MAX_ACTOR_NAMES]))
