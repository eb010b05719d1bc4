"""A digest's items as one-line sentences for the channels that have no templates (Slack,
webhooks), laid out as `templates/partials/*.txt.mustache` lay them out.

No words live here: every word is the view model's (`digest.render.view`), in the
recipient's language: each item's sentence cut around its slots, its actors, its title and
its count. This module only says which of those pieces a line shows, as segments, so each
channel can mark them up its own way: Slack bolds the actors and links the title, a webhook
joins them into plain text.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

SegmentKind = Literal["actors", "title", "text"]
Segment = tuple[SegmentKind, str]


def sentence_segments(item: Mapping[str, Any]) -> list[Segment]:
    """The line of one view-model group, or of the folded likes (no title, no count): the
    sentence with its actors and title in their slots, then the count as the text email
    shows it ("(3 comments)"; never for a follow, whose count is its actors)."""
    segments: list[Segment] = []
    if item["lead"]:
        segments.append(("text", item["lead"]))
    if item.get("show_actor", True):
        segments.append(("actors", item["actor_phrase"]))
    if item["middle"]:
        segments.append(("text", item["middle"]))
    if item.get("show_title", False):
        segments.append(("title", item["title_quoted"]))
    if item["tail"]:
        segments.append(("text", item["tail"]))
    if item.get("multiple") and not item.get("is_follow"):
        segments.append(("text", f" ({item['count_label']})"))
    return segments


def shows_excerpt(group: Mapping[str, Any]) -> bool:
    """Whether the email quotes this group's excerpt (comments, mentions, other categories;
    a like or a follow has nothing to quote)."""
    return bool(group["has_excerpt"]) and not (group["is_like"] or group["is_follow"])


def line(item: Mapping[str, Any]) -> str:
    """The line of one view-model group (or of the folded likes) as plain text."""
    return "".join(text for _, text in sentence_segments(item))
