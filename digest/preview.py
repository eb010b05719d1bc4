"""`digest preview`: a user's next digest as it would be sent now, changing nothing."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine

from digest import content, recipients, unsubscribe
from digest.config import Settings
from digest.errors import DigestError
from digest.models import Cadence, DigestRequest, RenderedDigest, RunCadence
from digest.render import Renderer
from digest.worker import signing_key


def preview(engine: Engine, settings: Settings, user_id: str) -> RenderedDigest:
    """Render the waiting events of `user_id` with the production templates."""
    with engine.connect() as conn:
        found = recipients.load_many(conn, [user_id])
        digest = content.load_unsent_content(conn, user_id, settings.group_cap)
    row = found.get(user_id)
    if row is None:
        raise DigestError(f"no recipient with user id {user_id!r}")
    key = signing_key(settings, "file")
    now = datetime.now(UTC)
    return Renderer(settings.templates_dir).render(
        DigestRequest(
            row,
            digest,
            cadence=row.cadence if row.cadence != Cadence.OFF else RunCadence.DAILY,
            period_start=now,
            base_url=settings.base_url,
            unsubscribe_url=unsubscribe.unsubscribe_url(
                settings.base_url, key, row.recipient_id, row.subscription_version, now.date()
            ),
        )
    )
