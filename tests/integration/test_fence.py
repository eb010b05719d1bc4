"""Every statement on a held run is fenced by its attempt."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from sqlalchemy import Engine, text

from digest import claim, watchdog
from digest.claim import ClaimedRun
from digest.worker import _Heartbeat

ADD_RUNS = text(
    """
    INSERT INTO digest_runs (user_id, cadence, period_start, scheduled_for)
    SELECT 'u' || g, 'daily', now(), now() - interval '1 second' FROM generate_series(1, :n) g
    RETURNING id
    """
)
EXPIRE_LEASES = text("UPDATE digest_runs SET lease_expires_at = now() - interval '1 second'")


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
        assert claim.release(conn, "w", [(stale.id, stale.attempt)]) == 0
    row = run_row(engine, current.id)
    assert (row.status, row.attempt, row.locked_by) == ("processing", 2, "w")
    with engine.connect() as conn:
        assert claim.release(conn, "w", [(current.id, current.attempt)]) == 1
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
        assert claim.extend_lease(conn, "w", [(stale.id, stale.attempt)], 600) == 0
    assert run_row(engine, current.id).lease_expires_at == before
    with engine.connect() as conn:
        assert claim.extend_lease(conn, "w", [(current.id, current.attempt)], 600) == 1
    assert run_row(engine, current.id).lease_expires_at > before


def test_the_heartbeat_keeps_the_new_attempt_when_the_stale_batch_is_done(
    engine: Engine,
) -> None:
    """The heartbeat holds (run, attempt): finishing the stale batch does not drop the run's
    new attempt from it, whose lease it keeps extending."""
    stale, current = reclaimed(engine, "w")
    beat = _Heartbeat(engine, "w", 1.0)  # beats every 0.5 s
    beat.add([(stale.id, stale.attempt)])
    beat.add([(current.id, current.attempt)])
    beat.drop([(stale.id, stale.attempt)])
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
