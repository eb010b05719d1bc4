"""The email as a reader's browser lays it out: no sideways scrolling at phone and desktop
widths whatever the content, and an icon column that keeps its width."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from headless import chromium, measure

from digest.models import DigestContent, DigestRequest, Group, Recipient
from digest.render import Renderer

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(chromium() is None, reason="chromium is not installed"),
]

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
NOW = datetime(2026, 3, 3, 7, 0, tzinfo=UTC)
WIDTHS = [390, 1200]
ICON_WIDTH = 44
LONG = "W" * 5000  # one unbroken word: the widest text there is, per character
URL = "https://example.com/" + "a" * 2000
KW: dict[str, Any] = {
    "cadence": "weekly",
    "period_start": NOW,
    "base_url": "https://app.example.com/" + "b" * 300,
    "unsubscribe_url": "https://app.example.com/u/" + "T" * 44,
}


def hostile_groups(n: int = 6) -> tuple[Group, ...]:
    """Groups of every category with every text at its limit, unbroken, and a long URL."""
    categories = ("comment", "like", "mention", "follow", LONG[:64].lower(), "shared_album")
    return tuple(
        Group(
            category=categories[i % len(categories)],
            entity_type=LONG[:64],
            entity_id=str(i),
            event_count=10**6 - i,
            actor_count=10**6,
            actor_names=(LONG, LONG, LONG),
            latest_at=NOW - timedelta(minutes=i),
            last_event_id=10**6 - i,
            payload={"title": LONG, "excerpt": LONG, "url": URL},
        )
        for i in range(n)
    )


def pages() -> dict[str, str]:
    """Hostile and ordinary digests as rendered HTML."""
    renderer = Renderer(TEMPLATES)
    long_email = "x" * 64 + "@" + ("d" * 60 + ".") * 3 + "example"
    hostile = Recipient("u", long_email, LONG, "weekly", "UTC", "en")
    plain = Recipient("u", "ana@example.com", "Ana Silva", "daily", "UTC", "en")
    many = DigestContent(hostile_groups(), 10_000, 10**9)
    return {
        "hostile": renderer.render(DigestRequest(hostile, many, **KW)).html,
        "hostile-empty": renderer.render(
            DigestRequest(hostile, DigestContent((), 0, 0), **KW)
        ).html,
        "ordinary": renderer.render(
            DigestRequest(plain, DigestContent(hostile_groups(3)[:1], 1, 1), **KW)
        ).html,
    }


@pytest.mark.parametrize("dark", [False, True], ids=["light", "dark"])
def test_no_content_makes_the_email_scroll_sideways(dark: bool) -> None:
    """Unbroken 5,000-character titles, names, excerpts and addresses wrap: at 390 and
    1,200 px the email is no wider than the window, and every icon cell is 44 px wide."""
    layouts = measure(pages(), WIDTHS, dark=dark)
    assert len(layouts) == len(pages()) * len(WIDTHS)
    for layout in layouts:
        assert layout.dark == dark
        assert not layout.overflows, (layout.name, layout.scroll_width, layout.wide)
        assert not layout.wide, (layout.name, layout.wide)
        assert set(layout.icons) <= {ICON_WIDTH}, (layout.name, layout.icons)
