"""Channels and their transports: `make` builds the email transport a name asks for
(`ses,smtp` is a fallback list), the modules under `email/` send MIME messages, `slack` and
`webhook` send the other channels' messages (built by `slack_blocks` and `webhook_payload`),
and the interface every transport implements is `digest.channels.base`.

Transports are imported when made: boto3 and smtplib load only for the ones in use.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from digest.channels.base import SendError, Transport
from digest.config import Settings
from digest.errors import DigestError
from digest.urls import is_loopback

TRANSPORTS = ("file", "null", "smtp", "ses")
# Transports that mail real people: their links must work from any inbox, over HTTPS.
REAL_MAIL = ("smtp", "ses")
_CHOICES = (
    f"choose from {', '.join(TRANSPORTS)}, or a comma-separated fallback list such as ses,smtp"
)

__all__ = [
    "REAL_MAIL",
    "TRANSPORTS",
    "SendError",
    "Transport",
    "make",
    "parse",
    "require_https_links",
]


def parse(name: str) -> list[str]:
    """The transport names in `name` (`ses,smtp` is a fallback list), each one known."""
    names = [part.strip() for part in name.split(",") if part.strip()]
    if not names:
        raise DigestError(f"no transport given ({_CHOICES})")
    for part in names:
        if part not in TRANSPORTS:
            raise DigestError(f"unknown transport {part!r} ({_CHOICES})")
    return names


def require_https_links(settings: Settings, names: Iterable[str]) -> None:
    """Refuse real mail whose unsubscribe links would not be HTTPS (RFC 8058 needs it);
    a loopback base URL, a developer's own machine, may stay plain HTTP."""
    real = [name for name in names if name in REAL_MAIL]
    if not real:
        return
    parts = urlsplit(settings.base_url)
    if parts.scheme.lower() == "https" and parts.hostname:
        return
    if parts.scheme.lower() == "http" and is_loopback(parts.hostname):
        return
    raise DigestError(
        f"DIGEST_BASE_URL must be an https:// URL to send real mail ({','.join(real)}), got "
        f"{settings.base_url!r}: List-Unsubscribe links need HTTPS (RFC 8058); "
        "only localhost may use http://"
    )


def make(name: str, settings: Settings) -> Transport:
    """The transport called `name`, configured from `settings`; `ses,smtp` means fallback."""
    names = parse(name)
    if "," in name:
        from digest.channels.fallback import FallbackTransport

        return FallbackTransport([make(part, settings) for part in names])
    (only,) = names
    if only == "smtp":
        from digest.channels.email.smtp import SmtpTransport

        return SmtpTransport(settings)
    if only == "ses":
        from digest.channels.email.ses import SesTransport

        return SesTransport(settings)
    if only == "file":
        from digest.channels.email.file import FileTransport

        return FileTransport(settings.outbox)
    from digest.channels.email.null import NullTransport

    return NullTransport()
