"""Rendering: the view model, escaping, the text part, the subject, and pre-inlining."""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import chevron
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from digest.errors import DigestError
from digest.models import DigestContent, DigestRequest, Group, Recipient, RenderedDigest
from digest.render import Renderer
from digest.render.templates import CompiledTemplate
from digest.render.text import clean_text, safe_url
from digest.render.view import actor_phrase, first_name

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
RENDERER = Renderer(TEMPLATES)
EN = RENDERER.locales.catalog("en")
NOW = datetime(2026, 3, 3, 7, 0, tzinfo=UTC)
RECIPIENT = Recipient("u1", "ana.silva@example.com", "Ana", "daily", "Europe/Lisbon", "en")
KW: dict[str, Any] = {
    "cadence": "daily",
    "period_start": NOW,
    "base_url": "https://app.example.com",
    "unsubscribe_url": "https://app.example.com/u/TOKEN",
}
CATEGORIES = ("comment", "like", "mention", "follow", "shared_album")


def group(
    category: str = "comment",
    *,
    payload: Mapping[str, Any] | None = None,
    count: int = 1,
    names: tuple[str, ...] = ("Ana",),
    actors: int | None = None,
    entity_type: str = "post",
    index: int = 0,
) -> Group:
    """A group with sensible defaults."""
    return Group(
        category=category,
        entity_type=entity_type,
        entity_id=str(index),
        event_count=count,
        actor_count=len(names) if actors is None else actors,
        actor_names=names,
        latest_at=NOW - timedelta(minutes=index),
        last_event_id=1000 - index,
        payload={"title": "Trip photos", "url": "https://example.com/p/1"}
        if payload is None
        else payload,
    )


def content(*groups: Group, more: int = 0) -> DigestContent:
    """A digest of `groups` plus `more` groups the cap left out."""
    return DigestContent(
        groups=groups,
        total_groups=len(groups) + more,
        total_events=sum(g.event_count for g in groups) + more,
    )


def many(n: int) -> DigestContent:
    """`n` groups cycling through every category and payload shape."""
    groups = []
    for i in range(n):
        payload: dict[str, Any] = {
            "title": f"Item {i}",
            "url": f"https://example.com/i/{i}?a=1&b=2",
        }
        if i % 2:
            payload["excerpt"] = f"Excerpt number {i}, with words."
        if i % 7 == 3:
            del payload["url"]
        groups.append(
            group(
                CATEGORIES[i % len(CATEGORIES)],
                payload=payload,
                count=1 + i % 4,
                names=("Ana", "Ben", "Cy")[: i % 4],
                actors=i % 11,
                index=i,
            )
        )
    return content(*groups, more=7)


def render(c: DigestContent, **overrides: Any) -> RenderedDigest:
    """Render `c` for the default recipient."""
    recipient = overrides.pop("recipient", RECIPIENT)
    return RENDERER.render(DigestRequest(recipient, c, **{**KW, **overrides}))


def context(c: DigestContent, **overrides: Any) -> dict[str, Any]:
    """The view model of `c` for the default recipient."""
    recipient = overrides.pop("recipient", RECIPIENT)
    return RENDERER.context(DigestRequest(recipient, c, **{**KW, **overrides}))


class _Events(HTMLParser):
    """The parsed structure of an HTML document: tags, attributes and decoded text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.events: list[tuple[str, ...]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.events.append(("start", tag, *(f"{k}={v}" for k, v in attrs)))

    def handle_endtag(self, tag: str) -> None:
        self.events.append(("end", tag))

    def handle_data(self, data: str) -> None:
        self.events.append(("data", data))
        self.text.append(data)

    def handle_comment(self, data: str) -> None:
        self.events.append(("comment", data))


def parse(html: str) -> _Events:
    """`html` parsed by the standard library's tolerant parser."""
    parser = _Events()
    parser.feed(html)
    parser.close()
    return parser


def links(html: str) -> list[str]:
    """Every href in `html`, decoded."""
    return [
        attr[5:]
        for e in parse(html).events
        if e[0] == "start" and e[1] == "a"
        for attr in e[2:]
        if attr.startswith("href=")
    ]


