"""What Slack and webhooks carry: Block Kit within Slack's limits and the webhook JSON, both
built from the view model the email renders, so every channel says the same thing."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from digest.channels.slack_blocks import (
    HEADER_LIMIT,
    MAX_BLOCKS,
    SECTION_TEXT_LIMIT,
    SlackMessage,
    slack_message,
    validate_destination,
)
from digest.channels.webhook_payload import (
    digest_payload,
    validate_url,
    webhook_id,
    webhook_message,
)
from digest.errors import ValidationError
from digest.models import DigestContent, DigestRequest, Group, Recipient
from digest.render import Renderer
from digest.render.lines import group_sentence, summary
from digest.render.view import digest_context

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
NOW = datetime(2026, 3, 3, 7, 0, tzinfo=UTC)
RECIPIENT = Recipient("u1", "ana@example.com", "Ana", "daily", "Europe/Lisbon", "en")
BASE = "https://app.example.com"
UNSUBSCRIBE = f"{BASE}/u/TOKEN"
CATEGORIES = ("comment", "like", "mention", "follow", "shared_album")


def group(
    category: str = "comment",
    index: int = 0,
    *,
    count: int = 1,
    names: tuple[str, ...] = ("Ana",),
    payload: Mapping[str, Any] | None = None,
) -> Group:
    """A group about entity `index`, with a title, a link and an excerpt by default."""
    return Group(
        category=category,
        entity_type="post",
        entity_id=str(index),
        event_count=count,
        actor_count=len(names),
        actor_names=names,
        latest_at=NOW - timedelta(minutes=index),
        last_event_id=10_000 - index,
        payload={
            "title": f"Trip photos {index}",
            "url": f"https://example.com/p/{index}?a=1&b=2",
            "excerpt": "Lovely!",
        }
        if payload is None
        else payload,
    )


def request(*groups: Group, more: int = 0, events: int | None = None) -> DigestRequest:
    """A daily digest of `groups` (plus `more` the cap left out) for Ana."""
    content = DigestContent(
        groups=tuple(groups),
        total_groups=len(groups) + more,
        total_events=events if events is not None else sum(g.event_count for g in groups),
    )
    return DigestRequest(RECIPIENT, content, "daily", NOW, BASE, UNSUBSCRIBE)


def section_texts(message: SlackMessage) -> list[str]:
    return [b["text"]["text"] for b in message.blocks if b["type"] == "section"]


def every_text(blocks: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every text object's text in `blocks`, wherever it sits."""
    found: list[str] = []

    def walk(value: object) -> None:
        if isinstance(value, Mapping):
            if value.get("type") in ("mrkdwn", "plain_text"):
                found.append(value["text"])
            for item in value.values():
                walk(item)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)

    walk(list(blocks))
    return found


# -- the sentences every channel shares ----------------------------------------------------


def test_sentences_are_the_text_emails_own_lines() -> None:
    """Each group's sentence is the line the text email shows for it, for every category."""
    req = request(*(group(c, i, count=2) for i, c in enumerate(CATEGORIES)))
    text = Renderer(TEMPLATES).render(req).text
    context = digest_context(req)
    for g in context["groups"]:
        assert f"* {group_sentence(g)}\n" in text


def test_summary_is_the_subject() -> None:
    """The one-line summary (Slack's notification text, the webhook's `summary`) is the
    email's subject, with groups or without."""
    renderer = Renderer(TEMPLATES)
    for req in (request(group("like", 0), group("comment", 1)), request(group("follow"))):
        assert summary(digest_context(req)) == renderer.render(req).subject
    empty = request()
    assert summary(digest_context(empty)) == renderer.render(empty).subject


# -- Slack -----------------------------------------------------------------------------------


