"""Screenshots of the digest email as a reader sees it: 390 px (a phone) and 1,200 px, in
light and dark mode, in headless Chromium (`apt-get install -y chromium`).

    .venv/bin/python scripts/screenshots.py [--out screenshots] [--locale de] [HTML ...]

Without HTML files it renders a demo-like digest (the busiest recipient of `make demo`'s
data set, made here from the same seed, grouped by the pure reference: no database);
with them (e.g. `outbox/*/run-878.html` after `make demo`) it shoots those. Writes
`NAME-390-light.png`, `NAME-390-dark.png`, `NAME-1200-light.png`, `NAME-1200-dark.png`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from demo_data import write  # noqa: E402  (scripts/ is on sys.path when run as a script)
from headless import chromium, screenshot  # noqa: E402

from digest.compose import make_renderer  # noqa: E402
from digest.config import Settings  # noqa: E402
from digest.grouping import build_digest  # noqa: E402
from digest.models import DigestRequest, Event, Recipient  # noqa: E402

WIDTHS = (390, 1200)
NOW = datetime(2026, 3, 3, 7, 0, tzinfo=UTC)


def demo_email(locale: str) -> str:
    """The HTML of the demo data set's busiest recipient's first digest."""
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder)
        write(data, recipients=1200, events=60_000, seed=42, now=NOW)
        rows = [json.loads(line) for line in (data / "events.jsonl").open(encoding="utf-8")]
        people = {
            p["user_id"]: p
            for p in map(json.loads, (data / "recipients.jsonl").open(encoding="utf-8"))
        }
    user, _ = Counter(r["user_id"] for r in rows).most_common(1)[0]
    events = [
        Event(
            i,
            r["category"],
            r["entity_type"],
            r["entity_id"],
            r["actor_id"],
            r["payload"],
            datetime.fromisoformat(r["created_at"]),
        )
        for i, r in enumerate(rows)
        if r["user_id"] == user
    ]
    settings = Settings.from_env()
    person = people[user]
    recipient = Recipient(
        user, person["email"], person["name"], person["cadence"], person["timezone"], locale
    )
    request = DigestRequest(
        recipient,
        build_digest(events, settings.group_cap),
        person["cadence"],
        NOW,
        settings.base_url,
        f"{settings.base_url}/u/TOKEN",
    )
    renderer = make_renderer(settings)
    return renderer.render(request).html


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("html", nargs="*", type=Path, help="HTML files to shoot instead")
    parser.add_argument("--out", type=Path, default=Path("screenshots"))
    parser.add_argument("--locale", default="en", help="locale of the demo-like digest")
    args = parser.parse_args()
    if chromium() is None:
        raise SystemExit("screenshots: error: chromium is not installed (apt-get install chromium)")
    args.out.mkdir(parents=True, exist_ok=True)
    pages = list(args.html)
    if not pages:
        page = args.out / f"email-{args.locale}.html"
        page.write_text(demo_email(args.locale), encoding="utf-8")
        pages = [page]
    for page in pages:
        for width in WIDTHS:
            for dark in (False, True):
                out = args.out / f"{page.stem}-{width}-{'dark' if dark else 'light'}.png"
                screenshot(page, out, width, dark=dark)
                print(out)


if __name__ == "__main__":
    main()