# --- view model --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("names", "count", "expected"),
    [
        ((), 0, "Someone"),
        (("",), 1, "Someone"),
        (("", ""), 2, "2 people"),
        (("", "Ben"), 2, "Ben and 1 other"),
        ((), 4, "4 people"),
        (("Ana",), 1, "Ana"),
        (("Ana", "Ben"), 2, "Ana and Ben"),
        (("Ana", "Ben", "Cy"), 3, "Ana, Ben and Cy"),
        (("Ana", "Ben", "Cy"), 9, "Ana, Ben and 7 others"),
        (("Ana",), 5, "Ana and 4 others"),
        (("Ana", "Ben"), 3, "Ana, Ben and 1 other"),
        (("Ana", "", "  "), 1, "Ana"),
        (("Ana\r\nBcc: x",), 1, "Ana Bcc: x"),
        (("Maximilian Alexander von Hohenzollern-Sigmaringen",), 1, "Maximilian Alexander von…"),
    ],
)
def test_actor_phrase(names: tuple[str, ...], count: int, expected: str) -> None:
    """Actors read naturally: up to three names, else two names and a count of the others;
    an actor without a name is counted, never named; a long name is cut between words."""
    assert actor_phrase(names, count, EN) == expected


def test_someone_is_lower_case_inside_a_sentence() -> None:
    """An unnamed actor that does not start its sentence is "someone"."""
    assert actor_phrase((), 1, EN, first=False) == "someone"
    assert "New badge from someone on" in render(content(group("badge", names=("",)))).text


def test_title_falls_back_to_the_entity_type() -> None:
    """A group without a usable title is called 'a post' / 'an album', never blank."""
    ctx = context(
        content(
            group(payload={}, entity_type="post"),
            group(payload={"title": "   "}, entity_type="album", index=1),
        )
    )
    assert [g["title"] for g in ctx["groups"]] == ["a post", "an album"]
    assert ctx["groups"][0]["title_quoted"] == "a post"


def test_long_title_is_truncated_on_a_word_boundary() -> None:
    """A 5,000-character title becomes at most ~140 characters ending in a whole word and …."""
    title = " ".join(f"word{i}" for i in range(1000))[:5000]
    shown = context(content(group(payload={"title": title})))["groups"][0]["title"]
    assert len(shown) <= 140
    assert shown.endswith("…")
    assert title.startswith(shown[:-1])
    assert title[len(shown) - 1] == " "  # cut before a space: no half word


def test_unbroken_long_title_is_cut_mid_word() -> None:
    """A title with no spaces still gets cut to the limit."""
    shown = context(content(group(payload={"title": "x" * 5000})))["groups"][0]["title"]
    assert shown == "x" * 139 + "…"


def test_excerpt_comes_from_excerpt_or_text_and_is_truncated() -> None:
    """`excerpt` wins over `text`; either is cut to ~280 characters."""
    ctx = context(
        content(
            group(payload={"excerpt": "short", "text": "other"}),
            group(payload={"text": "from text " * 100}, index=1),
        )
    )
    first, second = ctx["groups"]
    assert (first["excerpt"], first["has_excerpt"]) == ("short", True)
    assert len(second["excerpt"]) <= 280
    assert second["excerpt"].startswith("from text from text")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://example.com/p/1?a=1&b=2#c", "https://example.com/p/1?a=1&b=2#c"),
        ("http://example.com", "http://example.com"),
        ("  HTTPS://Example.com/x  ", "https://Example.com/x"),
        ("https://example.com/ü?q=\"'<>", "https://example.com/%C3%BC?q=%22%27%3C%3E"),
        ("https://bücher.de/x", "https://xn--bcher-kva.de/x"),
        ("javascript:alert(1)", None),
        ("JavaScript:alert(1)", None),
        ("data:text/html,<script>alert(1)</script>", None),
        ("/relative/path", None),
        ("//example.com/x", None),
        ("ftp://example.com/x", None),
        ("https://good.example@evil.example/", None),
        ("https://example.com/a b", None),
        ("https://example.com/\r\nx", None),
        ("https://", None),
        ("https://example.com:99999/", None),
        ("", None),
        (42, None),
        (None, None),
        (["https://example.com"], None),
        ({"href": "https://example.com"}, None),
    ],
)
def test_safe_url(url: object, expected: str | None) -> None:
    """Only absolute http(s) URLs become links, as plain ASCII; everything else gets none."""
    assert safe_url(url) == expected


