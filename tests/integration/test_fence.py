"""Every statement on a held run is fenced by its attempt; rescued runs back off."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from sqlalchemy import Engine, text

from digest import claim, retry, watchdog
from digest.channels.email.file import FileTransport
from digest.config import Settings
from digest.heartbeat import Heartbeat as _Heartbeat
from digest.models import ClaimedRun
from digest.worker import Worker

Invoke = Callable[..., Result]

ADD_RUNS = text(
    """
    INSERT INTO digest_runs (bucket, user_id, cadence, period_start, scheduled_for)
    SELECT digest_bucket('u' || g), 'u' || g, 'daily', now(), now() - interval '1 second'
      FROM generate_series(1, :n) g
    RETURNING id
    """
)
EXPIRE_LEASES = text("UPDATE digest_runs SET lease_expires_at = now() - interval '1 second'")
# A run left by a dead worker on attempt `attempt`, its lease expired.
ORPHAN = text(
    """
    UPDATE digest_runs SET status = 'processing', attempt = :attempt, locked_by = 'dead',
           lease_expires_at = now() - interval '1 minute'
    """
)


def add_runs(engine: Engine, n: int = 1) -> list[int]:
    with engine.begin() as conn:
        return list(conn.execute(ADD_RUNS, {"n": n}).scalars())


def run_row(engine: Engine, run_id: int) -> Any:
    with engine.connect() as conn:
        return conn.execute(text("SELECT * FROM digest_runs WHERE id = :id"), {"id": run_id}).one()


def claim_as(engine: Engine, me: str, n: int = 10) -> list[ClaimedRun]:
    with engine.begin() as conn:
        return claim.claim_batch(conn, me, n, 60, 50)


def reclaimed(engine: Engine, me: str) -> tuple[ClaimedRun, ClaimedRun]:
    """The interleaving: `me` claims a run, its lease runs out, the watchdog puts it back and
    `me` claims it again; returns (the stale attempt, the current one)."""
    [run_id] = add_runs(engine)
    [stale] = claim_as(engine, me)
    with engine.begin() as conn:
        conn.execute(EXPIRE_LEASES)
    with engine.connect() as conn:
        assert watchdog.reset_expired_once(conn, 5) == (1, 0)
    [current] = claim_as(engine, me)
    assert (stale.id, stale.attempt, current.id, current.attempt) == (run_id, 1, run_id, 2)
    return stale, current


def test_a_stale_batch_cannot_release_the_runs_new_attempt(engine: Engine) -> None:
    """A worker that claimed its own run again gives back only the attempt it names."""
    stale, current = reclaimed(engine, "w")
    with engine.connect() as conn:
        assert claim.release(conn, "w", claim.holding([stale])) == 0
    row = run_row(engine, current.id)
    assert (row.status, row.attempt, row.locked_by) == ("processing", 2, "w")
    with engine.connect() as conn:
        assert claim.release(conn, "w", claim.holding([current])) == 1
    row = run_row(engine, current.id)
    assert (row.status, row.attempt, row.locked_by) == ("pending", 1, None)


def test_a_stale_batch_cannot_mark_the_runs_new_attempt_sending(engine: Engine) -> None:
    """At most once: the stale batch's sending mark leaves the new attempt unmarked."""
    stale, current = reclaimed(engine, "w")
    with engine.connect() as conn:
        claim.mark_sending(conn, "w", [stale])
    assert run_row(engine, current.id).sending_attempt is None
    with engine.connect() as conn:
        claim.mark_sending(conn, "w", [current])
    assert run_row(engine, current.id).sending_attempt == 2


def test_a_stale_batch_cannot_extend_the_runs_new_lease(engine: Engine) -> None:
    """The stale batch's heartbeat leaves the new attempt's lease as it was."""
    stale, current = reclaimed(engine, "w")
    before = run_row(engine, current.id).lease_expires_at
    with engine.connect() as conn:
        assert claim.extend_lease(conn, "w", claim.holding([stale]), 600) == 0
    assert run_row(engine, current.id).lease_expires_at == before
    with engine.connect() as conn:
        assert claim.extend_lease(conn, "w", claim.holding([current]), 600) == 1
    assert run_row(engine, current.id).lease_expires_at > before


def test_the_heartbeat_keeps_the_new_attempt_when_the_stale_batch_is_done(
    engine: Engine,
) -> None:
    """The heartbeat holds (run, attempt): finishing the stale batch does not drop the run's
    new attempt from it, whose lease it keeps extending."""
    stale, current = reclaimed(engine, "w")
    beat = _Heartbeat(engine, "w", 1.0)  # beats every 0.5 s
    beat.add(claim.holding([stale]))
    beat.add(claim.holding([current]))
    beat.drop(claim.holding([stale]))
    with engine.begin() as conn:
        conn.execute(text("UPDATE digest_runs SET lease_expires_at = now()"))
    before = run_row(engine, current.id).lease_expires_at
    beater = threading.Thread(target=beat.run)
    beater.start()
    try:
        deadline = time.monotonic() + 5
        while run_row(engine, current.id).lease_expires_at == before:
            assert time.monotonic() < deadline, "the new attempt's lease was not extended"
            time.sleep(0.1)
    finally:
        beat.stop.set()
        beater.join()


