"""The scheduler: one run per user, cadence and local period, whatever the clock does."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from digest import scheduler
from digest.ingest.recipients import set_recipient
from digest.scheduler import schedule_once

NY = ZoneInfo("America/New_York")

ADD_RECIPIENT = text(
    """
    INSERT INTO recipients (bucket, user_id, email, cadence, timezone, send_hour, weekly_day)
    VALUES (digest_bucket(:user_id), :user_id, :user_id || '@example.com', :cadence, :tz, :hour,
            :day)
    """
)


def add_recipient(
    engine: Engine,
    user_id: str,
    *,
    cadence: str = "daily",
    tz: str = "UTC",
    hour: int = 8,
    day: int = 1,
) -> None:
    with engine.begin() as conn:
        conn.execute(
            ADD_RECIPIENT,
            {"user_id": user_id, "cadence": cadence, "tz": tz, "hour": hour, "day": day},
        )


def runs(
    engine: Engine, user_id: str | None = None
) -> list[tuple[str, str, datetime, datetime, str]]:
    with engine.connect() as conn:
        return [
            tuple(row)
            for row in conn.execute(
                text(
                    "SELECT user_id, cadence, period_start, scheduled_for, status FROM digest_runs"
                    " WHERE CAST(:u AS text) IS NULL OR user_id = :u ORDER BY period_start"
                ),
                {"u": user_id},
            )
        ]


def add_many(engine: Engine, count: int) -> None:
    """Users u1..u<count>, daily and weekly, in four zones."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO recipients (bucket, user_id, email, cadence, timezone) "
                "SELECT digest_bucket('u' || g), 'u' || g, 'u' || g || '@example.com', "
                "CASE WHEN g % 2 = 0 THEN 'daily' ELSE 'weekly' END, "
                "(ARRAY['UTC','America/New_York','Asia/Tokyo','Europe/Berlin'])[1 + g % 4] "
                "FROM generate_series(1, :n) g"
            ),
            {"n": count},
        )


def schedule(engine: Engine, now: datetime, spread: int = 0) -> int:
    with engine.begin() as conn:
        return schedule_once(conn, now, spread)


def sweep(engine: Engine, start: datetime, days: int, step: timedelta) -> None:
    """Run the scheduler every `step` over `days` days, as cron would."""
    now = start
    while now < start + timedelta(days=days):
        schedule(engine, now)
        now += step


def test_daily_run_uses_local_send_hour(engine: Engine) -> None:
    """A Tokyo user's daily run starts at 08:00 Tokyo time, not 08:00 UTC."""
    add_recipient(engine, "tokyo", tz="Asia/Tokyo", hour=8)
    assert schedule(engine, datetime(2026, 11, 24, 0, 30, tzinfo=UTC)) == 1
    [(_, cadence, period_start, scheduled_for, status)] = runs(engine)
    assert (cadence, status) == ("daily", "pending")
    assert period_start.astimezone(ZoneInfo("Asia/Tokyo")) == datetime(
        2026, 11, 24, 8, 0, tzinfo=ZoneInfo("Asia/Tokyo")
    )
    assert scheduled_for == period_start


def test_before_send_hour_the_current_period_is_yesterdays(engine: Engine) -> None:
    """At 06:00 local the current daily period is the one that began yesterday at 08:00."""
    add_recipient(engine, "u1", tz="Europe/Berlin", hour=8)
    schedule(engine, datetime(2026, 11, 24, 5, 0, tzinfo=UTC))  # 06:00 Berlin
    [(_, _, period_start, _, _)] = runs(engine)
    assert period_start.astimezone(ZoneInfo("Europe/Berlin")).date().isoformat() == "2026-11-23"


