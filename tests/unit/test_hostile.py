"""The hostile-input corpus (issue 5): any events and payloads give a safe, valid digest.

Strategies here generate what a careless or malicious producer can put into an event:
ids and names in any script (RTL, bidi overrides, zero-width and combining characters,
emoji sequences, flags), HTML and attribute break-outs, Mustache syntax, URLs with
dangerous schemes, CR/LF and every other Unicode line break, 5,000-character values,
payloads that are not objects, nulls, booleans, huge and non-finite numbers, deep nesting.
The properties, for all of them:

- `build_digest` + `Renderer.render` never raise (there is no "clear error" case: every
  digest renders; non-scalar payload values count as missing);
- the HTML has exactly the template's structure: the same sequence of tags and attribute
  names as the same view model with every string replaced by a harmless one, so no user
  text adds a tag (`<script>`), an attribute (`onmouseover=`) or breaks out of one;
- every `href` is an absolute http(s) URL (`javascript:`, `data:`, `vbscript:`,
  protocol-relative and malformed URLs are dropped); every other attribute value is one
  the templates themselves write;
- user text is HTML-escaped in the HTML (`&lt;`, `&quot;`, `&amp;`) and verbatim in the
  text part; Mustache syntax in payloads comes out literally (inert);
- the subject is one line; in the built message no CR/LF or other line break reaches a
  header, the header set is exactly the expected one, the parts decode to what was rendered;
- `clean_text` truncation is sensible (see `test_truncation_is_sensible`);
- with the cap at its default, the whole message stays under Gmail's 102 KB clipping size,
  whatever the payloads (`test_worst_case_digest_stays_under_gmail_clipping`).
"""

from __future__ import annotations

import email
import email.policy
import re
import unicodedata
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from digest.channels.email.mime import NAME_LIMIT as HEADER_NAME_LIMIT
from digest.channels.email.mime import (
    SUBJECT_LIMIT,
    build_message,
    idempotency_key,
    make_message_id,
)
from digest.config import Settings
from digest.grouping import OTHER, PRIORITY, build_digest
from digest.models import (
    DigestContent,
    DigestRequest,
    Event,
    FoldedLikes,
    Group,
    Recipient,
    RenderedDigest,
)
from digest.render import Renderer
from digest.render.fit import BODY_BUDGET, _size_bound, sent_size
from digest.render.text import URL_LIMIT, clean_text, safe_url
from digest.render.view import EXCERPT_LIMIT, NAME_LIMIT, SUBJECT_TITLE_LIMIT, TITLE_LIMIT

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
RENDERER = Renderer(TEMPLATES)
CAP = Settings.from_env({}).group_cap  # the default cap
NOW = datetime(2026, 3, 3, 7, 0, tzinfo=UTC)
KW: dict[str, Any] = {
    "cadence": "daily",
    "period_start": NOW,
    "base_url": "https://app.example.com",
    "unsubscribe_url": "https://app.example.com/u/NDI.abcdefghijklmnopqrstuvwxyz0123456789",
}
# Gmail clips a message over 102 KB; counted in (smaller) decimal kilobytes to be safe.
GMAIL_CLIP = 102_000
HEADERS = {
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "Auto-Submitted",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "X-Digest-Idempotency-Key",
    "MIME-Version",
    "Content-Type",
}
# Every character Python's str.splitlines() breaks on: none may reach a one-line value.
LINE_BREAKS = re.compile("[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")

# --- the corpus ----------------------------------------------------------------------------