def test_non_string_payload_values_do_not_crash() -> None:
    """Numbers and booleans are shown as text; null, lists and objects are ignored."""
    payloads: list[Any] = [
        {"title": 12345, "excerpt": 1.5, "url": 7},
        {"title": True, "excerpt": None, "url": None},
        {"title": ["a", "b"], "excerpt": {"nested": {"deep": 1}}, "url": ["https://x.example"]},
        {"title": 3.5e300, "text": float("nan")},
        [1, 2, 3],
        "just a string",
    ]
    groups = [group(payload=p, index=i) for i, p in enumerate(payloads)]
    ctx = context(content(*groups))
    titles = [g["title"] for g in ctx["groups"]]
    assert titles[:3] == ["12345", "true", "a post"]
    assert all(t == "a post" for t in titles[4:])
    assert not any(g["has_url"] for g in ctx["groups"])
    result = render(content(*groups))
    assert "12345" in result.html
    assert "12345" in result.text


def test_non_string_int_too_long_to_print_is_ignored() -> None:
    """An int too large for str() (Python's digit limit) is treated as missing, not a crash."""
    assert clean_text(10**5000, 100) == ""


def test_control_characters_are_removed_from_every_line() -> None:
    """CR, LF, other C0/C1 controls and bidi overrides become single spaces."""
    assert clean_text("a\r\nb\x00c\x85d\u2028e\u202ef\tg", 100) == "a b c d e f g"


def test_period_is_shown_in_the_users_time_zone() -> None:
    """The date is the recipient's local date, not UTC's."""
    late_utc = datetime(2026, 3, 2, 23, 30, tzinfo=UTC)
    tokyo = Recipient("u1", "a@example.com", None, "daily", "Asia/Tokyo", "en")
    assert context(content(), recipient=tokyo, period_start=late_utc)["period_label"] == (
        "Tuesday, March 3, 2026"
    )
    assert context(content(), period_start=late_utc)["period_label"] == "Monday, March 2, 2026"


def test_unknown_time_zone_falls_back_to_utc() -> None:
    """A zone name Python does not know renders in UTC instead of failing the digest."""
    for zone in ("Mars/Olympus", "", "../../etc/passwd"):
        nowhere = Recipient("u1", "a@example.com", None, "daily", zone, "en")
        assert context(content(), recipient=nowhere)["period_label"] == "Tuesday, March 3, 2026"


def test_weekly_heading_and_period() -> None:
    """A weekly digest says so in the heading, the period and the footer."""
    ctx = context(content(group()), cadence="weekly")
    assert ctx["heading"] == "Your weekly digest"
    assert ctx["period_label"] == "Week ending Tuesday, March 3, 2026"
    assert "weekly digest" in render(content(group()), cadence="weekly").text


def test_greeting_uses_the_first_name_or_none() -> None:
    """The greeting names the recipient by the first word of the name; without a name it
    says "Hi there," (never the address's local part, often an id like user1234)."""
    assert context(content())["greeting"] == "Hi Ana,"
    full = Recipient("u1", "m@example.com", " Maximilian Alexander\tKurz", "daily", "UTC", "en")
    assert context(content(), recipient=full)["greeting"] == "Hi Maximilian,"
    for name in (None, "", "   "):
        nameless = Recipient("u1", "user1234@example.com", name, "daily", "UTC", "en")
        assert context(content(), recipient=nameless)["greeting"] == "Hi there,"
        assert "user1234" not in render(content(group()), recipient=nameless).text.split("--")[0]


def test_more_counts_the_groups_left_out_and_links_to_activity() -> None:
    """'…and N more' is the exact number of capped groups, and is itself the link to
    base_url/activity."""
    result = render(content(group(), more=12))
    assert re.search(
        r'<a class="more-link" href="https://app.example.com/activity"[^>]*>'
        r"…and 12 more updates</a>",
        result.html,
    )
    assert "…and 12 more updates: https://app.example.com/activity" in result.text
    assert "more update" not in render(content(group())).html