@pytest.mark.parametrize("jobs", [1, 2])
def test_twice_at_once_creates_no_duplicate(engine: Engine, jobs: int) -> None:
    """Two schedulers racing on the same instant, each on one connection or on two slices,
    create each run exactly once."""
    add_many(engine, 2000)
    now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    barrier = threading.Barrier(2)
    created: list[int] = []

    def race() -> None:
        barrier.wait()
        created.append(scheduler.schedule(engine, now, 3600, jobs=jobs))

    threads = [threading.Thread(target=race) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(created) == 2000
    all_runs = runs(engine)
    assert len(all_runs) == 2000
    assert len({(u, c, p) for u, c, p, _, _ in all_runs}) == 2000


def test_slices_create_exactly_the_runs_of_one_statement(engine: Engine) -> None:
    """Three slices inserted at once create the same runs as one statement, each once."""
    add_many(engine, 2000)
    now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    assert schedule(engine, now, spread=3600) == 2000
    whole = runs(engine)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM digest_runs"))
    assert scheduler.schedule(engine, now, 3600, jobs=3) == 2000
    assert sorted(runs(engine)) == sorted(whole)
    assert scheduler.schedule(engine, now, 3600, jobs=3) == 0


POISON_TRIGGER = """
    CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.user_id = 'poison' THEN RAISE EXCEPTION 'poisoned'; END IF;
        RETURN NEW;
    END $$;
    CREATE TRIGGER refuse_poison BEFORE INSERT ON digest_runs
        FOR EACH ROW EXECUTE FUNCTION refuse_poison();
"""


def test_a_failed_slice_leaves_the_others_and_the_next_tick_completes(engine: Engine) -> None:
    """Each slice commits on its own: one failing does not undo the others' runs, and the
    command fails; the next tick creates what the failed slice missed."""
    add_many(engine, 400)
    add_recipient(engine, "poison")
    now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(text(POISON_TRIGGER))
        poisoned = conn.execute(
            text(
                # the two slices of one PostgreSQL's one shard: buckets 0-2047, 2048-4095
                "SELECT count(*) FROM recipients WHERE (bucket < 2048)"
                " = (digest_bucket('poison') < 2048)"
            )
        ).scalar_one()
    assert 1 < poisoned < 401
    with pytest.raises(DBAPIError, match="poisoned"):
        scheduler.schedule(engine, now, 0, jobs=2)
    assert len(runs(engine)) == 401 - poisoned
    with engine.begin() as conn:
        conn.execute(text("DROP TRIGGER refuse_poison ON digest_runs"))
    assert scheduler.schedule(engine, now, 0, jobs=2) == poisoned
    assert len(runs(engine)) == 401


def test_fewer_than_one_connection_is_refused(engine: Engine) -> None:
    """`jobs` below 1 is a programming error, refused before any statement."""
    now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    with pytest.raises(ValueError, match="jobs must be at least 1"):
        scheduler.schedule(engine, now, 0, jobs=0)


def test_new_york_gets_one_daily_run_per_local_day_across_dst(engine: Engine) -> None:
    """Across both DST changes of 2026 a New York user gets exactly one run per local day."""
    for hour in (8, 2, 1, 0):  # 02:00 does not exist on 8 March; 01:00 happens twice on 1 Nov
        add_recipient(engine, f"ny{hour}", tz="America/New_York", hour=hour)
    for start in (datetime(2026, 3, 5, tzinfo=UTC), datetime(2026, 10, 28, tzinfo=UTC)):
        sweep(engine, start, days=8, step=timedelta(minutes=20))
    # each sweep starts in the local evening: its first period is that local day's
    expected = {date(2026, 3, 4) + timedelta(days=i) for i in range(9)} | {
        date(2026, 10, 27) + timedelta(days=i) for i in range(9)
    }
    for hour in (8, 2, 1, 0):
        days = Counter(p.astimezone(NY).date() for _, _, p, _, _ in runs(engine, f"ny{hour}"))
        assert set(days.values()) == {1}, (hour, days)
        assert set(days) == expected, sorted(set(days) ^ expected)
    eight = [p.astimezone(NY) for _, _, p, _, _ in runs(engine, "ny8")]
    assert {(p.hour, p.minute) for p in eight} == {(8, 0)}


def test_weekly_run_on_the_chosen_local_day(engine: Engine) -> None:
    """A weekly user (Wednesday) gets one run per week, starting Wednesday at send_hour."""
    add_recipient(engine, "w", cadence="weekly", tz="America/Los_Angeles", hour=9, day=3)
    sweep(engine, datetime(2026, 11, 1, tzinfo=UTC), days=21, step=timedelta(hours=3))
    starts = [p.astimezone(ZoneInfo("America/Los_Angeles")) for _, _, p, _, _ in runs(engine)]
    assert len(starts) == 4  # the period current on 1 Nov, then three Wednesdays
    assert {(s.isoweekday(), s.hour) for s in starts} == {(3, 9)}
    assert all(b - a == timedelta(days=7) for a, b in pairwise(starts))


def test_stagger_is_stable_and_within_spread(engine: Engine) -> None:
    """scheduled_for = period_start + a per-user offset in [0, spread), the same every time."""
    for i in range(200):
        add_recipient(engine, f"s{i}")
    schedule(engine, datetime(2026, 11, 24, 9, 0, tzinfo=UTC), spread=3600)
    offsets = {u: (s - p).total_seconds() for u, _, p, s, _ in runs(engine)}
    assert all(0 <= o < 3600 for o in offsets.values())
    assert len(set(offsets.values())) > 100  # spread out, not all in the same second
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM digest_runs"))
    schedule(engine, datetime(2026, 11, 24, 9, 0, tzinfo=UTC), spread=3600)
    assert offsets == {u: (s - p).total_seconds() for u, _, p, s, _ in runs(engine)}


def test_unknown_zone_and_unsubscribed_users_are_left_out(engine: Engine) -> None:
    """A bad time zone written behind our back does not stop everyone else's schedule."""
    add_recipient(engine, "good")
    add_recipient(engine, "bad", tz="Mars/Olympus_Mons")
    add_recipient(engine, "gone")
    add_recipient(engine, "off", cadence="off")
    with engine.begin() as conn:
        conn.execute(text("UPDATE recipients SET unsubscribed_at = now() WHERE user_id = 'gone'"))
    assert schedule(engine, datetime(2026, 11, 24, 9, 0, tzinfo=UTC)) == 1
    assert [r[0] for r in runs(engine)] == ["good"]


def test_preference_change_cancels_pending_runs_only(engine: Engine) -> None:
    """daily -> weekly cancels the pending daily run; the next schedule creates the weekly one."""
    add_recipient(engine, "p")
    add_recipient(engine, "busy")
    now = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
    schedule(engine, now)
    with engine.begin() as conn:
        conn.execute(text("UPDATE digest_runs SET status = 'processing' WHERE user_id = 'busy'"))
    assert set_recipient(engine, "p", {"cadence": "weekly"}).cancelled_runs == 1
    assert set_recipient(engine, "busy", {"cadence": "weekly"}).cancelled_runs == 0
    assert [(c, s) for _, c, _, _, s in runs(engine, "p")] == [("daily", "cancelled")]
    assert [(c, s) for _, c, _, _, s in runs(engine, "busy")] == [("daily", "processing")]
    schedule(engine, now)
    assert sorted((c, s) for _, c, _, _, s in runs(engine, "p")) == [
        ("daily", "cancelled"),
        ("weekly", "pending"),
    ]
    # changing back frees the cancelled slot: the daily run of this period comes back
    set_recipient(engine, "p", {"cadence": "daily"})
    schedule(engine, now)
    assert sorted((c, s) for _, c, _, _, s in runs(engine, "p")) == [
        ("daily", "cancelled"),
        ("daily", "pending"),
        ("weekly", "cancelled"),
    ]


def test_unchanged_update_cancels_nothing(engine: Engine) -> None:
    """Touching a recipient without changing its schedule keeps its pending run."""
    add_recipient(engine, "same")
    schedule(engine, datetime(2026, 11, 24, 9, 0, tzinfo=UTC))
    changed = set_recipient(engine, "same", {"name": "New Name", "cadence": "daily"})
    assert (changed.action, changed.cancelled_runs) == ("updated", 0)
    assert [s for *_, s in runs(engine)] == ["pending"]
