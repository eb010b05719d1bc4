"""The unsubscribe pages (RFC 8058 one-click) and a health check, as a Starlette app.

Routes:
- `GET /u/{token}`: a page naming the address, with an Unsubscribe button and
  daily / weekly / off choices. A GET never changes anything: link scanners follow GETs.
- `POST /u/{token}`: the body `List-Unsubscribe=One-Click` unsubscribes at once (what mail
  clients send, and what the page's button sends); `cadence=daily|weekly|off` sets the
  cadence, and daily or weekly also re-subscribes. urlencoded or multipart/form-data; any
  other body is a 400. The answer is a 200 page, never a redirect; repeating it is harmless.
- `GET /healthz`: `ok` (200) when the database answers `SELECT 1`, else 503.

A forged, cut-off or garbage token, or a valid one whose user has no recipient row, gets one
and the same 404 (body and headers), as does any other unknown path, `/u/{token}/` included
(nothing ever redirects); nothing changes. An authentic token that is out of date (older
than `unsubscribe.MAX_AGE_DAYS`, or issued for an older subscription version: the user
subscribed again since) gets one and the same 410 page saying so, for GET and POST, and
changes nothing. The body of a POST is looked at only after its token's MAC checks out.
Tokens never reach a log line; the page's forms post back to the page's own URL so the token
is not in the page, except after a POST that subscribed the user again: that retired the
page's token, so its forms post to a fresh one. Each route has its own body limit: 16 KB for
the form, 256 KB for the SNS webhook.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Final

import chevron
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route

from digest import recipients
from digest.config import Settings
from digest.errors import DigestError
from digest.feedback import sns
from digest.feedback.webhook import ses_webhook_route
from digest.models import Cadence
from digest.recipients import Preferences
from digest.schema import CADENCES
from digest.unsubscribe import MAX_AGE_DAYS, Token, make_token, verify_token

log = logging.getLogger(__name__)

SECRET_MISSING = "DIGEST_SECRET_KEY must be set to serve unsubscribe links"
UNSUBSCRIBE: Final = "unsubscribe"  # the one action that is not a cadence
ONE_CLICK_FIELD, ONE_CLICK_VALUE = "List-Unsubscribe", "One-Click"
CADENCE_FIELD = "cadence"
# A one-click body is 26 bytes; a multipart one a few hundred. Nothing legitimate is larger.
MAX_BODY_BYTES = 16 * 1024
MAX_FORM_FIELDS = 20

# Every page: never cached or indexed, no Referer (the URL holds the token), no framing
# (a hidden Unsubscribe button), nothing loaded or run but our own inline CSS.
PAGE_HEADERS: Final[Mapping[str, str]] = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex, nofollow",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
}

DATABASE_PING = text("SELECT 1")

CADENCE_TEXT: Mapping[str, str] = {
    Cadence.DAILY: "a daily digest",
    Cadence.WEEKLY: "a weekly digest",
    Cadence.OFF: "no digests",
}
NOTICES: Mapping[str, str] = {
    UNSUBSCRIBE: "You are unsubscribed. No more digest emails will be sent to this address.",
    Cadence.DAILY: "Saved: you will get a daily digest.",
    Cadence.WEEKLY: "Saved: you will get a weekly digest.",
    Cadence.OFF: "Saved: digests are off.",
}


class Stale:
    """An authentic token that no longer changes anything (see the module docstring)."""


STALE: Final = Stale()


def require_secret(settings: Settings) -> str:
    """The unsubscribe secret, or the DigestError that says it is missing."""
    if not settings.secret_key:
        raise DigestError(SECRET_MISSING)
    return settings.secret_key


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
    return recipients.preferences(conn, recipient_id=token.recipient_id, lock=lock)


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
            changed = recipients.unsubscribe(conn, before.id)
        else:
            changed = recipients.set_cadence(conn, before.id, action)
        after = recipients.preferences(conn, recipient_id=before.id)
    return None if after is None else (after, changed)


class Pages:
    """The page templates under `templates/web/`, read once."""

    NAMES = ("layout", "manage", "not_found", "bad_request", "stale")

    def __init__(self, directory: Path):
        self.templates: dict[str, str] = {}
        for name in self.NAMES:
            path = directory / f"{name}.html"
            try:
                self.templates[name] = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise DigestError(f"cannot read page template {path}: {exc.strerror}") from None

    def render(self, name: str, title: str, context: Mapping[str, Any]) -> str:
        """The page `name` in the layout; every value in `context` is HTML-escaped."""
        body = str(chevron.render(self.templates[name], dict(context)))
        return str(chevron.render(self.templates["layout"], {"title": title, "body": body}))

    def manage(
        self, preferences: Preferences, notice: str | None = None, action: str | None = None
    ) -> str:
        """The preferences page, with a notice after a change; its forms post to `action`
        (a relative URL) when given, else to the page's own URL."""
        current = None if preferences.unsubscribed else preferences.cadence
        context = {
            "action": action,
            "notice": notice,
            "has_name": bool(preferences.name),
            "name": preferences.name or "",
            "email": preferences.email,
            "unsubscribed": preferences.unsubscribed,
            "cadence_text": CADENCE_TEXT.get(preferences.cadence, preferences.cadence),
            "is_daily": current == Cadence.DAILY,
            "is_weekly": current == Cadence.WEEKLY,
            "is_off": current == Cadence.OFF,
        }
        return self.render("manage", "Email preferences", context)


