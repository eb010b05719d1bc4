"""What an operator types and reads (issue 17): counts in English, `why`, `preview`,
imports that keep values and stay idempotent, timestamps from the future, `deliveries`
in a pipe. Every command runs through click against a real database."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from click.testing import Result
from sqlalchemy import Engine, text

Invoke = Callable[..., Result]


def sql(engine: Engine, statement: str, **params: Any) -> None:
    with engine.begin() as conn:
        conn.execute(text(statement), params)


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.output


# -- counts in English ----------------------------------------------------------------------


def test_summaries_count_one_in_the_singular(
    digest_cli: Invoke, engine: Engine, tmp_path: Path
) -> None:
    """A count of one reads "1 recipient", "1 event", "1 new run", "1 delivery" in every summary."""
    people = write_jsonl(tmp_path / "r.jsonl", [{"user_id": "1", "email": "a@example.com"}])
    assert "1 recipient in" in ok(digest_cli("recipients", "import", str(people)))
    event = {"user_id": "1", "category": "comment", "entity_type": "post", "entity_id": "9"}
    imported = ok(digest_cli("events", "import", str(write_jsonl(tmp_path / "e.jsonl", [event]))))
    assert "1 event in" in imported
    scheduled = ok(digest_cli("schedule", "--spread", "0"))
    assert "scheduled 1 new run as of" in scheduled
    worked = digest_cli("work", "--drain", "--transport", "null")
    assert worked.exit_code == 0, worked.output
    assert "sent 1, skipped 0, failed 0" in worked.output
    assert "; 1 event in " in worked.output
    sql(
        engine,
        "INSERT INTO digest_runs (bucket, user_id, cadence, period_start, scheduled_for) "
        "VALUES (digest_bucket('1'), '1', 'weekly', now() + interval '1 day', "
        "now() + interval '1 day')",
    )
    changed = ok(digest_cli("recipients", "set", "1", "--cadence", "daily", "--send-hour", "9"))
    assert "cancelled 1 pending run," in changed
    sql(
        engine,
        """
        UPDATE digest_runs SET completed_at = now() - interval '100 days',
                               period_start = now() - interval '100 days'
         WHERE status = 'sent';
        UPDATE digest_events SET created_at = now() - interval '101 days';
        UPDATE deliveries SET created_at = now() - interval '100 days';
        INSERT INTO feedback_events (sns_message_id, event_type, raw, orphan, created_at)
        VALUES ('local:1', 'Delivery', '{}', true, now() - interval '100 days')
        """,
    )
    purged = ok(digest_cli("purge", "--older-than", "90d"))
    assert "purged 1 event, 1 delivery, 1 feedback event, 1 run finished" in purged


# -- digest why -----------------------------------------------------------------------------


def add_recipient(engine: Engine, user_id: str = "1", **columns: Any) -> None:
    values = {"email": "ana@example.com", "timezone": "UTC", **columns}
    names = ", ".join(values)
    sql(
        engine,
        f"INSERT INTO recipients (bucket, user_id, {names}) "
        f"VALUES (digest_bucket(:user_id), :user_id, {', '.join(':' + n for n in values)})",
        user_id=user_id,
        **values,
    )


def add_run(engine: Engine, user_id: str, status: str, due: str, **columns: Any) -> int:
    """A daily run due at `due` (an SQL expression of now())."""
    extra = "".join(f", {name}" for name in columns)
    values = "".join(f", :{name}" for name in columns)
    with engine.begin() as conn:
        return int(
            conn.execute(
                text(
                    "INSERT INTO digest_runs (bucket, user_id, cadence, period_start, "
                    f"scheduled_for, status{extra}) VALUES (digest_bucket(:user_id), :user_id, "
                    f"'daily', {due}, {due}, :status{values}) RETURNING id"
                ),
                {"user_id": user_id, "status": status, **columns},
            ).scalar_one()
        )


def why(digest_cli: Invoke, user_id: str) -> str:
    return ok(digest_cli("why", "--user", user_id))


def test_why_for_events_without_a_recipient_says_there_is_none(
    digest_cli: Invoke, engine: Engine
) -> None:
    """Events for a user id no recipient has: no such recipient, never "never scheduled yet"."""
    sql(
        engine,
        "INSERT INTO digest_events (bucket, user_id, category, entity_type, entity_id) "
        "VALUES (digest_bucket('nobody'), 'nobody', 'comment', 'post', '1')",
    )
    out = why(digest_cli, "nobody")
    assert out.startswith("There is no recipient with user id nobody.")
    assert "Never scheduled" not in out
    assert "`digest schedule` creates no run without a recipient" in out
    assert "1 event is waiting, but no digest is sent to a user id without a recipient" in out


def test_why_overdue_run_says_by_how_much_and_that_no_worker_claims(
    digest_cli: Invoke, engine: Engine
) -> None:
    """A pending run due 13 minutes ago: overdue by 13 minutes, the runs due before it, and
    that no worker has claimed anything lately, with the last delivery's time."""
    add_recipient(engine)
    add_run(engine, "2", "pending", "now() - interval '20 minutes'")
    add_run(engine, "1", "pending", "now() - interval '13 minutes 10 seconds'")
    sent = add_run(engine, "3", "sent", "now() - interval '3 hours'")
    sql(
        engine,
        "INSERT INTO deliveries (bucket, run_id, user_id, recipient, transport, attempt, "
        "status, created_at) VALUES (digest_bucket('3'), :run, '3', 'c@example.com', 'ses', 1, "
        "'sent', now() - interval '2 hours 5 minutes')",
        run=sent,
    )
    out = why(digest_cli, "1")
    assert ", overdue by 13 minutes, with 1 run due before it." in out
    assert (
        "No worker has claimed a run lately: none is being processed, and the last delivery "
        "of any user was recorded at " in out
    )
    assert "(2 hours 5 minutes ago); is `digest work` running?" in out


