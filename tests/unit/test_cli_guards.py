"""Pure pieces of the CLI's hardening: terminal-safe text, hidden passwords, the transport
list, HTTPS links for real mail, the per-user data folder and --since bounds."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from digest import channels as transports
from digest.cli.app import UserError
from digest.config import Settings
from digest.db import hide_password, libpq_url, scrub_secrets, sqlalchemy_url
from digest.errors import DigestError, ValidationError
from digest.support import parse_since
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


def test_error_lines_show_control_characters_and_keep_their_own_lines(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An error quoting a server's reply prints its escapes inert; a listing keeps its lines."""
    UserError("SES said: \x1b[2Jpaused\x07\nfile.jsonl:3: bad line").show()
    assert capsys.readouterr().err == (
        "digest: error: SES said: \\x1b[2Jpaused\\x07\nfile.jsonl:3: bad line\n"
    )


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


# -- 12 and 14: the transport list ------------------------------------------------------


@pytest.mark.parametrize("name", ["", " ", ",", " , "])
def test_an_empty_transport_is_refused(name: str) -> None:
    """An empty --transport is an error, never a silent default."""
    with pytest.raises(DigestError, match="no transport given"):
        transports.parse(name)


@pytest.mark.parametrize("name", ["pigeon", "smtp,pigeon", "SES"])
def test_an_unknown_transport_is_named(name: str) -> None:
    """An unknown name is reported as unknown, whatever else the list holds."""
    with pytest.raises(DigestError, match="unknown transport"):
        transports.parse(name)


def test_transport_list_is_parsed_in_order() -> None:
    """A fallback list keeps its order and loses the blanks around names."""
    assert transports.parse(" ses , smtp ") == ["ses", "smtp"]


# -- 12: real mail needs HTTPS links ------------------------------------------------------


@pytest.mark.parametrize(
    ("base_url", "names"),
    [
        ("http://example.com", ["smtp"]),
        ("http://example.com", ["ses"]),
        ("http://example.com", ["file", "ses"]),
        ("http://localhost.example.com", ["smtp"]),
        ("http://128.0.0.1", ["smtp"]),
        ("ftp://example.com", ["smtp"]),
        ("example.com", ["smtp"]),
    ],
)
def test_real_mail_refuses_a_plain_http_base_url(base_url: str, names: list[str]) -> None:
    """smtp and ses (alone or in a fallback list) refuse links that are not HTTPS."""
    with pytest.raises(DigestError, match="must be an https:// URL"):
        transports.require_https_links(Settings(base_url=base_url), names)


@pytest.mark.parametrize(
    ("base_url", "names"),
    [
        ("https://example.com", ["smtp"]),
        ("https://example.com", ["ses", "smtp"]),
        ("http://localhost:8000", ["smtp"]),
        ("http://LOCALHOST", ["ses"]),
        ("http://127.0.0.1:8000", ["smtp"]),
        ("http://127.5.6.7", ["smtp"]),
        ("http://[::1]:8000", ["smtp"]),
        ("http://example.com", ["file"]),
        ("http://example.com", ["null"]),
    ],
)
def test_https_or_loopback_or_local_transports_pass(base_url: str, names: list[str]) -> None:
    """HTTPS links pass, loopback hosts may use http, and file/null never mail anyone."""
    transports.require_https_links(Settings(base_url=base_url), names)


# -- 13: one data folder per user, whatever the current folder -------------------------------


def test_data_dir_defaults_to_the_users_data_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without DIGEST_DATA_DIR or XDG_DATA_HOME the data lives in ~/.local/share/digest."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    expected = tmp_path / "home" / ".local" / "share" / "digest"
    assert Settings.from_env({}).data_dir == expected
    assert Settings().data_dir == expected


def test_data_dir_follows_xdg_data_home_unless_relative(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An absolute XDG_DATA_HOME holds `digest/`; a relative one is ignored, as XDG says."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert Settings.from_env({"XDG_DATA_HOME": str(tmp_path / "xdg")}).data_dir == (
        tmp_path / "xdg" / "digest"
    )
    assert Settings.from_env({"XDG_DATA_HOME": "relative"}).data_dir == (
        tmp_path / "home" / ".local" / "share" / "digest"
    )


def test_digest_data_dir_wins(tmp_path: Path) -> None:
    """DIGEST_DATA_DIR overrides the per-user default."""
    env = {"DIGEST_DATA_DIR": str(tmp_path / "d"), "XDG_DATA_HOME": str(tmp_path / "xdg")}
    assert Settings.from_env(env).data_dir == tmp_path / "d"


# -- 14: --since far in the past -------------------------------------------------------------


@pytest.mark.parametrize("value", ["99999999d", "999999999999d", "9" * 30 + "h"])
def test_since_too_far_back_is_one_clear_error(value: str) -> None:
    """A span reaching before year 1 is a validation error, not an OverflowError."""
    with pytest.raises(ValidationError, match=r"^--since: \S+ reaches too far back$"):
        parse_since(value, datetime(2026, 1, 1, tzinfo=UTC))


@pytest.mark.parametrize("scheme", ["postgres", "postgresql", "postgresql+psycopg"])
def test_postgres_url_schemes_are_accepted(scheme: str) -> None:
    """`postgres://` (Heroku's and libpq's alias) works like `postgresql://`."""
    url = f"{scheme}://app:pw@db.example:5433/app"
    assert sqlalchemy_url(url) == "postgresql+psycopg://app:pw@db.example:5433/app"
    assert libpq_url(url) == "postgresql://app:pw@db.example:5433/app"


def test_other_databases_are_refused() -> None:
    """A MySQL URL is one clear line, not a driver error."""
    with pytest.raises(DigestError, match="only PostgreSQL is supported"):
        sqlalchemy_url("mysql://app@db/app")
