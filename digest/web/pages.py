"""The unsubscribe pages' templates (`templates/web/`), read once, and the responses they
make: every page branded from the settings, with headers that keep it uncached, unindexed,
unframed and the token in its URL private."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import time
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import chevron
from starlette.responses import HTMLResponse, Response

from digest.config import Settings
from digest.errors import DigestError
from digest.models import Cadence
from digest.recipients import Preferences
from digest.unsubscribe import MAX_AGE_DAYS

DEFAULT_ACCENT: Final = "#1f6feb"
ACCENT_PATTERN: Final = re.compile(r"#[0-9a-fA-F]{6}")
# The logo goes into an attribute (escaped) and its origin into the CSP (not escapable):
# a plain host, an optional port, and no whitespace, quote or angle bracket anywhere.
LOGO_PATTERN: Final = re.compile(
    r"https://[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?::[0-9]{1,5})?(?:[/?#][^\s\"'<>\\]*)?"
)
# Every page: never cached or indexed, no Referer (the URL holds the token), no framing
# (a hidden Unsubscribe button), nothing loaded or run but our own inline CSS and the logo.
BASE_HEADERS: Final[Mapping[str, str]] = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex, nofollow",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}
CADENCE_CHOICES: Final = (
    (Cadence.DAILY, "Daily", "One email a day"),
    (Cadence.WEEKLY, "Weekly", "One email a week"),
    (Cadence.OFF, "Off", "No digests"),
)
# What the page calls the categories every product has; any other is its name, spaced.
CATEGORY_LABELS: Final[Mapping[str, str]] = {
    "comment": "Comments",
    "like": "Likes",
    "mention": "Mentions",
    "follow": "New followers",
}


@dataclass(frozen=True)
class Brand:
    """The product's name, logo, accent colour and postal address, as the pages show them."""

    product_name: str = "Digest"
    logo_url: str | None = None
    accent: str = DEFAULT_ACCENT
    postal_address: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Brand:
        """The brand in `settings`; DigestError for a colour or logo URL the pages cannot
        carry safely."""
        accent = settings.accent_color or DEFAULT_ACCENT
        if not ACCENT_PATTERN.fullmatch(accent):
            raise DigestError(f"DIGEST_ACCENT_COLOR must be a colour like #1f6feb, got {accent!r}")
        logo = settings.logo_url or None
        if logo is not None and not LOGO_PATTERN.fullmatch(logo):
            raise DigestError(
                f"DIGEST_LOGO_URL must be an https:// URL without spaces or quotes, got {logo!r}"
            )
        name = " ".join(settings.product_name.split()) or "Digest"
        return cls(name, logo, accent.lower(), settings.postal_address or None)

    @property
    def accent_text(self) -> str:
        """Black or white, whichever reads better on the accent colour."""
        red, green, blue = (int(self.accent[i : i + 2], 16) / 255 for i in (1, 3, 5))
        luminance = 0.2126 * _linear(red) + 0.7152 * _linear(green) + 0.0722 * _linear(blue)
        # Contrast with white is 1.05 / (L + 0.05), with black (L + 0.05) / 0.05.
        return "#ffffff" if 1.05 / (luminance + 0.05) >= (luminance + 0.05) / 0.05 else "#111111"

    def headers(self) -> dict[str, str]:
        """Every page's headers; the CSP lets in the logo's origin, when there is a logo."""
        images = ""
        if self.logo_url:
            parts = urlsplit(self.logo_url)
            images = f"img-src {parts.scheme}://{parts.netloc}; "
        csp = (
            f"default-src 'none'; style-src 'unsafe-inline'; {images}form-action 'self'; "
            "frame-ancestors 'none'; base-uri 'none'"
        )
        return {**BASE_HEADERS, "Content-Security-Policy": csp}


def _linear(channel: float) -> float:
    """An sRGB channel in linear light (WCAG's relative luminance)."""
    return channel / 12.92 if channel <= 0.04045 else ((channel + 0.055) / 1.055) ** 2.4


def category_label(name: str) -> str:
    """What the page calls a category: `Likes`, or `post.shared` as `Post shared`."""
    known = CATEGORY_LABELS.get(name)
    if known:
        return known
    spaced = re.sub(r"[._-]+", " ", name).strip()
    return spaced[:1].upper() + spaced[1:]


def listed(names: Sequence[str]) -> str:
    """`a`, `a and b`, `a, b and c`."""
    if len(names) <= 1:
        return "".join(names)
    return f"{', '.join(names[:-1])} and {names[-1]}"


def clock_text(moment: time | None) -> str:
    """`22:00`, or empty for no time."""
    return "" if moment is None else f"{moment:%H:%M}"


class Pages:
    """The page templates under `templates/web/`, read once, branded."""

    NAMES = ("layout", "manage", "not_found", "bad_request", "stale")

    def __init__(self, directory: Path, brand: Brand | None = None):
        self.brand = brand or Brand()
        self.headers = self.brand.headers()
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
        brand = self.brand
        shared = {"product_name": brand.product_name}
        body = str(chevron.render(self.templates[name], {**shared, **context}))
        frame = {
            **shared,
            "title": title,
            "body": body,
            "logo_url": brand.logo_url,
            "accent": brand.accent,
            "accent_text": brand.accent_text,
            "postal_address": brand.postal_address,
        }
        return str(chevron.render(self.templates["layout"], frame))

    def manage(
        self,
        preferences: Preferences,
        categories: Sequence[str],
        *,
        notice: str | None = None,
        action: str | None = None,
        quiet_error: str | None = None,
        quiet_entered: tuple[str, str] | None = None,
    ) -> str:
        """The preferences page, with a notice after a change, or the quiet-hours form's
        error and what was entered in it; its forms post to `action` (a relative URL) when
        given, else to the page's own URL."""
        unsubscribed = preferences.unsubscribed
        current = preferences.cadence
        if unsubscribed and current == Cadence.OFF:
            current = Cadence.DAILY  # the way back in preselects a cadence that sends
        cadences = [
            {"value": value, "label": label, "hint": hint, "checked": value == current}
            for value, label, hint in CADENCE_CHOICES
            if not (unsubscribed and value == Cadence.OFF)
        ]
        muted = set(preferences.muted_categories)
        start, end = quiet_entered or (
            clock_text(preferences.quiet_start),
            clock_text(preferences.quiet_end),
        )
        context = {
            "action": action,
            "notice": notice,
            "has_name": bool(preferences.name),
            "name": preferences.name or "",
            "email": preferences.email,
            "unsubscribed": unsubscribed,
            "cadences": cadences,
            "categories": [
                {"name": name, "label": category_label(name), "included": name not in muted}
                for name in categories
            ],
            "timezone": preferences.timezone,
            "quiet_start": start,
            "quiet_end": end,
            "quiet_error": quiet_error,
        }
        return self.render("manage", "Email preferences", context)

    def page(self, html: str, status_code: int = 200) -> Response:
        """A page (200 unless told)."""
        return HTMLResponse(html, status_code=status_code, headers=dict(self.headers))

    def not_found(self) -> Response:
        """The 404, built from constants only, so every 404 is byte-for-byte the same."""
        return HTMLResponse(self._not_found, status_code=404, headers=dict(self.headers))

    def stale(self) -> Response:
        """The 410 for every out-of-date token: it names no one and says nothing changed."""
        return HTMLResponse(self._stale, status_code=410, headers=dict(self.headers))

    def bad_request(self) -> Response:
        """The 400 for a form that asks for nothing this page does."""
        return HTMLResponse(self._bad_request, status_code=400, headers=dict(self.headers))
