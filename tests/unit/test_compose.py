"""Compose: one path from a claimed run to its message, shared by the worker, preview and bench."""

from __future__ import annotations

from datetime import UTC, datetime
from email import message_from_bytes, policy
from pathlib import Path

from digest.buckets import bucket_of
from digest.compose import Composer, make_renderer
from digest.config import Settings
from digest.models import (
    ClaimedRun,
    DeliveryStatus,
    DigestContent,
    Group,
    Outcome,
    OutgoingMessage,
    Recipient,
    RunStatus,
)
from digest.render import Renderer

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
NOW = datetime(2026, 3, 3, 7, 0, tzinfo=UTC)
SETTINGS = Settings(base_url="https://app.example.com", from_address="digest@example.com")
COMPOSER = Composer(SETTINGS, Renderer(TEMPLATES), "secret", "smtp")
GROUP = Group("comment", "post", "1", 2, 1, ("Ana",), NOW, 7, {"title": "Trip photos"})
DIGEST = DigestContent((GROUP,), 1, 2)
ANA = Recipient("u1", "ana@example.com", "Ana", "daily", "UTC", "en", recipient_id=4)


def run_for(recipient: Recipient | None, digest: DigestContent = DIGEST) -> ClaimedRun:
    """A claimed run of `recipient`'s daily digest."""
    return ClaimedRun(
        9, bucket_of("u1"), "u1", "daily", NOW, 1, NOW, recipient=recipient, digest=digest
    )


def test_a_preview_is_the_html_and_subject_that_are_sent() -> None:
    """`render` (what `digest preview` shows) gives the very HTML and subject `compose` sends."""
    run = run_for(ANA)
    outgoing = COMPOSER.compose(run)
    assert isinstance(outgoing, OutgoingMessage)
    shown = COMPOSER.render(run)
    assert shown.html == outgoing.html
    sent = message_from_bytes(outgoing.data, policy=policy.default)
    assert sent["Subject"] == shown.subject
    text = sent.get_body(("plain",))
    assert text is not None
    assert text.get_content().replace("\r\n", "\n") == shown.text


def test_a_blocked_recipient_is_skipped_but_still_previewed() -> None:
    """An unsubscribed recipient's run is skipped with a suppressed delivery; preview renders."""
    gone = ANA._replace(unsubscribed_at=NOW)
    outcome = COMPOSER.compose(run_for(gone))
    assert isinstance(outcome, Outcome)
    assert (outcome.status, outcome.error) == (RunStatus.SKIPPED, "unsubscribed")
    assert outcome.delivery is not None
    assert (outcome.delivery.status, outcome.delivery.transport) == (
        DeliveryStatus.SUPPRESSED,
        "smtp",
    )
    assert "Trip photos" in COMPOSER.render(run_for(gone)).html


def test_branding_and_reply_to_come_from_the_settings() -> None:
    """Product name, logo, accent colour, postal address and Reply-To are settings: the
    email shows them and no hard-coded "Digest" is left."""
    settings = SETTINGS.with_(
        product_name="Acme",
        logo_url="https://cdn.acme.example/logo.png",
        accent_color="#0f766e",
        postal_address="Acme Inc., 1 Main St, Springfield",
        reply_to="support@acme.example",
    )
    composer = Composer(settings, make_renderer(settings), "secret", "smtp")
    outgoing = composer.compose(run_for(ANA))
    assert isinstance(outgoing, OutgoingMessage)
    sent = message_from_bytes(outgoing.data, policy=policy.default)
    assert str(sent["Reply-To"]) == "support@acme.example"
    assert sent["From"].addresses[0].display_name == "Acme"
    html, text = outgoing.html, composer.render(run_for(ANA)).text
    assert '<img class="logo" src="https://cdn.acme.example/logo.png" alt="Acme"' in html
    assert "Acme Inc., 1 Main St, Springfield" in html
    assert "Acme Inc., 1 Main St, Springfield" in text
    assert "© Acme" in html
    assert "background-color:#0f766e" in html  # the button, inlined when the templates loaded
    assert "#2563eb" not in html
    assert "Digest" not in html
    assert "Digest" not in text.replace("Your daily digest", "")
