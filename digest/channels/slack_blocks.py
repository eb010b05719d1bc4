"""Slack messages: Block Kit built with `slack_sdk.models` from the view model the email
renders (`digest.render.view.digest_context`), within Slack's limits.

Pure: no network, no database. One function per kind of message (`BUILDERS`): the digest
today; alerts and reports add theirs beside it.

Limits (slack_sdk `models/blocks/blocks.py`, which also checks them when a block becomes a
dict): 50 blocks a message, 3,000 characters of section text, 150 of header. A digest
shows at most `MAX_GROUP_SECTIONS` groups, one section each, and counts the rest in an
"…and N more updates" line linking to the activity page, as the email does past its cap.
Text from events is escaped (`&`, `<`, `>`), and every mrkdwn object is `verbatim`, so an
event cannot ping `@channel`, mention anyone or forge a link.
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
from digest.render.lines import Segment, sentence_segments, shows_excerpt, summary
from digest.render.text import truncate

MAX_BLOCKS = 50
SECTION_TEXT_LIMIT = 3000
HEADER_LIMIT = 150
# The fallback `text` (notifications, clients without blocks); Slack truncates at 40,000.
TEXT_LIMIT = 3000
# header, period, greeting, "…and N more", divider, footer
_FIXED_BLOCKS = 6
MAX_GROUP_SECTIONS = MAX_BLOCKS - _FIXED_BLOCKS
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
    """The message of `kind` for `context` (the view model), to `destination`."""
    text, blocks = BUILDERS[kind](context)
    return SlackMessage(
        run_id=run_id,
        destination=validate_destination(destination),
        text=_cut(escape(text), TEXT_LIMIT),
        blocks=tuple(block.to_dict() for block in blocks),  # to_dict checks Slack's limits
    )


def digest_blocks(context: Mapping[str, Any]) -> tuple[str, list[Block]]:
    """A digest: header, period, greeting, a section per group, "…and N more", footer."""
    groups: Sequence[Mapping[str, Any]] = context["groups"]
    shown = groups[:MAX_GROUP_SECTIONS]
    more = int(context["more"]) + len(groups) - len(shown)
    greeting = escape(context["greeting_name"])
    if shown:
        intro = f"Hi {greeting}, here’s what happened while you were away:"
    else:
        intro = f"Hi {greeting},\nNothing new this time. We’ll write when something happens."
    blocks: list[Block] = [
        HeaderBlock(text=PlainTextObject(text=truncate(context["heading"], HEADER_LIMIT))),
        ContextBlock(
            elements=[
                _mrkdwn(f"{escape(context['period_label'])} · {escape(context['product_name'])}")
            ]
        ),
        SectionBlock(text=_mrkdwn(intro)),
    ]
    blocks += [
        SectionBlock(block_id=f"group-{i}", text=_mrkdwn(_group_text(g)))
        for i, g in enumerate(shown)
    ]
    activity = f"<{escape(context['activity_url'])}|See all activity>"
    if more > 0:
        noun = "update" if more == 1 else "updates"
        blocks.append(
            SectionBlock(block_id="more", text=_mrkdwn(f"…and *{more} more {noun}*. {activity}"))
        )
    footer = (
        f"{'' if more > 0 else activity + ' · '}You’re receiving this "
        f"{escape(context['cadence_phrase'])} because of your notification settings. "
        f"<{escape(context['unsubscribe_url'])}|Manage preferences / unsubscribe>"
    )
    blocks += [DividerBlock(), ContextBlock(elements=[_mrkdwn(footer)])]
    return summary(context), blocks


BUILDERS: Mapping[str, Callable[[Mapping[str, Any]], tuple[str, list[Block]]]] = {
    "digest": digest_blocks,
}


def _mrkdwn(text: str) -> MarkdownTextObject:
    # verbatim: Slack does not turn "@here", #names or bare URLs in event text into
    # mentions and links; our own <url|text> links still work.
    return MarkdownTextObject(text=text, verbatim=True)


def _group_text(group: Mapping[str, Any]) -> str:
    """One group's section: its sentence (actors bold, title linked) and its excerpt quoted,
    shortened to fit a section: without the excerpt, then without the link."""
    segments = sentence_segments(group)
    url = group["url"] if group["has_url"] else None
    excerpt = f"\n>{escape(group['excerpt'])}" if shows_excerpt(group) else ""
    for text in (
        _sentence(segments, url) + excerpt,
        _sentence(segments, url),
        _sentence(segments, None),
    ):
        if len(text) <= SECTION_TEXT_LIMIT:
            return text
    return _cut(_sentence(segments, None), SECTION_TEXT_LIMIT)


def _sentence(segments: list[Segment], url: str | None) -> str:
    parts = []
    for kind, text in segments:
        if kind == "actors":
            parts.append(f"*{escape(text)}*")
        elif kind == "title" and url:
            parts.append(f"<{escape(url)}|{escape(text)}>")
        else:
            parts.append(escape(text))
    if url and not any(kind == "title" for kind, _ in segments):  # a follow: link after it
        parts.append(f" · <{escape(url)}|View>")
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