MARKUP = [
    "<script>alert(1)</script>",
    "<SCRIPT SRC=//evil.example/x.js></SCRIPT>",
    "</p></td></tr></table><script>alert(1)</script>",
    '" onmouseover="alert(1)',
    "' onclick='alert(1)' x='",
    '"><img src=x onerror=alert(1)>',
    "<svg/onload=alert(1)>",
    '<a href="javascript:alert(1)">click</a>',
    "<style>*{display:none}</style>",
    '<base href="https://evil.example/">',
    "<!-- comment -->",
    "<![CDATA[x]]>",
    "&amp;",
    "&lt;b&gt;",
    "&#60;script&#62;",
    "&#x3C;script",
    "&quot;",
    "Tom & Jerry <3",
    "a < b > c",
]
MUSTACHE = [
    "{{#x}}{{/x}}",
    "{{{html}}}",
    "{{> partial}}",
    "{{> comment}}",
    "{{subject}}",
    "{{unsubscribe_url}}",
    "{{#groups}}{{title}}{{/groups}}",
    "{{^has_url}}no{{/has_url}}",
    "{{=<% %>=}}<% title %>",
    "{{&title}}",
    "{{! hidden }}",
    "{{",
    "}}",
    "{{.}}",
]
URLS = [
    "javascript:alert(1)",
    " JaVaScRiPt:alert(1)",
    "javascript://evil.example/%0Aalert(1)",
    "JAVASCRIPT://evil.example/\nalert(1)",
    "data://evil.example/text/html",
    "vbscript://evil.example/msgbox",
    "ftp://example.com/x",
    "java\tscript:alert(1)",
    "javascript&colon;alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
    "vbscript:msgbox(1)",
    "//evil.example/x",
    "/relative",
    "https:evil.example",
    "https://",
    "https:///x",
    'https://evil.example/" onmouseover="alert(1)',
    "https://evil.example/'><script>alert(1)</script>",
    "https://good.example@evil.example/",
    "https://evil.example\\@good.example/",
    "https://example.com/\r\nSet-Cookie: x=1",
    "https://example.com/%0d%0aSet-Cookie:x=1",
    "https://example.com/\u202egnp.exe",
    "https://example.com:99999/",
    "file:///etc/passwd",
    "mailto:x@example.com",
    "HTTPS://EXAMPLE.COM/ok?a=1&b=2",
    "https://bücher.example/ü?q=\"'<>",
    "http://[::1]:8080/x",
    "https://example.com/" + "\U0001f600" * 600,
    "https://example.com/?" + "&" * 2100,
    "https://example.com/?" + "=" * 2000,
]
LINES = ["\r\n", "\r", "\n", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029"]
LINES += ["Subject: x\r\nBcc: evil@example.com", "\r\n\r\n<html>"]
# RFC 2047 encoded-words that decode to line breaks: "\r\nBcc: evil@example.com", and a
# blank line (the end of the headers) followed by a body of the sender's choosing.
ENCODED_WORDS = [
    "=?utf-8?q?=0D=0ABcc:_evil@example.com?=",
    "Ana =?utf-8?q?=0D=0ABcc:_evil@example.com?= Silva",
    "=?utf-8?b?DQpCY2M6IGV2aWxAZXhhbXBsZS5jb20=?=",
    "=?utf-8?q?=0D=0A?==?utf-8?q?=0D=0A?=",
    "=?UTF-8?Q?=0D=0A=0D=0A<h1>Your_account_is_locked</h1>?=",
]
LINES += ENCODED_WORDS
SCRIPTS = [
    "\u202e",  # RIGHT-TO-LEFT OVERRIDE
    "\u202dabc\u202c",
    "\u2066x\u2069",
    "\u200b",
    "\u200c",
    "\u200d",
    "\ufeff",
    "\u2060",
    "\u00a0",
    "\u3000",
    "مرحبا بالعالم",
    "שלום עולם",
    "नमस्ते दुनिया",
    "こんにちは世界",
    "한국어",
    "👨\u200d👩\u200d👧\u200d👦",
    "🇵🇹🇧🇷🇯🇵",
    "👍🏽",
    "🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f",
    "e\u0301",
    "Z\u0334\u0321\u0322\u031b\u0353\u032b\u032aa\u0338l\u0337g\u0336o",
    "\U0001f600",
    "\x00",
    "\x7f",
    "\ud800",
    "\udc80x",
    "\U0010ffff",
    "\ue000",
]
ATOMS = [*MARKUP, *MUSTACHE, *URLS, *LINES, *SCRIPTS]
LONG_TEXT = {
    "words": " ".join(f"word{i}" for i in range(1000))[:5000],
    "unbroken": "x" * 5000,
    "quotes": '"' * 5000,
    "emoji": "\U0001f600" * 5000,
    "family": "👨\u200d👩\u200d👧" * 1000,
    "flags": "🇵🇹" * 2500,
    "accents": "e\u0301" * 2500,
    "zalgo": "a" + "\u0301" * 4999,
    "arabic": ("مرحبا " * 900)[:5000],
    "devanagari": ("नमस्ते " * 800)[:5000],
    "leading_space": " " * 4000 + "late title",
    "breaks": "\r\n".join(["line"] * 1000),
    "punctuation": "word, " * 800,
}
# (10**5000, too long for str(), has its own test: hypothesis cannot print it either.)
NUMBERS: list[object] = [1e308, -1e308, 2**80, -(2**63), 10**4000, 0, -0.0, 1.5]
NUMBERS += [float("inf"), float("nan"), True, False, None]

atoms = st.sampled_from(ATOMS)
hostile_text = st.one_of(
    atoms,
    st.text(max_size=30),
    st.lists(st.one_of(atoms, st.text(max_size=8)), max_size=6).map("".join),
    st.builds(lambda a, n: (a * n)[:6000], atoms.filter(bool), st.integers(1, 5000)),
    st.sampled_from(list(LONG_TEXT.values())),
)
json_value = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(), st.sampled_from(NUMBERS), hostile_text
    ),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(hostile_text, inner, max_size=3),
    max_leaves=8,
)
field = st.one_of(hostile_text, hostile_text, json_value)
payloads = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "title": field,
            "url": st.sampled_from(URLS) | field,
            "excerpt": field,
            "text": field,
            "actor_name": field,
            "{{title}}": field,
        },
    ),
    json_value,  # not an object at all (the database refuses these; the reference does not)
    st.just({"title": [[[[[[[[[[[["deep"]]]]]]]]]]]], "url": {"href": "https://x.example"}}),
)
ids = st.one_of(st.sampled_from(["1", "2", "post", "42"]), hostile_text)
categories = st.one_of(
    st.sampled_from(["comment", "like", "mention", "follow", "shared_album", "post.liked"]),
    hostile_text,
)
event_specs = st.tuples(
    categories,
    ids,  # entity_type
    ids,  # entity_id
    st.none() | ids,  # actor_id
    payloads,
    st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2026, 3, 3)),
)
events = st.lists(event_specs, max_size=12).map(
    lambda specs: [
        Event(i, c, t, e, a, p, when.replace(tzinfo=UTC))
        for i, (c, t, e, a, p, when) in enumerate(specs)
    ]
)
recipients = st.builds(
    Recipient,
    user_id=hostile_text,
    email=st.sampled_from(["ana@example.com", "o'brien+x@xn--bcher-kva.example"]),
    name=st.none() | hostile_text,
    cadence=st.sampled_from(["daily", "weekly", "off", "<b>"]),
    timezone=st.sampled_from(["UTC", "Europe/Lisbon", "Mars/Olympus", "", "../../etc/passwd"]),
    locale=st.sampled_from(["en", "pt-BR", "<script>"]),
)


