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
from digest.models import DigestContent, DigestRequest, FoldedLikes, Group, Recipient
from digest.render import Renderer
from digest.render.lines import line

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
NOW = datetime(2026, 3, 3, 7, 0, tzinfo=UTC)
RECIPIENT = Recipient("u1", "ana@example.com", "Ana", "daily", "Europe/Lisbon", "en")
BASE = "https://app.example.com"
UNSUBSCRIBE = f"{BASE}/u/TOKEN"
CATEGORIES = ("comment", "like", "mention", "follow", "shared_album")
RENDERER = Renderer(TEMPLATES)


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


def request(
    *groups: Group,
    more: int = 0,
    events: int | None = None,
    folded: FoldedLikes | None = None,
    recipient: Recipient = RECIPIENT,
) -> DigestRequest:
    """A daily digest of `groups` (plus `more` the cap left out, and `folded` likes) for
    Ana, or for `recipient`."""
    posts = folded.posts if folded else 0
    content = DigestContent(
        groups=tuple(groups),
        total_groups=len(groups) + more + posts,
        total_events=events if events is not None else sum(g.event_count for g in groups) + posts,
        folded_likes=folded,
    )
    return DigestRequest(recipient, content, "daily", NOW, BASE, UNSUBSCRIBE)


def view(req: DigestRequest) -> dict[str, Any]:
    """The view model the email renders `req` from, its subject included."""
    return RENDERER.context(req)


def slack(req: DigestRequest, destination: str = "C1") -> SlackMessage:
    """The Slack message of `req` to `destination`."""
    return slack_message(1, destination, view(req))


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
    """Each group's line, and the folded likes' line, is the line the text email shows for
    it, for every category: the view model's own sentence, not a copy of its words."""
    folded = FoldedLikes(posts=7, actor_count=7, actor_names=("Cy", "Di"))
    req = request(*(group(c, i, count=2) for i, c in enumerate(CATEGORIES)), folded=folded)
    text = RENDERER.render(req).text
    context = view(req)
    for item in (*context["groups"], *context["folded"]):
        assert f"* {line(item)}\n" in text
    assert "* Ana shared “Trip photos 4” (2 updates)\n" in text  # any category, a sentence
    assert "* Cy, Di and 5 others liked 7 of your posts\n" in text


def test_slack_text_and_webhook_summary_are_the_subject() -> None:
    """Slack's notification text and the webhook's `summary` are the email's subject, with
    groups, with only folded likes, or with nothing."""
    folded = FoldedLikes(posts=2, actor_count=2, actor_names=("Cy", "Di"))
    for req in (
        request(group("like", 0), group("comment", 1)),
        request(group("follow")),
        request(folded=folded),
        request(),
    ):
        subject = RENDERER.render(req).subject
        assert slack(req).text == subject
        assert digest_payload(req, view(req), 1, NOW)["data"]["summary"] == subject


# -- Slack -----------------------------------------------------------------------------------


def test_slack_digest_reads_like_the_email() -> None:
    """Header, period, one section per group with its link and excerpt, and the footer links."""
    req = request(group("comment", 0, count=3, names=("Ana", "Ben")), group("like", 1))
    message = slack_message(7, "C0123ABCD", view(req))
    assert (message.run_id, message.destination) == (7, "C0123ABCD")
    assert message.text == "Ana and Ben commented on “Trip photos 0”, plus 1 more update"
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
    follow = slack(request(group("follow", 2)))
    assert "*Ana* started following you · <https://example.com/p/2?a=1&amp;b=2|View profile>" in (
        section_texts(follow)
    )
    everything = "\n".join(every_text(message.blocks))
    assert "Hi Ana,\nHere’s what happened while you were away." in everything
    assert "Tuesday, March 3, 2026" in everything
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
    message = slack(request(hostile))
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
    message = slack(req)
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
    assert any(f"|…and {more} more updates>" in t for t in section_texts(message))
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
    message = slack(request(*groups))
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
    message = slack(request(long))
    (text,) = [t for t in section_texts(message) if t.startswith("*&amp;")]
    assert SECTION_TEXT_LIMIT - len("&amp;") <= len(text) <= SECTION_TEXT_LIMIT
    assert text.endswith("…")
    assert re.search(r"&[a-z]*$", text[:-1]) is None  # no entity cut in two


def test_slack_digest_without_groups_says_so() -> None:
    """An empty digest (never sent by the worker, but previewable) still makes a message."""
    message = slack(request(), "U0123")
    assert any("Nothing new this time" in t for t in every_text(message.blocks))
    assert message.text == "Your daily digest · Tuesday, March 3, 2026"


GERMAN = Recipient("u2", "max@example.com", "Max Mustermann", "daily", "Europe/Berlin", "de")


