"""Settings: defaults, then the settings file, then the environment; bad values are one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from digest.config import Settings
from digest.errors import DigestError


def test_environment_overrides_file_overrides_default(tmp_path: Path) -> None:
    """A value in the environment beats the file, which beats the default."""
    file = tmp_path / "digest.toml"
    file.write_text('batch_size = 20\nsmtp_host = "mail.example.com"\ncategories = ["a", "b"]\n')
    settings = Settings.from_env({"DIGEST_BATCH_SIZE": "30"}, file=file)
    assert settings.batch_size == 30
    assert settings.smtp_host == "mail.example.com"
    assert settings.categories == frozenset({"a", "b"})
    assert settings.lease_seconds == 300


def test_settings_file_from_environment(tmp_path: Path) -> None:
    """DIGEST_SETTINGS_FILE names the file when no --settings is given."""
    file = tmp_path / "digest.toml"
    file.write_text('delivery = "at-most-once"\nmax_send_rate = 12.5\n')
    settings = Settings.from_env({"DIGEST_SETTINGS_FILE": str(file)})
    assert (settings.delivery, settings.max_send_rate) == ("at-most-once", 12.5)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DIGEST_BATCH_SIZE": "lots"}, "DIGEST_BATCH_SIZE must be a whole number, got 'lots'"),
        ({"DIGEST_LEASE_SECONDS": "1"}, "DIGEST_LEASE_SECONDS must be at least 5, got 1"),
        (
            {"DIGEST_DELIVERY": "maybe"},
            "DIGEST_DELIVERY must be one of at-least-once, at-most-once",
        ),
        (
            {"DIGEST_SMTP_SECURITY": "ssl"},
            "DIGEST_SMTP_SECURITY must be one of starttls, tls, none",
        ),
        ({"DIGEST_POLL_INTERVAL": "0"}, "DIGEST_POLL_INTERVAL must be at least 0.001"),
        ({"DIGEST_LOG_FORMAT": "xml"}, "DIGEST_LOG_FORMAT must be one of text, json, got 'xml'"),
        (
            {"DIGEST_LOG_LEVEL": "loud"},
            "DIGEST_LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got 'LOUD'",
        ),
    ],
)
def test_bad_values_are_refused_with_the_variable_name(env: dict[str, str], message: str) -> None:
    """Each bad value names its variable and what was expected."""
    with pytest.raises(DigestError, match="^" + message.replace(".", r"\.")):
        Settings.from_env(env)


def test_log_settings_come_from_the_environment_or_the_file(tmp_path: Path) -> None:
    """DIGEST_LOG_FORMAT and DIGEST_LOG_LEVEL (any case) are settings like the others."""
    assert (Settings().log_level, Settings().log_format) == ("INFO", "text")
    settings = Settings.from_env({"DIGEST_LOG_LEVEL": "warning", "DIGEST_LOG_FORMAT": "json"})
    assert (settings.log_level, settings.log_format) == ("WARNING", "json")
    file = tmp_path / "digest.toml"
    file.write_text('log_format = "json"\n')
    assert Settings.from_env({}, file=file).log_format == "json"


def test_bad_file_is_refused_in_one_line(tmp_path: Path) -> None:
    """Unknown keys, broken TOML and a missing file each give one clear message."""
    file = tmp_path / "digest.toml"
    file.write_text("bacth_size = 3\n")
    with pytest.raises(DigestError, match="unknown setting 'bacth_size'"):
        Settings.from_env({}, file=file)
    file.write_text("batch_size = \n")
    with pytest.raises(DigestError, match="not valid TOML"):
        Settings.from_env({}, file=file)
    with pytest.raises(DigestError, match="cannot read settings file"):
        Settings.from_env({}, file=tmp_path / "missing.toml")


def test_secrets_never_show_in_repr() -> None:
    """Passwords, keys and the database URL stay out of logs that print settings."""
    settings = Settings.from_env(
        {
            "DIGEST_SECRET_KEY": "k3y",
            "DIGEST_SMTP_PASSWORD": "hunter2",
            "DIGEST_DATABASE_URL": "postgresql://u:pw@h/db",
        }
    )
    text = repr(settings)
    assert "k3y" not in text
    assert "hunter2" not in text
    assert "pw@" not in text
    assert settings.smtp_password == "hunter2"


def test_empty_optional_means_unset() -> None:
    """An empty variable for an optional setting is the same as leaving it out."""
    settings = Settings.from_env({"DIGEST_MAX_SEND_RATE": "", "DIGEST_SECRET_KEY": ""})
    assert settings.max_send_rate is None
    assert settings.secret_key is None


def test_branding_settings_are_read_and_checked() -> None:
    """Product name, logo, accent colour, postal address and reply-to come from DIGEST_*;
    the sender's name defaults to the product's."""
    settings = Settings.from_env(
        {
            "DIGEST_PRODUCT_NAME": "Acme",
            "DIGEST_LOGO_URL": "https://cdn.acme.example/logo.png",
            "DIGEST_ACCENT_COLOR": "#0F766E",
            "DIGEST_POSTAL_ADDRESS": "Acme Inc., 1 Main St, Springfield",
            "DIGEST_REPLY_TO": " Support@Acme.Example ",
        }
    )
    assert settings.product_name == "Acme"
    assert settings.sender_name == "Acme"
    assert settings.accent_color == "#0f766e"
    assert settings.reply_to == "Support@acme.example"
    assert settings.branding.logo_url == "https://cdn.acme.example/logo.png"
    assert settings.branding.postal_address == "Acme Inc., 1 Main St, Springfield"
    assert Settings.from_env({"DIGEST_FROM_NAME": "Acme News"}).sender_name == "Acme News"
    plain = Settings.from_env({})
    assert (plain.product_name, plain.sender_name, plain.accent_color) == ("Digest", "Digest", None)
    assert (plain.logo_url, plain.postal_address, plain.reply_to) == (None, None, None)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"DIGEST_LOGO_URL": "http://acme.example/l.png"},
            "DIGEST_LOGO_URL must be an https:// URL",
        ),
        ({"DIGEST_LOGO_URL": "javascript:alert(1)"}, "DIGEST_LOGO_URL must be an https:// URL"),
        ({"DIGEST_ACCENT_COLOR": "blue"}, "DIGEST_ACCENT_COLOR must be a colour like #2563eb"),
        ({"DIGEST_ACCENT_COLOR": "#fff"}, "DIGEST_ACCENT_COLOR must be a colour like #2563eb"),
        ({"DIGEST_REPLY_TO": "not an address"}, "DIGEST_REPLY_TO must be an email address"),
        ({"DIGEST_REPLY_TO": "a@b.example\r\nBcc: x@y.example"}, "DIGEST_REPLY_TO must be"),
        ({"DIGEST_PRODUCT_NAME": "   "}, "DIGEST_PRODUCT_NAME must be some text"),
    ],
)
def test_bad_branding_is_refused_in_one_line(env: dict[str, str], message: str) -> None:
    """A logo that is not https, a colour that is not #rrggbb, an address that is not one."""
    with pytest.raises(DigestError, match="^" + message.replace(".", r"\.")) as info:
        Settings.from_env(env)
    assert "\n" not in str(info.value)