# --- helpers ------------------------------------------------------------------------------


class Structure(HTMLParser):
    """Tags with their attributes, and the decoded text of an HTML document."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, str, tuple[tuple[str, str | None], ...]]] = []
        self.text: list[str] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(("start", tag, tuple(attrs)))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(("startend", tag, tuple(attrs)))

    def handle_endtag(self, tag: str) -> None:
        self.tags.append(("end", tag, ()))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def handle_comment(self, data: str) -> None:
        self.tags.append(("comment", data, ()))

    def handle_decl(self, decl: str) -> None:
        self.tags.append(("decl", decl, ()))

    def handle_pi(self, data: str) -> None:
        self.tags.append(("pi", data, ()))

    def unknown_decl(self, data: str) -> None:
        self.tags.append(("unknown", data, ()))

    def shape(self) -> list[tuple[str, str, tuple[str, ...]]]:
        """Tags and attribute names, values left out."""
        return [(kind, tag, tuple(name for name, _ in attrs)) for kind, tag, attrs in self.tags]

    def attributes(self) -> Iterator[tuple[str, str, str | None]]:
        for _, tag, attrs in self.tags:
            for name, value in attrs:
                yield tag, name, value


def escape(text: str) -> str:
    """chevron's HTML escaping: & first, then " < >."""
    text = text.replace("&", "&amp;")
    return text.replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")


HARMLESS_URL = "https://x.example/"
URL_KEYS = {"url", "more_url", "activity_url", "unsubscribe_url"}


def harmless(ctx: dict[str, Any]) -> dict[str, Any]:
    """`ctx` with every string replaced by "x" (URLs by a plain one): the structural twin."""

    def swap(key: str, value: Any) -> Any:
        if isinstance(value, str):
            return HARMLESS_URL if key in URL_KEYS and value else "x"
        if isinstance(value, list):
            return [{k: swap(k, v) for k, v in item.items()} for item in value]
        return value

    return {key: swap(key, value) for key, value in ctx.items()}


def _benign_attributes() -> set[tuple[str, str, str | None]]:
    """Every (tag, attribute, value) but href the templates write, over all their branches."""
    groups = []
    for index, (category, url, excerpt, count, actors) in enumerate(
        (c, u, e, n, a)
        for c in ("comment", "like", "mention", "follow", "shared_album")
        for u in (True, False)
        for e in (True, False)
        for n in (1, 3)
        for a in (0, 2)
    ):
        payload: dict[str, Any] = {"title": f"Title {index}"}
        if url:
            payload["url"] = f"https://example.com/{index}"
        if excerpt:
            payload["excerpt"] = "An excerpt"
        groups.append(
            Group(
                category=category,
                entity_type="post",
                entity_id=str(index),
                event_count=count,
                actor_count=actors,
                actor_names=("Ana", "Ben")[:actors],
                latest_at=NOW,
                last_event_id=index,
                payload=payload,
            )
        )
    found: set[tuple[str, str, str | None]] = set()
    # In digests small enough to show every group (the budget cuts a long one short).
    contents = [DigestContent(tuple(groups[i : i + 8]), 100, 500) for i in range(0, 80, 8)]
    folded = DigestContent((), 2, 2, FoldedLikes(2, 2, ("Ana", "Ben")))
    for content in (*contents, folded, DigestContent((), 0, 0)):
        html = RENDERER.render(DigestRequest(RECIPIENT, content, **KW)).html
        found |= {a for a in Structure(html).attributes() if a[1] != "href"}
    return found


RECIPIENT = Recipient("u1", "ana@example.com", "Ana", "daily", "UTC", "en")
BENIGN_ATTRIBUTES = _benign_attributes()
# An absolute http(s) URL in plain ASCII without quotes, spaces, `<`, `>` or backslashes.
SAFE_HREF = re.compile(
    r"https?://(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]+)?"
    r"(?:[/?#][A-Za-z0-9!#$%&()*+,\-./:;=?@\[\]_~]*)?"
)


def shown_fields(group: dict[str, Any]) -> list[str]:
    """The user-text fields the partial of `group` displays."""
    keys = ["actor_phrase"] if group["show_actor"] else []
    if group["show_title"]:
        keys.append("title")
    if group["has_excerpt"] and not (group["is_like"] or group["is_follow"]):
        keys.append("excerpt")
    return keys


