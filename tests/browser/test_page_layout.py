"""The preference page as a reader's browser lays it out (headless Chromium): no sideways
scrolling on a phone or a desktop, however long the address, name or category names.

Self-contained: the page comes from the real app over a socket, as GET and as the answers
to POSTs; each is laid out in an `<iframe srcdoc>` of the width under test inside a harness
page whose script writes the widths into the DOM, read back with `--dump-dom`.
"""

from __future__ import annotations

import html
import http.client
import json
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlencode

import pytest
import uvicorn
from sqlalchemy import Engine, text

from digest.config import Settings
from digest.unsubscribe import make_token
from digest.web.app import create_app

CHROMIUM = shutil.which("chromium")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed"),
]

SECRET = "browser-test-secret"
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
LONG_EMAIL = "x" * 64 + "@" + ("d" * 60 + ".") * 3 + "example"
LONG_NAME = "W" * 1000  # one unbroken word: the widest text there is, per character
LONG_CATEGORY = "w" * 64
MEASURE = """
window.addEventListener('load', function () {
  var out = [];
  document.querySelectorAll('iframe').forEach(function (frame) {
    var root = frame.contentDocument.documentElement, wide = [];
    frame.contentDocument.querySelectorAll('body *').forEach(function (el) {
      var right = el.getBoundingClientRect().right;
      if (right > root.clientWidth + 0.5 && wide.length < 5) {
        wide.push(el.tagName.toLowerCase() + '.' + el.className + ' ' + Math.round(right));
      }
    });
    out.push({name: frame.name, width: root.clientWidth, scroll: root.scrollWidth, wide: wide});
  });
  document.getElementById('out').textContent = JSON.stringify(out);
});
"""


@pytest.fixture
def base_url(engine: Engine) -> Iterator[str]:
    """The app on a free 127.0.0.1 port, in a thread, branded with a long product name."""
    settings = Settings(secret_key=SECRET, product_name="P" * 200, postal_address="A" * 300)
    listener = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(
        uvicorn.Config(create_app(engine, settings), log_config=None, log_level="warning")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]})
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive(), "server thread died"
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    yield f"127.0.0.1:{listener.getsockname()[1]}"
    server.should_exit = True
    thread.join(10)
    listener.close()


def fetch(host: str, method: str, path: str, fields: list[tuple[str, str]] | None = None) -> str:
    conn = http.client.HTTPConnection(host, timeout=10)
    try:
        body = urlencode(fields) if fields is not None else None
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if body else {}
        conn.request(method, path, body=body, headers=headers)
        return conn.getresponse().read().decode("utf-8")
    finally:
        conn.close()


def layouts(pages: dict[str, str]) -> list[dict[str, object]]:
    """Each page laid out at each width, in one browser run."""
    assert CHROMIUM is not None
    frames = "".join(
        f'<iframe name="{html.escape(f"{name}@{width}")}" width="{width}" height="800" '
        f'style="border:0;display:block" srcdoc="{html.escape(page)}"></iframe>'
        for name, page in pages.items()
        for width in WIDTHS
    )
    harness = f'<!doctype html><meta charset="utf-8">{frames}<pre id="out"></pre>'
    harness += f"<script>{MEASURE}</script>"
    with tempfile.TemporaryDirectory(prefix="digest-page-") as folder:
        path = Path(folder) / "harness.html"
        path.write_text(harness, encoding="utf-8")
        done = subprocess.run(
            [
                CHROMIUM,
                *FLAGS,
                f"--user-data-dir={Path(folder) / 'profile'}",
                "--virtual-time-budget=10000",
                "--dump-dom",
                path.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
    found = re.search(r'<pre id="out">(.*?)</pre>', done.stdout, re.S)
    assert found is not None, done.stderr[-500:]
    measured: list[dict[str, object]] = json.loads(html.unescape(found[1]))
    return measured


def test_the_page_never_scrolls_sideways(engine: Engine, base_url: str) -> None:
    """A 1,000-character unbroken name, a 250-character address and 64-character category
    names wrap: at 390 and 1,200 px every page state is no wider than the window."""
    with engine.begin() as conn:
        row = conn.execute(
            text(
                "INSERT INTO recipients (bucket, user_id, email, name, timezone, muted_categories) "
                "VALUES (digest_bucket('u'), 'u', :email, :name, "
                "'America/Argentina/ComodRivadavia', :muted) "
                "RETURNING bucket, id"
            ),
            {"email": LONG_EMAIL, "name": LONG_NAME, "muted": [LONG_CATEGORY]},
        ).one()
        conn.execute(
            text(
                "INSERT INTO digest_events (bucket, user_id, category, entity_type, entity_id) "
                "VALUES (digest_bucket('u'), 'u', :category, 'post', '1')"
            ),
            {"category": LONG_CATEGORY[:-1] + "x"},
        )
    path = f"/u/{make_token(SECRET, row.bucket, row.id, 0, datetime.now(UTC))}"
    pages = {
        "get": fetch(base_url, "GET", path),
        "saved": fetch(base_url, "POST", path, [("form", "categories"), ("shown", "like")]),
        "error": fetch(
            base_url,
            "POST",
            path,
            [("form", "quiet_hours"), ("quiet_start", "22:00"), ("quiet_end", "")],
        ),
        "unsubscribed": fetch(base_url, "POST", path, [("List-Unsubscribe", "One-Click")]),
    }
    assert LONG_EMAIL in pages["get"]
    assert 'role="alert"' in pages["error"]
    measured = layouts(pages)
    assert len(measured) == len(pages) * len(WIDTHS)
    for layout in measured:
        assert layout["scroll"] == layout["width"], layout
        assert layout["wide"] == [], layout
