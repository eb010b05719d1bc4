"""The naive way to send digests: the reference `make bench` measures `digest` against.

What a first version usually looks like: one run claimed per transaction (`LIMIT 1`),
the user's events loaded as rows and grouped in Python, chevron then premailer on every
email, one commit per run. Correct, and slow in each of those places.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine, text

from digest import unsubscribe
from digest.buckets import bucket_of
from digest.channels.base import Transport
from digest.channels.email import mime as message
from digest.config import Settings
from digest.grouping import build_digest
from digest.models import DigestRequest, Event, OutgoingMessage, Recipient
from digest.render import Renderer

RUN_CLAIM_ONE = text(
    """
    UPDATE digest_runs SET status = 'processing', attempt = attempt + 1, locked_by = 'naive'
     WHERE id = (SELECT id FROM digest_runs
                  WHERE status = 'pending' AND scheduled_for <= now()
                  ORDER BY scheduled_for LIMIT 1 FOR UPDATE SKIP LOCKED)
    RETURNING id, user_id, cadence, period_start
    """
)
EVENT_LIST_UNSENT = text(
    """
    SELECT id, category, entity_type, entity_id, actor_id, payload, created_at
      FROM digest_events WHERE user_id = :user_id AND digest_run_id IS NULL
     ORDER BY created_at
    """
)
RECIPIENT_GET = text(
    "SELECT user_id, email, name, cadence, timezone, locale, id, subscription_version "
    "FROM recipients WHERE user_id = :u"
)
EVENT_MARK_SENT = text("UPDATE digest_events SET digest_run_id = :run WHERE id = ANY(:ids)")
RUN_MARK_DONE = text(
    "UPDATE digest_runs SET status = :status, completed_at = now(), event_count = :n "
    "WHERE id = :run"
)


def drain(
    engine: Engine,
    settings: Settings,
    renderer: Renderer,
    transport: Transport,
    limit: int,
) -> int:
    """Process up to `limit` runs the naive way; returns how many digests were sent."""
    sent = 0
    for _ in range(limit):
        with engine.begin() as conn:
            run = conn.execute(RUN_CLAIM_ONE).one_or_none()
        if run is None:
            break
        with engine.begin() as conn:
            rows = conn.execute(EVENT_LIST_UNSENT, {"user_id": run.user_id}).all()
            recipient = conn.execute(RECIPIENT_GET, {"u": run.user_id}).one()
        events = [Event(*row) for row in rows]
        if not events:
            with engine.begin() as conn:
                conn.execute(RUN_MARK_DONE, {"status": "skipped", "n": 0, "run": run.id})
            continue
        digest = build_digest(events, settings.group_cap)
        url = unsubscribe.unsubscribe_url(
            settings.base_url,
            "naive",
            bucket_of(run.user_id),
            recipient.id,
            recipient.subscription_version,
            run.period_start,
        )
        rendered = renderer.render_naive(
            DigestRequest(
                Recipient(*recipient[:6]),
                digest,
                cadence=run.cadence,
                period_start=run.period_start,
                base_url=settings.base_url,
                unsubscribe_url=url,
            )
        )
        message_id = message.make_message_id(run.id, "localhost")
        mime = message.build_email_message(
            from_name=settings.sender_name,
            from_address=settings.from_address,
            to_name=recipient.name,
            to_address=recipient.email,
            subject=rendered.subject,
            html=rendered.html,
            text=rendered.text,
            message_id=message_id,
            idempotency_key=message.idempotency_key(run.id),
            list_unsubscribe_url=url,
            list_unsubscribe_mailto=None,
            date=datetime.now(UTC),
        )
        data = mime.as_bytes()
        transport.send(
            OutgoingMessage(
                run.id,
                1,
                run.user_id,
                recipient.email,
                message_id,
                "",
                data,
                rendered.html,
                bucket_of(run.user_id),
            )
        )
        with engine.begin() as conn:
            conn.execute(EVENT_MARK_SENT, {"run": run.id, "ids": [e.id for e in events]})
            conn.execute(RUN_MARK_DONE, {"status": "sent", "n": len(events), "run": run.id})
        sent += 1
    return sent
