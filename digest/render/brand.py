"""The product's branding in the email: its name, logo, postal address and accent colour.

The same in every digest, so none of it costs anything per render: the name, logo and
address are cleaned once into the view model's constant keys (`Brand.context`), and the
accent colour is written into digest.css when the templates load, before the CSS is
inlined (`Brand.palette`): a style attribute never holds Mustache, which pre-inlining
forbids. digest.css names the colours as `var(--accent)`, `var(--accent-text)`,
`var(--accent-ink)` and `var(--accent-ink-dark)`; the loader replaces each with its value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from digest.render.text import clean_text, safe_url

DEFAULT_PRODUCT_NAME = "Digest"
DEFAULT_ACCENT = "#2563eb"
PRODUCT_LIMIT = 60
ADDRESS_LIMIT = 300
HEX_COLOR = re.compile(r"#[0-9a-fA-F]{6}")
# The surfaces links sit on: the light theme's white card, the dark theme's card.
LIGHT_SURFACE = "#ffffff"
DARK_SURFACE = "#111827"
READABLE = 4.5  # WCAG AA contrast for body text


@dataclass(frozen=True)
class Brand:
    """What the email shows of the product (from the settings)."""

    product_name: str = DEFAULT_PRODUCT_NAME
    logo_url: str | None = None  # https only (the settings check it)
    accent_color: str | None = None  # "#rrggbb" (the settings check it); None: the default
    postal_address: str | None = None  # commercial mail must show one (CAN-SPAM)

    def context(self) -> dict[str, Any]:
        """The brand's keys of the view model, cleaned once."""
        name = clean_text(self.product_name, PRODUCT_LIMIT) or DEFAULT_PRODUCT_NAME
        logo = safe_url(self.logo_url) if self.logo_url else None
        address = clean_text(self.postal_address, ADDRESS_LIMIT)
        return {
            "product_name": name,
            "has_logo": logo is not None,
            "logo_url": logo or "",
            "has_postal_address": bool(address),
            "postal_address": address,
        }

    def palette(self) -> dict[str, str]:
        """CSS variable -> colour: the accent, the text on it, and the accent as link text
        readable on the light and the dark card (darkened or lightened until it is)."""
        accent = (self.accent_color or DEFAULT_ACCENT).lower()
        if not HEX_COLOR.fullmatch(accent):
            accent = DEFAULT_ACCENT
        on_accent = max(("#ffffff", "#111827"), key=lambda c: contrast(c, accent))
        return {
            "var(--accent)": accent,
            "var(--accent-text)": on_accent,
            "var(--accent-ink)": readable_on(accent, LIGHT_SURFACE, toward="#000000"),
            "var(--accent-ink-dark)": readable_on(accent, DARK_SURFACE, toward="#ffffff"),
        }


def _rgb(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


def _luminance(color: str) -> float:
    """WCAG relative luminance of "#rrggbb"."""

    def channel(value: int) -> float:
        c = value / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = _rgb(color)
    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)


def contrast(a: str, b: str) -> float:
    """WCAG contrast ratio of two "#rrggbb" colours (1 to 21)."""
    high, low = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def readable_on(color: str, surface: str, *, toward: str) -> str:
    """`color`, mixed step by step with `toward` until it reads on `surface` (4.5:1)."""
    mixed = color
    for step in range(21):
        weight = step / 20
        mixed = "#" + "".join(
            f"{round(c + (t - c) * weight):02x}"
            for c, t in zip(_rgb(color), _rgb(toward), strict=True)
        )
        if contrast(mixed, surface) >= READABLE:
            break
    return mixed
