"""`digest deliveries` and `digest why` against a real database, states made with SQL."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from click.testing import Result
from sqlalchemy import Engine, text

from digest.errors import ValidationError
from digest.recipients import RecipientFacts
from digest.support import UserFacts, explain, parse_since

Invoke = Callable[..., Result]


def sql(engine: Engine, statement: str, **params: Any) -> None:
    with engine.begin() as conn:
        conn.execute(text(statement), params)


def add_recipient(engine: Engine, user_id: str = "1", **columns: Any) -> None:
    values = {
        "email": "Ana@Example.com",
        "cadence": "daily",
        "timezone": "Asia/Tokyo",
        "send_hour": 8,
        **columns,
    }
    names = ", ".join(values)
    placeholders = ", ".join(f":{name}" for name in values)
    sql(
        engine,
        f"INSERT INTO recipients (bucket, user_id, {names}) "
        f"VALUES (digest_bucket(:user_id), :user_id, {placeholders})",
        user_id=user_id,
        **values,
    )


def add_run(engine: Engine, status: str, user_id: str = "1", **columns: Any) -> int:
    values = {
        "cadence": "daily",
        "period_start": datetime(2026, 11, 23, 23, tzinfo=UTC),
        "scheduled_for": datetime(2026, 11, 23, 23, tzinfo=UTC),
        "status": status,
        "attempt": 1,
        **columns,
    }
    names = ", ".join(values)
    placeholders = ", ".join(f":{name}" for name in values)
    with engine.begin() as conn:
        return int(
            conn.execute(
                text(
                    f"INSERT INTO digest_runs (bucket, user_id, {names}) "
                    f"VALUES (digest_bucket(:user_id), :user_id, {placeholders}) RETURNING id"
                ),
                {"user_id": user_id, **values},
            ).scalar_one()
        )


def add_delivery(
    engine: Engine,
    run_id: int,
    status: str,
    reason: str | None = None,
    user_id: str = "1",
    recipient: str = "Ana@Example.com",
    created_at: datetime = datetime(2026, 11, 23, 23, 1, tzinfo=UTC),
) -> None:
    sql(
        engine,
        """
        INSERT INTO deliveries (bucket, run_id, user_id, recipient, transport, message_id,
                                provider_message_id, attempt, status, reason, created_at)
        VALUES (digest_bucket(:user_id), :run_id, :user_id, :recipient, 'ses', '<m@digest>',
                'pm-' || :run_id, 1, :status, :reason, :created_at)
        """,
        run_id=run_id,
        user_id=user_id,
        recipient=recipient,
        status=status,
        reason=reason,
        created_at=created_at,
    )


def add_events(engine: Engine, count: int, user_id: str = "1") -> None:
    sql(
        engine,
        """
        INSERT INTO digest_events (bucket, user_id, category, entity_type, entity_id, created_at)
        SELECT digest_bucket(:user_id), :user_id, 'comment', 'post', 'p' || g,
               timestamptz '2026-11-24 10:00+00' + g * interval '1 minute'
          FROM generate_series(1, :count) g
        """,
        user_id=user_id,
        count=count,
    )


def explained(digest_cli: Invoke, user_id: str = "1") -> str:
    result = digest_cli("why", "--user", user_id)
    assert result.exit_code == 0, result.output
    return result.output


# -- digest why -----------------------------------------------------------------------------


def test_why_never_scheduled(digest_cli: Invoke, engine: Engine) -> None:
    """A new recipient: cadence, zone, local send time, and "never scheduled yet"."""
    add_recipient(engine)
    out = explained(digest_cli)
    assert "User 1 (Ana@Example.com) has a daily digest at 08:00 Asia/Tokyo local time." in out
    assert "Never scheduled yet — `digest schedule` runs from cron" in out
    assert "No delivery has been recorded for this user." in out
    assert "No events are waiting for the next digest." in out


def test_why_pending_run_in_local_time(digest_cli: Invoke, engine: Engine) -> None:
    """A pending run is shown as the next digest, in UTC and the user's local time."""
    add_recipient(engine, cadence="weekly", weekly_day=2)
    run_id = add_run(engine, "pending", cadence="weekly")
    add_events(engine, 3)
    out = explained(digest_cli)
    assert "has a weekly digest on Tuesdays at 08:00 Asia/Tokyo local time." in out
    assert (
        f"The next digest is run {run_id} (weekly), pending and due at "
        "2026-11-23 23:00 UTC (2026-11-24 08:00 Asia/Tokyo), overdue by " in out
    )
    assert "3 events are waiting for the next digest, the oldest from 2026-11-24 10:01 UTC" in out