def test_why_overdue_run_with_busy_workers_says_so(digest_cli: Invoke, engine: Engine) -> None:
    """Overdue while workers hold runs: how many are being processed and the latest claim."""
    add_recipient(engine)
    add_run(engine, "1", "pending", "now() - interval '2 hours 1 minute'")
    add_run(
        engine,
        "2",
        "processing",
        "now() - interval '3 hours'",
        locked_by="w1",
        attempt=1,
    )
    sql(
        engine,
        "UPDATE digest_runs SET started_at = now() - interval '1 minute 5 seconds', "
        "lease_expires_at = now() + interval '4 minutes' WHERE status = 'processing'",
    )
    out = why(digest_cli, "1")
    assert ", overdue by 2 hours 1 minute." in out
    assert "Workers are busy: 1 run is being processed, the latest claimed at " in out
    assert "(1 minute ago)." in out


def test_why_future_run_says_how_soon(digest_cli: Invoke, engine: Engine) -> None:
    """A pending run not yet due says in how long, not that it is overdue."""
    add_recipient(engine)
    add_run(engine, "1", "pending", "now() + interval '3 hours 10 minutes 30 seconds'")
    out = why(digest_cli, "1")
    assert "(in 3 hours 10 minutes)." in out
    assert "overdue" not in out


# -- digest preview -------------------------------------------------------------------------


def add_waiting_event(engine: Engine, user_id: str = "1") -> None:
    sql(
        engine,
        "INSERT INTO digest_events (bucket, user_id, category, entity_type, entity_id, payload) "
        "VALUES (digest_bucket(:u), :u, 'comment', 'post', '1', '{\"title\": \"Trip photos\"}')",
        u=user_id,
    )


def test_preview_of_a_recipient_with_cadence_off_warns(digest_cli: Invoke, engine: Engine) -> None:
    """Cadence off: the preview still renders, and stderr says no digest is sent to this user."""
    add_recipient(engine, cadence="off")
    add_waiting_event(engine)
    result = digest_cli("preview", "--user", "1", "--format", "text")
    assert result.exit_code == 0, result.output
    assert "Trip photos" in result.stdout
    assert result.stderr.startswith(
        "digest: warning: user 1 has cadence off, so no digest is sent to them; "
        "this is what a daily digest would hold"
    )