def test_see_all_activity_comes_before_the_first_item() -> None:
    """A "See all activity" link sits in the intro, above the first item."""
    html = render(content(group())).html
    first_link = html.index('href="https://app.example.com/activity"')
    assert first_link < html.index('class="item"')
    assert "See all activity" in html[first_link : html.index('class="item"')]


def test_count_is_shown_only_when_more_than_one() -> None:
    """'3 comments' appears for a group of three events, nothing for a single event."""
    assert "3 comments" in render(content(group(count=3))).html
    single = render(content(group(count=1)))
    assert "1 comment" not in single.html
    assert "1 comment" not in single.text


# --- subject -----------------------------------------------------------------------------


def test_subject_names_the_top_update_and_counts_the_rest() -> None:
    """The subject reads like 'Ana commented on “Trip photos”, plus 12 more updates'."""
    assert render(content(group(), more=12)).subject == (
        "Ana commented on “Trip photos”, plus 12 more updates"
    )
    assert render(content(group(index=1), group("like"))).subject == (
        "Ana commented on “Trip photos”, plus 1 more update"
    )
    assert render(content(group("follow", names=("Ana", "Ben")))).subject == (
        "Ana and Ben started following you"
    )
    assert render(content(group("mention", payload={}))).subject == "Ana mentioned you in a post"
    assert render(content()).subject == "Your daily digest · Tuesday, March 3, 2026"


def test_subject_has_one_and_however_many_actors() -> None:
    """Many actors and many more updates: one "and" (in the actors), never two."""
    busy = group("like", count=9, names=("Gabe", "Fern", "Ida"), actors=9)
    subject = render(content(busy, more=64)).subject
    assert subject == "Gabe, Fern and 7 others liked “Trip photos”, plus 64 more updates"
    assert subject.count(" and ") == 1


def test_subject_title_is_shortened() -> None:
    """A long title is cut in the subject so the subject stays readable."""
    subject = render(content(group(payload={"title": "word " * 200}))).subject
    assert len(subject) < 80


def test_subject_has_no_line_breaks_even_with_crlf_in_data() -> None:
    """CR/LF in titles or names can never reach the Subject header."""
    evil = group(
        payload={"title": "Trip\r\nBcc: victim@example.com\rX\nY\u2028Z"},
        names=("Ana\r\nBcc: x@example.com",),
    )
    subject = render(content(evil, more=2)).subject
    assert not re.search("[\r\n\u2028\u2029\x00-\x1f]", subject)
    assert "Bcc: victim@example.com" in subject  # kept as harmless text on one line


# --- HTML --------------------------------------------------------------------------------


HOSTILE = "<script>alert('x')</script> & \"quoted\" 'single' </td></table>"
# The template's own links: See all activity (intro and button), unsubscribe.
OWN_LINKS = [
    "https://app.example.com/activity",
    "https://app.example.com/activity",
    "https://app.example.com/u/TOKEN",
]


def test_user_text_is_escaped_in_html() -> None:
    """< > & " in titles, names and excerpts come out as entities; the text reads back intact."""
    hostile = group(
        "mention", payload={"title": HOSTILE, "excerpt": HOSTILE}, names=(HOSTILE, "Ben")
    )
    recipient = Recipient("u1", "a@example.com", HOSTILE, "daily", "UTC", "en")
    html = render(content(hostile), recipient=recipient).html
    assert "<script" not in html
    assert "</td></table>" not in html
    assert "&lt;script&gt;alert('x')&lt;/script&gt; &amp; &quot;quoted&quot; 'single'" in html
    parsed = parse(html)
    assert not any(e[0] == "start" and e[1] == "script" for e in parsed.events)
    text = "".join(parsed.text)
    assert text.count(HOSTILE) == 2  # title and excerpt, decoded back exactly
    assert f"Hi {first_name(HOSTILE)}," in text  # names are shortened, then escaped too


def test_quotes_in_urls_cannot_break_out_of_href() -> None:
    """A URL with quotes or angle brackets stays one attribute value (percent-encoded)."""
    evil = group(payload={"title": "t", "url": 'https://x.example/" onmouseover="alert(1)'})
    assert links(render(content(evil)).html) == OWN_LINKS  # the space makes it no URL at all
    tricky = group(payload={"title": "t", "url": "https://x.example/a\"'<b>"})
    html = render(content(tricky)).html
    assert "https://x.example/a%22%27%3Cb%3E" in links(html)
    assert not any(
        e[0] == "start" and any(a.startswith("on") for a in e[2:]) for e in parse(html).events
    )


