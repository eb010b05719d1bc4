"""Render a digest: a pure view model, Mustache templates, CSS inlined once per template.

Template layout (under `templates_dir`):

- `digest.html.mustache`, `digest.txt.mustache`, `subject.mustache`;
- `digest.css`, pasted over the `/* digest.css */` marker in the HTML template's `<style>`;
- `partials/NAME.html.mustache` and `partials/NAME.txt.mustache` for `{{> NAME}}`, looked
  up by the extension of the template that includes them (one per category: comment,
  like, mention, follow, and generic for any other category).

Partials are included textually when the templates load (like `#include`): a `{{> NAME}}`
tag must stand alone on its line, and that line is replaced by the partial's lines
(indented like the tag). The whole HTML template, partials included, is then inlined by
premailer once and tokenized by chevron once, so no render re-tokenizes anything
(chevron's own partial loading would re-tokenize every partial for every item). The
tokens are compiled once by `digest.mustache`, whose renders give chevron's output byte for
byte in a fraction of chevron's time (`render_naive` keeps plain chevron as the reference).

Pre-inlining gives the same HTML as inlining every rendered email (`render_naive`, which
the tests compare) only when templates keep three rules: no Mustache inside `style`
attributes, no Mustache-computed class names (write variants under `{{#flag}}`), and no
CSS that depends on rendered structure (no sibling or `:nth-child` selectors). HTML
templates never use `{{{ }}}` or `{{& }}`, every attribute is double-quoted, Mustache
appears in attributes only as a validated `href`, and section tags sit inside `<td>`
content (never between `<tr>` rows), where any HTML parser leaves them in place; loading
fails if premailer moved a tag. Sections only test booleans or lists of dicts: a string
as a section scope would let `{{title}}` resolve to `str.title` in chevron.

Size: Gmail clips a message over 102 KB. `render` shows as many of the digest's groups as
fit `BODY_BUDGET` as sent (at least one) and counts the rest in "…and N more". Each item
costs ~1.3 KB of inlined markup before any text: 50 groups with short titles fit, ~40 with
titles and excerpts at their limits, and 50 groups of emoji at every limit would take 1 MB.

Payload keys used: `title`, `url` (absolute http/https only), `excerpt` (else `text`);
actor names come from grouping (`actor_name`). Anything else in a payload is ignored, and
values that are not strings or numbers count as missing.
"""

from __future__ import annotations

import binascii
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit
from zoneinfo import ZoneInfo

import chevron
from chevron.tokenizer import ChevronError, tokenize

from digest.errors import DigestError
from digest.models import DigestContent, Group, Recipient, RenderedDigest, RunCadence
from digest.mustache import Template, Token

KNOWN_CATEGORIES = ("comment", "like", "mention", "follow")
DEFAULT_PRODUCT_NAME = "Digest"
TITLE_LIMIT = 140
SUBJECT_TITLE_LIMIT = 50
EXCERPT_LIMIT = 280
NAME_LIMIT = 40
URL_LIMIT = 2048  # of the URL as written into the email (ASCII, percent-encoded)
# Gmail clips a message over 102 KB ("[Message clipped]", the footer with the unsubscribe
# link hidden). The two bodies as sent (UTF-8 quoted-printable, CRLF line ends) get 94 KiB;
# the headers (at most ~4 KB: subject, names and addresses are length-limited) get the
# rest. A digest whose bodies would not fit shows fewer groups and counts the rest in
# "…and N more" (see `Renderer.render`).
BODY_BUDGET = 94 * 1024
CSS_MARKER = "/* digest.css */"

HTML_TEMPLATE = "digest.html.mustache"
TEXT_TEMPLATE = "digest.txt.mustache"
SUBJECT_TEMPLATE = "subject.mustache"
CSS_FILE = "digest.css"

GROUPS_LOOP = "groups"  # the section `Renderer` sizes item by item

_COUNT_NOUNS = {"comment": "comments", "like": "likes", "mention": "mentions", "follow": "follows"}
_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
_HEADINGS: Mapping[str, str] = {
    RunCadence.DAILY: "Your daily digest",
    RunCadence.WEEKLY: "Your weekly digest",
}
_CADENCE_PHRASES: Mapping[str, str] = {
    RunCadence.DAILY: "daily digest",
    RunCadence.WEEKLY: "weekly digest",
}
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")