def test_preview_of_an_unsubscribed_or_suppressed_recipient_warns(
    digest_cli: Invoke, engine: Engine
) -> None:
    """Unsubscribed, or a suppressed address: each gets its warning line on stderr."""
    add_recipient(engine, unsubscribed_at="2026-01-01T00:00:00Z")
    add_waiting_event(engine)
    sql(
        engine,
        "INSERT INTO suppressions (email, reason, source) "
        "VALUES ('ana@example.com', 'bounce', 'ses')",
    )
    result = digest_cli("preview", "--user", "1")
    assert result.exit_code == 0, result.output
    warnings = result.stderr.splitlines()
    assert warnings[0].startswith("digest: warning: user 1 unsubscribed at 2026-01-01 00:00 UTC")
    assert warnings[1].startswith("digest: warning: ana@example.com is suppressed (bounce)")


def test_preview_of_a_subscribed_recipient_has_no_warning(
    digest_cli: Invoke, engine: Engine
) -> None:
    """A daily recipient gets the preview and nothing on stderr."""
    add_recipient(engine)
    add_waiting_event(engine)
    result = digest_cli("preview", "--user", "1")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""


# -- recipients import: missing fields keep their values --------------------------------------


def recipient_row(engine: Engine, user_id: str) -> dict[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT * FROM recipients WHERE user_id = :u"), {"u": user_id}
        ).mappings()
        return dict(row.one())


def test_import_without_email_changes_existing_recipients(
    digest_cli: Invoke, engine: Engine, tmp_path: Path
) -> None:
    """A file of user_id and send_hour (JSON Lines or CSV) updates existing users, emails kept."""
    add_recipient(engine, "1", email="ana@example.com", send_hour=8)
    add_recipient(engine, "2", email="ben@example.com", send_hour=8)
    jsonl = write_jsonl(tmp_path / "hours.jsonl", [{"user_id": "1", "send_hour": 9}])
    out = ok(digest_cli("recipients", "import", str(jsonl)))
    assert "1 updated" in out
    csv = tmp_path / "hours.csv"
    csv.write_text("user_id,send_hour\n2,10\n", encoding="utf-8")
    assert "1 updated" in ok(digest_cli("recipients", "import", str(csv)))
    assert (recipient_row(engine, "1")["email"], recipient_row(engine, "1")["send_hour"]) == (
        "ana@example.com",
        9,
    )
    assert (recipient_row(engine, "2")["email"], recipient_row(engine, "2")["send_hour"]) == (
        "ben@example.com",
        10,
    )


def test_import_without_email_for_a_new_user_names_the_line(
    digest_cli: Invoke, engine: Engine, tmp_path: Path
) -> None:
    """A new user_id needs an email in its own row or an earlier one: line 2 (before the row
    that gives one) is refused, by line number, and nothing is written."""
    add_recipient(engine, "1")
    rows = [
        {"user_id": "1", "send_hour": 9},
        {"user_id": "3", "send_hour": 9},
        {"user_id": "3", "email": "cy@example.com"},
        {"user_id": "3", "send_hour": 11},
    ]
    path = write_jsonl(tmp_path / "r.jsonl", rows)
    result = digest_cli("recipients", "import", str(path))
    assert result.exit_code == 1
    assert f"{path}:2: email is required for a new recipient" in result.stderr
    assert f"{path}:4" not in result.stderr
    assert recipient_row(engine, "1")["send_hour"] == 8
    skipped = ok(digest_cli("recipients", "import", "--skip-bad", str(path)))
    assert "1 bad line skipped" in skipped
    assert recipient_row(engine, "1")["send_hour"] == 9
    assert recipient_row(engine, "3")["email"] == "cy@example.com"
    assert recipient_row(engine, "3")["send_hour"] == 11


def test_upsert_api_without_email_keeps_it(engine: Engine) -> None:
    """`upsert_recipients` takes rows without an email for existing users too."""
    from digest.ingest.recipients import upsert_recipients

    add_recipient(engine, "1", email="ana@example.com")
    result = upsert_recipients(engine, [{"user_id": "1", "cadence": "weekly"}])
    assert (result.created, result.updated) == (0, 1)
    assert recipient_row(engine, "1")["email"] == "ana@example.com"
    assert recipient_row(engine, "1")["cadence"] == "weekly"


# -- events import: idempotent without keys ---------------------------------------------------


def event_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM digest_events")).scalar_one())


EVENTS = [
    {"user_id": "1", "category": "comment", "entity_type": "post", "entity_id": str(i)}
    for i in range(3)
]


