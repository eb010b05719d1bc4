"""Mail transports behind one small interface (`digest.transports.base.Transport`)."""

from __future__ import annotations

from digest.config import Settings
from digest.errors import DigestError
from digest.transports.base import OutgoingMessage, SendError, SendResult, Transport

TRANSPORTS = ("file", "null", "smtp", "ses")

__all__ = ["TRANSPORTS", "OutgoingMessage", "SendError", "SendResult", "Transport", "make"]


def make(name: str, settings: Settings) -> Transport:
    """The transport called `name`, configured from `settings`; `ses,smtp` means fallback."""
    if "," in name:
        from digest.transports.fallback import FallbackTransport

        names = [part.strip() for part in name.split(",") if part.strip()]
        return FallbackTransport([make(part, settings) for part in names])
    if name == "smtp":
        from digest.transports.smtp import SmtpTransport

        return SmtpTransport(settings)
    if name == "ses":
        from digest.transports.ses import SesTransport

        return SesTransport(settings)
    if name == "file":
        from digest.transports.file import FileTransport

        return FileTransport(settings.outbox)
    if name == "null":
        from digest.transports.null import NullTransport

        return NullTransport()
    raise DigestError(
        f"unknown transport {name!r} (choose from {', '.join(TRANSPORTS)}, "
        "or a comma-separated fallback list such as ses,smtp)"
    )
