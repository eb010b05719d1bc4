"""`/u/{token}`: the page a recipient reaches from a digest's unsubscribe link, the one-click
POST (RFC 8058), and the preference centre's forms (the rules are in the package docstring,
`digest.web`). Recipient reads and writes go through `digest.recipients`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import ClassVar, Final

from sqlalchemy import Connection, Engine
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from digest import logs, recipients
from digest.errors import ValidationError
from digest.ingest.events import CATEGORY_PATTERN
from digest.ingest.recipients import clock, quiet_window
from digest.models import Cadence
from digest.recipients import MAX_CATEGORIES_SHOWN, Preferences
from digest.unsubscribe import Token, make_token, verify_token
from digest.web.pages import Pages, category_label, listed

log = logging.getLogger(__name__)

ONE_CLICK_FIELD, ONE_CLICK_VALUE = "List-Unsubscribe", "One-Click"
CADENCE_FIELD = "cadence"
FORM_FIELD = "form"  # names the categories and quiet-hours forms
CATEGORIES_FORM: Final = "categories"
QUIET_HOURS_FORM: Final = "quiet_hours"
CADENCES: Final = tuple(c.value for c in Cadence)
# A one-click body is 26 bytes; a multipart one a few hundred; the categories form at most
# MAX_CATEGORIES_SHOWN names of 64 characters, twice (shown, and ticked): under 16 KB.
MAX_BODY_BYTES = 16 * 1024
MAX_FORM_FIELDS = 2 * MAX_CATEGORIES_SHOWN + 4
CADENCE_NOTICES: Mapping[str, str] = {
    Cadence.DAILY: "Saved: you will get a daily digest.",
    Cadence.WEEKLY: "Saved: you will get a weekly digest.",
    Cadence.OFF: "Saved: digests are off.",
}
QUIET_HOURS_HALF = "Give both a start and an end time, or leave both empty for no quiet hours."
QUIET_HOURS_NOT_A_TIME = "Write times on the 24-hour clock, like 22:00 and 07:00."


@dataclass(frozen=True)
class Unsubscribe:
    """The one-click POST, and the page's Unsubscribe-from-all button."""

    name: ClassVar[str] = "unsubscribe"


@dataclass(frozen=True)
class SetCadence:
    """How often: daily or weekly (both also subscribe again), or off."""

    cadence: str

    @property
    def name(self) -> str:
        return self.cadence


@dataclass(frozen=True)
class SetCategories:
    """The categories form: of those it `shown`, the `included` ones are wanted, the rest
    muted; categories it did not show keep their setting."""

    shown: frozenset[str]
    included: frozenset[str]
    name: ClassVar[str] = CATEGORIES_FORM


@dataclass(frozen=True)
class SetQuietHours:
    """The quiet-hours form: (start, end) in local time, or None for none."""

    hours: tuple[time, time] | None
    name: ClassVar[str] = QUIET_HOURS_FORM


@dataclass(frozen=True)
class QuietHoursError:
    """A quiet-hours form filled in wrong: what to tell the reader, and what they entered."""

    message: str
    entered: tuple[str, str]


Action = Unsubscribe | SetCadence | SetCategories | SetQuietHours


class Stale:
    """An authentic token that no longer changes anything (see `digest.web`)."""


STALE: Final = Stale()


def parse_action(form: FormData) -> Action | QuietHoursError | None:
    """What the form asks for; None when it is none of the page's forms, as sent (mixed
    forms, repeated or unknown fields, names that are not categories)."""
    fields = set(form.keys())
    if fields == {ONE_CLICK_FIELD}:
        values = form.getlist(ONE_CLICK_FIELD)
        return Unsubscribe() if all(value == ONE_CLICK_VALUE for value in values) else None
    if fields == {CADENCE_FIELD}:
        cadence = form.getlist(CADENCE_FIELD)
        if len(cadence) == 1 and cadence[0] in CADENCES:
            return SetCadence(str(cadence[0]))
        return None
    kind = form.getlist(FORM_FIELD)
    if kind == [CATEGORIES_FORM] and fields <= {FORM_FIELD, "shown", "include"}:
        return _categories(form)
    if kind == [QUIET_HOURS_FORM] and fields == {FORM_FIELD, "quiet_start", "quiet_end"}:
        return _quiet_hours(form)
    return None


def _categories(form: FormData) -> SetCategories | None:
    shown = [str(v) for v in form.getlist("shown")]
    included = [str(v) for v in form.getlist("include")]
    names = [*shown, *included]
    if len(set(shown)) > MAX_CATEGORIES_SHOWN or not set(included) <= set(shown):
        return None
    if not all(CATEGORY_PATTERN.fullmatch(name) for name in names):
        return None
    return SetCategories(frozenset(shown), frozenset(included))


def _quiet_hours(form: FormData) -> SetQuietHours | QuietHoursError | None:
    starts, ends = form.getlist("quiet_start"), form.getlist("quiet_end")
    if len(starts) != 1 or len(ends) != 1:
        return None
    start_text, end_text = str(starts[0]).strip(), str(ends[0]).strip()
    entered = (start_text[:5], end_text[:5])  # shown back in the fields; times are 5 long
    if not start_text and not end_text:
        return SetQuietHours(None)
    if not start_text or not end_text:
        return QuietHoursError(QUIET_HOURS_HALF, entered)
    start, end = clock(start_text), clock(end_text)
    if start is None or end is None:
        return QuietHoursError(QUIET_HOURS_NOT_A_TIME, entered)
    try:
        quiet_window(start, end)
    except ValidationError:
        return QuietHoursError("Quiet hours must start and end at different times.", entered)
    return SetQuietHours((start, end))


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


