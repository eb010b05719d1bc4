"""Slack messages: Block Kit built with `slack_sdk.models` from the view model the email
renders (`digest.render.renderer.Renderer.context`), within Slack's limits.

Pure: no network, no database. One function per kind of message (`BUILDERS`): the digest
today; alerts and reports add theirs beside it. Every word comes from the view model, in
the recipient's language: the heading, greeting and intro, each group's sentence, the
folded likes, "…and N more updates", the links' labels, and the email's subject as the
notification text. Nothing here is worded in English (or any language) of its own.

Limits (slack_sdk `models/blocks/blocks.py`, which also checks them when a block becomes a
dict): 50 blocks a message, 3,000 characters of section text, 150 of header. A digest
shows as many groups as the blocks left over allow, one section each, and counts the rest
in the "…and N more updates" line linking to the activity page, as the email does past its
cap. Text from events is escaped (`&`, `<`, `>`), and every mrkdwn object is `verbatim`, so
an event cannot ping `@channel`, mention anyone or forge a link.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from slack_sdk.models.blocks import (
    Block,
    ContextBlock,
    DividerBlock,
    HeaderBlock,
    MarkdownTextObject,
    PlainTextObject,
    SectionBlock,
)

from digest.errors import ValidationError
from digest.render.lines import Segment, sentence_segments, shows_excerpt
from digest.render.text import truncate
from digest.render.view import with_more

MAX_BLOCKS = 50
SECTION_TEXT_LIMIT = 3000
HEADER_LIMIT = 150
# The fallback `text` (notifications, clients without blocks); Slack truncates at 40,000.
TEXT_LIMIT = 3000
# header, period, greeting, divider, footer; then the folded likes and "…and N more" when
# the digest has them, and a section per group in what is left (44 at most, 43 with folded
# likes, when some groups have to be counted instead).
_FIXED_BLOCKS = 5
# Channel, user and DM ids (C…, U…, D…, G…) or a channel name (#ops, up to 80 characters).
_DESTINATION = re.compile(r"#?[A-Za-z0-9][A-Za-z0-9._-]{0,79}")


@dataclass(frozen=True)
class SlackMessage:
    """One chat.postMessage: where it goes, the notification text and the blocks as JSON."""

    run_id: int
    destination: str
    text: str
    blocks: tuple[dict[str, Any], ...]


def validate_destination(destination: str) -> str:
    """`destination` if it is a Slack channel, user or DM id or a channel name."""
    if not _DESTINATION.fullmatch(destination):
        raise ValidationError(
            f"Slack destination {destination!r} is not a channel, user or DM id "
            "(C0123ABCD, U0123ABCD, D…) or a #channel-name"
        )
    return destination


def escape(text: str) -> str:
    """`text` safe inside mrkdwn: Slack's three control characters as entities."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_message(
    run_id: int, destination: str, context: Mapping[str, Any], kind: str = "digest"
) -> SlackMessage:
    """The message of `kind` for `context` (the view model, as `Renderer.context` makes it,
    the email's subject included), to `destination`."""
    text, blocks = BUILDERS[kind](context)
    return SlackMessage(
        run_id=run_id,
        destination=validate_destination(destination),
        text=_cut(escape(text), TEXT_LIMIT),
        blocks=tuple(block.to_dict() for block in blocks),  # to_dict checks Slack's limits
    )


def digest_blocks(context: Mapping[str, Any]) -> tuple[str, list[Block]]:
    """A digest: header, period, greeting and intro, a section per group, the folded likes,
    "…and N more", the preferences link; its notification text is the email's subject."""
    t: Mapping[str, str] = context["t"]
    groups: Sequence[Mapping[str, Any]] = context["groups"]
    folded: Sequence[Mapping[str, Any]] = context["folded"]
    room = MAX_BLOCKS - _FIXED_BLOCKS - len(folded)
    shown = groups if len(groups) + bool(context["has_more"]) <= room else groups[: room - 1]
    more = int(context["more"]) + len(groups) - len(shown)
    activity = f"<{escape(context['activity_url'])}|{escape(t['see_all'])}>"
    greeting = escape(context["greeting"])
    if context["has_groups"]:
        intro = f"{greeting}\n{escape(t['intro'])} {activity}"
    else:
        intro = f"{greeting}\n{escape(t['intro_empty'])}"
    blocks: list[Block] = [
        HeaderBlock(text=PlainTextObject(text=truncate(context["heading"], HEADER_LIMIT))),
        ContextBlock(
            elements=[
                _mrkdwn(f"{escape(context['period_label'])} · {escape(context['product_name'])}")
            ]
        ),
        SectionBlock(block_id="intro", text=_mrkdwn(intro)),
    ]
    blocks += [
        SectionBlock(block_id=f"group-{i}", text=_mrkdwn(_group_text(g, t)))
        for i, g in enumerate(shown)
    ]
    blocks += [
        SectionBlock(
            block_id="folded",
            text=_mrkdwn(_cut(_section(sentence_segments(f), None), SECTION_TEXT_LIMIT)),
        )
        for f in folded
    ]
    if more > 0:
        label = with_more(dict(context), more)["more_label"]
        link = f"<{escape(context['more_url'])}|{escape(label)}>"
        blocks.append(SectionBlock(block_id="more", text=_mrkdwn(link)))
    footer = f"<{escape(context['unsubscribe_url'])}|{escape(t['manage'])}>"
    blocks += [DividerBlock(), ContextBlock(elements=[_mrkdwn(footer)])]
    return context["subject"], blocks


BUILDERS: Mapping[str, Callable[[Mapping[str, Any]], tuple[str, list[Block]]]] = {
    "digest": digest_blocks,
}


def _mrkdwn(text: str) -> MarkdownTextObject:
    # verbatim: Slack does not turn "@here", #names or bare URLs in event text into
    # mentions and links; our own <url|text> links still work.
    return MarkdownTextObject(text=text, verbatim=True)


def _group_text(group: Mapping[str, Any], t: Mapping[str, str]) -> str:
    """One group's section: its sentence (actors bold, title linked; a follow's profile
    linked after it, as the email does) and its excerpt quoted, shortened to fit a section:
    without the excerpt, then without the link."""
    segments = sentence_segments(group)
    url = group["url"] if group["has_url"] else None
    profile = t["view_profile"] if group["is_follow"] else None
    excerpt = f"\n>{escape(group['excerpt'])}" if shows_excerpt(group) else ""
    for text in (
        _section(segments, url, profile) + excerpt,
        _section(segments, url, profile),
        _section(segments, None),
    ):
        if len(text) <= SECTION_TEXT_LIMIT:
            return text
    return _cut(_section(segments, None), SECTION_TEXT_LIMIT)


def _section(segments: list[Segment], url: str | None, profile: str | None = None) -> str:
    """`segments` as mrkdwn: actors bold, the title linked to `url`; `profile`, if given,
    is a link to `url` after the sentence."""
    parts = []
    for kind, text in segments:
        if kind == "actors":
            parts.append(f"*{escape(text)}*")
        elif kind == "title" and url:
            parts.append(f"<{escape(url)}|{escape(text)}>")
        else:
            parts.append(escape(text))
    if url and profile:
        parts.append(f" · <{escape(url)}|{escape(profile)}>")
    return "".join(parts)


def _cut(text: str, limit: int) -> str:
    """`text` within `limit` characters, never ending inside an entity or a <link>."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    amp = cut.rfind("&")
    if amp >= 0 and ";" not in cut[amp:]:
        cut = cut[:amp]
    if cut.rfind("<") > cut.rfind(">"):
        cut = cut[: cut.rfind("<")]
    return cut + "…"
