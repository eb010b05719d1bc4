"""Settings: one frozen object, read once at the edge.

Each setting comes from, in rising priority: its default, the settings file
(`DIGEST_SETTINGS_FILE` or `digest --settings FILE`, TOML with the field names below as
top-level keys), the environment (`DIGEST_<NAME>` unless noted), then command-line options.
Secrets (`secret_key`, `smtp_password`) never appear in a repr or a log line.
"""

from __future__ import annotations

import os
import re
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from digest.errors import DigestError

if TYPE_CHECKING:
    from digest.render.brand import Brand

DELIVERY_MODES = ("at-least-once", "at-most-once")
SMTP_SECURITY = ("starttls", "tls", "none")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")
TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


def setting(
    default: Any,
    *,
    env: str | None = None,
    minimum: float | None = None,
    choices: tuple[str, ...] | None = None,
    secret: bool = False,
    factory: Callable[[], Any] | None = None,
    upper: bool = False,
    check: Callable[[str], str] | None = None,
) -> Any:
    """A dataclass field with its environment name, bounds and secrecy (`factory` makes
    the default when it depends on the environment; `upper` takes text in any case;
    `check` normalises a text value or raises ValueError saying what it must be)."""
    meta = {"env": env, "minimum": minimum, "choices": choices, "upper": upper, "check": check}
    if factory is not None:
        return field(default_factory=factory, repr=not secret, metadata=meta)
    return field(default=default, repr=not secret, metadata=meta)


def default_data_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where the embedded server lives unless DIGEST_DATA_DIR says otherwise: one folder per
    user, whatever the current folder, `$XDG_DATA_HOME/digest` or `~/.local/share/digest`."""
    env = os.environ if env is None else env
    xdg = env.get("XDG_DATA_HOME", "")
    # XDG: a relative path in these variables is invalid and ignored
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "digest"
    return Path.home() / ".local" / "share" / "digest"


# Checks of text settings: each returns the value normalised, or raises ValueError with
# what the value must be.


def _not_empty(value: str) -> str:
    if not value:
        raise ValueError("some text")
    return value


def _email_address(value: str) -> str:
    from digest.channels.email.mime import HeaderError, validate_email

    try:
        return validate_email(value)
    except HeaderError:
        raise ValueError("an email address") from None


def _https_url(value: str) -> str:
    from digest.render.text import safe_url

    url = safe_url(value)
    if url is None or not url.startswith("https://"):
        raise ValueError("an https:// URL")
    return url


def _hex_color(value: str) -> str:
    if not re.fullmatch(r"#[0-9a-fA-F]{6}", value):
        raise ValueError("a colour like #2563eb")
    return value.lower()


@dataclass(frozen=True)
class Settings:
    """Everything a digest process needs to know, with production-minded defaults."""

    database_url: str | None = setting(None, secret=True)
    data_dir: Path = setting(None, factory=default_data_dir)
    transport: str = setting("file")
    outbox: Path = setting(Path("outbox"))
    # Runs per claim. 100 rather than 50: fewer statements and commits per digest, less CPU
    # (docs/performance.md); a crash leaves up to five batches to the lease, four of them
    # possibly sent (README, delivery semantics).
    batch_size: int = setting(100, minimum=1)
    lease_seconds: int = setting(300, minimum=5)
    # After PostgreSQL (re)starts, no lease is taken back for this long: one that ran out
    # while the server was down says nothing about its worker, which records what it sent
    # within seconds of the server answering (digest.watchdog).
    restart_grace_seconds: int = setting(60, env="DIGEST_RESTART_GRACE", minimum=0)
    max_attempts: int = setting(5, minimum=1)
    # Groups shown: 20 rows and the folded likes keep the busiest digest near 2,000 px
    # tall; the rest are "…and N more", a link to the activity page.
    group_cap: int = setting(20, minimum=1)
    stagger_seconds: int = setting(3600, minimum=0)
    # Connections `digest schedule` inserts on at once, each over its own slice of users.
    schedule_jobs: int = setting(2, minimum=1)
    backoff_base_seconds: int = setting(30, env="DIGEST_BACKOFF_BASE", minimum=0)
    backoff_max_seconds: int = setting(3600, env="DIGEST_BACKOFF_MAX", minimum=0)
    watchdog_interval_seconds: int = setting(15, env="DIGEST_WATCHDOG_INTERVAL", minimum=1)
    poll_interval_seconds: float = setting(1.0, env="DIGEST_POLL_INTERVAL", minimum=0.001)
    base_url: str = setting("http://localhost:8000")
    from_address: str = setting("digest@localhost")
    from_name: str | None = setting(None)  # None: the product's name
    reply_to: str | None = setting(None, check=_email_address)
    # branding: what the email shows of the product
    product_name: str = setting("Digest", check=_not_empty)
    logo_url: str | None = setting(None, check=_https_url)
    accent_color: str | None = setting(None, check=_hex_color)
    postal_address: str | None = setting(None)
    secret_key: str | None = setting(None, secret=True)
    categories: frozenset[str] | None = setting(None)
    # An event dated further ahead of the database's clock than this is refused: the claim
    # takes only events whose time has come, so it would wait, unseen, until then.
    max_clock_skew_seconds: int = setting(300, env="DIGEST_MAX_CLOCK_SKEW", minimum=0)
    templates_dir: Path = setting(TEMPLATES, env="DIGEST_TEMPLATES")
    # delivery
    delivery: str = setting("at-least-once", choices=DELIVERY_MODES)
    send_concurrency: int = setting(16, minimum=1)
    max_send_rate: float | None = setting(None, minimum=0.001)
    unsubscribe_mailto: str | None = setting(None)
    # smtp transport
    smtp_host: str = setting("localhost")
    smtp_port: int = setting(587, minimum=1)
    smtp_security: str = setting("starttls", choices=SMTP_SECURITY)
    smtp_username: str | None = setting(None)
    smtp_password: str | None = setting(None, secret=True)
    smtp_ca_file: Path | None = setting(None)
    smtp_timeout: float = setting(30.0, minimum=0.01)
    # ses transport (region and credentials otherwise from the standard AWS chain)
    ses_region: str | None = setting(None)
    ses_configuration_set: str | None = setting(None)
    ses_endpoint_url: str | None = setting(None)
    ses_timeout: float = setting(30.0, minimum=0.01)
    # feedback (SES events through SNS)
    sns_topics: frozenset[str] = setting(frozenset())
    transient_bounce_limit: int = setting(3, minimum=1)
    # web (unsubscribe pages, feedback webhooks)
    web_host: str = setting("127.0.0.1")
    web_port: int = setting(8000, minimum=0)
    # logs (digest.logs): from this level up, as key=value text or JSON lines
    log_level: str = setting("INFO", choices=LOG_LEVELS, upper=True)
    log_format: str = setting("text", choices=LOG_FORMATS)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, file: Path | None = None) -> Settings:
        """Defaults, then the settings file, then DIGEST_* variables; a bad value is one line."""
        env = os.environ if env is None else env
        raw: dict[str, tuple[str, object]] = {}
        if file is None and env.get("DIGEST_SETTINGS_FILE"):
            file = Path(env["DIGEST_SETTINGS_FILE"])
        if file is not None:
            for key, value in _read_file(file).items():
                raw[key] = (f"{file}: {key}", value)
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise DigestError(f"{file}: unknown setting {unknown[0]!r}")
        for f in fields(cls):
            name = f.metadata.get("env") or "DIGEST_" + f.name.upper()
            if name in env:
                raw[f.name] = (name, env[name])
        return cls(data_dir=default_data_dir(env))._with_raw(raw)

    @property
    def sender_name(self) -> str:
        """The From header's display name: DIGEST_FROM_NAME, else the product's name."""
        return self.from_name or self.product_name

    @property
    def branding(self) -> Brand:
        """What the email shows of the product."""
        from digest.render.brand import Brand

        return Brand(self.product_name, self.logo_url, self.accent_color, self.postal_address)

    def with_(self, **changes: object) -> Settings:
        """A copy with some fields changed (command-line options override the environment)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    def _with_raw(self, raw: Mapping[str, tuple[str, object]]) -> Settings:
        hints = typing.get_type_hints(type(self))
        values = {
            f.name: _parse(label, value, hints[f.name], f.metadata)
            for f in fields(self)
            if f.name in raw
            for label, value in [raw[f.name]]
        }
        if "base_url" in values and isinstance(values["base_url"], str):
            values["base_url"] = values["base_url"].rstrip("/")
        return self.with_(**values)