def test_javascript_urls_are_dropped() -> None:
    """javascript:, data: and relative URLs give no link; the title is shown unlinked."""
    bad = [
        group(payload={"title": f"t{i}", "url": url}, index=i)
        for i, url in enumerate(["javascript:alert(1)", "data:text/html,x", "/x", " jAvAsCrIpT:x"])
    ]
    result = render(content(*bad))
    assert links(result.html) == OWN_LINKS
    assert "javascript" not in result.html.lower()
    assert "javascript" not in result.text.lower()
    assert all(f"t{i}" in result.html for i in range(4))


def test_mustache_in_payload_values_is_inert() -> None:
    """`{{x}}` and `{{#a}}` in user data are printed as text, never interpreted."""
    tricky = group(
        payload={
            "title": "{{subject}} {{{unsubscribe_url}}}",
            "excerpt": "{{#groups}}x{{/groups}}",
        },
        names=("{{> comment}}",),
    )
    result = render(content(tricky))
    for part in (result.html, result.text):
        assert "{{subject}} {{{unsubscribe_url}}}" in part
        assert "{{#groups}}x{{/groups}}" in part
    assert "{{&gt; comment}}" in result.html
    assert "{{> comment}}" in result.text
    assert "{{subject}}" in result.subject


def test_no_python_attribute_leaks_into_output() -> None:
    """Keys like `title` never resolve to str methods (chevron's getattr fallback)."""
    result = render(many(10))
    for part in (result.html, result.text, result.subject):
        assert "built-in method" not in part
        assert "<bound method" not in part


def test_css_is_inlined() -> None:
    """Elements the CSS targets carry style attributes; @media rules stay in <style>."""
    html = render(content(group())).html
    assert re.search(r'<td class="item-body" style="[^"]*border-bottom:1px solid #eef0f3', html)
    assert re.search(r'<h1 class="heading" style="[^"]*font-size:24px', html)
    assert "@media only screen and (max-width: 620px)" in html
    assert "!important" in html  # responsive rules must beat the inline styles


def test_every_category_uses_its_partial() -> None:
    """Each known category renders its own wording; any other category the generic one."""
    html = render(content(*(group(c, index=i) for i, c in enumerate(CATEGORIES)))).html
    for marker in (
        "badge-comment",
        "badge-like",
        "badge-mention",
        "badge-follow",
        "badge-generic",
        "commented on",
        "liked",
        "mentioned you in",
        "started following you",
        "</span> shared <a",
    ):
        assert marker in html


@pytest.mark.parametrize(
    ("category", "names", "actors", "expected"),
    [
        ("post.shared", ("Max",), 1, "Max shared “Trip photos”"),
        ("shared_album", ("Max",), 1, "Max shared “Trip photos”"),
        ("share", ("Rosa", "Ben"), 2, "Rosa and Ben shared “Trip photos”"),
        ("photo.tagged", ("Max",), 1, "Max tagged you in “Trip photos”"),
        ("comment.replied", ("Max",), 1, "Max replied to “Trip photos”"),
        ("post.liked", ("Max",), 1, "Max liked “Trip photos”"),
        ("doc.archived", ("Max",), 1, "Max archived “Trip photos”"),
        ("badge", ("Max",), 1, "New badge from Max on “Trip photos”"),
        ("badge", (), 0, "New badge on “Trip photos”"),
        ("post.shared", ("",), 1, "Someone shared “Trip photos”"),
        ("post.shared", ("", ""), 2, "2 people shared “Trip photos”"),
    ],
)
def test_any_category_reads_as_a_sentence(
    category: str, names: tuple[str, ...], actors: int, expected: str
) -> None:
    """Categories without a partial of their own still say who did what to what, in one
    sentence: a verb from the category's name, else "New <category> from <actor>"."""
    result = render(content(group(category, names=names, actors=actors)))
    assert f"* {expected}\n" in result.text
    assert result.subject == expected