def test_why_cadence_off(digest_cli: Invoke, engine: Engine) -> None:
    """Cadence off says so and that no digests are scheduled."""
    add_recipient(engine, cadence="off")
    out = explained(digest_cli)
    assert "Their cadence is off, so no digests are scheduled." in out
    assert "Never scheduled" not in out


def test_why_unsubscribed(digest_cli: Invoke, engine: Engine) -> None:
    """An unsubscribed user is told when they unsubscribed, in both clocks."""
    add_recipient(engine, unsubscribed_at=datetime(2026, 11, 20, 3, 30, tzinfo=UTC))
    out = explained(digest_cli)
    assert "They unsubscribed at 2026-11-20 03:30 UTC (12:30 Asia/Tokyo)" in out
    assert "no digests are scheduled or sent" in out


def test_why_suppressed(digest_cli: Invoke, engine: Engine) -> None:
    """A suppressed address gives reason, source, date and the command that lifts it."""
    add_recipient(engine)
    sql(
        engine,
        "INSERT INTO suppressions (email, reason, source, created_at) "
        "VALUES ('ana@example.com', 'hard bounce', 'ses', '2026-11-22 09:00+00')",
    )
    run_id = add_run(engine, "skipped", last_error="suppressed: hard bounce")
    out = explained(digest_cli)
    assert (
        "The address ana@example.com is suppressed since 2026-11-22 09:00 UTC "
        "(18:00 Asia/Tokyo) (reason: hard bounce; source: ses)" in out
    )
    assert "remove with `digest suppress remove ana@example.com`." in out
    assert f"Run {run_id} (daily), due at 2026-11-23 23:00 UTC" in out
    assert "was skipped (attempt 1): suppressed: hard bounce." in out


def test_why_skipped_empty(digest_cli: Invoke, engine: Engine) -> None:
    """A run skipped for "no events" reads as "there was nothing new to send"."""
    add_recipient(engine)
    add_run(
        engine,
        "skipped",
        completed_at=datetime(2026, 11, 23, 23, 0, 5, tzinfo=UTC),
        last_error="no events",
    )
    out = explained(digest_cli)
    assert "was skipped at 2026-11-23 23:00 UTC" in out
    assert "(attempt 1): there was nothing new to send." in out
    assert "No digest run is pending; the next `digest schedule`" in out


def test_why_failed_with_reason(digest_cli: Invoke, engine: Engine) -> None:
    """A failed run shows its attempt and reason."""
    add_recipient(engine)
    add_run(
        engine,
        "failed",
        attempt=5,
        completed_at=datetime(2026, 11, 24, 1, tzinfo=UTC),
        last_error="lease expired 5 times (worker w-3 was last)",
    )
    out = explained(digest_cli)
    assert "failed at 2026-11-24 01:00 UTC (10:00 Asia/Tokyo) (attempt 5): " in out
    assert "lease expired 5 times (worker w-3 was last)." in out


def test_why_processing(digest_cli: Invoke, engine: Engine) -> None:
    """A processing run names the worker holding the lease and until when."""
    add_recipient(engine)
    add_run(
        engine,
        "processing",
        attempt=2,
        locked_by="host-a:4242",
        lease_expires_at=datetime(2026, 11, 24, 0, 5, tzinfo=UTC),
    )
    out = explained(digest_cli)
    assert (
        "is being processed (attempt 2): worker host-a:4242 holds the lease until "
        "2026-11-24 00:05 UTC (09:05 Asia/Tokyo)." in out
    )


