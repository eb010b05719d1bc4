"""Mail transports behind one small interface (`digest.transports.base.Transport`)."""

from __future__ import annotations

from digest.config import Settings
from digest.errors import DigestError
from digest.transports.base import OutgoingMessage, SendError, SendResult, Transport

TRANSPORTS = ("file", "null")

__all__ = ["TRANSPORTS", "OutgoingMessage", "SendError", "SendResult", "Transport", "make"]


def make(name: str, settings: Settings) -> Transport:
    """The transport called `name`, configured from `settings`."""
    if name == "file":
        from digest.transports.file import FileTransport

        return FileTransport(settings.outbox)
    if name == "null":
        from digest.transports.null import NullTransport

        return NullTransport()
    raise DigestError(f"unknown transport {name!r} (choose from: {', '.join(TRANSPORTS)})")
