"""Text from outside (bounce reasons, SMTP replies, addresses) made safe to print on a terminal.

A remote server's reply can carry escape sequences that retitle the window, clear the
screen, recolour or hide what follows, or a bidi override that shows text reversed. The CLI
prints such text only through `printable`: every control character becomes a visible escape.
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