def test_slack_digest_reads_like_the_email() -> None:
    """Header, period, one section per group with its link and excerpt, and the footer links."""
    req = request(group("comment", 0, count=3, names=("Ana", "Ben")), group("like", 1))
    message = slack_message(7, "C0123ABCD", digest_context(req))
    assert (message.run_id, message.destination) == (7, "C0123ABCD")
    assert message.text == "Ana and Ben commented on “Trip photos 0” and 1 more update"
    header = message.blocks[0]
    assert header == {
        "type": "header",
        "text": {"type": "plain_text", "text": "Your daily digest"},
    }
    sections = section_texts(message)
    assert (
        "*Ana and Ben* commented on <https://example.com/p/0?a=1&amp;b=2|“Trip photos 0”>"
        " (3 comments)\n>Lovely!" in sections
    )
    assert "*Ana* liked <https://example.com/p/1?a=1&amp;b=2|“Trip photos 1”>" in sections
    follow = slack_message(7, "C1", digest_context(request(group("follow", 2))))
    assert "*Ana* started following you · <https://example.com/p/2?a=1&amp;b=2|View>" in (
        section_texts(follow)
    )
    everything = "\n".join(every_text(message.blocks))
    assert "Tuesday, 3 March 2026" in everything
    assert f"<{BASE}/activity|See all activity>" in everything
    assert f"<{UNSUBSCRIBE}|" in everything
    json.dumps(list(message.blocks))  # plain JSON, ready for chat.postMessage


def test_slack_escapes_user_text_and_never_expands_mentions() -> None:
    """`<`, `>` and `&` from events are escaped, so `<!channel>` or a forged link stays text;
    every mrkdwn object is verbatim, so "@here" in a title pings no one."""
    hostile = group(
        "comment",
        payload={
            "title": "<!channel> & <https://evil.example|click> @here",
            "url": "https://example.com/p/1",
            "excerpt": "<@U123> hi",
        },
        names=("<!here>",),
    )
    message = slack_message(1, "C1", digest_context(request(hostile)))
    texts = every_text(message.blocks)
    joined = "\n".join(texts)
    assert "<!channel>" not in joined
    assert "<!here>" not in joined
    assert "<@U123>" not in joined
    assert "&lt;!channel&gt; &amp; &lt;https://evil.example|click&gt; @here" in joined
    assert "<!channel>" not in message.text
    for block in message.blocks:
        for obj in _mrkdwn_objects(block):
            assert obj.get("verbatim") is True


def _mrkdwn_objects(value: object) -> list[Mapping[str, Any]]:
    if isinstance(value, Mapping):
        own = [value] if value.get("type") == "mrkdwn" else []
        return own + [o for v in value.values() for o in _mrkdwn_objects(v)]
    if isinstance(value, list | tuple):
        return [o for v in value for o in _mrkdwn_objects(v)]
    return []


def test_slack_digest_of_ten_thousand_events_stays_within_slacks_limits() -> None:
    """10,000 events in 400 groups, every title, name, excerpt and URL as long as the view
    model allows and all made of characters that escaping lengthens: at most 50 blocks,
    sections of at most 3,000 characters, a header of at most 150, and "and N more" for
    every group not shown."""
    amp = "&" * 300
    groups = [
        group(
            CATEGORIES[i % len(CATEGORIES)],
            i,
            count=25,
            names=tuple(f"<{amp}{i}-{n}>" for n in range(4)),
            payload={
                "title": f"{amp}{i}",
                "url": "https://example.com/" + "a&b" * 680,
                "excerpt": "<&>" * 200,
            },
        )
        for i in range(400)
    ]
    req = request(*groups, more=600, events=10_000)
    message = slack_message(1, "C1", digest_context(req))
    assert len(message.blocks) <= MAX_BLOCKS
    assert len(message.blocks) == MAX_BLOCKS  # the budget is used, not wasted
    for text in section_texts(message):
        assert 0 < len(text) <= SECTION_TEXT_LIMIT
    for block in message.blocks:
        if block["type"] == "header":
            assert len(block["text"]["text"]) <= HEADER_LIMIT
        if block["type"] == "context":
            assert len(block["elements"]) <= 10
    shown = sum(1 for b in message.blocks if b.get("block_id", "").startswith("group-"))
    more = 1000 - shown
    assert any(f"…and *{more} more updates*" in t for t in section_texts(message))
    assert len(message.text) <= 3000


