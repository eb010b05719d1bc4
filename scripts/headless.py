"""Headless Chromium for what a person looks at: layout measurements and screenshots.

Debian's `chromium` (`apt-get install -y chromium`), run with no network, no profile and
no sandbox (CI runs as root). Layout is measured by loading each page into an `<iframe>`
of the width under test inside a small harness page whose script writes the measurements
into the DOM, read back with `--dump-dom`: one browser start for many pages and widths.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

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
    "--mute-audio",
)
TIMEOUT = 120  # seconds for one browser run

# Runs in the harness once every frame has loaded; writes one JSON object into #out.
_MEASURE = """
window.addEventListener('load', function () {
  var out = [];
  document.querySelectorAll('iframe').forEach(function (frame) {
    var doc = frame.contentDocument, root = doc.documentElement;
    var icons = [];
    doc.querySelectorAll('.item-icon').forEach(function (td) { icons.push(td.offsetWidth); });
    var wide = [];
    doc.querySelectorAll('body *').forEach(function (el) {
      var box = el.getBoundingClientRect();
      if (box.right > root.clientWidth + 0.5 && wide.length < 5) {
        wide.push(el.tagName.toLowerCase() + '.' + el.className + ' ' + Math.round(box.right));
      }
    });
    out.push({name: frame.name, width: root.clientWidth, scroll_width: root.scrollWidth,
              height: root.scrollHeight, icons: icons, wide: wide,
              dark: frame.contentWindow.matchMedia('(prefers-color-scheme: dark)').matches});
  });
  document.getElementById('out').textContent = JSON.stringify(out);
});
"""


@dataclass(frozen=True)
class Layout:
    """What the browser laid out for one page at one width."""

    name: str
    width: int  # the viewport's width, CSS pixels
    scroll_width: int  # wider than `width`: the page scrolls sideways
    height: int
    icons: list[int]  # the widths of every `.item-icon` cell
    wide: list[str]  # up to five elements reaching past the viewport's right edge
    dark: bool  # whether the page saw prefers-color-scheme: dark

    @property
    def overflows(self) -> bool:
        return self.scroll_width > self.width


def chromium() -> str | None:
    """The path of Debian's chromium, or None when it is not installed."""
    return shutil.which("chromium")


def _run(args: list[str], *, dark: bool = False) -> str:
    """Run chromium with `args` in a fresh profile; its stdout."""
    binary = chromium()
    if binary is None:
        raise RuntimeError("chromium is not installed (apt-get install -y chromium)")
    with tempfile.TemporaryDirectory(prefix="digest-chromium-") as profile:
        command = [binary, *FLAGS, f"--user-data-dir={profile}"]
        if dark:
            command.append("--force-dark-mode")
        done = subprocess.run(
            [*command, *args], capture_output=True, text=True, timeout=TIMEOUT, check=False
        )
    if done.returncode != 0:
        raise RuntimeError(f"chromium failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return done.stdout


def measure(pages: dict[str, str], widths: list[int], *, dark: bool = False) -> list[Layout]:
    """Every page (name -> HTML) laid out at every width, in one browser run."""
    frames = "\n".join(
        f'<iframe name="{html.escape(f"{name}@{width}")}" width="{width}" height="600"'
        f' style="border:0;display:block" srcdoc="{html.escape(page)}"></iframe>'
        for name, page in pages.items()
        for width in widths
    )
    harness = (
        '<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>'
        f'{frames}<pre id="out"></pre><script>{_MEASURE}</script></body></html>'
    )
    with tempfile.TemporaryDirectory(prefix="digest-harness-") as folder:
        path = Path(folder) / "harness.html"
        path.write_text(harness, encoding="utf-8")
        dom = _run(["--virtual-time-budget=10000", "--dump-dom", path.as_uri()], dark=dark)
    found = re.search(r'<pre id="out">(.*?)</pre>', dom, re.S)
    if found is None or not found.group(1):
        raise RuntimeError("the harness page wrote no measurements")
    return [Layout(**row) for row in json.loads(html.unescape(found.group(1)))]


def screenshot(page: Path, out: Path, width: int, *, dark: bool = False) -> Path:
    """A PNG of the whole of `page` (an HTML file) at `width` CSS pixels."""
    (layout,) = measure({"page": page.read_text(encoding="utf-8")}, [width], dark=dark)
    height = max(layout.height, 200)
    _run(
        [
            f"--window-size={width},{height}",
            f"--screenshot={out.resolve()}",
            page.resolve().as_uri(),
        ],
        dark=dark,
    )
    return out