def assert_safe_digest(
    recipient: Recipient, content: DigestContent, result: RenderedDigest
) -> None:
    """Every rendering invariant of the module docstring, for one rendered digest."""
    shown = RENDERER.shown_content(DigestRequest(recipient, content, **KW))
    ctx = RENDERER.context(DigestRequest(recipient, shown, **KW))
    html = Structure(result.html)
    twin = Structure(RENDERER._html.render(harmless(ctx)))
    assert html.shape() == twin.shape()  # no tag or attribute came from user text
    assert "<script" not in result.html.lower()
    for tag, name, value in html.attributes():
        if name == "href":
            assert value is not None
            assert SAFE_HREF.fullmatch(value), value
        else:
            assert (tag, name, value) in BENIGN_ATTRIBUTES
    text = "".join(html.text)
    for group in ctx["groups"]:
        for key in shown_fields(group):
            assert escape(group[key]) in result.html  # escaped in the source ...
            assert group[key] in text  # ... so a parser reads back exactly the text
            assert group[key] in result.text  # and the text part has it verbatim
    # The subject: one line, no bidi overrides, and it matches the <title>.
    assert result.subject
    assert not LINE_BREAKS.search(result.subject)
    assert not UNSAFE.search(result.subject)
    assert f"<title>{escape(result.subject)}</title>" in result.html
    # The groups shown, plus "…and N more", account for every group.
    folded = shown.folded_likes.posts if shown.folded_likes else 0
    assert len(shown.groups) + folded + shown.more_groups == content.total_groups
    if content.groups:
        assert shown.groups
        assert all(a is b for a, b in zip(shown.groups, content.groups, strict=False))


def message_for(recipient: Recipient, rendered: RenderedDigest, from_name: str = "Digest") -> bytes:
    """The MIME message the worker would send for `rendered`."""
    return build_message(
        from_name=from_name,
        from_address="digest@example.com",
        to_name=recipient.name,
        to_address=recipient.email,
        subject=rendered.subject,
        html=rendered.html,
        text=rendered.text,
        message_id=make_message_id(7, "example.com"),
        idempotency_key=idempotency_key(7),
        list_unsubscribe_url=KW["unsubscribe_url"],
        list_unsubscribe_mailto="mailto:unsubscribe@example.com?subject=unsubscribe-7",
        date=NOW,
    )


