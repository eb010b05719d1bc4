"""What every channel's transports implement, and how a send can fail.

A channel (email today; Slack and signed webhooks beside it) has its own kind of message
and one or more transports that send it: `Sender[M]` for a message type `M`. Every
transport reports success as a `SendResult` and failure as a `SendError`, so the worker's
retry and delivery records do not depend on the channel.
"""

from __future__ import annotations

from typing import Protocol, TypeAlias, TypeVar

from digest.models import FailureKind, OutgoingMessage, SendResult

M_contra = TypeVar("M_contra", contravariant=True)


class SendError(Exception):
    """A send that did not succeed, classified for the retry decision.

    - transient: try again later (throttling, 4xx, timeouts before DATA);
    - permanent: this message will never go (invalid address, 5xx for the recipient);
    - unknown: the provider may or may not have it (reply lost after DATA);
    - fatal: the transport itself cannot send (account paused): stop sending everywhere.

    `down` marks a failure of the service itself, not of this recipient (connection
    refused, timeout before the message was handed over, 421, a 5xx to MAIL FROM or AUTH):
    a fallback transport tries the next one. Never set it when the provider may already
    hold the message.

    `gone` marks a destination that no longer exists (a webhook endpoint's 410, a Slack
    channel archived or not found): record it and send it nothing more until it changes.
    `deferred` marks a message our own per-destination rate limit held back before any
    request was made: nothing can have been sent, and the queue may put the run back
    without spending an attempt.
    """

    def __init__(
        self,
        kind: FailureKind,
        reason: str,
        *,
        retry_after: float | None = None,
        down: bool = False,
        gone: bool = False,
        deferred: bool = False,
    ):
        super().__init__(reason)
        self.kind: FailureKind = kind
        self.reason = reason
        self.retry_after = retry_after
        self.down = down
        self.gone = gone
        self.deferred = deferred


class Sender(Protocol[M_contra]):
    """Sends one message at a time; may keep a connection open between sends.

    Sends come from a pool of threads, concurrently. A transport that does no network
    I/O may set a class attribute `inline = True` to be called from the worker's own
    thread instead.
    """

    name: str

    def send(self, message: M_contra) -> SendResult:
        """Hand `message` to the provider or raise `SendError`."""
        ...

    def close(self) -> None:
        """Release connections; the transport may not be used afterwards."""
        ...


# An email transport: `ses`, `smtp`, `file`, `null`, or a fallback list of them.
Transport: TypeAlias = Sender[OutgoingMessage]
