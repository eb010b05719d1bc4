"""Group and rank a user's events: pure functions, no database.

The worker does the same aggregation in SQL (`digest.content`), so a user with 100,000
events costs one aggregate; a test checks both give the same digest. This module is the
reference for that behaviour, and what the naive benchmark and the property tests use.

Rules:
- a group is one `(category, entity_type, entity_id)`;
- its actors are the distinct non-null `actor_id`s, latest first, named by the
  `actor_name` of that actor's latest event (falling back to the actor id);
- its payload is the payload of its latest event;
- groups rank by event count, then by latest event time, then by latest event id (all
  descending): deterministic, so a retried run renders the same bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from digest.models import DigestContent, Event, Group

MAX_ACTOR_NAMES = 3


def actor_name(actor_id: str | None, payload: Mapping[str, Any]) -> str | None:
    """The display name of an event's actor: `payload.actor_name` if it is a non-empty string.

    A payload that is not a mapping (the database only stores objects, but a caller of the
    pure functions may pass anything) has no name in it.
    """
    name = payload.get("actor_name") if isinstance(payload, Mapping) else None
    if isinstance(name, str) and name.strip():
        return name
    return actor_id


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
        names = [
            actor_name(e.actor_id, e.payload) or ""
            for e in list(latest_by_actor.values())[:MAX_ACTOR_NAMES]
        ]
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
    """Most events first, then most recent, then highest event id."""
    return sorted(groups, key=lambda g: (g.event_count, g.latest_at, g.last_event_id), reverse=True)


def build_digest(events: Iterable[Event], cap: int) -> DigestContent:
    """Group, rank and keep the top `cap` groups."""
    events = list(events)
    ranked = rank(group_events(events))
    return DigestContent(
        groups=tuple(ranked[:cap]), total_groups=len(ranked), total_events=len(events)
    )
