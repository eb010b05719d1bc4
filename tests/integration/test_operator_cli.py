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
        "INSERT INTO digest_runs (user_id, cadence, period_start, scheduled_for) "
        "VALUES ('1', 'weekly', now() + interval '1 day', now() + interval '1 day')",
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
        INSERT INTO feedback_events (event_type, raw, orphan, created_at)
        VALUES ('Delivery', '{}', true, now() - interval '100 days')
        """,
    )
    purged = ok(digest_cli("purge", "--older-than", "90d"))
    assert "purged 1 event, 1 delivery, 1 feedback event, 1 run finished" in purged