def reparse(raw: bytes) -> EmailMessage:
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def body_parts(parsed: EmailMessage) -> tuple[EmailMessage, EmailMessage]:
    parts = list(parsed.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    text, html = parts
    assert isinstance(text, EmailMessage)
    assert isinstance(html, EmailMessage)
    return text, html


# --- grouping, ranking, capping -----------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(events=events, cap=st.integers(1, 8))
def test_grouping_ranking_and_capping_hold_for_any_events(events: list[Event], cap: int) -> None:
    """Any events group into one group per (category, type, id), single likes folded when
    two or more, the rest ranked by category priority, then size and recency, and capped."""
    content = build_digest(events, cap)
    keys = {(e.category, e.entity_type, e.entity_id) for e in events}
    single = [k for k in keys if k[0] == "like" and sum(key(e) == k for e in events) == 1]
    folded = len(single) if len(single) >= 2 else 0
    assert content.total_events == len(events)
    assert content.total_groups == len(keys)
    assert len(content.groups) == min(cap, len(keys) - folded)
    assert (content.folded_likes.posts if content.folded_likes else 0) == folded
    assert content.more_groups == len(keys) - folded - len(content.groups)
    ranks = [
        (-PRIORITY.get(g.category, OTHER), g.event_count, g.latest_at, g.last_event_id)
        for g in content.groups
    ]
    assert ranks == sorted(ranks, reverse=True)
    for group in content.groups:
        members = [
            e for e in events if key(e) == (group.category, group.entity_type, group.entity_id)
        ]
        assert group.event_count == len(members)
        assert group.actor_count == len({e.actor_id for e in members if e.actor_id is not None})
        assert len(group.actor_names) == min(group.actor_count, 3)
        assert group.payload is max(members, key=lambda e: (e.created_at, e.id)).payload


def key(event: Event) -> tuple[str, str, str]:
    """The group an event belongs to."""
    return (event.category, event.entity_type, event.entity_id)


# --- rendering ---------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=events, recipient=recipients)
@example(
    events=[
        Event(i, c, "post", str(i), "a", {"title": t, "url": u, "excerpt": t}, NOW)
        for i, (c, t, u) in enumerate(
            zip(["comment", "like", "mention", "follow", "x"], MARKUP, URLS, strict=False)
        )
    ],
    recipient=RECIPIENT,
)
def test_any_events_render_to_a_safe_digest(events: list[Event], recipient: Recipient) -> None:
    """Whatever the events and the recipient, the digest renders, and safely (see above)."""
    content = build_digest(events, CAP)
    result = RENDERER.render(DigestRequest(recipient, content, **KW))
    assert_safe_digest(recipient, content, result)


@pytest.mark.parametrize("value", MUSTACHE)
@pytest.mark.parametrize("key", ["title", "excerpt", "actor_name", "url"])
def test_mustache_in_payloads_is_inert(key: str, value: str) -> None:
    """Mustache syntax in any payload field comes out literally, never expanded."""
    payload = {"title": "T", "excerpt": "E", "url": f"https://example.com/{value}", key: value}
    event = Event(1, "comment", "post", "1", "7", payload, NOW)
    content = build_digest([event], CAP)
    result = RENDERER.render(DigestRequest(RECIPIENT, content, **KW))
    benign = RENDERER.render(
        DigestRequest(
            RECIPIENT, build_digest([Event(1, "comment", "post", "1", "7", {}, NOW)], CAP), **KW
        )
    )
    assert_safe_digest(RECIPIENT, content, result)
    if key != "url":
        assert value.strip() in result.text
        assert escape(value.strip()) in result.html
    # Nothing was expanded: the template's own values appear as often as without the payload.
    for own in (KW["unsubscribe_url"], "Your daily digest", "See all activity"):
        assert result.html.count(own) == benign.html.count(own)
        assert result.text.count(own) == benign.text.count(own)


def test_payloads_of_any_json_type_render() -> None:
    """Numbers (huge, non-finite, too long to print), nulls, booleans, lists and objects:
    scalars show as text, everything else counts as missing."""
    values: list[object] = [10**5000, 2**80, 1e308, float("nan"), None, True, [1], {"a": 1}]
    events = [
        Event(i, "comment", "post", str(i), "a", {"title": v, "excerpt": v, "actor_name": v}, NOW)
        for i, v in enumerate(values)
    ]
    content = build_digest(events, CAP)
    result = RENDERER.render(DigestRequest(RECIPIENT, content, **KW))
    assert_safe_digest(RECIPIENT, content, result)
    titles = {
        g["title"] for g in RENDERER.context(DigestRequest(RECIPIENT, content, **KW))["groups"]
    }
    assert titles == {"a post", str(2**80), "1e+308", "nan", "true"}


@pytest.mark.parametrize("url", URLS)
def test_only_absolute_http_urls_become_links(url: str) -> None:
    """Every URL of the corpus is either dropped or an ASCII http(s) URL that stays inside
    its attribute; the digest links only to it and the template's own links."""
    assert safe_url(url) is None or SAFE_HREF.fullmatch(safe_url(url) or "")
    event = Event(1, "comment", "post", "1", "7", {"title": "T", "url": url}, NOW)
    content = build_digest([event], CAP)
    result = RENDERER.render(DigestRequest(RECIPIENT, content, **KW))
    assert_safe_digest(RECIPIENT, content, result)
    hrefs = [v for _, name, v in Structure(result.html).attributes() if name == "href"]
    own = [f"{KW['base_url']}/activity"] * 2 + [KW["unsubscribe_url"]]
    kept = safe_url(url)
    assert sorted(h or "" for h in hrefs) == sorted([*own, *([kept] if kept else [])])
    for scheme in ("javascript:", "data:", "vbscript:", "file:", "mailto:"):
        assert not any((h or "").lower().startswith(scheme) for h in hrefs)


def test_url_limit_applies_to_the_encoded_url() -> None:
    """A URL that percent-encoding makes longer than URL_LIMIT is dropped, not written."""
    assert safe_url("https://example.com/" + "a" * (URL_LIMIT - 20)) is not None
    assert safe_url("https://example.com/" + "\U0001f600" * 200) is None  # 2,420 once encoded
    assert safe_url("https://example.com/" + "\U0001f600" * 100) is not None


# --- truncation ---------------------------------------------------------------------------

_ZWJ = "\u200d"
_STRIPPED = " ,.;:-–—\u200d"


def _extends(char: str) -> bool:
    """Grapheme_Cluster_Break Extend/ZWJ, approximately: no break before these."""
    return (
        unicodedata.category(char).startswith("M")
        or char in "\u200c\u200d"
        or "\U0001f3fb" <= char <= "\U0001f3ff"
        or "\U000e0020" <= char <= "\U000e007f"
    )


def _regional(char: str) -> bool:
    return "\U0001f1e6" <= char <= "\U0001f1ff"


def _boundary(text: str, index: int, *, marks: bool = True) -> bool:
    """Whether cutting `text` at `index` keeps every grapheme whole (with `marks=False`,
    combining marks may be cut off: the fallback for one grapheme longer than the limit)."""
    if index <= 0 or index >= len(text):
        return True
    char, before = text[index], text[index - 1]
    if before == _ZWJ or (_extends(char) and not unicodedata.category(char).startswith("M")):
        return False  # inside a ZWJ sequence, before a ZWJ, ZWNJ, skin tone or tag
    if marks and _extends(char):
        return False  # a letter and its combining marks
    if _regional(char) and _regional(before):
        run = index
        while run > 0 and _regional(text[run - 1]):
            run -= 1
        return (index - run) % 2 == 0  # flags are pairs, counted from the start of the run
    return True


def one_line(text: str) -> str:
    """The spec of clean_text before truncation: unsafe characters and runs of whitespace
    become one space, no leading or trailing space."""
    return " ".join(UNSAFE.sub(" ", text).split())


def _visible(text: str) -> bool:
    return any(unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Zs", "Zl", "Zp") for c in text)


@settings(max_examples=300, deadline=None)
@given(
    value=hostile_text,
    limit=st.sampled_from([TITLE_LIMIT, SUBJECT_TITLE_LIMIT, EXCERPT_LIMIT, NAME_LIMIT])
    | st.integers(2, 300),
)
@example(value=LONG_TEXT["family"], limit=TITLE_LIMIT)
@example(value=LONG_TEXT["flags"], limit=TITLE_LIMIT)
@example(value="a" + "🇵🇹" * 100, limit=TITLE_LIMIT)
@example(value=LONG_TEXT["zalgo"], limit=TITLE_LIMIT)
@example(value=LONG_TEXT["leading_space"], limit=TITLE_LIMIT)
@example(value="a" + " " * 600 + "b" * 5000, limit=TITLE_LIMIT)
@example(value="\u200b" * 5000, limit=TITLE_LIMIT)
def test_truncation_is_sensible(value: str, limit: int) -> None:
    """What "truncated sensibly" means, for any text and limit:

    - the result is one line (no controls, line breaks, bidi overrides or lone surrogates;
      single spaces; nothing at either end) of at most `limit` characters;
    - a value with no visible character (only spaces, controls, zero-width or format
      characters) becomes "" (so the caller's fallback, like "a post", shows instead);
    - a value that fits is kept whole; a longer one is a prefix of it plus "…";
    - the cut is at the last space when that keeps at least 60% of the limit; otherwise as
      late as possible, but never inside a grapheme: not between a letter and its combining
      marks, not inside an emoji ZWJ sequence or skin-tone modifier, never half a flag
      (only a single grapheme longer than the limit, like "a" + 5,000 accents, loses marks);
    - punctuation, spaces and ZWJs left dangling before the "…" are dropped.
    """
    result = clean_text(value, limit)
    line = one_line(value)
    assert len(result) <= limit
    assert not UNSAFE.search(result)
    assert result == result.strip()
    assert "  " not in result
    if len(line) <= limit:
        assert result == (line if _visible(line) else "")
        return
    space = line.rfind(" ", 0, limit)
    if space >= limit * 0.6:
        cut = space  # a word boundary
    else:  # the last grapheme boundary that leaves room for the …
        graphemes = [i for i in range(1, limit) if _boundary(line, i)]
        marks = [i for i in range(1, limit) if _boundary(line, i, marks=False)]
        cut = (graphemes or marks or [limit - 1])[-1]
    body = line[:cut].rstrip(_STRIPPED)
    assert result == (body + "…" if _visible(body) else "")
    assert line.startswith(result[:-1])


@pytest.mark.parametrize("name", list(LONG_TEXT))
def test_five_thousand_character_titles_render_sensibly(name: str) -> None:
    """A 5,000-character title in any script is cut to TITLE_LIMIT with … in the digest,
    to SUBJECT_TITLE_LIMIT in the subject, and everything still renders safely."""
    title = LONG_TEXT[name]
    event = Event(1, "comment", "post", "1", "7", {"title": title, "excerpt": title}, NOW)
    content = build_digest([event], CAP)
    result = RENDERER.render(DigestRequest(RECIPIENT, content, **KW))
    assert_safe_digest(RECIPIENT, content, result)
    group = RENDERER.context(DigestRequest(RECIPIENT, content, **KW))["groups"][0]
    shown = clean_text(title, TITLE_LIMIT)
    assert group["title"] == (shown or "a post")
    if len(one_line(title)) > TITLE_LIMIT and shown:
        assert len(group["title"]) <= TITLE_LIMIT
        assert group["title"].endswith("…")
        assert len(group["subject_title"]) <= SUBJECT_TITLE_LIMIT + 2  # with its “quotes”
        assert len(group["excerpt"]) <= EXCERPT_LIMIT
        assert group["subject_title"] in result.subject


def test_titles_keep_whole_graphemes_at_the_cut() -> None:
    """Concrete cuts: flags and ZWJ families are kept whole or dropped whole."""
    family = "👨\u200d👩\u200d👧"
    assert clean_text(family * 1000, 140) == family * 27 + "…"  # 135 + …, not 139
    assert clean_text("🇵🇹" * 2500, 140) == "🇵🇹" * 69 + "…"
    assert clean_text("a" + "🇵🇹" * 100, 140) == "a" + "🇵🇹" * 69 + "…"
    assert clean_text("e\u0301" * 2500, 140) == "e\u0301" * 69 + "…"
    assert clean_text("a" + "\u0301" * 4999, 140) == "a" + "\u0301" * 138 + "…"
    assert clean_text(" " * 4000 + "late title", 140) == "late title"
    assert clean_text("a" + " " * 600 + "b" * 5000, 20) == "a " + "b" * 17 + "…"
    assert clean_text("\u200b\u200d\ufeff " * 100, 140) == ""
    assert clean_text("\u200b" * 600 + "x", 140) == ""  # nothing visible before the cut
    assert clean_text("…", 140) == "…"


# --- the built message ---------------------------------------------------------------------


def assert_clean_headers(raw: bytes) -> EmailMessage:
    """`raw` has exactly the expected headers, none of them with a line break."""
    head = raw.split(b"\r\n\r\n", 1)[0].decode("ascii")
    for line in head.split("\r\n"):  # every line starts a known header or continues one
        assert line.startswith((" ", "\t")) or line.split(":", 1)[0] in HEADERS, line
    parsed = reparse(raw)
    assert sorted(parsed.keys()) == sorted(HEADERS)
    for name, value in parsed.items():
        assert not LINE_BREAKS.search(str(value)), (name, str(value))
    return parsed


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=events, recipient=recipients, from_name=hostile_text)
@example(
    events=[Event(1, "comment", "post", "1", "7", {"title": "x\r\nBcc: evil@example.com"}, NOW)],
    recipient=Recipient("u", "ana@example.com", "Ana\r\nBcc: evil@example.com", "daily", "", ""),
    from_name="Digest\r\nX-Evil: 1",
)
@example(  # encoded-words in the subject (from the title) are encoded again: inert
    events=[Event(1, "comment", "post", "1", "7", {"title": w}, NOW) for w in ENCODED_WORDS],
    recipient=RECIPIENT,
    from_name="Digest",
)
def test_no_line_break_reaches_a_header(
    events: list[Event], recipient: Recipient, from_name: str
) -> None:
    """Hostile payloads, names and sender names: the message has exactly the expected
    headers, none with a line break, a one-line subject, and parts that decode back to
    what was rendered."""
    content = build_digest(events, CAP)
    rendered = RENDERER.render(DigestRequest(recipient, content, **KW))
    parsed = assert_clean_headers(message_for(recipient, rendered, from_name))
    subject = str(parsed["Subject"])
    assert subject == (clean_text(rendered.subject, SUBJECT_LIMIT) or "Digest")
    assert len(subject.splitlines()) == 1
    (to,) = parsed["To"].addresses
    assert to.addr_spec == recipient.email.lower()
    # (The stdlib reader keeps the folding space between two encoded-words of a display
    # name, which RFC 2047 readers drop; compare without spaces.)
    expected = clean_text(recipient.name, HEADER_NAME_LIMIT)
    assert to.display_name.replace(" ", "") == expected.replace(" ", "")
    (sender,) = parsed["From"].addresses
    expected = clean_text(from_name, HEADER_NAME_LIMIT)
    assert sender.display_name.replace(" ", "") == expected.replace(" ", "")
    text, html = body_parts(parsed)
    assert text.get_content().replace("\r\n", "\n") == rendered.text.rstrip("\n") + "\n"
    assert html.get_content().replace("\r\n", "\n") == rendered.html.rstrip("\n") + "\n"


@pytest.mark.parametrize("name", ENCODED_WORDS)
@pytest.mark.parametrize("field", ["to_name", "from_name"])
def test_encoded_words_in_display_names_cannot_inject_headers(field: str, name: str) -> None:
    """A display name that is (or holds) an encoded-word of CR/LF adds no header and does
    not end the header block. (The recipients import refuses such names too, but names
    already stored and the sender name from the settings reach the MIME writer.)"""
    rendered = RenderedDigest("Subject", "<p>x</p>", "x")
    recipient = Recipient("u", "ana@example.com", name if field == "to_name" else "Ana", "", "", "")
    raw = message_for(recipient, rendered, name if field == "from_name" else "Digest")
    assert_clean_headers(raw)


# --- size: Gmail clips at 102 KB -----------------------------------------------------------

# Characters by what they cost once escaped and encoded: 4-byte emoji (12 bytes of
# quoted-printable), `"` (6 bytes, &quot;), `&` (&amp;), `=` (=3D), CJK (9 bytes).
WORST_CHARS = ["\U0001f600", '"', "&", "=", "字"]
WORST_URLS = [
    "https://example.com/" + "&" * (URL_LIMIT - 20),
    "https://example.com/" + "=" * (URL_LIMIT - 20),
    "https://example.com/" + "\U0001f600" * 169,  # just under URL_LIMIT once encoded
]


def worst_content(char: str, url: str, groups: int = CAP, total: int = 10_000) -> DigestContent:
    """`groups` groups (the cap) with every field at 5,000 characters of `char`, and 3
    named actors out of a million; `total` groups in all."""
    long = (char * 5000)[:5000]
    payload = {"title": long, "excerpt": long, "text": long, "url": url}
    return DigestContent(
        groups=tuple(
            Group(
                category=("comment", "like", "mention", "follow", "shared_album")[i % 5],
                entity_type=long,
                entity_id=str(i),
                event_count=10**6 - i,
                actor_count=10**6,
                actor_names=(long, long, long),
                latest_at=NOW - timedelta(minutes=i),
                last_event_id=10**6 - i,
                payload=payload,
            )
            for i in range(groups)
        ),
        total_groups=total,
        total_events=10**9,
    )


@pytest.mark.parametrize("url", WORST_URLS, ids=["amp-url", "equals-url", "emoji-url"])
@pytest.mark.parametrize("char", WORST_CHARS, ids=[f"U+{ord(c[0]):04X}" for c in WORST_CHARS])
def test_worst_case_digest_stays_under_gmail_clipping(char: str, url: str) -> None:
    """The cap at its default (50 groups) and every field at its worst: the bodies fit
    BODY_BUDGET, the message fits under 102 KB, and the groups left out are counted.

    Worst case without the budget: per group a 140-character title and a 280-character
    excerpt in 4-byte emoji cost 12 bytes a character as quoted-printable, in both parts
    (~10 KB), three 40-character names as much again (~3 KB), and a 2,048-character URL of
    `&` 10 KB in the HTML (`&amp;`): 25 KB a group, over 1 MB for 50 groups. Even 50 short,
    plain groups take ~90 KB (each item's inlined CSS is ~1.3 KB). So the renderer shows as
    many groups as fit BODY_BUDGET (94 KiB, leaving ~4 KB for headers) and counts the rest
    in "…and N more"."""
    content = worst_content(char, url)
    recipient = Recipient("u", "ana@example.com", "\U0001f600" * 500, "weekly", "UTC", "en")
    rendered = RENDERER.render(DigestRequest(recipient, content, **KW))
    assert_safe_digest(recipient, content, rendered)
    raw = message_for(recipient, rendered, from_name="\U0001f600" * 500)
    _, html = body_parts(reparse(raw))
    assert len(raw) < GMAIL_CLIP
    assert len(html.get_content().encode()) < GMAIL_CLIP
    assert sent_size(rendered.html) + sent_size(rendered.text) <= BODY_BUDGET
    shown = RENDERER.shown_content(DigestRequest(recipient, content, **KW))
    assert 1 <= len(shown.groups) < CAP
    more = content.total_groups - len(shown.groups)
    assert f"…and {more:,} more updates: {KW['base_url']}/activity" in rendered.text


def test_an_ordinary_full_digest_shows_every_group() -> None:
    """50 groups of ordinary length all fit: the budget only bites on unusual content."""
    groups = tuple(
        Group(
            category=("comment", "like", "mention", "follow", "shared_album")[i % 5],
            entity_type="post",
            entity_id=str(i),
            event_count=3,
            actor_count=5,
            actor_names=("Ana Silva", "Ben Okafor", "Chloé Martin"),
            latest_at=NOW,
            last_event_id=i,
            payload={
                "title": "Photos from our weekend trip",
                "excerpt": "Lovely, see you soon!",
                "url": f"https://example.com/posts/{i}",
            },
        )
        for i in range(CAP)
    )
    content = DigestContent(groups, 80, 400)
    rendered = RENDERER.render(DigestRequest(RECIPIENT, content, **KW))
    assert RENDERER.shown_content(DigestRequest(RECIPIENT, content, **KW)) == content
    assert len(message_for(RECIPIENT, rendered)) < GMAIL_CLIP


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    char=st.sampled_from(WORST_CHARS) | hostile_text.filter(bool),
    url=st.sampled_from(WORST_URLS + URLS),
    groups=st.integers(1, CAP),
    name=hostile_text,
)
def test_any_long_payloads_stay_under_gmail_clipping(
    char: str, url: str, groups: int, name: str
) -> None:
    """Up to the default cap of groups, any text at 5,000 characters: under 102 KB."""
    content = worst_content(char, url, groups, total=groups + 3)
    recipient = Recipient("u", "ana@example.com", name, "daily", "UTC", "en")
    rendered = RENDERER.render(DigestRequest(recipient, content, **KW))
    raw = message_for(recipient, rendered, from_name=name)
    assert len(raw) < GMAIL_CLIP
    assert sent_size(rendered.html) + sent_size(rendered.text) <= BODY_BUDGET
    shown = RENDERER.shown_content(DigestRequest(recipient, content, **KW))
    folded = shown.folded_likes.posts if shown.folded_likes else 0
    assert len(shown.groups) + folded + shown.more_groups == content.total_groups


