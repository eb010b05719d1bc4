"""`digest preview`: a user's next digest as it would be sent now, changing nothing.

It composes the user's waiting events as the worker composes a claimed run
(`digest.compose`), as of now, whatever would keep the digest from being sent.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine

from digest import content, recipients
from digest.buckets import bucket_of
from digest.compose import Composer, make_renderer, signing_key
from digest.config import Settings
from digest.errors import DigestError
from digest.models import Cadence, ClaimedRun, RenderedDigest, RunCadence


def preview(engine: Engine, settings: Settings, user_id: str) -> RenderedDigest:
    """Render the waiting events of `user_id` with the production templates."""
    with engine.connect() as conn:
        found = recipients.load_many(conn, [user_id])
        digest = content.load_unsent_content(conn, user_id, settings.group_cap)
    recipient = found.get(user_id)
    if recipient is None:
        raise DigestError(f"no recipient with user id {user_id!r}")
    now = datetime.now(UTC)
    cadence = recipient.cadence if recipient.cadence != Cadence.OFF else RunCadence.DAILY
    # the run the next schedule would make, claimed now: its period and its Date are now
    run = ClaimedRun(
        0, bucket_of(user_id), user_id, cadence, now, 0, now, recipient=recipient, digest=digest
    )
    composer = Composer(settings, make_renderer(settings), signing_key(settings, "file"), "file")
    return composer.render(run)
