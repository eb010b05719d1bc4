"""Compose: a claimed run and the settings in, the message to send out, or the outcome that
makes sending pointless (no events, a blocked or invalid address, an at-most-once attempt
that may already have sent it).

Pure: no database, no I/O. It is the one path from a run to its message that the worker,
`digest preview` and the bench all take, so a preview shows exactly what would be sent,
and the bench measures what the worker does: the unsubscribe token and URL, the render,
the Message-ID and idempotency key, the MIME bytes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from digest import unsubscribe
from digest.channels.email import mime
from digest.config import Settings
from digest.errors import DigestError
from digest.models import (
    Cadence,
    ClaimedRun,
    Delivery,
    DeliveryStatus,
    DigestRequest,
    Outcome,
    OutgoingMessage,
    Recipient,
    RenderedDigest,
    RunStatus,
)

if TYPE_CHECKING:
    from digest.render.renderer import Renderer

# Used to sign unsubscribe links when no DIGEST_SECRET_KEY is set; only the `file` and
# `null` transports accept it (their mail never reaches a real inbox).
DEV_SECRET = "digest-development-key-not-for-real-mail"


def make_renderer(settings: Settings) -> Renderer:
    """The renderer of the settings' templates, with the product's branding."""
    from digest.render.renderer import Renderer

    return Renderer(settings.templates_dir, brand=settings.branding)


def signing_key(settings: Settings, transport_name: str) -> str:
    """The key for unsubscribe tokens; real transports refuse to run without one."""
    if settings.secret_key:
        return settings.secret_key
    if transport_name in ("file", "null"):
        return DEV_SECRET
    raise DigestError(f"DIGEST_SECRET_KEY must be set to send real mail ({transport_name})")


class Composer:
    """Turns claimed runs into email messages, with the settings read once."""

    def __init__(self, settings: Settings, renderer: Renderer, key: str, transport: str):
        self.renderer = renderer
        self.key = key
        self.transport = transport  # the name a suppressed run's delivery row records
        self.base_url = settings.base_url.rstrip("/")
        self.domain = settings.from_address.rpartition("@")[2] or "localhost"
        self.from_name = settings.sender_name
        self.from_address = settings.from_address
        self.reply_to = settings.reply_to
        self.mailto = settings.unsubscribe_mailto
        self.at_most_once = settings.delivery == "at-most-once"

    def compose(self, run: ClaimedRun) -> Outcome | OutgoingMessage:
        """The message to send for `run` (its digest, to its recipient), or the outcome that
        makes sending pointless."""
        recipient, digest = run.recipient, run.digest
        count = digest.total_events
        if self.at_most_once and run.sending_attempt is not None:
            # the previous attempt reached the send step and never recorded its outcome
            return Outcome(
                run,
                RunStatus.FAILED,
                count,
                error=f"unknown_outcome: attempt {run.sending_attempt} may have sent it",
            )
        if digest.is_empty:
            return Outcome(run, RunStatus.SKIPPED, 0, error="no events")
        if recipient is None:
            return Outcome(run, RunStatus.SKIPPED, count, error="no recipient")
        blocked = blocked_reason(recipient)
        if blocked:
            return Outcome(
                run,
                RunStatus.SKIPPED,
                count,
                error=blocked,
                delivery=Delivery(
                    recipient.email, self.transport, DeliveryStatus.SUPPRESSED, reason=blocked
                ),
            )
        try:
            to_address = mime.validate_email(recipient.email)
        except mime.HeaderError as exc:
            return Outcome(run, RunStatus.FAILED, count, error=f"invalid email address: {exc}")
        rendered, token, unsubscribe_url = self._rendered(run, recipient, to_address)
        message_id = mime.make_message_id(run.id, self.domain, run.bucket)
        idempotency_key = mime.idempotency_key(run.id)
        mailto = self.mailto
        data = mime.build_message(
            from_name=self.from_name,
            from_address=self.from_address,
            to_name=recipient.name,
            to_address=to_address,
            subject=rendered.subject,
            html=rendered.html,
            text=rendered.text,
            message_id=message_id,
            idempotency_key=idempotency_key,
            list_unsubscribe_url=unsubscribe_url,
            list_unsubscribe_mailto=f"mailto:{mailto}?subject=unsubscribe-{token}"
            if mailto
            else None,
            date=run.frozen_at,
            reply_to=self.reply_to,
        )
        return OutgoingMessage(
            run_id=run.id,
            attempt=run.attempt,
            user_id=run.user_id,
            to_address=to_address,
            message_id=message_id,
            idempotency_key=idempotency_key,
            data=data,
            html=rendered.html,
            bucket=run.bucket,
        )

    def render(self, run: ClaimedRun) -> RenderedDigest:
        """`run`'s digest as `compose` renders it, whatever would keep it from being sent
        (what `digest preview` shows); DigestError when the run has no recipient."""
        recipient = run.recipient
        if recipient is None:
            raise DigestError(f"no recipient with user id {run.user_id!r}")
        try:
            to_address = mime.validate_email(recipient.email)
        except mime.HeaderError:  # shown as stored: sending would fail the run instead
            to_address = recipient.email
        return self._rendered(run, recipient, to_address)[0]

    def _rendered(
        self, run: ClaimedRun, recipient: Recipient, to_address: str
    ) -> tuple[RenderedDigest, str, str]:
        """The rendered digest, its unsubscribe token and URL (the token's day is the day of
        the message's Date: a retry sends the same link)."""
        token = unsubscribe.make_token(
            self.key,
            run.bucket,
            recipient.recipient_id,
            recipient.subscription_version,
            run.frozen_at,
        )
        unsubscribe_url = f"{self.base_url}/u/{token}"
        if to_address != recipient.email:  # rendered with the address as sent
            recipient = recipient._replace(email=to_address)
        request = DigestRequest(
            recipient, run.digest, run.cadence, run.period_start, self.base_url, unsubscribe_url
        )
        return self.renderer.render(request), token, unsubscribe_url


def blocked_reason(recipient: Recipient) -> str | None:
    """Why `recipient` must not be mailed (unsubscribed, cadence off, suppressed), or None."""
    if recipient.unsubscribed_at is not None:
        return "unsubscribed"
    if recipient.cadence == Cadence.OFF:
        return "cadence off"
    if recipient.suppressed_reason is not None:
        return f"suppressed: {recipient.suppressed_reason}"
    return None