def test_why_cancelled(digest_cli: Invoke, engine: Engine) -> None:
    """A cancelled run is explained as a change of preferences."""
    add_recipient(engine)
    add_run(engine, "cancelled", completed_at=datetime(2026, 11, 23, 12, tzinfo=UTC))
    assert "was cancelled at 2026-11-23 12:00 UTC" in explained(digest_cli)
    assert "because the user's preferences changed." in explained(digest_cli)


def test_why_sent(digest_cli: Invoke, engine: Engine) -> None:
    """A sent run and its delivery without a report yet."""
    add_recipient(engine)
    run_id = add_run(
        engine, "sent", event_count=7, completed_at=datetime(2026, 11, 23, 23, 1, tzinfo=UTC)
    )
    add_delivery(engine, run_id, "sent")
    out = explained(digest_cli)
    assert "was sent at 2026-11-23 23:01 UTC (2026-11-24 08:01 Asia/Tokyo) with 7 events" in out
    assert (
        f"The last delivery (run {run_id}, to Ana@Example.com via ses at 2026-11-23 23:01 UTC "
        f"(2026-11-24 08:01 Asia/Tokyo), provider message id pm-{run_id}) was accepted by the "
        "provider; no delivery report has arrived yet." in out
    )


def test_why_sent_and_delivered(digest_cli: Invoke, engine: Engine) -> None:
    """A delivery the provider confirmed reads "delivered to the mailbox"."""
    add_recipient(engine)
    run_id = add_run(engine, "sent", event_count=2)
    add_delivery(engine, run_id, "delivered")
    assert f"provider message id pm-{run_id}) was delivered to the mailbox." in explained(
        digest_cli
    )


def test_why_bounced(digest_cli: Invoke, engine: Engine) -> None:
    """A bounced delivery shows the provider's reason."""
    add_recipient(engine)
    run_id = add_run(engine, "sent", event_count=2)
    add_delivery(engine, run_id, "bounced", reason="smtp; 550 5.1.1 user unknown")
    assert "bounced: smtp; 550 5.1.1 user unknown." in explained(digest_cli)


def test_why_recent_runs_newest_first(digest_cli: Invoke, engine: Engine) -> None:
    """Only the last few finished runs are listed, newest first."""
    add_recipient(engine)
    ids = [
        add_run(engine, "skipped", period_start=datetime(2026, 11, d, tzinfo=UTC))
        for d in range(1, 6)
    ]
    out = explained(digest_cli)
    shown = [run_id for run_id in ids if f"Run {run_id} " in out]
    assert shown == ids[-3:]
    assert out.index(f"Run {ids[-1]} ") < out.index(f"Run {ids[-3]} ")


def test_why_unknown_user(digest_cli: Invoke) -> None:
    """An unknown user is one error line and exit 1."""
    result = digest_cli("why", "--user", "nobody")
    assert result.exit_code == 1
    assert result.output.strip() == "digest: error: no recipient with user id nobody"


def test_why_history_without_recipient(digest_cli: Invoke, engine: Engine) -> None:
    """Runs of a deleted recipient are still explained, after saying the recipient is gone."""
    add_run(engine, "skipped", user_id="9", last_error="no recipient")
    out = explained(digest_cli, "9")
    assert out.startswith("There is no recipient with user id 9.")
    assert "was skipped (attempt 1): no recipient." in out


