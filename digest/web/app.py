"""`create_app`: the Starlette app `digest serve` runs: the unsubscribe pages, the SES
feedback webhook and a health check."""

from __future__ import annotations

import logging

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from digest import logs
from digest.config import Settings
from digest.errors import DigestError
from digest.feedback import sns
from digest.feedback.webhook import ses_webhook_route
from digest.web import preferences
from digest.web.pages import Brand, Pages

log = logging.getLogger(__name__)

SECRET_MISSING = "DIGEST_SECRET_KEY must be set to serve unsubscribe links"
DATABASE_PING = text("SELECT 1")


def require_secret(settings: Settings) -> str:
    """The unsubscribe secret, or the DigestError that says it is missing."""
    if not settings.secret_key:
        raise DigestError(SECRET_MISSING)
    return settings.secret_key


def create_app(
    engine: Engine, settings: Settings, *, fetch: sns.Fetch = sns.fetch_https
) -> Starlette:
    """The web app; DigestError when the secret key is missing or a page template is.

    `fetch` gets SNS signing certificates for the webhook (injectable for tests).
    """
    secret = require_secret(settings)
    pages = Pages(settings.templates_dir / "web", Brand.from_settings(settings))

    async def healthz(request: Request) -> Response:
        ok = await run_in_threadpool(_ping, engine)
        return PlainTextResponse("ok" if ok else "database unavailable", 200 if ok else 503)

    async def unknown_path(request: Request, exc: Exception) -> Response:
        return pages.not_found()

    # Body limits are per route (the form's in preferences.py, the webhook's in
    # feedback/webhook.py).
    app = Starlette(
        routes=[
            *preferences.routes(
                engine, secret, pages, preferences.offered_categories(settings.categories)
            ),
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


def _ping(engine: Engine) -> bool:
    try:
        with engine.connect() as conn:
            conn.execute(DATABASE_PING)
    except SQLAlchemyError as exc:
        logs.event(log, "healthz_database_unavailable", logging.WARNING, error=type(exc).__name__)
        return False
    return True