_TEXT = st.text(st.characters(codec="utf-8"), max_size=400) | st.sampled_from(["&", "<>", "@here"])


@settings(max_examples=30, deadline=None)
@given(
    titles=st.lists(_TEXT, min_size=0, max_size=60),
    names=st.lists(_TEXT, max_size=6),
    excerpt=_TEXT,
    url=st.sampled_from(["https://e.com/" + "&" * 2000, "https://e.com/a?b=1&c=2", "x"]),
)
def test_slack_limits_hold_whatever_the_events_hold(
    titles: list[str], names: list[str], excerpt: str, url: str
) -> None:
    """Random titles, names, excerpts and links: the blocks always build (slack_sdk checks
    its limits), stay within 50 blocks and 3,000-character sections, and never let `<`
    from an event through."""
    groups = [
        group(
            CATEGORIES[i % len(CATEGORIES)],
            i,
            names=tuple(names),
            payload={"title": title, "url": url, "excerpt": excerpt},
        )
        for i, title in enumerate(titles)
    ]
    message = slack_message(1, "C1", digest_context(request(*groups)))
    assert len(message.blocks) <= MAX_BLOCKS
    for text in section_texts(message):
        assert len(text) <= SECTION_TEXT_LIMIT
        links = re.findall(r"<[^<>]*>", text)
        assert "<" not in re.sub(r"<[^<>]*>", "", text), text
        assert all(link.startswith("<https://") for link in links)


def test_slack_sections_keep_whole_entities_when_cut() -> None:
    """A section too long even without its excerpt and link (100 named actors of 40 `&`
    each) is cut to 3,000 characters, never inside an escape like `&amp;`."""
    names = tuple("&" * 39 + str(i % 10) for i in range(100))
    long = group("comment", names=names)
    message = slack_message(1, "C1", digest_context(request(long)))
    (text,) = [t for t in section_texts(message) if t.startswith("*&amp;")]
    assert SECTION_TEXT_LIMIT - len("&amp;") <= len(text) <= SECTION_TEXT_LIMIT
    assert text.endswith("…")
    assert re.search(r"&[a-z]*$", text[:-1]) is None  # no entity cut in two


def test_slack_digest_without_groups_says_so() -> None:
    """An empty digest (never sent by the worker, but previewable) still makes a message."""
    message = slack_message(1, "U0123", digest_context(request()))
    assert any("Nothing new this time" in t for t in every_text(message.blocks))
    assert message.text == "Your daily digest · Tuesday, 3 March 2026"


@pytest.mark.parametrize("destination", ["C0123ABCD", "U0123", "D9", "#ops-alerts", "G1_x.y"])
def test_slack_destinations_accepted(destination: str) -> None:
    """Channel, user and DM ids and channel names are destinations."""
    assert validate_destination(destination) == destination


@pytest.mark.parametrize("destination", ["", " C1", "C1\n", "#" + "a" * 81, "C1,C2", "ä"])
def test_slack_destinations_refused(destination: str) -> None:
    """Anything else is refused before a request is made."""
    with pytest.raises(ValidationError, match="Slack destination"):
        validate_destination(destination)


# -- webhooks --------------------------------------------------------------------------------

FROZEN = datetime(2026, 3, 3, 7, 0, 5, 123456, tzinfo=UTC)


def payload_of(req: DigestRequest, run_id: int = 42) -> dict[str, Any]:
    message = webhook_message(
        run_id, "https://hooks.example.com/digest", digest_payload(req, run_id, FROZEN)
    )
    parsed: dict[str, Any] = json.loads(message.body)
    return parsed