# C0/C1 controls (CR/LF included), line/paragraph separators, bidi overrides and lone
# surrogates: none may reach a header, and none has a place in a one-line title.
_UNSAFE_CHARS = re.compile(
    "[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
_URL_FORBIDDEN = re.compile("[\x00-\x20\x7f-\x9f\u2028\u2029\ud800-\udfff]")
# Everything RFC 3986 allows unescaped except the quote characters; `%` keeps existing
# escapes. Non-ASCII and `"'<>\\^`{|}` get percent-encoded, so the URL is plain ASCII
# that libxml2 (premailer) serializes unchanged.
_URL_SAFE = "!#$%&()*+,-./:;=?@[]_~"
_NETLOC = re.compile(r"[A-Za-z0-9.-]+(?::[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?")
_PARTIAL_LINE = re.compile(r"^([ \t]*)\{\{>\s*([A-Za-z0-9_-]+)\s*\}\}[ \t]*(?:\r?\n|\Z)", re.M)
_STYLE_OR_CLASS_WITH_MUSTACHE = re.compile(r"""\b(?:style|class)\s*=\s*["'][^"']*\{\{""")

# premailer settings shared by load-time and per-email inlining, so both give the same bytes.
# strip_important=False keeps `!important` on @media rules (they must beat inline styles);
# width/height attributes are written by hand (Outlook reads them), never derived from CSS.
_PREMAILER_OPTIONS: dict[str, Any] = {
    "keep_style_tags": False,
    "strip_important": False,
    "remove_classes": False,
    "allow_network": False,
    "disable_validation": True,
    "disable_basic_attributes": ["width", "height"],
}


def clean_text(value: object, limit: int) -> str:
    """`value` as one safe line: scalars coerced, controls dropped, truncated to `limit`.

    Control characters (CR/LF included), line and paragraph separators, bidi overrides and
    lone surrogates become spaces; runs of whitespace become one space. Longer values are
    cut by `truncate` and end with "…". A value that would show no visible character (only
    spaces and format characters such as U+200B before the cut) becomes "".
    """
    text = _scalar(value)
    if text is None:
        return ""
    # Fast path: most values are short, printable (no controls, separators or bidi marks)
    # and already single-spaced.
    if len(text) <= limit and text.isprintable() and "  " not in text and text == text.strip():
        return text
    # Bound the work on huge values before the regex and split run over them; a value made
    # mostly of whitespace or controls may need all of it to fill `limit`.
    bound = limit * 4 + 16
    line = _one_line(text[:bound])
    if len(text) > bound and len(line) <= limit:
        line = _one_line(text)
    shown = truncate(line, limit)
    kept = shown if len(line) <= limit else shown[:-1]  # without the …
    if not any(unicodedata.category(c) not in _INVISIBLE for c in kept):
        return ""
    return shown


def _one_line(text: str) -> str:
    return " ".join(_UNSAFE_CHARS.sub(" ", text).split())


def truncate(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, on a word boundary when one is near, with ….

    The cut is at the last space when that keeps at least 60% of `limit`; otherwise
    mid-word, but never inside a user-perceived character: a base letter keeps its
    combining marks, variation selectors and skin-tone modifiers, an emoji ZWJ sequence and
    a flag (a pair of regional indicators) stay whole or go whole. (One "character" longer
    than the whole limit, like a letter under hundreds of combining marks, is cut anyway,
    losing marks only.) Trailing punctuation, spaces and ZWJs before the … are dropped.
    """
    if len(text) <= limit:
        return text
    end = limit - 1  # leaves room for the …
    space = text.rfind(" ", 0, end + 1)
    if space >= limit * 0.6:  # a word boundary not too far back; else cut mid-word
        end = space
    else:
        end = _cluster_start(text, end) or _cluster_start(text, end, marks=False) or end
    return text[:end].rstrip(" ,.;:-–—\u200d") + "…"


_ZWJ = "\u200d"
# Grapheme_Cluster_Break=Extend besides the general categories M*: the zero-width
# non-joiner, emoji modifiers (skin tones) and tag characters (subdivision flags).
_EXTEND_EXTRA = re.compile("[\u200c\U0001f3fb-\U0001f3ff\U000e0020-\U000e007f]")
_REGIONAL = re.compile("[\U0001f1e6-\U0001f1ff]")
_INVISIBLE = frozenset({"Cc", "Cf", "Cs", "Zs", "Zl", "Zp"})


def _cluster_start(text: str, end: int, *, marks: bool = True) -> int:
    """The nearest index at or before `end` where cutting keeps whole graphemes (approximately
    UAX #29: no break before Extend or after a ZWJ, regional indicators in pairs).

    With `marks=False`, combining marks may be cut off their base (the fallback for one
    grapheme longer than the limit); ZWJ sequences and flags still are not split.
    """
    while end > 0:
        char, before = text[end], text[end - 1]
        joined = before == _ZWJ or char == _ZWJ or _EXTEND_EXTRA.match(char)
        if joined or (marks and unicodedata.category(char)[0] == "M"):
            end -= 1
        elif _REGIONAL.match(char) and _REGIONAL.match(before):
            run = end  # regional indicators pair up from the start of their run
            while run > 0 and _REGIONAL.match(text[run - 1]):
                run -= 1
            return end if (end - run) % 2 == 0 else end - 1
        else:
            return end
    return 0


def safe_url(value: object) -> str | None:
    """An absolute http(s) URL as plain ASCII, or None for anything else (`javascript:`, ...)."""
    if not isinstance(value, str):
        return None
    url = value.strip()
    if not url or len(url) > URL_LIMIT or _URL_FORBIDDEN.search(url):
        return None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    prefix = f"{scheme}://{parts.netloc}"
    if (
        scheme not in ("http", "https")
        or not parts.hostname
        or url[: len(prefix)].lower() != prefix.lower()
    ):
        return None
    netloc = parts.netloc
    if not netloc.isascii():
        try:
            netloc = parts.hostname.encode("idna").decode("ascii")
        except UnicodeError:
            return None
        if parts.port is not None:
            netloc = f"{netloc}:{parts.port}"
    # Host, port and IPv6 brackets only: no user-info (it hides the real host), no quotes.
    if not _NETLOC.fullmatch(netloc):
        return None
    # Percent-encoding can make a URL 12 times longer (an emoji is 4 bytes, `%F0%9F%98%80`):
    # the limit applies to what goes into the email.
    safe = f"{scheme}://{netloc}{quote(url[len(prefix) :], safe=_URL_SAFE)}"
    return safe if len(safe) <= URL_LIMIT else None


def actor_phrase(names: tuple[str, ...], actor_count: int) -> str:
    """'Ana', 'Ana and Ben', 'Ana, Ben and Cy' or 'Ana, Ben and 7 others'."""
    shown = [n for n in (clean_text(n, NAME_LIMIT) for n in names) if n]
    total = max(actor_count, len(shown))
    if not shown:
        if total == 0:
            return "Someone"
        return "1 person" if total == 1 else f"{total} people"
    if total > len(shown):  # unnamed actors: name at most two, count the rest
        shown = shown[:2]
        others = total - len(shown)
        return f"{', '.join(shown)} and {others} {'other' if others == 1 else 'others'}"
    if len(shown) == 1:
        return shown[0]
    return f"{', '.join(shown[:-1])} and {shown[-1]}"


def digest_context(
    recipient: Recipient,
    content: DigestContent,
    *,
    cadence: str,
    period_start: datetime,
    base_url: str,
    unsubscribe_url: str,
    product_name: str = DEFAULT_PRODUCT_NAME,
) -> dict[str, Any]:
    """The view model every template renders from: plain strings, numbers, flags and lists."""
    groups = [_group_context(g) for g in content.groups]
    more = max(content.more_groups, 0)
    others = max(content.total_groups - 1, 0)
    heading = _HEADINGS.get(cadence, "Your digest")
    period_label = _period_label(cadence, period_start, recipient.timezone)
    greeting = clean_text(recipient.name, NAME_LIMIT) or clean_text(
        recipient.email.rpartition("@")[0] or recipient.email, NAME_LIMIT
    )
    activity_url = f"{base_url.rstrip('/')}/activity"
    return {
        "product_name": clean_text(product_name, 60) or DEFAULT_PRODUCT_NAME,
        "heading": heading,
        "period_label": period_label,
        "cadence_phrase": _CADENCE_PHRASES.get(cadence, "email"),
        "greeting_name": greeting or "there",
        "email": clean_text(recipient.email, 254),
        "preheader": f"Hi {greeting or 'there'}, here’s what you missed — {period_label}.",
        "groups": groups,
        "has_groups": bool(groups),
        "top": groups[:1],
        "has_others": others > 0,
        "others_count": others,
        "others_noun": "update" if others == 1 else "updates",
        "has_more": more > 0,
        "more": more,
        "more_label": f"{more} more {'update' if more == 1 else 'updates'}",
        "more_url": activity_url,
        "activity_url": activity_url,
        "unsubscribe_url": unsubscribe_url,
        "total_events": content.total_events,
    }


def _group_context(group: Group) -> dict[str, Any]:
    """One ranked group as the partials see it; every key always present."""
    payload: Mapping[str, Any] = group.payload if isinstance(group.payload, Mapping) else {}
    category = group.category if group.category in KNOWN_CATEGORIES else "generic"
    real_title = clean_text(payload.get("title"), TITLE_LIMIT)
    title = real_title or _a_thing(group.entity_type)
    subject_title = truncate(real_title, SUBJECT_TITLE_LIMIT)
    excerpt = clean_text(payload.get("excerpt"), EXCERPT_LIMIT) or clean_text(
        payload.get("text"), EXCERPT_LIMIT
    )
    url = safe_url(payload.get("url"))
    count = group.event_count
    noun = _COUNT_NOUNS.get(group.category, "updates")
    return {
        "is_comment": category == "comment",
        "is_like": category == "like",
        "is_mention": category == "mention",
        "is_follow": category == "follow",
        "is_generic": category == "generic",
        "category_label": _category_label(group.category),
        "actor_phrase": actor_phrase(group.actor_names, group.actor_count),
        "has_actors": group.actor_count > 0 or any(group.actor_names),
        "title": title,
        "title_quoted": f"“{real_title}”" if real_title else title,
        "subject_title": f"“{subject_title}”" if subject_title else title,
        "has_excerpt": bool(excerpt),
        "excerpt": excerpt,
        "has_url": url is not None,
        "url": url or "",
        "count": count,
        "multiple": count > 1,
        "count_label": f"{count} {noun}",
    }


def _scalar(value: object) -> str | None:
    """Strings as they are, numbers and booleans as JSON would write them, else None."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | Decimal):
        try:
            return str(value)
        except ValueError:  # an int too long to print (sys.int_info.str_digits_check_threshold)
            return None
    return None


@lru_cache(maxsize=256)
def _category_label(category: str) -> str:
    """'Shared post' for `shared_post`: how the generic partial names an unknown category."""
    return clean_text(category.replace("_", " "), 40).capitalize() or "Activity"


@lru_cache(maxsize=256)
def _a_thing(entity_type: str) -> str:
    """'a post', 'an album' — the fallback title of an entity without one."""
    noun = clean_text(entity_type.replace("_", " "), 40) or "item"
    return f"{'an' if noun[0].lower() in 'aeiou' else 'a'} {noun}"


@lru_cache(maxsize=512)
def _zone(name: str) -> ZoneInfo:
    """The user's zone, or UTC when the name is unknown (a bad zone must not block a digest)."""
    try:
        return ZoneInfo(name)
    except (ValueError, KeyError, OSError):
        return ZoneInfo("UTC")


def _period_label(cadence: str, period_start: datetime, timezone: str) -> str:
    """'Tuesday, 3 March 2026' in the user's zone; weekly: 'Week ending Tuesday, 3 March 2026'."""
    if period_start.tzinfo is None:
        period_start = period_start.replace(tzinfo=UTC)
    local = period_start.astimezone(_zone(timezone))
    day = f"{_WEEKDAYS[local.weekday()]}, {local.day} {_MONTHS[local.month - 1]} {local.year}"
    return f"Week ending {day}" if cadence == RunCadence.WEEKLY else day


# --- templates ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Sources:
    """Template sources with partials and CSS included, before any inlining."""

    html: str
    text: str
    subject: str


@dataclass(frozen=True)
class CompiledTemplate:
    """A template compiled once (`digest.mustache`), also cut around its top-level
    `{{#groups}}` loop so `Renderer` can size a digest item by item."""

    template: Template
    split: tuple[Template, Template, Template] | None  # before the loop, its body, after it

    @classmethod
    def compile(cls, tokens: list[Token]) -> CompiledTemplate:
        """Compile `tokens`, cut around their first top-level `{{#groups}}`, if any."""
        template = Template(tokens)
        return cls(template, template.split(GROUPS_LOOP))

    def render(self, ctx: dict[str, Any]) -> str:
        """The template rendered against `ctx`."""
        return self.template.render(ctx)

    def parts(self, ctx: dict[str, Any]) -> tuple[str, list[str], str] | None:
        """The rendering split into what comes before the loop, each item, and the rest;
        None when the template has no such loop or `ctx` has no list for it."""
        items = ctx.get(GROUPS_LOOP)
        if self.split is None or not isinstance(items, list):
            return None
        before, body, _ = self.split
        return before.render(ctx), [body.render(item, ctx) for item in items], self.tail_of(ctx)

    def tail_of(self, ctx: dict[str, Any]) -> str:
        """What follows the loop, rendered against `ctx` (templates with the loop only)."""
        assert self.split is not None
        return self.split[2].render(ctx)


class Renderer:
    """Renders digests from one templates directory, loaded, inlined and tokenized once."""

    def __init__(self, templates_dir: Path, *, product_name: str = DEFAULT_PRODUCT_NAME):
        self.templates_dir = Path(templates_dir)
        self.product_name = product_name
        self._sources = _load_sources(self.templates_dir)
        html_tokens = _tokenize(_inline(self._sources.html, HTML_TEMPLATE), HTML_TEMPLATE)
        # premailer must not have moved, dropped or changed any Mustache tag.
        if _tags(html_tokens) != _tags(_tokenize(self._sources.html, HTML_TEMPLATE)):
            raise DigestError(
                f"{HTML_TEMPLATE}: CSS inlining moved Mustache tags; keep section tags inside"
                " <td> content and Mustache out of attributes other than href"
            )
        self._html = CompiledTemplate.compile(html_tokens)
        self._text = CompiledTemplate.compile(_tokenize(self._sources.text, TEXT_TEMPLATE))
        self._subject = Template(_tokenize(self._sources.subject, SUBJECT_TEMPLATE))

    def context(
        self,
        recipient: Recipient,
        content: DigestContent,
        *,
        cadence: str,
        period_start: datetime,
        base_url: str,
        unsubscribe_url: str,
    ) -> dict[str, Any]:
        """The view model, with the rendered subject added (the HTML `<title>` shows it)."""
        ctx = digest_context(
            recipient,
            content,
            cadence=cadence,
            period_start=period_start,
            base_url=base_url,
            unsubscribe_url=unsubscribe_url,
            product_name=self.product_name,
        )
        subject = clean_text(self._subject.render(ctx), 998)
        ctx["subject"] = subject or f"{ctx['heading']} · {ctx['period_label']}"
        return ctx

    def render(
        self,
        recipient: Recipient,
        content: DigestContent,
        *,
        cadence: str,
        period_start: datetime,
        base_url: str,
        unsubscribe_url: str,
    ) -> RenderedDigest:
        """Subject, HTML (CSS already inlined) and text of one digest.

        The bodies fit `BODY_BUDGET` as sent: when all of `content`'s groups would not, the
        first groups that do (at least one) are shown and the rest join "…and N more"
        (`shown_content` tells which).
        """
        return self._fitted(
            recipient,
            content,
            cadence=cadence,
            period_start=period_start,
            base_url=base_url,
            unsubscribe_url=unsubscribe_url,
        )[1]

    def shown_content(
        self,
        recipient: Recipient,
        content: DigestContent,
        *,
        cadence: str,
        period_start: datetime,
        base_url: str,
        unsubscribe_url: str,
    ) -> DigestContent:
        """`content` as `render` shows it: its groups cut to fit `BODY_BUDGET`, if needed."""
        return self._fitted(
            recipient,
            content,
            cadence=cadence,
            period_start=period_start,
            base_url=base_url,
            unsubscribe_url=unsubscribe_url,
        )[0]

    def render_naive(
        self,
        recipient: Recipient,
        content: DigestContent,
        *,
        cadence: str,
        period_start: datetime,
        base_url: str,
        unsubscribe_url: str,
    ) -> RenderedDigest:
        """The reference: plain chevron on the raw template, then premailer on this one email
        (of the groups `render` shows)."""
        kw: dict[str, Any] = {
            "cadence": cadence,
            "period_start": period_start,
            "base_url": base_url,
            "unsubscribe_url": unsubscribe_url,
        }
        ctx = self.context(recipient, self.shown_content(recipient, content, **kw), **kw)
        raw_html = chevron.render(self._sources.html, ctx, partials_path=None)
        return RenderedDigest(
            subject=ctx["subject"],
            html=_inline(raw_html, HTML_TEMPLATE),
            text=chevron.render(self._sources.text, ctx, partials_path=None),
        )

    def _fitted(
        self, recipient: Recipient, content: DigestContent, **kw: Any
    ) -> tuple[DigestContent, RenderedDigest]:
        """The most groups (at least one) whose rendering fits `BODY_BUDGET`, rendered."""

        def attempt(shown: DigestContent) -> RenderedDigest:
            ctx = self.context(recipient, shown, **kw)
            return RenderedDigest(ctx["subject"], self._html.render(ctx), self._text.render(ctx))

        ctx = self.context(recipient, content, **kw)
        html_parts, text_parts = self._html.parts(ctx), self._text.parts(ctx)
        rendered = RenderedDigest(
            ctx["subject"],
            _joined(html_parts) if html_parts else self._html.render(ctx),
            _joined(text_parts) if text_parts else self._text.render(ctx),
        )
        count = len(content.groups)
        if _fits(rendered) or count <= 1:
            return content, rendered
        if html_parts and text_parts:
            # Items end with a line break, so their sizes as sent add up. Count as many as
            # fit beside the head and the largest tail ("…and N more" with N at its top).
            more = max(content.total_groups, count)
            worst = {**ctx, "has_more": True, "more": more, "more_label": f"{more} more updates"}
            html_fixed = html_parts[0] + self._html.tail_of(worst)
            used = sent_size(html_fixed) + sent_size(text_parts[0] + self._text.tail_of(worst))
            count = 0
            for html_item, text_item in zip(html_parts[1], text_parts[1], strict=True):
                used += sent_size(html_item) + sent_size(text_item)
                if used > BODY_BUDGET:
                    break
                count += 1
            shown = _first(content, max(count, 1))
            result = attempt(shown)
            if _fits(result) or count <= 1:
                return shown, result
        # Otherwise: size grows with the number of groups shown, so binary search for the
        # most that fit.
        best = _first(content, 1)
        best_rendered = attempt(best)
        low, high = 2, count - 1
        while low <= high:
            middle = (low + high) // 2
            shown = _first(content, middle)
            result = attempt(shown)
            if _fits(result):
                best, best_rendered, low = shown, result, middle + 1
            else:
                high = middle - 1
        return best, best_rendered


def _joined(parts: tuple[str, list[str], str]) -> str:
    head, items, tail = parts
    return head + "".join(items) + tail


def _first(content: DigestContent, count: int) -> DigestContent:
    """`content` showing only its first `count` groups (the others count as more)."""
    return DigestContent(content.groups[:count], content.total_groups, content.total_events)


def sent_size(body: str) -> int:
    """Bytes of `body` in the message as `digest.message` writes it: UTF-8 quoted-printable
    (3 bytes for `=` and for each byte outside printable ASCII, soft line breaks at 76)
    with CRLF line ends (and one added at the end)."""
    encoded = binascii.b2a_qp(body.encode(), istext=True)
    return len(encoded) + encoded.count(b"\n") + 2


def _fits(rendered: RenderedDigest) -> bool:
    """Whether both bodies together fit BODY_BUDGET as sent."""
    html, text = rendered.html, rendered.text
    if _size_bound(html) + _size_bound(text) <= BODY_BUDGET:  # most digests; 10x cheaper
        return True
    return sent_size(html) + sent_size(text) <= BODY_BUDGET


def _size_bound(body: str) -> int:
    """An upper bound of `sent_size(body)`: every byte outside printable ASCII, every `=`
    and one character per line end escaped (3 bytes), a soft line break (3 bytes) per 73
    encoded bytes and per line, a CR per line."""
    size = len(body.encode())
    lines = body.count("\n") + 1
    # at most one escaped space, tab or dot per line end
    escaped = size - len(body.encode("ascii", "ignore")) + body.count("=") + lines
    encoded = size + 2 * escaped
    return encoded + 3 * (encoded // 73 + lines) + lines + 2


def _read(path: Path) -> str:
    """A template file's text, or a one-line DigestError naming it."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DigestError(f"template not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DigestError(f"cannot read template {path}: {exc}") from None


def _load_sources(root: Path) -> _Sources:
    """Read every template, check each alone, and include partials and CSS."""
    html = _include_partials(root, HTML_TEMPLATE, "html")
    css = _read(root / CSS_FILE)
    if "{{" in css or "</" in css:
        raise DigestError(f"{root / CSS_FILE}: CSS must not contain '{{{{' or '</'")
    if html.count(CSS_MARKER) != 1:
        raise DigestError(f"{root / HTML_TEMPLATE}: needs exactly one {CSS_MARKER} marker")
    html = html.replace(CSS_MARKER, css.strip())
    if "{{{" in html or "{{&" in html:
        raise DigestError(f"{root / HTML_TEMPLATE}: HTML templates must not use {{{{{{ or {{{{&")
    if _STYLE_OR_CLASS_WITH_MUSTACHE.search(html):
        raise DigestError(
            f"{root / HTML_TEMPLATE}: no Mustache inside style or class attributes"
            " (write variants under {{#flag}})"
        )
    return _Sources(
        html=html,
        text=_include_partials(root, TEXT_TEMPLATE, "txt"),
        subject=_tokenized_source(root / SUBJECT_TEMPLATE),
    )


def _include_partials(root: Path, name: str, kind: str) -> str:
    """`name` with every standalone `{{> partial}}` line replaced by `partials/partial.KIND...`."""
    path = root / name
    source = _tokenized_source(path)

    def include(match: re.Match[str]) -> str:
        indent, partial = match.group(1), match.group(2)
        text = _tokenized_source(root / "partials" / f"{partial}.{kind}.mustache")
        if "{{>" in text:
            raise DigestError(f"{root / 'partials' / partial}.{kind}.mustache: nested partials")
        if not text.endswith("\n"):
            text += "\n"
        return "".join(indent + line for line in text.splitlines(keepends=True))

    expanded = _PARTIAL_LINE.sub(include, source)
    if "{{>" in expanded:
        raise DigestError(f"{path}: a {{{{> partial}}}} tag must stand alone on its line")
    return expanded


def _tokenized_source(path: Path) -> str:
    """A template's text, after checking that it parses on its own (errors name the file)."""
    source = _read(path)
    _tokenize(source, str(path))
    return source


def _tokenize(source: str, name: str) -> list[Token]:
    """chevron's tokens for `source`, or a DigestError naming the template."""
    try:
        return list(tokenize(source))
    except (ChevronError, IndexError, ValueError) as exc:
        detail = " ".join(str(exc).split())
        raise DigestError(f"broken template {name}: {detail}") from None


def _tags(tokens: list[Token]) -> list[Token]:
    """The Mustache tags of a token list, literals left out."""
    return [t for t in tokens if t[0] != "literal"]


def _inline(html: str, name: str) -> str:
    """`html` with digest.css moved into style attributes (only @media rules stay in <style>)."""
    # Imported here: premailer (lxml, cssutils, requests) costs ~100 ms to import, and
    # `digest.message` / data import use this module's text helpers without inlining.
    import premailer

    try:
        out = premailer.Premailer(**_PREMAILER_OPTIONS).transform(html, pretty_print=False)
    except Exception as exc:  # premailer/lxml/cssutils raise many types; report one line
        raise DigestError(f"cannot inline CSS of {name}: {exc}") from None
    return str(out)