def test_reimporting_keyless_events_says_how_many_were_new_and_warns(
    digest_cli: Invoke, engine: Engine, tmp_path: Path
) -> None:
    """Without keys a re-import adds every event again: the summary counts them as new and
    says that importing again adds them again, naming --key-from-line."""
    path = write_jsonl(tmp_path / "e.jsonl", EVENTS)
    ok(digest_cli("events", "import", str(path)))
    again = ok(digest_cli("events", "import", str(path)))
    assert "3 events in " in again
    assert ": 3 new, 0 already there" in again
    assert "3 have no event_key: importing them again adds them again (--key-from-line" in again
    assert event_count(engine) == 6


def test_key_from_line_makes_a_reimport_add_nothing(
    digest_cli: Invoke, engine: Engine, tmp_path: Path
) -> None:
    """--key-from-line: a second import, even re-spaced with its keys reordered, adds nothing;
    a line with its own event_key keeps it; the summary says N new, M already there."""
    keyed = {**EVENTS[0], "entity_id": "k", "event_key": "mine"}
    path = write_jsonl(tmp_path / "e.jsonl", [*EVENTS, keyed])
    first = ok(digest_cli("events", "import", "--key-from-line", str(path)))
    assert ": 4 new, 0 already there" in first
    assert "no event_key" not in first
    respaced = tmp_path / "respaced.jsonl"
    respaced.write_text(
        "".join(
            json.dumps(dict(reversed(row.items())), indent=None, separators=(" , ", " : ")) + "\n"
            for row in [*EVENTS, keyed]
        ),
        encoding="utf-8",
    )
    again = ok(digest_cli("events", "import", "--key-from-line", str(respaced)))
    assert ": 0 new, 4 already there" in again
    assert event_count(engine) == 4
    with engine.connect() as conn:
        keys = conn.execute(text("SELECT event_key FROM digest_events ORDER BY id")).scalars()
        stored = list(keys)
    assert stored[3] == "mine"
    assert all(key.startswith("line-sha256:") and len(key) == 12 + 64 for key in stored[:3])


# -- events from the future -------------------------------------------------------------------


def test_events_add_refuses_a_time_far_in_the_future(digest_cli: Invoke, engine: Engine) -> None:
    """`--created-at 2999-01-01` is one error line naming the clock skew allowed; nothing stored."""
    result = digest_cli(
        "events", "add", "--user", "1", "--category", "comment", "--entity-type", "post",
        "--entity-id", "1", "--created-at", "2999-01-01",
    )  # fmt: skip
    assert result.exit_code == 1
    assert result.stderr.startswith(
        "digest: error: created_at 2999-01-01T00:00:00+00:00 is ahead of the database's clock "
        "by more than 5 minutes (DIGEST_MAX_CLOCK_SKEW)"
    )
    assert event_count(engine) == 0


def test_events_import_names_the_line_from_the_future(
    digest_cli: Invoke, engine: Engine, tmp_path: Path
) -> None:
    """An import refuses a line dated an hour ahead by its number; two minutes ahead (within
    the skew) is fine; DIGEST_MAX_CLOCK_SKEW widens the window."""
    from datetime import UTC, datetime, timedelta

    soon = (datetime.now(UTC) + timedelta(minutes=2)).isoformat()
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    rows = [{**EVENTS[0], "created_at": soon}, {**EVENTS[1], "created_at": later}]
    path = write_jsonl(tmp_path / "e.jsonl", rows)
    result = digest_cli("events", "import", str(path))
    assert result.exit_code == 1
    assert f"{path}:2: created_at {later.replace('+00:00', '')}" in result.stderr
    assert "is ahead of the database's clock by more than 5 minutes" in result.stderr
    assert event_count(engine) == 0
    ok(digest_cli("events", "import", str(path), env={"DIGEST_MAX_CLOCK_SKEW": "7200"}))
    assert event_count(engine) == 2