def test_actor_ids_never_show_as_names() -> None:
    """An actor without a name is "someone" or counted, wherever the email names actors."""
    result = render(content(group("comment", names=("",), actors=1)))
    assert "Someone commented on" in result.text
    assert "Someone commented on" in result.html


def test_footer_has_unsubscribe_link_and_reason() -> None:
    """The body carries a visible unsubscribe link and says why the email was sent."""
    result = render(content(group()))
    assert "https://app.example.com/u/TOKEN" in links(result.html)
    assert "Manage preferences / unsubscribe" in result.html
    assert "ana.silva@example.com" in result.html


# --- text part ---------------------------------------------------------------------------


def test_text_part_is_plain_and_complete() -> None:
    """The text twin has no HTML tags and carries titles, links, more and unsubscribe."""
    text = render(many(6)).text
    assert not re.search(r"<[a-zA-Z/!][^>]*>", text)
    for i in (0, 1, 2, 4, 5):  # 3 is a follow: no title to show
        assert f"Item {i}" in text
    assert "https://example.com/i/0?a=1&b=2" in text  # not HTML-escaped in plain text
    assert "…and 7 more updates: https://app.example.com/activity" in text
    assert "Manage preferences / unsubscribe: https://app.example.com/u/TOKEN" in text
    assert "\n\n\n" not in text


def test_text_part_keeps_user_text_verbatim() -> None:
    """Plain text is not HTML: & and < from the user appear as they are."""
    text = render(content(group(payload={"title": "Tom & Jerry <3"}))).text
    assert "“Tom & Jerry <3”" in text


# --- pre-inlining ------------------------------------------------------------------------


EQUALITY_CASES = {
    "empty": content(),
    **{f"one {c}": content(group(c)) for c in CATEGORIES},
    "one without url or title": content(group(payload={})),
    "many": many(50),
    "weekly": content(group("like", count=9, names=("Ana", "Ben", "Cy"), actors=9)),
}


@pytest.mark.parametrize("name", list(EQUALITY_CASES))
def test_pre_inlined_render_equals_inlining_after_render(name: str) -> None:
    """Inlining the template once gives byte-for-byte what inlining every email gives."""
    c = EQUALITY_CASES[name]
    cadence = "weekly" if name == "weekly" else "daily"
    fast = RENDERER.render(DigestRequest(RECIPIENT, c, **{**KW, "cadence": cadence}))
    naive = RENDERER.render_naive(DigestRequest(RECIPIENT, c, **{**KW, "cadence": cadence}))
    assert fast == naive


def test_pre_inlined_render_equals_naive_for_hostile_text() -> None:
    """With quotes and non-ASCII in user text, both ways give the same parsed document."""
    # Normalised by parsing because premailer re-serializes chevron's `&quot;` in text nodes
    # as a bare `"`: the same document, different bytes. Subject and text must match exactly.
    hostile = content(
        group(payload={"title": HOSTILE, "excerpt": HOSTILE, "url": "https://x.example/ü"}),
        group("like", payload={"title": "ünïcödé 😀 עברית"}, names=(HOSTILE,), index=1),
        more=3,
    )
    recipient = Recipient("u1", "a@example.com", HOSTILE, "daily", "UTC", "en")
    fast = RENDERER.render(DigestRequest(recipient, hostile, **KW))
    naive = RENDERER.render_naive(DigestRequest(recipient, hostile, **KW))
    assert (fast.subject, fast.text) == (naive.subject, naive.text)
    assert parse(fast.html).events == parse(naive.html).events


def chevron_render(tokens: list[tuple[str, str]], ctx: dict[str, Any]) -> str:
    """The reference: plain chevron on the same tokens, no partials from disk."""
    return str(chevron.render(tokens, ctx, partials_path=None))


def assert_compiled_equal_chevron(ctx: dict[str, Any]) -> None:
    """Each compiled template, whole and in parts around the loop, renders what chevron does."""
    for compiled in (RENDERER._html, RENDERER._text):
        expected = chevron_render(compiled.template.tokens, ctx)
        assert compiled.render(ctx) == expected
        parts = compiled.parts(ctx)
        assert parts is not None  # the split around {{#groups}} is in use for the real template
        assert parts[0] + "".join(parts[1]) + parts[2] == expected
    assert RENDERER._subject.render(ctx) == chevron_render(RENDERER._subject.tokens, ctx)


