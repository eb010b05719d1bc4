"""Screenshots of the preference page as a reader's browser shows it, at 390 and 1200 px.

    .venv/bin/python scripts/page_screenshots.py [--out DIR] [--brand]

Starts the embedded PostgreSQL under .digest/pgdata, recreates a `digest_page_shots`
database with two recipients (an ordinary one, and one with a 1,000-character name and a
250-character address), serves the real app on a free local port, and has headless
Chromium (Debian's `chromium`) load each state of the page: the GET, and the answers to
POSTs (categories saved, a quiet-hours mistake, unsubscribed) made by the browser itself
from a small auto-submitting form, so every PNG is what the browser got, headers included.
`--brand` sets a product name, accent colour and postal address. PNGs go to
`screenshots/` (`page-<state>-<width>.png`).
"""

from __future__ import annotations

import argparse
import html
import http.client
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlencode

import psycopg
import uvicorn
from sqlalchemy import text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from digest import migrate  # noqa: E402
from digest.config import Settings  # noqa: E402
from digest.db import embedded_url, libpq_url, make_engine  # noqa: E402
from digest.unsubscribe import make_token  # noqa: E402
from digest.web.app import create_app  # noqa: E402

DATABASE = "digest_page_shots"
SECRET = "page-screenshots-only"
WIDTHS = (390, 1200)
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)
PEOPLE = text(
    """
    INSERT INTO recipients (bucket, user_id, email, name, timezone, cadence)
    VALUES (digest_bucket('ana'), 'ana', 'ana.silva@example.com', 'Ana Silva', 'Europe/Lisbon',
            'daily'),
           (digest_bucket('long'), 'long', :email, :name, 'America/Argentina/ComodRivadavia',
            'weekly')
    """
)
EVENTS = text(
    """
    INSERT INTO digest_events (bucket, user_id, category, entity_type, entity_id)
    SELECT digest_bucket(u), u, c, 'post', 'p1'
      FROM unnest(ARRAY['ana', 'long']) u,
           unnest(ARRAY['comment', 'like', 'post.shared', 'badge_earned']) c
    """
)
# Posts `fields` to `action` as soon as it loads: the browser itself makes the POST, and
# the screenshot is of the page it gets back.
SUBMIT = """<!doctype html><meta charset="utf-8"><form method="post" action="{action}">{inputs}
</form><script>document.forms[0].submit()</script>"""
MEASURE = """<script>window.addEventListener('load', function () {
  var root = document.querySelector('iframe').contentDocument.documentElement;
  document.getElementById('out').textContent = root.scrollHeight;
});</script>"""


def chromium(*args: str) -> str:
    binary = shutil.which("chromium")
    if binary is None:
        raise SystemExit("chromium is not installed: apt-get install -y chromium")
    with tempfile.TemporaryDirectory(prefix="digest-shots-") as profile:
        done = subprocess.run(
            [binary, *FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    if done.returncode != 0:
        raise SystemExit(f"chromium failed: {done.stderr.strip()[-500:]}")
    return done.stdout


def height_of(page: str, width: int, folder: Path) -> int:
    """The page's full height at `width`, as the browser lays it out."""
    harness = folder / "measure.html"
    harness.write_text(
        f'<!doctype html><meta charset="utf-8"><iframe width="{width}" height="600" '
        f'srcdoc="{html.escape(page)}"></iframe><pre id="out"></pre>{MEASURE}',
        encoding="utf-8",
    )
    dom = chromium("--virtual-time-budget=5000", "--dump-dom", harness.as_uri())
    found = re.search(r'<pre id="out">(\d+)</pre>', dom)
    return int(found[1]) if found else 2000


def fetch(host: str, path: str, fields: list[tuple[str, str]] | None) -> str:
    conn = http.client.HTTPConnection(host, timeout=10)
    try:
        if fields is None:
            conn.request("GET", path)
        else:
            headers = {"Content-Type": "application/x-www-form-urlencoded"}
            conn.request("POST", path, urlencode(fields), headers)
        return conn.getresponse().read().decode("utf-8")
    finally:
        conn.close()


def shoot(
    host: str, path: str, fields: list[tuple[str, str]] | None, out: Path, width: int
) -> None:
    """A PNG of the page at `path` (after POSTing `fields`, if any) at `width` px."""
    with tempfile.TemporaryDirectory(prefix="digest-shots-") as name:
        folder = Path(name)
        # The POSTs are repeatable: the same answer again, nothing further changed.
        height = height_of(fetch(host, path, fields), width, folder)
        target = f"http://{host}{path}"
        if fields is not None:
            inputs = "".join(
                f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
                for k, v in fields
            )
            submit = folder / "submit.html"
            submit.write_text(
                SUBMIT.format(action=html.escape(target), inputs=inputs), encoding="utf-8"
            )
            target = submit.as_uri()
        chromium(
            f"--window-size={width},{height}",
            "--virtual-time-budget=5000",
            f"--screenshot={out.resolve()}",
            target,
        )
    print(f"{out}  ({width}x{height})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "screenshots")
    parser.add_argument("--brand", action="store_true", help="a product's own name and colour")
    args = parser.parse_args()
    server = embedded_url(ROOT / ".digest" / "pgdata")
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {DATABASE}")
    engine = make_engine(libpq_url(make_url(server).set(database=DATABASE).render_as_string(False)))
    migrate.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(
            PEOPLE, {"email": "x" * 64 + "@" + ("d" * 60 + ".") * 3 + "example", "name": "W" * 1000}
        )
        conn.execute(EVENTS)
        ids: dict[str, tuple[int, int]] = {
            row.user_id: (row.bucket, row.id)
            for row in conn.execute(text("SELECT user_id, bucket, id FROM recipients"))
        }
    brand: dict[str, str] = {}
    if args.brand:
        brand = {
            "product_name": "Pebble",
            "accent_color": "#0e7c66",
            "postal_address": "Pebble Ltd, 12 Harbour Street, Leith EH6 6QW, United Kingdom",
        }
    app = create_app(engine, Settings(secret_key=SECRET).with_(**brand))
    listener = socket.create_server(("127.0.0.1", 0))
    web = uvicorn.Server(uvicorn.Config(app, log_config=None, log_level="warning"))
    thread = threading.Thread(target=web.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    while not web.started:
        time.sleep(0.01)
    host = f"127.0.0.1:{listener.getsockname()[1]}"
    now = datetime.now(UTC)
    ana = f"/u/{make_token(SECRET, *ids['ana'], 0, now)}"
    long = f"/u/{make_token(SECRET, *ids['long'], 0, now)}"
    # ana unticks likes and badges; then a quiet-hours slip; then she unsubscribes.
    categories = [("form", "categories")] + [
        ("shown", c) for c in ("comment", "like", "mention", "follow", "badge_earned")
    ]
    categories += [("include", c) for c in ("comment", "mention", "follow")]
    states: list[tuple[str, str, list[tuple[str, str]] | None]] = [
        ("get", ana, None),
        ("long", long, None),
        ("saved", ana, categories),
        ("error", ana, [("form", "quiet_hours"), ("quiet_start", "22:00"), ("quiet_end", "")]),
        ("unsubscribed", ana, [("List-Unsubscribe", "One-Click")]),
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    for state, path, fields in states:
        for width in WIDTHS:
            shoot(host, path, fields, args.out / f"page-{state}-{width}.png", width)
    web.should_exit = True
    thread.join(10)
    print(json.dumps({"database": DATABASE, "out": str(args.out)}))


if __name__ == "__main__":
    main()
