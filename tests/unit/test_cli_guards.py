"""Pure pieces of the CLI's hardening: terminal-safe text, hidden passwords, the transport
list, HTTPS links for real mail, the per-user data folder and --since bounds."""

from __future__ import annotations


import pytest

from digest.terminal import printable

# -- 9: control characters never reach the terminal ---------------------------------------


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("550 \x1b[31mred\x1b[0m", "550 \\x1b[31mred\\x1b[0m"),
        ("\x1b]0;owned\x07title", "\\x1b]0;owned\\x07title"),
        ("C1 \x9b31m CSI", "C1 \\x9b31m CSI"),
        ("del\x7f", "del\\x7f"),
        ("abc\u202eevil\u2066x\u2069", "abc\\u202eevil\\u2066x\\u2069"),
        ("line one\r\nline two\ttab", "line one  line two tab"),
        ("Zoë <zoe@exämple.com> 日本", "Zoë <zoe@exämple.com> 日本"),
    ],
)
def test_printable_neutralises_control_characters(raw: str, shown: str) -> None:
    """C0, DEL, C1 and bidi controls show as visible escapes; line breaks and tabs as spaces."""
    assert printable(raw) == shown
