"""`make demo` at a small size: its data is what plain `digest` commands show afterwards, and
it never replaces data that is not a demo's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import Engine, text

ROOT = Path(__file__).resolve().parent.parent.parent


def demo(db_url: str, outbox: Path) -> subprocess.CompletedProcess[str]:
    """`scripts/demo.py` with 20 recipients and 300 events, on the database `digest` would
    use with this environment."""
    return subprocess.run(
        [
            sys.executable,
            "scripts/demo.py",
            "--recipients",
            "20",
            "--events",
            "300",
            "--outbox",
            str(outbox),
        ],
        env={**os.environ, "DIGEST_DATABASE_URL": db_url, "COLUMNS": "200"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )


def digest(db_url: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "digest", *args],
        env={**os.environ, "DIGEST_DATABASE_URL": db_url},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_digest_stats_after_the_demo_shows_the_demos_runs(
    engine: Engine, db_url: str, tmp_path: Path
) -> None:
    """The demo loads into the database plain `digest` uses, says which commands to try, and
    `digest stats` then shows its runs; a second demo replaces its own data."""
    first = demo(db_url, tmp_path / "outbox")
    assert first.returncode == 0, first.stdout + first.stderr
    assert ".venv/bin/digest stats" in first.stdout
    report = json.loads(digest(db_url, "stats", "--json"))
    with engine.connect() as conn:
        sent = conn.execute(text("SELECT count(*) FROM digest_runs WHERE status = 'sent'"))
        assert report["runs"]["sent"] == sent.scalar_one() > 0
    assert sum(report["runs"].values()) > 0
    again = demo(db_url, tmp_path / "outbox")
    assert again.returncode == 0, again.stdout + again.stderr
    assert json.loads(digest(db_url, "stats", "--json")) == report  # the same, not twice


def test_the_demo_refuses_a_database_with_other_data(
    engine: Engine, db_url: str, tmp_path: Path
) -> None:
    """A database holding recipients the demo did not load is left alone, with one line
    saying how to run the demo elsewhere."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO recipients (bucket, user_id, email)"
                " VALUES (digest_bucket('42'), '42', 'a@b.org')"
            )
        )
    done = demo(db_url, tmp_path / "outbox")
    assert done.returncode != 0
    assert "holds data the demo did not load" in done.stdout + done.stderr
    assert "DIGEST_DATA_DIR=" in done.stdout + done.stderr
    with engine.connect() as conn:
        assert conn.execute(text("SELECT user_id FROM recipients")).scalars().all() == ["42"]
