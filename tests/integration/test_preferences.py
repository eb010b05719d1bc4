"""Per-category opt-out and quiet hours as stored, and what muting does to digests, on a real
database: the claim, a retry, `digest preview` and `digest why`."""

from __future__ import annotations

from collections.abc import Callable
from datetime import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError

from digest import claim, recipients
from digest.channels.email.file import FileTransport
from digest.config import Settings
from digest.models import ClaimedRun
from digest.worker import Worker

Invoke = Callable[..., Result]

ADD_RECIPIENT = text(
    """
    INSERT INTO recipients (bucket, user_id, email, muted_categories)
    VALUES (digest_bucket(:user_id), :user_id, :user_id || '@example.com',
            CAST(:muted AS text[]))
    """
)
ADD_EVENT = text(
    """
    INSERT INTO digest_events (bucket, user_id, category, entity_type, entity_id, actor_id,
                               payload, created_at)
    VALUES (digest_bucket(:user_id), :user_id, :category, 'post', :entity_id, 'a1',
            jsonb_build_object('actor_name', 'Ana', 'title', 'Post ' || :entity_id),
            now() - interval '1 minute')
    """
)
ADD_DUE_RUN = text(
    """
    INSERT INTO digest_runs (bucket, user_id, cadence, period_start, scheduled_for)
    VALUES (digest_bucket(:user_id), :user_id, 'daily', now() - interval '1 hour',
            now() - interval '1 second')
    RETURNING id
    """
)


def add_recipient(engine: Engine, user_id: str, muted: list[str] | None = None) -> None:
    with engine.begin() as conn:
        conn.execute(ADD_RECIPIENT, {"user_id": user_id, "muted": muted or []})


def add_events(engine: Engine, user_id: str, **per_category: int) -> None:
    """`count` events of each category, each about its own post."""
    with engine.begin() as conn:
        for category, count in per_category.items():
            for n in range(count):
                params = {"user_id": user_id, "category": category, "entity_id": f"{category}{n}"}
                conn.execute(ADD_EVENT, params)


def add_due_run(engine: Engine, user_id: str) -> int:
    with engine.begin() as conn:
        return int(conn.execute(ADD_DUE_RUN, {"user_id": user_id}).scalar_one())


def set_muted(engine: Engine, user_id: str, muted: list[str]) -> None:
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE recipients SET muted_categories = :m WHERE user_id = :u"),
            {"m": muted, "u": user_id},
        )


def claim_one(engine: Engine) -> ClaimedRun:
    with engine.begin() as conn:
        [run] = claim.claim_batch(conn, "w1", 10, 60, 50)
    return run


def run_row(engine: Engine, run_id: int) -> Any:
    with engine.connect() as conn:
        return conn.execute(text("SELECT * FROM digest_runs WHERE id = :id"), {"id": run_id}).one()


def attached_categories(engine: Engine, run_id: int) -> list[str]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT category FROM digest_events WHERE digest_run_id = :id ORDER BY id"),
            {"id": run_id},
        )
        return list(rows.scalars())


def drain(engine: Engine, outbox: Path) -> None:
    settings = Settings(outbox=outbox)
    Worker(engine, settings, FileTransport(outbox)).run(drain=True)


# -- what is stored ---------------------------------------------------------------------


def test_quiet_hours_are_both_times_or_neither(engine: Engine) -> None:
    """The database refuses a quiet-hours start without an end, and an empty window."""
    add_recipient(engine, "u")
    for start, end in ((time(22), None), (None, time(7)), (time(22), time(22))):
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(
                text("UPDATE recipients SET quiet_start = :s, quiet_end = :e WHERE user_id = 'u'"),
                {"s": start, "e": end},
            )
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE recipients SET quiet_start = '22:00', quiet_end = '07:00'"),
        )
        row = conn.execute(text("SELECT muted_categories, quiet_start FROM recipients")).one()
    assert (row.muted_categories, row.quiet_start) == ([], time(22))


# -- muting and the digest ----------------------------------------------------------------


def test_the_claim_leaves_muted_categories_out_of_the_digest(engine: Engine) -> None:
    """Events of a muted category are attached to the run but not grouped or counted."""
    add_recipient(engine, "u", muted=["like"])
    add_events(engine, "u", comment=2, like=3)
    run_id = add_due_run(engine, "u")
    run = claim_one(engine)
    assert {g.category for g in run.digest.groups} == {"comment"}
    assert run.digest.total_events == 2
    assert sorted(attached_categories(engine, run_id)) == ["comment"] * 2 + ["like"] * 3
    assert run_row(engine, run_id).muted_categories == ["like"]


def test_a_run_without_muting_records_no_muted_categories(engine: Engine) -> None:
    """A recipient who mutes nothing gets every event, and the run stores no muted list."""
    add_recipient(engine, "u")
    add_events(engine, "u", comment=1, like=1)
    run_id = add_due_run(engine, "u")
    assert claim_one(engine).digest.total_events == 2
    assert run_row(engine, run_id).muted_categories is None