@pytest.mark.parametrize("name", list(EQUALITY_CASES))
def test_compiled_templates_equal_plain_chevron(name: str) -> None:
    """The compiled HTML, text and subject templates render exactly what chevron renders."""
    assert_compiled_equal_chevron(
        RENDERER.context(DigestRequest(RECIPIENT, EQUALITY_CASES[name], **KW))
    )


def test_compiled_templates_equal_plain_chevron_for_odd_view_models() -> None:
    """Non-boolean flags, missing keys and falsy groups render as chevron renders them too."""
    ctx = RENDERER.context(DigestRequest(RECIPIENT, many(12), **KW))
    groups = ctx["groups"]
    odd = [{**groups[0], "is_comment": "yes", "has_url": 1}, {}, {"is_like": [{"title": "x"}]}]
    assert_compiled_equal_chevron({**ctx, "groups": [*odd, *groups[1:]]})
    missing = {k: v for k, v in ctx.items() if k not in ("groups", "top")}
    for compiled in (RENDERER._html, RENDERER._text):
        assert compiled.parts(missing) is None  # no list to loop over: rendered whole
        assert compiled.render(missing) == chevron_render(compiled.template.tokens, missing)


def test_loop_not_at_top_level_renders_whole() -> None:
    """A template whose {{#groups}} is nested has no parts, and still renders as chevron."""
    tokens = list(
        chevron.tokenizer.tokenize("{{#has_groups}}{{#groups}}{{title}}{{/groups}}{{/has_groups}}")
    )
    compiled = CompiledTemplate.compile(tokens)
    ctx = RENDERER.context(DigestRequest(RECIPIENT, many(3), **KW))
    assert compiled.parts(ctx) is None
    assert compiled.render(ctx) == "".join(g["title"] for g in ctx["groups"])


# --- properties --------------------------------------------------------------------------

_text = st.text(max_size=300)
_value = st.one_of(
    _text,
    st.integers(),
    st.floats(),
    st.booleans(),
    st.none(),
    st.lists(_text, max_size=2),
    st.dictionaries(_text, _text, max_size=2),
)
_url = st.one_of(
    _value,
    st.builds(
        lambda host, rest: f"https://{host}/{rest}",
        st.sampled_from(["x.example", "bücher.de"]),
        _text,
    ),
)
_payload = st.fixed_dictionaries(
    {},
    optional={"title": _value, "excerpt": _value, "text": _value, "url": _url},
)
_group = st.builds(
    lambda category, entity_type, payload, names, actors, count: group(
        category,
        entity_type=entity_type,
        payload=payload,
        names=tuple(names),
        actors=actors,
        count=count,
    ),
    category=st.one_of(st.sampled_from(CATEGORIES), _text),
    entity_type=_text,
    payload=_payload,
    names=st.lists(_text, max_size=3),
    actors=st.integers(min_value=0, max_value=10**6),
    count=st.integers(min_value=1, max_value=10**6),
)
_TEMPLATE_TAGS = {"html", "head", "meta", "title", "style", "body", "div", "table", "tr", "td"}
_TEMPLATE_TAGS |= {"p", "h1", "span", "strong", "a"}