def test_webhook_payload_is_the_structured_digest() -> None:
    """type, timestamp and data: kind, recipient, period, counts, each group with its counts,
    actors, title and link, the summary, and the links the email carries."""
    req = request(
        group("comment", 7, count=4, names=("Ana", "Ben")),
        group("follow", 8, names=("Cy",), payload={}),
        more=3,
        events=12,
    )
    payload = payload_of(req)
    assert payload["type"] == "notification.digest"
    assert payload["timestamp"] == "2026-03-03T07:00:05.123456Z"
    data = payload["data"]
    assert {k: data[k] for k in ("version", "kind", "run_id", "recipient", "period")} == {
        "version": 1,
        "kind": "digest",
        "run_id": 42,
        "recipient": {"user_id": "u1"},
        "period": {
            "cadence": "daily",
            "start": "2026-03-03T07:00:00Z",
            "label": "Tuesday, 3 March 2026",
        },
    }
    assert data["summary"] == "Ana and Ben commented on “Trip photos 7” and 4 more updates"
    assert data["counts"] == {"events": 12, "groups": 5, "groups_not_listed": 3}
    assert data["groups"][0] == {
        "category": "comment",
        "entity": {"type": "post", "id": "7"},
        "events": 4,
        "actors": {"count": 2, "names": ["Ana", "Ben"]},
        "title": "Trip photos 7",
        "url": "https://example.com/p/7?a=1&b=2",
        "excerpt": "Lovely!",
        "latest_at": "2026-03-03T06:53:00Z",
        "text": "Ana and Ben commented on “Trip photos 7” (4 comments)",
    }
    follow = data["groups"][1]
    assert (follow["title"], follow["url"], follow["excerpt"]) == (None, None, None)
    assert follow["text"] == "Cy started following you"
    assert data["links"] == {"activity": f"{BASE}/activity", "preferences": UNSUBSCRIBE}


def test_webhook_payload_keeps_only_safe_values() -> None:
    """Event text arrives cleaned as in the email (one line, bounded), and a link that is not
    http(s) is left out rather than passed on."""
    hostile = group(
        "comment",
        payload={"title": "a\r\nb\x00c" + "x" * 500, "url": "javascript:alert(1)", "text": 5},
        names=("\x1b[31mEve",),
    )
    (g,) = payload_of(request(hostile))["data"]["groups"]
    assert g["title"].startswith("a b c")
    assert len(g["title"]) <= 140
    assert g["url"] is None
    assert g["excerpt"] == "5"
    assert g["actors"]["names"] == ["[31mEve"]


def test_webhook_id_is_the_same_on_every_retry_and_differs_by_run_and_channel() -> None:
    """The id is the receiver's idempotency key: a function of run and channel only, with no
    full stop (the signed content is id.timestamp.body)."""
    assert webhook_id(42) == webhook_id(42, "webhook") == "digest_42_webhook"
    assert len({webhook_id(42), webhook_id(43), webhook_id(42, "ops-hook")}) == 3
    req = request(group("comment"))
    first = webhook_message(42, "https://h.example/x", digest_payload(req, 42, FROZEN))
    again = webhook_message(42, "https://h.example/x", digest_payload(req, 42, FROZEN))
    assert first == again  # same id, same body bytes: a retry sends the same webhook
    assert first.webhook_id == "digest_42_webhook"
    with pytest.raises(ValueError, match="channel"):
        webhook_id(1, "a.b")


@pytest.mark.parametrize(
    "url",
    ["https://hooks.example.com/digest?x=1", "http://127.0.0.1:8080/hook", "http://localhost/h"],
)
def test_webhook_urls_accepted(url: str) -> None:
    """https anywhere, plain http to this machine."""
    assert validate_url(url) == url


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example.com/digest",
        "ftp://127.0.0.1/x",
        "https://user:pw@hooks.example.com/",
        "https://hooks.example.com/a b",
        "https://hooks.example.com/\n",
        "https:///nohost",
        "https://h.example/" + "a" * 2048,
    ],
)
def test_webhook_urls_refused(url: str) -> None:
    """Plain http elsewhere (the body is readable on the way), credentials, spaces, control
    characters and overlong URLs are refused before a request is made."""
    with pytest.raises(ValidationError, match=r"^webhook URL"):
        validate_url(url)