def test_a_retry_shows_what_its_first_attempt_showed(engine: Engine) -> None:
    """Muting between two attempts changes nothing in the retry: the same events, same bytes."""
    add_recipient(engine, "u", muted=["like"])
    add_events(engine, "u", comment=1, like=2)
    add_due_run(engine, "u")
    first = claim_one(engine)
    with engine.connect() as conn:
        claim.release(conn, "w1", claim.holding([first]))
    set_muted(engine, "u", ["comment"])
    retry = claim_one(engine)
    assert (retry.id, retry.attempt) == (first.id, first.attempt)
    assert retry.digest == first.digest


def test_only_muted_events_make_an_empty_digest_that_is_skipped(
    engine: Engine, tmp_path: Path
) -> None:
    """A run whose every event is muted sends nothing: skipped, no events counted."""
    add_recipient(engine, "u", muted=["like"])
    add_events(engine, "u", like=4)
    run_id = add_due_run(engine, "u")
    drain(engine, tmp_path / "outbox")
    row = run_row(engine, run_id)
    assert (row.status, row.event_count, row.last_error) == ("skipped", 0, "no events")
    assert attached_categories(engine, run_id) == ["like"] * 4
    assert not list((tmp_path / "outbox").rglob("*.eml"))


def test_the_sent_digest_does_not_show_muted_events(engine: Engine, tmp_path: Path) -> None:
    """The worker's email holds the shown events only, and the run counts only those."""
    add_recipient(engine, "u", muted=["mention"])
    add_events(engine, "u", comment=1, mention=2)
    run_id = add_due_run(engine, "u")
    drain(engine, tmp_path / "outbox")
    row = run_row(engine, run_id)
    assert (row.status, row.event_count) == ("sent", 1)
    [html] = list((tmp_path / "outbox").rglob("*.html"))
    page = html.read_text(encoding="utf-8")
    assert "Post comment0" in page
    assert "Post mention" not in page


def test_preview_leaves_muted_categories_out(engine: Engine, digest_cli: Invoke) -> None:
    """`digest preview` shows what the next digest would: muted events left out."""
    add_recipient(engine, "u", muted=["like"])
    add_events(engine, "u", comment=1, like=1)
    result = digest_cli("preview", "--user", "u", "--format", "text")
    assert result.exit_code == 0, result.output
    assert "Post comment0" in result.output
    assert "Post like0" not in result.output


def test_why_counts_the_muted_events_a_run_left_out(engine: Engine, digest_cli: Invoke) -> None:
    """`digest why` says how many events of muted categories a run left out, and names them."""
    add_recipient(engine, "u", muted=["follow", "like"])
    add_events(engine, "u", comment=2, like=3, follow=1)
    add_due_run(engine, "u")
    run = claim_one(engine)
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE digest_runs SET status = 'sent', event_count = 2, locked_by = NULL, "
                "lease_expires_at = NULL, completed_at = now() WHERE id = :id"
            ),
            {"id": run.id},
        )
    result = digest_cli("why", "--user", "u")
    assert result.exit_code == 0, result.output
    text_out = " ".join(result.output.split())
    assert "was sent" in text_out
    assert "with 2 events" in text_out
    assert "4 events of muted categories (follow, like) were left out" in text_out
    assert "Their digests leave out the muted categories follow, like." in text_out


def test_why_names_quiet_hours(engine: Engine, digest_cli: Invoke) -> None:
    """`digest why` shows quiet hours and says what they are for."""
    add_recipient(engine, "u")
    with engine.begin() as conn:
        conn.execute(text("UPDATE recipients SET quiet_start = '22:00', quiet_end = '07:00'"))
    text_out = " ".join(digest_cli("why", "--user", "u").output.split())
    assert (
        "Quiet hours 22:00-07:00 UTC local time: alerts wait until they end; "
        "digests keep their send hour."
    ) in text_out


# -- reads for the page -------------------------------------------------------------------


def test_categories_seen_are_recent_ones_plus_known_and_muted(engine: Engine) -> None:
    """The page's categories: the last 90 days' (sent or waiting), the known ones, the muted."""
    add_recipient(engine, "u", muted=["digest.old"])
    add_events(engine, "u", **{"post.shared": 1, "badge": 1})
    run_id = add_due_run(engine, "u")
    claim_one(engine)  # post.shared and badge now on a run
    add_events(engine, "u", reply=1)  # waiting
    with engine.begin() as conn:  # an old one, and someone else's
        conn.execute(
            text(
                "INSERT INTO digest_events (bucket, user_id, category, entity_type, entity_id, "
                "created_at, digest_run_id) VALUES "
                "(digest_bucket('u'), 'u', 'ancient', 'post', 'x', now() - interval '91 days',"
                " :run), "
                "(digest_bucket('v'), 'v', 'theirs', 'post', 'x', now(), NULL)"
            ),
            {"run": run_id},
        )
        found = recipients.categories_for(conn, "u", ["digest.old"])
    assert found == [
        "comment",
        "like",
        "mention",
        "follow",
        "badge",
        "digest.old",
        "post.shared",
        "reply",
    ]