def test_record_event_and_record_events_refuse_the_future(engine: Engine) -> None:
    """The Python API refuses a created_at beyond the skew, one event or many."""
    import pytest

    from digest.errors import ValidationError
    from digest.ingest.events import record_event, record_events

    with pytest.raises(ValidationError, match="ahead of the database's clock"):
        record_event(engine, user_id="1", category="comment", entity_type="post", entity_id="1",
                     created_at="2999-01-01T00:00:00Z")  # fmt: skip
    with pytest.raises(ValidationError, match=r"rows\[1\]: created_at .* ahead"):
        record_events(engine, [EVENTS[0], {**EVENTS[1], "created_at": "2999-01-01"}])
    assert event_count(engine) == 0
    assert record_event(
        engine, user_id="1", category="comment", entity_type="post", entity_id="1",
        created_at="2999-01-01", max_clock_skew=None,
    )  # fmt: skip


# -- digest deliveries in a pipe --------------------------------------------------------------

HEADER = "created_at\trun_id\tuser_id\trecipient\ttransport\tstatus\tprovider_message_id\treason"


def test_deliveries_piped_are_tab_separated_lines(digest_cli: Invoke, engine: Engine) -> None:
    """Not a terminal: a header and one tab-separated line per delivery, never wrapped; a
    reason's tabs and line breaks become spaces, its escape sequences visible."""
    run_id = add_run(engine, "1", "sent", "now() - interval '1 hour'")
    reason = "550 5.1.1 " + "mailbox unavailable " * 8 + "\tline\r\nbreak \x1b[31m"
    sql(
        engine,
        "INSERT INTO deliveries (bucket, run_id, user_id, recipient, transport, "
        "provider_message_id, attempt, status, reason, created_at) VALUES (digest_bucket('1'), "
        ":run, '1', 'ana@example.com', 'smtp', NULL, 1, 'bounced', :reason, "
        "'2026-11-01T10:00:00Z')",
        run=run_id,
        reason=reason,
    )
    result = digest_cli("deliveries")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == HEADER
    assert len(lines) == 2
    fields = lines[1].split("\t")
    assert fields[:7] == [
        "2026-11-01T10:00:00+00:00", str(run_id), "1", "ana@example.com", "smtp", "bounced", "",
    ]  # fmt: skip
    assert fields[7] == reason.replace("\t", " ").replace("\r\n", "  ").replace("\x1b", "\\x1b")


def test_deliveries_piped_with_none_is_the_header(digest_cli: Invoke) -> None:
    """Nothing matches in a pipe: the header alone, so a script reads zero rows."""
    result = digest_cli("deliveries", "--user", "nobody")
    assert result.exit_code == 0
    assert result.stdout == HEADER + "\n"


def test_deliveries_on_a_terminal_are_a_table(digest_cli: Invoke, engine: Engine) -> None:
    """On a terminal: the table, with its column titles."""
    run_id = add_run(engine, "1", "sent", "now() - interval '1 hour'")
    sql(
        engine,
        "INSERT INTO deliveries (bucket, run_id, user_id, recipient, transport, attempt, status) "
        "VALUES (digest_bucket('1'), :run, '1', 'ana@example.com', 'smtp', 1, 'sent')",
        run=run_id,
    )
    result = digest_cli("deliveries", env={"TTY_COMPATIBLE": "1", "COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert "provider message id" in result.stdout
    assert "\t" not in result.stdout


def test_explain_an_overdue_run_just_after_a_delivery() -> None:
    """Overdue with no run held but a delivery a minute ago: says so, and does not ask
    whether `digest work` is running."""
    from datetime import UTC, datetime, timedelta

    from digest.recipients import RecipientFacts
    from digest.support import QueueFacts, RunFacts, UserFacts, explain

    now = datetime(2026, 12, 3, 16, 44, tzinfo=UTC)
    recipient = RecipientFacts("1", "a@x.org", "daily", "UTC", 8, 1, None, True)
    run = RunFacts(
        7, "daily", "pending", now - timedelta(minutes=13), 0, None, None, None, None, None
    )
    queue = QueueFacts(now, 0, None, now - timedelta(seconds=70), 0)
    sentences = explain(UserFacts("1", recipient, None, run, (), None, 0, None, queue))
    assert "pending and due at 2026-12-03 16:31 UTC, overdue by 13 minutes." in sentences[1]
    assert sentences[2] == (
        "No worker holds a run right now; the last delivery of any user was recorded at "
        "2026-12-03 16:42 UTC (1 minute ago)."
    )