def shown(g: dict[str, Any]) -> list[str]:
    """The user-text fields the partial of group `g` displays."""
    keys = ["actor_phrase"] if g["show_actor"] else []
    if g["show_title"]:
        keys.append("title")
    if g["has_excerpt"] and not (g["is_like"] or g["is_follow"]):
        keys.append("excerpt")
    return keys


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    groups=st.lists(_group, max_size=4), name=st.one_of(st.none(), _text), more=st.integers(0, 5)
)
def test_render_never_crashes_and_always_escapes(
    groups: list[Group], name: str | None, more: int
) -> None:
    """Any text in any payload field renders, and the HTML structure is the template's."""
    recipient = Recipient("u1", "a@example.com", name, "daily", "UTC", "en")
    c = content(*groups, more=more)
    result = RENDERER.render(DigestRequest(recipient, c, **KW))
    parsed = parse(result.html)
    tags = {e[1] for e in parsed.events if e[0] in ("start", "end")}
    assert tags <= _TEMPLATE_TAGS
    for event in parsed.events:
        if event[0] == "start":
            assert all(not a.lower().startswith("on") for a in event[2:])
    assert all(url.startswith(("https://", "http://")) for url in links(result.html))
    text = "".join(parsed.text)
    ctx = RENDERER.context(DigestRequest(recipient, c, **KW))
    for g in ctx["groups"]:
        for key in shown(g):
            assert g[key] in text  # escaped in the HTML source, decoded back exactly
            assert g[key] in result.text
    assert not re.search("[\r\n]", result.subject)
    assert result.subject
    assert result.subject.strip() == result.subject


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(groups=st.lists(_group, max_size=3), name=st.one_of(st.none(), _text))
def test_render_equals_naive_for_any_text(groups: list[Group], name: str | None) -> None:
    """Pre-inlined and per-email inlining give the same document for arbitrary user text."""
    recipient = Recipient("u1", "a@example.com", name, "daily", "UTC", "en")
    c = content(*groups)
    fast = RENDERER.render(DigestRequest(recipient, c, **KW))
    naive = RENDERER.render_naive(DigestRequest(recipient, c, **KW))
    assert (fast.subject, fast.text) == (naive.subject, naive.text)
    assert parse(fast.html).events == parse(naive.html).events


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    groups=st.lists(_group, max_size=4), name=st.one_of(st.none(), _text), more=st.integers(0, 5)
)
def test_compiled_templates_equal_chevron_for_any_text(
    groups: list[Group], name: str | None, more: int
) -> None:
    """For any view model the renderer builds, every compiled template gives chevron's bytes."""
    recipient = Recipient("u1", "a@example.com", name, "daily", "UTC", "en")
    assert_compiled_equal_chevron(
        RENDERER.context(DigestRequest(recipient, content(*groups, more=more), **KW))
    )


# --- loading -----------------------------------------------------------------------------


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    """A private copy of the templates directory to break."""
    copy = tmp_path / "templates"
    shutil.copytree(TEMPLATES, copy)
    return copy


def test_missing_templates_directory_is_one_clear_error(tmp_path: Path) -> None:
    """A missing template names the file it looked for."""
    with pytest.raises(DigestError, match=r"template not found: .*digest\.html\.mustache"):
        Renderer(tmp_path / "nowhere")


def test_missing_partial_is_named(templates: Path) -> None:
    """A missing partial names the partial file."""
    (templates / "partials" / "like.txt.mustache").unlink()
    with pytest.raises(DigestError, match=r"template not found: .*like\.txt\.mustache"):
        Renderer(templates)


def test_broken_template_names_the_file(templates: Path) -> None:
    """An unclosed section is a DigestError naming the broken file, on one line."""
    path = templates / "partials" / "comment.html.mustache"
    path.write_text(path.read_text() + "{{#oops}}\n")
    with pytest.raises(DigestError, match=r"broken template .*comment\.html\.mustache") as info:
        Renderer(templates)
    assert "\n" not in str(info.value)


def test_triple_stache_in_html_is_refused(templates: Path) -> None:
    """An HTML template that would print user data unescaped does not load."""
    path = templates / "partials" / "like.html.mustache"
    path.write_text(path.read_text().replace("{{title}}", "{{{title}}}"))
    with pytest.raises(DigestError, match="must not use"):
        Renderer(templates)


def test_mustache_in_style_attribute_is_refused(templates: Path) -> None:
    """A style attribute computed by Mustache would break pre-inlining, so it does not load."""
    path = templates / "digest.html.mustache"
    path.write_text(path.read_text().replace("<body>", '<body style="color:{{color}}">'))
    with pytest.raises(DigestError, match="style or class"):
        Renderer(templates)


def test_partial_tag_must_stand_alone(templates: Path) -> None:
    """Partials are included by whole lines; an inline partial tag is an error."""
    path = templates / "digest.txt.mustache"
    path.write_text(path.read_text().replace("{{> like}}", "x {{> like}}"))
    with pytest.raises(DigestError, match="stand alone"):
        Renderer(templates)
