"""The pure grouping rules (`digest.grouping`): what leads a digest, what folds into one
line, and how actors without a name are kept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from digest.grouping import build_digest
from digest.models import Event, FoldedLikes

NOW = datetime(2026, 3, 3, 7, 0, tzinfo=UTC)


def event(
    n: int, category: str, entity: str, actor: str | None = "a1", name: Any = "Ana", age: int = 0
) -> Event:
    """Event `n` on post `entity`, `age` minutes old, by `actor` named `name`."""
    payload = {"title": f"Post {entity}"} if name is None else {"title": "t", "actor_name": name}
    return Event(n, category, "post", entity, actor, payload, NOW - timedelta(minutes=age))


def test_mentions_and_comments_lead_and_likes_come_last() -> None:
    """Rank is by category first (mention, comment, any other, like), then by size and
    recency: a like with many events no longer pushes a mention down."""
    events = [
        *(event(i, "like", "p1", f"a{i}") for i in range(9)),  # the biggest group
        event(20, "share", "p2"),
        event(21, "comment", "p3"),
        event(22, "comment", "p4", age=5),
        event(23, "comment", "p4", "a2", age=6),
        event(24, "mention", "p5", age=60),
        event(25, "follow", "me"),
    ]
    digest = build_digest(events, 50)
    assert [(g.category, g.entity_id) for g in digest.groups] == [
        ("mention", "p5"),
        ("comment", "p4"),  # two events before one
        ("comment", "p3"),
        ("follow", "me"),  # newer than the share, same rank and size
        ("share", "p2"),
        ("like", "p1"),
    ]


def test_single_likes_fold_into_one_summary() -> None:
    """Two or more likes that are alone on their post become one summary (posts, distinct
    actors, the latest three names), outside the cap; the rest stay rows."""
    events = [
        event(1, "like", "p1", "a1", "Ana", age=1),
        event(2, "like", "p2", "a2", "Ben", age=2),
        event(3, "like", "p3", "a1", "Ana", age=3),
        event(4, "like", "p4", "a3", "Cy", age=4),
        event(5, "like", "p5", "a4", "Dee", age=5),
        event(6, "like", "p6", None, None, age=6),
        event(7, "like", "p7", "a5", "Eve", age=7),
        event(8, "like", "p7", "a6", "Fay", age=8),
        event(9, "comment", "p8"),
    ]
    digest = build_digest(events, 1)
    assert [(g.category, g.entity_id) for g in digest.groups] == [("comment", "p8")]
    assert digest.folded_likes == FoldedLikes(
        posts=6, actor_count=4, actor_names=("Ana", "Ben", "Cy")
    )
    assert (digest.total_groups, digest.total_events, digest.more_groups) == (8, 9, 1)


def test_a_single_like_alone_is_not_folded() -> None:
    """One lone like is its own row: a summary of one post says less than the post does."""
    digest = build_digest([event(1, "like", "p1"), event(2, "comment", "p2")], 50)
    assert digest.folded_likes is None
    assert [g.category for g in digest.groups] == ["comment", "like"]


def test_an_actor_without_a_name_is_never_named_by_its_id() -> None:
    """An actor whose events carry no usable name counts as an actor, named "" (the
    renderer says "someone"), never by the raw actor id."""
    events = [event(1, "comment", "p1", "user-8841", None), event(2, "comment", "p1", "a2", "  ")]
    (group,) = build_digest(events, 50).groups
    assert (group.actor_count, group.actor_names) == (2, ("", ""))
