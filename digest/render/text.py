"""Text from events made safe to show: one-line cleaning, truncation that keeps graphemes
whole, and http(s) URLs as plain ASCII. No templates here: the MIME writer uses
`clean_text` for header values and must not load the Mustache compiler with it.
"""

from __future__ import annotations

import re
import unicodedata
from decimal import Decimal
from urllib.parse import quote, urlsplit

URL_LIMIT = 2048  # of the URL as written into the email (ASCII, percent-encoded)


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


def clean_text(value: object, limit: int, *, whole_words: bool = False) -> str:
    """`value` as one safe line: scalars coerced, controls dropped, truncated to `limit`.

    Control characters (CR/LF included), line and paragraph separators, bidi overrides and
    lone surrogates become spaces; runs of whitespace become one space. Longer values are
    cut by `truncate` (`whole_words`: at any word boundary, for names) and end with "…". A
    value that would show no visible character (only spaces and format characters such as
    U+200B before the cut) becomes "".
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
    shown = truncate(line, limit, whole_words=whole_words)
    kept = shown if len(line) <= limit else shown[:-1]  # without the …
    if not any(unicodedata.category(c) not in _INVISIBLE for c in kept):
        return ""
    return shown


def _one_line(text: str) -> str:
    return " ".join(_UNSAFE_CHARS.sub(" ", text).split())


def truncate(text: str, limit: int, *, whole_words: bool = False) -> str:
    """`text` cut to at most `limit` characters, on a word boundary when one is near, with ….

    The cut is at the last space when that keeps at least 60% of `limit` (with
    `whole_words`, any space after the first word: a name is never cut mid-word while it has
    a word boundary to cut at); otherwise mid-word, but never inside a user-perceived
    character: a base letter keeps its combining marks, variation selectors and skin-tone
    modifiers, an emoji ZWJ sequence and a flag (a pair of regional indicators) stay whole
    or go whole. (One "character" longer than the whole limit, like a letter under hundreds
    of combining marks, is cut anyway, losing marks only.) Trailing punctuation, spaces and
    ZWJs before the … are dropped.
    """
    if len(text) <= limit:
        return text
    end = limit - 1  # leaves room for the …
    space = text.rfind(" ", 0, end + 1)
    if space >= limit * 0.6 or (whole_words and space > 0):  # a word boundary; else mid-word
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