def test_fenced_statements_find_a_batch_by_key(engine: Engine) -> None:
    """Extending, marking and releasing 50 of 2,000 held runs look each up by id: neither
    the lease index (every held run) nor the whole table."""
    add_runs(engine, 20_000)
    with engine.begin() as conn:
        conn.execute(text("ANALYZE digest_runs"))  # statistics from when nothing was held
    held = claim_as(engine, "w", 2_000)[:50]
    params = {
        "me": "w",
        "lease": 60,
        "buckets": [r.bucket for r in held],
        "ids": [r.id for r in held],
        "attempts": [r.attempt for r in held],
    }
    for statement in (claim.RUN_EXTEND_LEASE, claim.RUN_MARK_SENDING, claim.RUN_RELEASE_MANY):
        with engine.begin() as conn:
            plan = conn.execute(
                text("EXPLAIN (FORMAT JSON) " + str(statement.text)), params
            ).scalar_one()
        shown = json.dumps(plan)
        assert "digest_runs_pkey" in shown, shown
        assert "digest_runs_lease_idx" not in shown, shown
        assert not [
            node
            for node in plan_nodes(plan[0]["Plan"])
            if node.get("Relation Name") == "digest_runs" and node["Node Type"] == "Seq Scan"
        ], shown


def plan_nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    """A node of EXPLAIN (FORMAT JSON) and all the nodes under it."""
    return [node, *(n for child in node.get("Plans", ()) for n in plan_nodes(child))]


# -- rescued runs back off --------------------------------------------------------------


class Fixed(random.Random):
    """A random source that always draws `value`: the ends of the jitter."""

    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def random(self) -> float:
        return self.value


def bounds(attempt: int, base: float, cap: float) -> tuple[float, float]:
    """The least and the most retry.backoff waits after `attempt`."""
    return (
        retry.backoff(attempt, base, cap, Fixed(0.0)),
        retry.backoff(attempt, base, cap, Fixed(1.0)),
    )


def clock(engine: Engine) -> datetime:
    with engine.connect() as conn:
        now: datetime = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
    return now


def delays(engine: Engine, since: datetime) -> list[float]:
    """Seconds from `since` to each pending run's scheduled_for."""
    with engine.connect() as conn:
        return [
            float(d)
            for d in conn.execute(
                text(
                    "SELECT extract(epoch FROM scheduled_for - :since) FROM digest_runs"
                    " WHERE status = 'pending'"
                ),
                {"since": since},
            ).scalars()
        ]


@pytest.mark.parametrize(
    ("attempt", "base", "cap"),
    [(1, 30, 3600), (3, 30, 3600), (3, 30, 90), (4, 0, 3600)],
)
def test_a_rescued_run_waits_the_backoff_of_its_attempt(
    engine: Engine, attempt: int, base: int, cap: int
) -> None:
    """A run whose lease expired is due again after the backoff a transient failure of the
    same attempt gets (jittered, capped), so a worker polling at once does not claim it."""
    add_runs(engine, 40)
    with engine.begin() as conn:
        conn.execute(ORPHAN, {"attempt": attempt})
    start = clock(engine)
    with engine.connect() as conn:
        assert watchdog.reset_expired_once(conn, 5, backoff_base=base, backoff_cap=cap) == (40, 0)
    end = clock(engine)
    least, most = bounds(attempt, base, cap)
    waits = delays(engine, start)
    assert len(waits) == 40
    assert all(least <= w <= most + (end - start).total_seconds() for w in waits), (
        least,
        most,
        waits,
    )
    if most > 0:
        # jittered: a dead worker's batch does not all come due at the same instant
        assert max(waits) - min(waits) > (most - least) / 4
        assert claim_as(engine, "next") == []


def test_the_watchdog_command_backs_off_as_configured(engine: Engine, digest_cli: Invoke) -> None:
    """`digest watchdog` (cron) takes DIGEST_BACKOFF_BASE and DIGEST_BACKOFF_MAX."""
    add_runs(engine)
    with engine.begin() as conn:
        conn.execute(ORPHAN, {"attempt": 2})
    start = clock(engine)
    env = {"DIGEST_RESTART_GRACE": "0", "DIGEST_BACKOFF_BASE": "100", "DIGEST_BACKOFF_MAX": "150"}
    result = digest_cli("watchdog", env=env)
    assert result.exit_code == 0, result.output
    assert "requeued 1, failed 0" in result.output
    [wait] = delays(engine, start)
    assert 75 <= wait <= 150 + (clock(engine) - start).total_seconds()


def test_work_backs_off_the_runs_it_rescues(engine: Engine, tmp_path: Path) -> None:
    """`digest work` runs the watchdog with its settings' backoff: a run it rescues from a
    dead worker is not claimed again at once, by itself or anyone."""
    [run_id] = add_runs(engine)
    with engine.begin() as conn:
        conn.execute(ORPHAN, {"attempt": 1})
    settings = Settings(
        outbox=tmp_path / "outbox",
        secret_key="test-secret",
        restart_grace_seconds=0,
        backoff_base_seconds=100,
        backoff_max_seconds=3600,
    )
    worker = Worker(engine, settings, FileTransport(settings.outbox))
    start = clock(engine)
    stats = worker.run(drain=True)
    assert (stats.batches, stats.skipped, stats.sent) == (0, 0, 0)
    row = run_row(engine, run_id)
    assert (row.status, row.attempt) == ("pending", 1)
    [wait] = delays(engine, start)
    assert 50 <= wait <= 100 + (clock(engine) - start).total_seconds()
