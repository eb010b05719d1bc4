"""The unsubscribe pages' templates (`templates/web/`), read once, and the responses they
make: every page with headers that keep it uncached, unindexed, unframed and the token in
its URL private."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import chevron
from starlette.responses import HTMLResponse, Response

from digest.errors import DigestError
from digest.models import Cadence
from digest.recipients import Preferences
from digest.unsubscribe import MAX_AGE_DAYS

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
CADENCE_TEXT: Mapping[str, str] = {
    Cadence.DAILY: "a daily digest",
    Cadence.WEEKLY: "a weekly digest",
    Cadence.OFF: "no digests",
}


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
        self._not_found = self.render("not_found", "Link not valid", {})
        self._bad_request = self.render("bad_request", "Nothing changed", {})
        self._stale = self.render("stale", "Link out of date", {"max_age_days": MAX_AGE_DAYS})

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

    def page(self, html: str) -> Response:
        """A 200 page."""
        return HTMLResponse(html, headers=dict(PAGE_HEADERS))

    def not_found(self) -> Response:
        """The 404, built from constants only, so every 404 is byte-for-byte the same."""
        return HTMLResponse(self._not_found, status_code=404, headers=dict(PAGE_HEADERS))

    def stale(self) -> Response:
        """The 410 for every out-of-date token: it names no one and says nothing changed."""
        return HTMLResponse(self._stale, status_code=410, headers=dict(PAGE_HEADERS))

    def bad_request(self) -> Response:
        """The 400 for a form that asks for nothing this page does."""
        return HTMLResponse(self._bad_request, status_code=400, headers=dict(PAGE_HEADERS))
