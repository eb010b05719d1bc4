"""Suppressed addresses: the Python API, `digest suppress ...`, and what the worker does."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import Result
from sqlalchemy import Engine, text

from digest import suppressions
from digest.channels.email.file import FileTransport
from digest.config import Settings
from digest.errors import ValidationError
from digest.scheduler import schedule_once
from digest.worker import Worker

Invoke = Callable[..., Result]

ADD_EVENTS = text(
    """
    INSERT INTO digest_events (bucket, user_id, category, entity_type, entity_id, actor_id, payload,
                               created_at)
    SELECT digest_bucket(:user_id), CAST(:user_id AS text), 'comment', 'post', 'p1', 'a' || g,
           jsonb_build_object('title', 'Trip photos', 'actor_name', 'Actor ' || g),
           now() - interval '1 minute'
      FROM generate_series(1, 2) g
    """
)


@pytest.fixture
def run(digest_cli: Invoke) -> Invoke:
    """The real `digest` group on this test's database."""
    return digest_cli


def stored(engine: Engine) -> list[tuple[str, str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT email, reason, source FROM suppressions ORDER BY email"))
        return [(row.email, row.reason, row.source) for row in rows]


# ---------------------------------------------------------------------------- the API


def test_add_normalises_and_is_idempotent(engine: Engine) -> None:
    """An address is stored once, lower-cased and trimmed; a second add keeps the first reason."""
    assert suppressions.add(engine, "  Ana.Lima@Example.COM ", "hard bounce", "ses") is True
    assert suppressions.add(engine, "ana.lima@example.com", "complaint", "ses") is False
    assert stored(engine) == [("ana.lima@example.com", "hard bounce", "ses")]
    assert suppressions.is_suppressed(engine, "ANA.LIMA@example.com")
    assert not suppressions.is_suppressed(engine, "ben@example.com")


def test_idn_domains_are_keyed_like_the_worker_sees_them(engine: Engine) -> None:
    """A Unicode domain is stored in IDNA form, the form recipients are stored in."""
    assert suppressions.add(engine, "Jo@Bücher.example", "manual", "manual")
    assert stored(engine)[0][0] == "jo@xn--bcher-kva.example"
    assert suppressions.is_suppressed(engine, "jo@xn--BCHER-kva.example")


def test_remove_and_list(engine: Engine) -> None:
    """remove says whether there was a suppression; list is newest first and honours limit."""
    for n in range(3):
        suppressions.add(engine, f"u{n}@example.com", f"reason {n}", "manual")
    with engine.begin() as conn:  # distinct, known creation times
        conn.execute(
            text(
                "UPDATE suppressions SET created_at = now() - "
                "CAST(substr(email, 2, 1) AS int) * interval '1 hour'"
            )
        )
    assert [s.email for s in suppressions.list_(engine)] == [
        "u0@example.com",
        "u1@example.com",
        "u2@example.com",
    ]
    assert [s.email for s in suppressions.list_(engine, limit=1)] == ["u0@example.com"]
    assert suppressions.remove(engine, "U1@EXAMPLE.COM") is True
    assert suppressions.remove(engine, "u1@example.com") is False
    assert [s.reason for s in suppressions.list_(engine)] == ["reason 0", "reason 2"]


def test_api_works_inside_a_callers_transaction(engine: Engine) -> None:
    """Given a connection, the functions join the caller's transaction (undone with it)."""
    with engine.connect() as conn, conn.begin() as outer:
        assert suppressions.add(conn, "ana@example.com", "complaint", "sns")
        assert suppressions.is_suppressed(conn, "ana@example.com")
        outer.rollback()
    assert stored(engine) == []


@pytest.mark.parametrize(
    ("email", "reason"),
    [("not an address", "manual"), ("a@b@c.com", "manual"), ("", "manual"), ("a@x.com", " ")],
)
def test_bad_input_is_refused(engine: Engine, email: str, reason: str) -> None:
    """Invalid addresses and empty reasons are refused with a ValidationError; nothing stored."""
    with pytest.raises(ValidationError):
        suppressions.add(engine, email, reason, "manual")
    assert stored(engine) == []


# ---------------------------------------------------------------------------- the CLI


def test_cli_add_list_remove(run: Invoke, engine: Engine) -> None:
    """`digest suppress add/list/remove`: plain lines, a table, JSON, idempotent repeats."""
    added = run("suppress", "add", "Ana@Example.com", "--reason", "asked by phone")
    assert (added.exit_code, added.output) == (0, "suppressed ana@example.com\n")
    again = run("suppress", "add", "ana@example.com")
    assert again.output == "ana@example.com was already suppressed\n"
    assert run("suppress", "add", "ben@example.com", "--source", "support").exit_code == 0
    assert stored(engine) == [
        ("ana@example.com", "asked by phone", "manual"),
        ("ben@example.com", "manual", "support"),
    ]

    table = run("suppress", "list")
    assert table.exit_code == 0
    assert "ana@example.com" in table.output
    assert "asked by phone" in table.output
    listed = json.loads(run("suppress", "list", "--json").output)
    assert {item["email"] for item in listed} == {"ana@example.com", "ben@example.com"}
    assert set(listed[0]) == {"email", "reason", "source", "created_at"}
    assert len(json.loads(run("suppress", "list", "--json", "--limit", "1").output)) == 1

    removed = run("suppress", "remove", "ANA@example.com")
    assert (removed.exit_code, removed.output) == (0, "removed ana@example.com\n")
    assert run("suppress", "remove", "ana@example.com").output == (
        "ana@example.com was not suppressed\n"
    )
    assert run("suppress", "remove", "ben@example.com").exit_code == 0
    assert run("suppress", "list").output == "no suppressed addresses\n"
    assert run("suppress", "list", "--json").output == "[]\n"


def test_cli_shows_reasons_as_text_not_markup(run: Invoke) -> None:
    """A reason that looks like rich markup is printed as it is."""
    run("suppress", "add", "ana@example.com", "--reason", "[bold]x[/bold] [red")
    assert "[bold]x[/bold] [red" in run("suppress", "list").output


@pytest.mark.parametrize("command", ["add", "remove"])
def test_cli_bad_email_is_one_line(run: Invoke, command: str) -> None:
    """A bad address: one `digest: error:` line naming it, exit 1, no traceback."""
    result = run("suppress", command, "not an address")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("digest: error: invalid email address 'not an address'")


# ---------------------------------------------------------------------------- the worker


def test_worker_skips_a_suppressed_address_until_it_is_removed(
    run: Invoke, engine: Engine, tmp_path: Path
) -> None:
    """Suppressed: the run ends skipped with the reason, no mail; removed: the next one is sent."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO recipients (bucket, user_id, email) "
                "VALUES (digest_bucket('ana'), 'ana', 'Ana@Example.com')"
            )
        )
        conn.execute(ADD_EVENTS, {"user_id": "ana"})
    assert run("suppress", "add", "ana@example.com", "--reason", "complained").exit_code == 0
    outbox = tmp_path / "outbox"
    settings = Settings(secret_key="test-secret", outbox=outbox)
    now = datetime.now(UTC)
    with engine.begin() as conn:
        assert schedule_once(conn, now, 0) == 1
    stats = Worker(engine, settings, FileTransport(outbox)).run(drain=True)
    assert (stats.sent, stats.skipped) == (0, 1)
    with engine.connect() as conn:
        run_row = conn.execute(text("SELECT status, last_error FROM digest_runs")).one()
    assert tuple(run_row) == ("skipped", "suppressed: complained")
    assert list(outbox.glob("*.eml")) == []

    assert run("suppress", "remove", "ana@example.com").exit_code == 0
    with engine.begin() as conn:  # the next period comes: new events, tomorrow's run, now due
        conn.execute(ADD_EVENTS, {"user_id": "ana"})
        assert schedule_once(conn, now + timedelta(days=1), 0) == 1
        conn.execute(text("UPDATE digest_runs SET scheduled_for = now() WHERE status = 'pending'"))
    stats = Worker(engine, settings, FileTransport(outbox)).run(drain=True)
    assert (stats.sent, stats.skipped) == (1, 0)
    sent = list(outbox.glob("*.eml"))
    assert len(sent) == 1
    assert b"Ana@example.com" in sent[0].read_bytes()