def create_app(
    engine: Engine, settings: Settings, *, fetch: sns.Fetch = sns.fetch_https
) -> Starlette:
    """The web app; DigestError when the secret key is missing or a page template is.

    `fetch` gets SNS signing certificates for the webhook (injectable for tests).
    """
    secret = require_secret(settings)
    pages = Pages(settings.templates_dir / "web")
    not_found_page = pages.render("not_found", "Link not valid", {})
    bad_request_page = pages.render("bad_request", "Nothing changed", {})
    stale_page = pages.render("stale", "Link out of date", {"max_age_days": MAX_AGE_DAYS})

    def not_found() -> Response:
        # Built from constants only, so every 404 is byte-for-byte the same.
        return HTMLResponse(not_found_page, status_code=404, headers=dict(PAGE_HEADERS))

    def stale() -> Response:
        # The same for every out-of-date token: it names no one and says nothing changed.
        return HTMLResponse(stale_page, status_code=410, headers=dict(PAGE_HEADERS))

    def page(html: str) -> Response:
        return HTMLResponse(html, headers=dict(PAGE_HEADERS))

    async def show(request: Request) -> Response:
        token = verify_token(secret, request.path_params["token"])
        if token is None:
            return not_found()
        if token.expired(_today()):  # no need to ask the database
            return stale()
        preferences = await run_in_threadpool(_load, engine, token)
        if preferences is None:
            return not_found()
        if is_stale(token, preferences, _today()):
            return stale()
        return page(pages.manage(preferences))

    async def change(request: Request) -> Response:
        token = verify_token(secret, request.path_params["token"])
        if token is None:
            return not_found()
        if token.expired(_today()):
            return stale()
        try:
            form = await request.form(
                max_files=0, max_fields=MAX_FORM_FIELDS, max_part_size=MAX_BODY_BYTES
            )
        except HTTPException:  # a malformed multipart body, or one with a file in it
            form = FormData()
        action = parse_action(form)
        if action is None:
            return HTMLResponse(bad_request_page, status_code=400, headers=dict(PAGE_HEADERS))
        today = _today()
        applied = await run_in_threadpool(apply_action, engine, token, action, today)
        if applied is None:
            return not_found()
        if isinstance(applied, Stale):
            return stale()
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
            fresh = make_token(secret, preferences.id, preferences.subscription_version, today)
        return page(pages.manage(preferences, NOTICES[action], fresh))

    async def healthz(request: Request) -> Response:
        ok = await run_in_threadpool(_ping, engine)
        return PlainTextResponse("ok" if ok else "database unavailable", 200 if ok else 503)

    async def unknown_path(request: Request, exc: Exception) -> Response:
        return not_found()

    # Body limits are per route (the form's here, the webhook's in feedback.py): an app-wide
    # one also binds routes that set none, as the form's 16 KB once did the SNS webhook.
    # GET routes read no body.
    app = Starlette(
        routes=[
            Route("/u/{token}", show, methods=["GET"]),
            Route("/u/{token}", change, methods=["POST"], max_body_size=MAX_BODY_BYTES),
            Route("/healthz", healthz, methods=["GET"]),
            ses_webhook_route(engine, settings, fetch=fetch),
        ],
        exception_handlers={404: unknown_path},
    )
    # No redirects, ever: Starlette would answer `/u/<token>/` with a 307 to a URL built from
    # the request's Host header, and RFC 8058 forbids redirecting the one-click POST. A
    # slashed path is unknown like any other: the same 404.
    app.router.redirect_slashes = False
    return app


def _load(engine: Engine, token: Token) -> Preferences | None:
    with engine.connect() as conn:
        return load_preferences(conn, token)


def _today() -> date:
    return datetime.now(UTC).date()


def _ping(engine: Engine) -> bool:
    try:
        with engine.connect() as conn:
            conn.execute(DATABASE_PING)
    except SQLAlchemyError as exc:
        log.warning("healthz database unavailable: %s", type(exc).__name__)
        return False
    return True
