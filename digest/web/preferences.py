"""`/u/{token}`: the page a recipient reaches from a digest's unsubscribe link, and the
one-click POST (RFC 8058) or cadence choice it accepts (the rules are in the package
docstring, `digest.web`). Recipient reads and writes go through `digest.recipients`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Final

from sqlalchemy import Connection, Engine
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from digest import recipients
from digest.models import Cadence
from digest.recipients import Preferences
from digest.unsubscribe import Token, make_token, verify_token
from digest.web.pages import Pages

log = logging.getLogger(__name__)

UNSUBSCRIBE: Final = "unsubscribe"  # the one action that is not a cadence
ONE_CLICK_FIELD, ONE_CLICK_VALUE = "List-Unsubscribe", "One-Click"
CADENCE_FIELD = "cadence"
CADENCES: Final = tuple(c.value for c in Cadence)
# A one-click body is 26 bytes; a multipart one a few hundred. Nothing legitimate is larger.
MAX_BODY_BYTES = 16 * 1024
MAX_FORM_FIELDS = 20
NOTICES: Mapping[str, str] = {
    UNSUBSCRIBE: "You are unsubscribed. No more digest emails will be sent to this address.",
    Cadence.DAILY: "Saved: you will get a daily digest.",
    Cadence.WEEKLY: "Saved: you will get a weekly digest.",
    Cadence.OFF: "Saved: digests are off.",
}


class Stale:
    """An authentic token that no longer changes anything (see `digest.web`)."""


STALE: Final = Stale()


def parse_action(form: FormData) -> str | None:
    """`unsubscribe`, a cadence, or None when the form asks for neither (or for both)."""
    one_click = form.getlist(ONE_CLICK_FIELD)
    cadence = form.getlist(CADENCE_FIELD)
    if one_click and not cadence:
        return UNSUBSCRIBE if all(value == ONE_CLICK_VALUE for value in one_click) else None
    if cadence and not one_click and len(cadence) == 1 and cadence[0] in CADENCES:
        return str(cadence[0])
    return None


def load_preferences(conn: Connection, token: Token, *, lock: bool = False) -> Preferences | None:
    """The recipient `token` names (locked for update with `lock`), or None."""
    if token.recipient_id is None:  # a legacy token
        return recipients.preferences(conn, user_id=token.user_id, lock=lock)
    bucket = token.bucket
    if bucket is None:  # format 1, from mail sent before the bucket
        bucket = recipients.find_bucket(conn, token.recipient_id)
        if bucket is None:
            return None
    return recipients.preferences(conn, recipient_id=token.recipient_id, bucket=bucket, lock=lock)


def is_stale(token: Token, preferences: Preferences, today: date) -> bool:
    """Whether an authentic token is too old, or was issued for another subscription
    version of the recipient it names."""
    return token.expired(today) or preferences.subscription_version != token.subscription_version


def apply_action(
    engine: Engine, token: Token, action: str, today: date
) -> tuple[Preferences, bool] | Stale | None:
    """Unsubscribe or set the cadence; the new preferences and whether anything changed.

    None when there is no such recipient; STALE, changing nothing, when the token is out of
    date.
    """
    with engine.begin() as conn:
        before = load_preferences(conn, token, lock=True)
        if before is None:
            return None
        if is_stale(token, before, today):
            return STALE
        if action == UNSUBSCRIBE:
            changed = recipients.unsubscribe(conn, before)
        else:
            changed = recipients.set_cadence(conn, before, action)
        after = recipients.preferences(conn, recipient_id=before.id, bucket=before.bucket)
    return None if after is None else (after, changed)


def routes(engine: Engine, secret: str, pages: Pages) -> list[Route]:
    """`GET` and `POST /u/{token}`, with tokens checked under `secret`."""

    async def show(request: Request) -> Response:
        token = verify_token(secret, request.path_params["token"])
        if token is None:
            return pages.not_found()
        if token.expired(_today()):  # no need to ask the database
            return pages.stale()
        preferences = await run_in_threadpool(_load, engine, token)
        if preferences is None:
            return pages.not_found()
        if is_stale(token, preferences, _today()):
            return pages.stale()
        return pages.page(pages.manage(preferences))

    async def change(request: Request) -> Response:
        token = verify_token(secret, request.path_params["token"])
        if token is None:
            return pages.not_found()
        if token.expired(_today()):
            return pages.stale()
        try:
            form = await request.form(
                max_files=0, max_fields=MAX_FORM_FIELDS, max_part_size=MAX_BODY_BYTES
            )
        except HTTPException:  # a malformed multipart body, or one with a file in it
            form = FormData()
        action = parse_action(form)
        if action is None:
            return pages.bad_request()
        today = _today()
        applied = await run_in_threadpool(apply_action, engine, token, action, today)
        if applied is None:
            return pages.not_found()
        if isinstance(applied, Stale):
            return pages.stale()
        preferences, changed = applied
        log.info(
            "preferences_changed user_id=%s action=%s changed=%s",
            preferences.user_id,
            action,
            changed,
        )
        fresh = None
        if preferences.subscription_version != token.subscription_version:
            # This choice retired the page's token: later clicks on it need a current one.
            fresh = make_token(
                secret, preferences.bucket, preferences.id, preferences.subscription_version, today
            )
        return pages.page(pages.manage(preferences, NOTICES[action], fresh))

    # The form's body limit is its own: an app-wide one would also bind the routes that set
    # none, as the form's 16 KB once did the SNS webhook. GET routes read no body.
    return [
        Route("/u/{token}", show, methods=["GET"]),
        Route("/u/{token}", change, methods=["POST"], max_body_size=MAX_BODY_BYTES),
    ]


def _load(engine: Engine, token: Token) -> Preferences | None:
    with engine.connect() as conn:
        return load_preferences(conn, token)


def _today() -> date:
    return datetime.now(UTC).date()