def test_why_json(digest_cli: Invoke, engine: Engine) -> None:
    """--json gives the sentences and the facts behind them."""
    add_recipient(engine)
    add_events(engine, 1)
    result = digest_cli("why", "--user", "1", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["facts"]["recipient"]["timezone"] == "Asia/Tokyo"
    assert doc["facts"]["events_waiting"] == 1
    assert doc["facts"]["oldest_event_at"].startswith("2026-11-24T10:01:00")
    assert "1 event is waiting for the next digest" in " ".join(doc["explanation"])


def test_explain_unknown_time_zone() -> None:
    """A zone PostgreSQL does not know is called out, and times fall back to UTC."""
    recipient = RecipientFacts("1", "a@x.org", "daily", "Mars/Base", 8, 1, None, False)
    facts = UserFacts("1", recipient, None, None, (), None, 0, None)
    sentences = explain(facts)
    assert "PostgreSQL does not know the time zone 'Mars/Base'" in sentences[1]
    assert all(sentence.endswith(".") for sentence in sentences)


# -- digest deliveries ----------------------------------------------------------------------


def seed_deliveries(engine: Engine) -> list[int]:
    add_recipient(engine)
    add_recipient(engine, "2", email="ben@example.com")
    runs = [add_run(engine, "sent", period_start=datetime(2026, 11, d, tzinfo=UTC)) for d in (1, 2)]
    other = add_run(engine, "sent", user_id="2")
    add_delivery(
        engine, runs[0], "bounced", "550 user unknown", created_at=datetime(2026, 11, 1, tzinfo=UTC)
    )
    add_delivery(engine, runs[1], "delivered", created_at=datetime(2026, 11, 2, tzinfo=UTC))
    add_delivery(
        engine,
        other,
        "sent",
        user_id="2",
        recipient="ben@example.com",
        created_at=datetime.now(UTC),
    )
    return [*runs, other]


def listed(digest_cli: Invoke, *args: str) -> list[dict[str, Any]]:
    result = digest_cli("deliveries", "--json", *args)
    assert result.exit_code == 0, result.output
    records: list[dict[str, Any]] = json.loads(result.output)
    return records


def test_deliveries_filters(digest_cli: Invoke, engine: Engine) -> None:
    """Newest first; --user, --email (any case), --status, --since and --limit narrow it."""
    first, second, other = seed_deliveries(engine)
    assert [r["run_id"] for r in listed(digest_cli)] == [other, second, first]
    assert [r["run_id"] for r in listed(digest_cli, "--user", "1")] == [second, first]
    assert [r["run_id"] for r in listed(digest_cli, "--email", "ANA@example.COM")] == [
        second,
        first,
    ]
    bounced = listed(digest_cli, "--status", "bounced")
    assert [(r["run_id"], r["reason"]) for r in bounced] == [(first, "550 user unknown")]
    assert [r["run_id"] for r in listed(digest_cli, "--since", "24h")] == [other]
    assert [r["run_id"] for r in listed(digest_cli, "--since", "2026-11-02T00:00:00Z")] == [
        other,
        second,
    ]
    assert len(listed(digest_cli, "--limit", "1")) == 1


def test_deliveries_table(digest_cli: Invoke, engine: Engine) -> None:
    """The table (on a terminal) shows each delivery's status, provider id and reason."""
    first, _, _ = seed_deliveries(engine)
    terminal = {"COLUMNS": "200", "TTY_COMPATIBLE": "1"}
    result = digest_cli("deliveries", "--user", "1", env=terminal)
    assert result.exit_code == 0, result.output
    assert "provider message id" in result.output
    assert f"pm-{first}" in result.output
    assert "550 user unknown" in result.output
    assert "bounced" in result.output
    empty = digest_cli("deliveries", "--user", "nobody", env=terminal)
    assert empty.output.strip() == "no deliveries match"


def test_deliveries_bad_since(digest_cli: Invoke) -> None:
    """A --since that is neither a time nor a span is one error line."""
    result = digest_cli("deliveries", "--since", "last week")
    assert result.exit_code == 1
    assert result.output.startswith("digest: error: --since: expected an ISO 8601 time")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("7d", datetime(2026, 11, 17, 12, tzinfo=UTC)),
        ("24h", datetime(2026, 11, 23, 12, tzinfo=UTC)),
        ("30m", datetime(2026, 11, 24, 11, 30, tzinfo=UTC)),
        ("2026-11-01T00:00:00", datetime(2026, 11, 1, tzinfo=UTC)),
    ],
)
def test_parse_since(value: str, expected: datetime) -> None:
    """Spans count back from now; a time without a zone is UTC."""
    assert parse_since(value, datetime(2026, 11, 24, 12, tzinfo=UTC)) == expected


def test_parse_since_refuses_garbage() -> None:
    """Anything else is a ValidationError naming the option."""
    with pytest.raises(ValidationError, match="--since"):
        parse_since("yesterday", datetime(2026, 11, 24, tzinfo=UTC))