def _read_file(path: Path) -> dict[str, object]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise DigestError(f"cannot read settings file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise DigestError(f"{path}: not valid TOML: {exc}") from None


def _parse(label: str, value: object, hint: Any, meta: Mapping[str, Any]) -> object:
    """Turn a text (environment) or TOML value into the field's type, within its bounds."""
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in (
        typing.get_args(hint)
    )
    base = next(a for a in typing.get_args(hint) if a is not type(None)) if optional else hint
    text = value.strip() if isinstance(value, str) else value
    if meta.get("upper") and isinstance(text, str):
        text = text.upper()
    if optional and text == "":
        return None
    try:
        if base is int:
            parsed: object = int(text)  # type: ignore[call-overload]
        elif base is float:
            parsed = float(text)  # type: ignore[arg-type]
        elif base is Path:
            parsed = Path(str(text))
        elif typing.get_origin(base) is frozenset:
            items = text.split(",") if isinstance(text, str) else _as_list(text)
            parsed = frozenset(str(i).strip() for i in items if str(i).strip())
        else:
            parsed = str(text)
    except (TypeError, ValueError):
        kind = {int: "a whole number", float: "a number"}.get(base, "text")
        raise DigestError(f"{label} must be {kind}, got {value!r}") from None
    minimum = meta.get("minimum")
    if minimum is not None and isinstance(parsed, int | float) and parsed < minimum:
        raise DigestError(f"{label} must be at least {minimum:g}, got {parsed:g}")
    choices = meta.get("choices")
    if choices and parsed not in choices:
        raise DigestError(f"{label} must be one of {', '.join(choices)}, got {parsed!r}")
    check = meta.get("check")
    if check is not None and isinstance(parsed, str):
        try:
            parsed = check(parsed)
        except ValueError as exc:
            raise DigestError(f"{label} must be {exc}, got {value!r}") from None
    return parsed


def _as_list(value: object) -> list[object]:
    if not isinstance(value, list):
        raise TypeError("expected a list")
    return value
