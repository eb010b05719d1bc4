"""Pure pieces of the CLI's hardening: terminal-safe text, hidden passwords, the transport
list, HTTPS links for real mail, the per-user data folder and --since bounds."""

from __future__ import annotations

import pytest

from digest.db import hide_password, scrub_secrets
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


# -- 10: credentials never echoed ------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:Hunter2@127.0.0.1:notaport/db",
        "postgresql://app:Hunter2@127.0.0.1/db",
        "postgresql://app:Hun/ter2@db.example.com/db",
        "postgresql://app:Hunter2@[::1/db",
        "host=127.0.0.1 password=Hunter2 port=x",
        "host=127.0.0.1 password = 'Hunter2 x' port=x",
    ],
)
def test_hide_password_masks_parsable_and_broken_urls(url: str) -> None:
    """A database URL or conninfo shown in a message keeps its host and loses its password."""
    shown = hide_password(url)
    assert "Hunter2" not in shown
    assert "Hun/ter2" not in shown
    assert any(host in shown for host in ("127.0.0.1", "db.example.com", "[::1"))


def test_scrub_secrets_removes_the_password_from_a_driver_message() -> None:
    """A driver message that quotes the password (or the whole URL) is shown without it."""
    url = "postgresql://app:S3cr%40t@db.example.com/db"
    message = (
        'invalid percent-encoded token: "S3cr@t" in postgresql://app:S3cr%40t@db.example.com/db'
    )
    scrubbed = scrub_secrets(message, [url])
    assert "S3cr" not in scrubbed
    assert "db.example.com" in scrubbed