@dataclass(frozen=True)
class Shown:
    """What the page shows: the recipient's preferences and the categories it offers."""

    preferences: Preferences
    categories: list[str]


def apply_action(
    engine: Engine,
    token: Token,
    action: Action,
    today: date,
    offered: tuple[str, ...] = recipients.KNOWN_CATEGORIES,
) -> tuple[Shown, bool] | Stale | None:
    """Carry out `action`; the page to show after it and whether anything changed.

    None when there is no such recipient; STALE, changing nothing, when the token is out of
    date.
    """
    with engine.begin() as conn:
        before = load_preferences(conn, token, lock=True)
        if before is None:
            return None
        if is_stale(token, before, today):
            return STALE
        if isinstance(action, Unsubscribe):
            changed = recipients.unsubscribe(conn, before)
        elif isinstance(action, SetCadence):
            changed = recipients.set_cadence(conn, before, action.cadence)
        elif isinstance(action, SetCategories):
            kept = set(before.muted_categories) - action.shown
            changed = recipients.set_muted(conn, before, kept | (action.shown - action.included))
        else:
            changed = recipients.set_quiet_hours(conn, before, action.hours)
        after = recipients.preferences(conn, recipient_id=before.id, bucket=before.bucket)
        if after is None:
            return None
        categories = recipients.categories_for(conn, after.user_id, after.muted_categories, offered)
        shown = Shown(after, categories)
    return shown, changed


def notice(action: Action, preferences: Preferences, product_name: str) -> str:
    """The one sentence that confirms what `action` did."""
    if isinstance(action, Unsubscribe):
        return f"You are unsubscribed: {product_name} will send no more email to this address."
    if isinstance(action, SetCadence):
        return CADENCE_NOTICES[action.cadence]
    if isinstance(action, SetCategories):
        muted = [category_label(name).lower() for name in preferences.muted_categories]
        if not muted:
            return "Saved: your digests include every category."
        return f"Saved: your digests leave out {listed(muted)}."
    if action.hours is None:
        return "Saved: no quiet hours."
    start, end = action.hours
    return f"Saved: quiet hours from {start:%H:%M} to {end:%H:%M} ({preferences.timezone} time)."


def offered_categories(allowed: frozenset[str] | None) -> tuple[str, ...]:
    """The categories every recipient is offered: the known ones, or with an allow-list
    (DIGEST_CATEGORIES) the allowed ones, the known among them first."""
    if allowed is None:
        return recipients.KNOWN_CATEGORIES
    known = [name for name in recipients.KNOWN_CATEGORIES if name in allowed]
    return (*known, *sorted(allowed - set(known)))


def routes(
    engine: Engine,
    secret: str,
    pages: Pages,
    offered: tuple[str, ...] = recipients.KNOWN_CATEGORIES,
) -> list[Route]:
    """`GET` and `POST /u/{token}`, with tokens checked under `secret`; the categories form
    offers `offered` first."""

    async def show(request: Request) -> Response:
        token = verify_token(secret, request.path_params["token"])
        if token is None:
            return pages.not_found()
        if token.expired(_today()):  # no need to ask the database
            return pages.stale()
        shown = await run_in_threadpool(_load, engine, token, offered)
        if shown is None:
            return pages.not_found()
        if is_stale(token, shown.preferences, _today()):
            return pages.stale()
        return pages.page(pages.manage(shown.preferences, shown.categories))

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
        if isinstance(action, QuietHoursError):
            return await _quiet_hours_error(token, action)
        today = _today()
        applied = await run_in_threadpool(apply_action, engine, token, action, today, offered)
        if applied is None:
            return pages.not_found()
        if isinstance(applied, Stale):
            return pages.stale()
        shown, changed = applied
        preferences = shown.preferences
        logs.event(
            log,
            "preferences_changed",
            user_id=preferences.user_id,
            action=action.name,
            changed=changed,
        )
        fresh = None
        if preferences.subscription_version != token.subscription_version:
            # This choice retired the page's token: later clicks on it need a current one.
            fresh = make_token(
                secret, preferences.bucket, preferences.id, preferences.subscription_version, today
            )
        said = notice(action, preferences, pages.brand.product_name)
        return pages.page(pages.manage(preferences, shown.categories, notice=said, action=fresh))

    async def _quiet_hours_error(token: Token, error: QuietHoursError) -> Response:
        """The page again, changing nothing, with the error beside the quiet-hours fields."""
        shown = await run_in_threadpool(_load, engine, token, offered)
        if shown is None:
            return pages.not_found()
        if is_stale(token, shown.preferences, _today()):
            return pages.stale()
        html = pages.manage(
            shown.preferences,
            shown.categories,
            quiet_error=error.message,
            quiet_entered=error.entered,
        )
        return pages.page(html, status_code=400)

    # The form's body limit is its own: an app-wide one would also bind the routes that set
    # none, as the form's 16 KB once did the SNS webhook. GET routes read no body.
    return [
        Route("/u/{token}", show, methods=["GET"]),
        Route("/u/{token}", change, methods=["POST"], max_body_size=MAX_BODY_BYTES),
    ]


def _load(engine: Engine, token: Token, offered: tuple[str, ...]) -> Shown | None:
    with engine.connect() as conn:
        preferences = load_preferences(conn, token)
        if preferences is None:
            return None
        categories = recipients.categories_for(
            conn, preferences.user_id, preferences.muted_categories, offered
        )
    return Shown(preferences, categories)


def _today() -> date:
    return datetime.now(UTC).date()
