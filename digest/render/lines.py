"""A digest's groups as one-line sentences, in the text email's words, for the channels
that have no templates (Slack, webhooks).

A sentence is a list of segments, so each channel can mark them up its own way: Slack
bolds the actors and links the title, a webhook joins them into plain text.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

SegmentKind = Literal["actors", "title", "text"]
Segment = tuple[SegmentKind, str]


def sentence_segments(group: Mapping[str, Any]) -> list[Segment]:
    """The sentence of one view-model group, as `templates/partials/*.txt.mustache` word it."""
    actors: Segment = ("actors", group["actor_phrase"])
    title: Segment = ("title", group["title_quoted"])
    if group["is_follow"]:
        return [actors, ("text", " started following you")]
    if group["is_comment"]:
        segments = [actors, ("text", " commented on "), title]
    elif group["is_like"]:
        segments = [actors, ("text", " liked "), title]
    elif group["is_mention"]:
        segments = [actors, ("text", " mentioned you in "), title]
    else:
        segments = [("text", f"{group['category_label']} on "), title]
        if group["has_actors"]:
            segments += [("text", " by "), actors]
    if group["multiple"]:
        segments.append(("text", f" ({group['count_label']})"))
    return segments


def shows_excerpt(group: Mapping[str, Any]) -> bool:
    """Whether the email quotes this group's excerpt (comments, mentions, other categories;
    a like or a follow has nothing to quote)."""
    return bool(group["has_excerpt"]) and not (group["is_like"] or group["is_follow"])


def group_sentence(group: Mapping[str, Any]) -> str:
    """The sentence of one view-model group as plain text."""
    return "".join(text for _, text in sentence_segments(group))


def summary(context: Mapping[str, Any]) -> str:
    """The digest in one line, the email's subject: the top group and how many others."""
    top = context["top"]
    if not top:
        return f"{context['heading']} · {context['period_label']}"
    first = top[0]
    if first["is_follow"]:
        line = f"{first['actor_phrase']} started following you"
    elif first["is_generic"]:
        line = f"{first['category_label']} on {first['subject_title']}"
    else:
        verb = {"is_comment": "commented on", "is_like": "liked", "is_mention": "mentioned you in"}
        word = next(v for k, v in verb.items() if first[k])
        line = f"{first['actor_phrase']} {word} {first['subject_title']}"
    if context["has_others"]:
        line += f" and {context['others_count']} more {context['others_noun']}"
    return line
