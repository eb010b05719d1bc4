"""Text for people: text from outside made safe to print, and counts in English.

A remote server's reply can carry escape sequences that retitle the window, clear the
screen, recolour or hide what follows, or a bidi override that shows text reversed. The CLI
prints such text only through `printable`: every control character becomes a visible escape.
Every count a summary or a sentence shows goes through `plural` ("1 event", "2 events").
"""

from __future__ import annotations

import re

# C0 controls, DEL and C1 controls; the bidi embeddings, overrides, isolates and marks; and
# the Unicode line and paragraph separators.
_CONTROL = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]"
)
# Line breaks and tabs mean nothing harmful: a space keeps a reason on its one line.
_SPACES = frozenset("\t\n\v\f\r\u2028\u2029")


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _SPACES:
        return " "
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """`text` with control characters as visible escapes (`\\x1b`) and line breaks as spaces."""
    return _CONTROL.sub(_escape, text)


_SIBILANT = ("s", "x", "z", "ch", "sh")


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """`1 event`, `2 events`, `1,200 deliveries`: the count and the noun it takes in English."""
    if count == 1:
        return f"{count:,} {noun}"
    if plural_form is None:
        if noun.endswith("y") and noun[-2:-1] not in ("a", "e", "o", "u", ""):
            plural_form = noun[:-1] + "ies"
        elif noun.endswith(_SIBILANT):
            plural_form = noun + "es"
        else:
            plural_form = noun + "s"
    return f"{count:,} {plural_form}"