def test_a_german_recipients_slack_digest_is_in_german() -> None:
    """Locale de: the Slack digest says what the German email says, in German: heading,
    greeting, intro and link labels, each group's sentence with German verbs and quotes,
    the folded likes, "…und N weitere", the date, and the subject as notification text."""
    req = request(
        group("mention", 0, names=("Cy",)),
        group("comment", 1, count=3, names=("Ana", "Ben")),
        group("follow", 2, names=("Di",)),
        more=2,
        folded=FoldedLikes(posts=3, actor_count=2, actor_names=("Eva", "Flo")),
        recipient=GERMAN,
    )
    message = slack(req)
    assert message.text == RENDERER.render(req).subject
    assert message.text == "Cy hat dich in „Trip photos 0“ erwähnt, dazu 7 weitere Neuigkeiten"
    assert message.blocks[0]["text"]["text"] == "Deine tägliche Zusammenfassung"
    sections = section_texts(message)
    assert "*Cy* hat dich in <https://example.com/p/0?a=1&amp;b=2|„Trip photos 0“> erwähnt" in (
        "\n".join(sections)
    )
    assert (
        "*Ana und Ben* haben <https://example.com/p/1?a=1&amp;b=2|„Trip photos 1“> kommentiert"
        " (3 Kommentare)\n>Lovely!" in sections
    )
    assert "*Di* folgt dir jetzt · <https://example.com/p/2?a=1&amp;b=2|Profil ansehen>" in (
        sections
    )
    assert "*Eva und Flo* haben 3 deiner Beiträge mit „Gefällt mir“ markiert" in sections
    assert f"<{BASE}/activity|…und 2 weitere Neuigkeiten>" in sections
    everything = "\n".join(every_text(message.blocks))
    assert "Hallo Max,\nDas ist passiert, während du weg warst." in everything
    assert f"<{BASE}/activity|Alle Aktivitäten ansehen>" in everything
    assert "Dienstag, 3. März 2026" in everything
    assert f"<{UNSUBSCRIBE}|Einstellungen verwalten / abbestellen>" in everything
    for english in ("Hi ", "happened", "See all", "more update", " and ", "liked", "March"):
        assert english not in everything
        assert english not in message.text


def test_slack_shows_folded_likes_and_never_an_id_for_a_name() -> None:
    """The one-like rows arrive folded into the email's summary line, and an actor without
    a name is "Someone", as in the email; a folded line does not cost a group its place."""
    folded = FoldedLikes(posts=5, actor_count=5, actor_names=("Cy",))
    nameless = group("comment", 0, names=("",))
    message = slack(request(nameless, folded=folded))
    sections = section_texts(message)
    assert sections[1].startswith("*Someone* commented on <https://example.com/p/0")
    assert sections[2] == "*Cy and 4 others* liked 5 of your posts"
    many = [group("comment", i) for i in range(60)]
    full = slack(request(*many, folded=folded))
    assert len(full.blocks) == MAX_BLOCKS
    assert any(b.get("block_id") == "folded" for b in full.blocks)
    shown = sum(1 for b in full.blocks if b.get("block_id", "").startswith("group-"))
    assert any(f"|…and {60 - shown} more updates>" in t for t in section_texts(full))


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
        run_id, "https://hooks.example.com/digest", digest_payload(req, view(req), run_id, FROZEN)
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
            "label": "Tuesday, March 3, 2026",
        },
    }
    assert data["language"] == "en"
    assert data["summary"] == "Ana and Ben commented on “Trip photos 7”, plus 4 more updates"
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
    assert data["folded_likes"] is None
    assert data["links"] == {"activity": f"{BASE}/activity", "preferences": UNSUBSCRIBE}


def test_webhook_payload_carries_folded_likes_and_the_recipients_language() -> None:
    """The folded likes come as their own field (posts, actors, the email's line), and every
    text a person reads is in the recipient's language, named by `language`."""
    req = request(
        group("comment", 1, count=2, names=("Ana", "Ben")),
        folded=FoldedLikes(posts=3, actor_count=2, actor_names=("Eva", "Flo")),
        recipient=GERMAN,
    )
    data = payload_of(req)["data"]
    assert data["language"] == "de"
    assert data["period"]["label"] == "Dienstag, 3. März 2026"
    assert data["summary"] == RENDERER.render(req).subject
    assert (
        data["groups"][0]["text"] == "Ana und Ben haben „Trip photos 1“ kommentiert (2 Kommentare)"
    )
    assert data["folded_likes"] == {
        "posts": 3,
        "actors": {"count": 2, "names": ["Eva", "Flo"]},
        "text": "Eva und Flo haben 3 deiner Beiträge mit „Gefällt mir“ markiert",
    }
    assert data["counts"] == {"events": 5, "groups": 4, "groups_not_listed": 0}


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
    first = webhook_message(42, "https://h.example/x", digest_payload(req, view(req), 42, FROZEN))
    again = webhook_message(42, "https://h.example/x", digest_payload(req, view(req), 42, FROZEN))
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