ENDINGS = ["\n", " \n", ".\n", "\t\n", "=", "\n.\n"]


@settings(max_examples=100, deadline=None)
@given(body=st.lists(hostile_text | st.sampled_from(ENDINGS), max_size=40))
@example(body=["a" * 73, " "])  # the MIME writer moves a line's last =20 to a line of its own
def test_size_estimates_match_the_message(body: list[str]) -> None:
    """`sent_size` is what build_message writes for a body (to 3 bytes), and the cheap bound
    the renderer tries first is never below it."""
    text = UNSAFE.sub("", "".join(body).replace("\r", ""))
    raw = build_message(
        from_name="D",
        from_address="d@example.com",
        to_name=None,
        to_address="a@example.com",
        subject="s",
        html=text,
        text="",
        message_id=make_message_id(1, "example.com"),
        idempotency_key=idempotency_key(1),
        list_unsubscribe_url="https://example.com/u",
        list_unsubscribe_mailto=None,
        date=NOW,
    )
    html_part = raw.split(b'Content-Type: text/html; charset="utf-8"\r\n')[1]
    encoded = html_part.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n--", 1)[0]
    actual = len(encoded)  # with its final CRLF (the delimiter starts with another one)
    assert actual <= sent_size(text) <= actual + 2
    assert _size_bound(text) >= sent_size(text)
