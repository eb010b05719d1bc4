"""Retention and delivery health: `digest purge` and the rates in `digest stats`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from click.testing import Result
from sqlalchemy import Engine, text

Invoke = Callable[..., Result]

SEED = """
INSERT INTO digest_runs (bucket, id, user_id, cadence, period_start, scheduled_for, status,
                         completed_at)
VALUES (digest_bucket('u'), 1, 'u', 'daily', now() - interval '100 days',
        now() - interval '100 days', 'sent', now() - interval '100 days'),
       (digest_bucket('u'), 2, 'u', 'daily', now() - interval '2 days',
        now() - interval '2 days', 'sent', now() - interval '2 days'),
       (digest_bucket('u'), 3, 'u', 'daily', now() - interval '120 days',
        now() - interval '120 days', 'pending', NULL);
INSERT INTO digest_events (bucket, user_id, category, entity_type, entity_id, created_at,
                           digest_run_id)
SELECT digest_bucket('u'), 'u', 'like', 'post', 'p', now() - interval '101 days', run
  FROM (VALUES (1), (1), (1), (2), (3), (NULL)) AS r(run);
INSERT INTO deliveries (bucket, run_id, user_id, recipient, transport, attempt, status,
                        provider_message_id, created_at)
VALUES (digest_bucket('u'), 1, 'u', 'u@example.com', 'ses', 1, 'sent', 'ses-1',
        now() - interval '100 days'),
       (digest_bucket('u'), 2, 'u', 'u@example.com', 'ses', 1, 'delivered', 'ses-2',
        now() - interval '2 days');
INSERT INTO delivery_provider_ids (provider_message_id, delivery_id, bucket, created_at)
SELECT provider_message_id, id, bucket, created_at FROM deliveries;
INSERT INTO feedback_events (sns_message_id, event_type, raw, orphan, created_at)
VALUES ('sns-1', 'Delivery', '{}', true, now() - interval '100 days'),
       ('sns-2', 'Delivery', '{}', true, now() - interval '1 day');
INSERT INTO suppressions (email, reason, source, created_at)
VALUES ('old@example.com', 'hard bounce', 'ses', now() - interval '400 days');
"""


def counts(engine: Engine) -> tuple[int, ...]:
    with engine.connect() as conn:
        return tuple(
            conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
            for table in (
                "digest_events",
                "deliveries",
                "digest_runs",
                "suppressions",
                "feedback_events",
                "delivery_provider_ids",
            )
        )


def test_purge_removes_old_finished_work_and_keeps_the_rest(
    engine: Engine, digest_cli: Invoke
) -> None:
    """Old sent runs go with their events, deliveries and the deliveries' provider ids;
    waiting work and suppressions stay."""
    with engine.begin() as conn:
        for statement in SEED.split(";")[:-1]:
            conn.execute(text(statement))
    result = digest_cli("purge", "--older-than", "90d", "--batch-size", "2")
    assert result.exit_code == 0, result.output
    assert "purged 3 events, 1 delivery, 1 feedback event, 1 run" in result.output
    # events: run 2's, the pending run's and the unattached one; runs 2 and 3; 1 delivery
    # and its provider id
    assert counts(engine) == (3, 1, 2, 1, 1, 1)
    again = digest_cli("purge", "--older-than", "90d")
    assert "purged 0 events, 0 deliveries, 0 feedback events, 0 runs" in again.output


def test_purge_keeps_the_runs_of_current_periods(
    engine: Engine, digest_cli: Invoke, tmp_path: Path
) -> None:
    """purge --older-than 0d (or 1d after a weekly send) lets no second run into the same period."""
    with engine.begin() as conn:
        conn.execute(
            text(
                """
                INSERT INTO recipients (bucket, user_id, email, cadence)
                VALUES (digest_bucket('d'), 'd', 'd@example.com', 'daily'),
                       (digest_bucket('w'), 'w', 'w@example.com', 'weekly');
                INSERT INTO digest_events (bucket, user_id, category, entity_type, entity_id,
                                           created_at)
                SELECT digest_bucket(u), u, 'like', 'post', 'p', now() - interval '1 minute'
                  FROM (VALUES ('d'), ('w')) AS v(u)
                """
            )
        )
    assert "scheduled 2 new runs" in digest_cli("schedule", "--spread", "0").output
    outbox = str(tmp_path / "mail")
    worked = digest_cli("work", "--drain", "--transport", "file", "--outbox", outbox)
    assert "sent 2," in worked.output, worked.output
    with engine.begin() as conn:  # the weekly digest went out three days ago
        conn.execute(
            text(
                "UPDATE digest_runs SET completed_at = completed_at - interval '3 days' "
                "WHERE cadence = 'weekly'"
            )
        )
        conn.execute(
            text(
                "UPDATE deliveries SET created_at = created_at - interval '3 days' "
                "WHERE user_id = 'w'"
            )
        )
    for age in ("1d", "0d"):
        purged = digest_cli("purge", "--older-than", age)
        assert purged.exit_code == 0, purged.output
        again = digest_cli("schedule", "--spread", "0")
        assert "scheduled 0 new runs" in again.output, (age, purged.output)
    with engine.connect() as conn:
        kept = conn.execute(text("SELECT user_id, status FROM digest_runs ORDER BY user_id"))
        assert [tuple(row) for row in kept] == [("d", "sent"), ("w", "sent")]


def test_purge_refuses_a_bad_age(digest_cli: Invoke) -> None:
    """A malformed age is one clear line and exit 1."""
    result = digest_cli("purge", "--older-than", "three months")
    assert result.exit_code == 1
    assert "--older-than: expected a number and d, h or m" in result.stderr


def test_stats_reports_rates_and_warns_on_complaints_and_bounces(
    engine: Engine, digest_cli: Invoke
) -> None:
    """7-day complaint rate above 0.1% or bounce rate above 4% prints a warning."""
    with engine.begin() as conn:
        conn.execute(
            text(
                """
                INSERT INTO deliveries (bucket, run_id, user_id, recipient, transport, attempt,
                                        status)
                SELECT digest_bucket('u' || g), g, 'u' || g, 'u' || g || '@example.com', 'ses', 1,
                       CASE WHEN g <= 5 THEN 'bounced' WHEN g = 6 THEN 'complained'
                            ELSE 'delivered' END
                  FROM generate_series(1, 100) g
                """
            )
        )
    report = json.loads(digest_cli("stats", "--json").output)
    assert report["bounce_rate_7d"] == 0.05
    assert report["complaint_rate_7d"] == 0.01
    assert report["deliveries_by_day"][0]["sent"] == 100
    assert len(report["warnings"]) == 2
    human = digest_cli("stats").output
    assert "complaint rate over the last 7 days is 1.00%" in human
    assert "bounce rate over the last 7 days is 5.00%" in human


def test_stats_is_quiet_when_rates_are_healthy(engine: Engine, digest_cli: Invoke) -> None:
    """No warning below the thresholds."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO deliveries (bucket, run_id, user_id, recipient, transport, attempt, "
                "status) "
                "SELECT digest_bucket('u'), g, 'u', 'u@example.com', 'ses', 1, 'delivered' "
                "FROM generate_series(1, 50) g"
            )
        )
    assert json.loads(digest_cli("stats", "--json").output)["warnings"] == []
