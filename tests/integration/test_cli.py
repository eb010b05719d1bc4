"""The operator's commands, run through click against a real database."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result
from sqlalchemy import Engine, text

from digest import migrate

Invoke = Callable[..., Result]
LoadedBy = Callable[..., set[str]]  # the conftest fixture


@pytest.fixture
def run(digest_cli: Invoke) -> Invoke:
    """The real `digest` group on this test's database, exceptions not caught."""
    return digest_cli


def seed(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO recipients (bucket, user_id, email, name, timezone) VALUES "
                "(digest_bucket('1'), '1', 'ana@example.com', 'Ana', 'Asia/Tokyo'), "
                "(digest_bucket('2'), '2', 'ben@example.com', 'Ben', 'America/New_York')"
            )
        )
        conn.execute(
            text(
                """
                INSERT INTO digest_events (bucket, user_id, category, entity_type, entity_id,
                                           actor_id, payload, created_at)
                SELECT digest_bucket('1'), '1', 'comment', 'post', 'p' || (g % 3), 'a' || g,
                       jsonb_build_object('title', 'Post ' || (g % 3),
                                          'actor_name', 'Friend ' || g),
                       now() - interval '1 hour'
                  FROM generate_series(1, 7) g
                """
            )
        )


def test_schedule_work_stats_round_trip(run: Invoke, engine: Engine, tmp_path: Path) -> None:
    """schedule -> work --drain -> stats: the numbers a cron line and an operator see."""
    seed(engine)
    scheduled = run("schedule", "--now", "2026-11-24T12:00:00+00:00", "--spread", "0")
    assert scheduled.exit_code == 0
    assert "scheduled 2 new runs" in scheduled.output
    again = run("schedule", "--now", "2026-11-24T12:00:00Z", "--jobs", "3")
    assert "scheduled 0 new runs" in again.output
    worked = run("work", "--drain", "--transport", "file", "--outbox", str(tmp_path / "mail"))
    assert worked.exit_code == 0, worked.output
    assert "sent 1, skipped 1, failed 0" in worked.output
    assert len(list((tmp_path / "mail").rglob("*.eml"))) == 1
    report = json.loads(run("stats", "--json").output)
    assert report["runs"]["sent"] == 1
    assert report["runs"]["skipped"] == 1
    assert report["events_waiting"] == 0
    human = run("stats")
    assert human.exit_code == 0
    assert "events waiting: 0" in human.output


def test_preview_changes_nothing(run: Invoke, engine: Engine, tmp_path: Path) -> None:
    """preview renders the waiting events as HTML or text and attaches none of them."""
    seed(engine)
    html = run("preview", "--user", "1")
    assert html.exit_code == 0
    assert "Friend 7" in html.output
    assert "<html" in html.output.lower()
    out = tmp_path / "p.txt"
    assert run("preview", "--user", "1", "--format", "text", "--out", str(out)).exit_code == 0
    body = out.read_text()
    assert body.startswith("Subject: ")
    assert "Post 1" in body
    with engine.connect() as conn:
        assert (
            conn.execute(
                text("SELECT count(*) FROM digest_events WHERE digest_run_id IS NULL")
            ).scalar_one()
            == 7
        )
        assert conn.execute(text("SELECT count(*) FROM digest_runs")).scalar_one() == 0


def test_watchdog_and_migrate_are_safe_to_repeat(run: Invoke) -> None:
    """Cron-friendly commands: nothing to do is a clean exit with a plain line."""
    assert run("watchdog").output.strip() == "requeued 0, failed 0"
    again = run("migrate")
    assert again.exit_code == 0
    assert again.output.strip() == f"schema at {migrate.head()}"


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (("preview", "--user", "nobody"), {}, "digest: error: no recipient with user id 'nobody'"),
        (("schedule", "--now", "yesterday"), {}, "digest: error: --now: not an ISO 8601 time"),
        (("stats",), {"DIGEST_BATCH_SIZE": "lots"}, "DIGEST_BATCH_SIZE must be a whole number"),
        (("schedule",), {"DIGEST_SCHEDULE_JOBS": "0"}, "DIGEST_SCHEDULE_JOBS must be at least 1"),
        (
            ("stats",),
            {"DIGEST_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"},
            "digest: error: database unavailable:",
        ),
        (("stats",), {"DIGEST_DATABASE_URL": "mysql://x@y/z"}, "only PostgreSQL is supported"),
        (("work", "--drain", "--transport", "smtp"), {}, "DIGEST_SECRET_KEY must be set"),
        (
            ("work", "--drain", "--transport", "pigeon"),
            {"DIGEST_SECRET_KEY": "k"},
            "unknown transport 'pigeon'",
        ),
    ],
)
def test_errors_are_one_line_with_non_zero_exit(
    run: Invoke, args: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    """Bad input or a missing server: one clear line on stderr, exit 1, no traceback."""
    result = run(*args, env=env)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.output


def test_stats_imports_only_what_it_uses(db_url: str, loaded_by: LoadedBy) -> None:
    """`digest stats` in a fresh process loads the database and rich, nothing of migrations,
    rendering, SES or the web server."""
    unused = {"alembic", "boto3", "botocore", "chevron", "premailer", "starlette", "uvicorn"}
    loaded = loaded_by("--database-url", db_url, "stats")
    assert {"sqlalchemy", "psycopg", "rich"} <= loaded
    assert loaded & unused == set()
