"""Claim, freeze, fence, release and the watchdog, on the real queue table."""

from __future__ import annotations

import contextlib
import json
import threading
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, text

from digest import claim, watchdog
from digest.buckets import bucket_of
from digest.models import ClaimedRun, Delivery, DeliveryStatus, Outcome, RunStatus
from digest.shards import ALL

ADD_RUN = text(
    """
    INSERT INTO digest_runs (bucket, user_id, cadence, period_start, scheduled_for)
    VALUES (digest_bucket(:user_id), :user_id, 'daily', now() - make_interval(days => :age),
            now() - interval '1 second')
    RETURNING id
    """
)
ADD_EVENT = text(
    """
    INSERT INTO digest_events (bucket, user_id, category, entity_type, entity_id, payload)
    VALUES (digest_bucket(:user_id), :user_id, 'like', 'post', 'p1', '{}') RETURNING id
    """
)


def add_run(engine: Engine, user_id: str, age: int = 0) -> int:
    with engine.begin() as conn:
        return int(conn.execute(ADD_RUN, {"user_id": user_id, "age": age}).scalar_one())


def add_event(engine: Engine, user_id: str) -> int:
    with engine.begin() as conn:
        return int(conn.execute(ADD_EVENT, {"user_id": user_id}).scalar_one())


def run_row(engine: Engine, run_id: int) -> Any:
    with engine.connect() as conn:
        return conn.execute(text("SELECT * FROM digest_runs WHERE id = :id"), {"id": run_id}).one()


def attached(engine: Engine, run_id: int) -> list[int]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                text("SELECT id FROM digest_events WHERE digest_run_id = :id ORDER BY id"),
                {"id": run_id},
            ).scalars()
        )


def claim_as(engine: Engine, me: str, n: int = 10) -> list[ClaimedRun]:
    with engine.begin() as conn:
        return claim.claim_batch(conn, me, n, 60, 50)


def expire_leases(engine: Engine) -> None:
    """Make time pass for the leases, without sleeping."""
    with engine.begin() as conn:
        conn.execute(text("UPDATE digest_runs SET lease_expires_at = now() - interval '1 second'"))


def sent(run: ClaimedRun) -> Outcome:
    return Outcome(
        run,
        RunStatus.SENT,
        1,
        message_id="<m>",
        delivery=Delivery("a@example.com", "null", DeliveryStatus.SENT),
    )


def test_claim_takes_due_runs_and_freezes_their_events(engine: Engine) -> None:
    """A claim leases due runs only, and attaches exactly the user's waiting events."""
    due = add_run(engine, "u1")
    with engine.begin() as conn:
        future = conn.execute(
            text(
                "INSERT INTO digest_runs (bucket, user_id, cadence, period_start, scheduled_for) "
                "VALUES (digest_bucket('u2'), 'u2', 'daily', now(), now() + interval '1 hour') "
                "RETURNING id"
            )
        ).scalar_one()
    mine = [add_event(engine, "u1") for _ in range(3)]
    add_event(engine, "u2")
    [run] = claim_as(engine, "w1")
    assert (run.id, run.attempt) == (due, 1)
    row = run_row(engine, due)
    assert (row.status, row.locked_by, row.frozen_at is not None) == ("processing", "w1", True)
    assert run_row(engine, future).status == "pending"
    assert attached(engine, due) == mine


def test_concurrent_claims_never_share_a_run(engine: Engine) -> None:
    """Four claimers racing over 200 runs each get a disjoint share (SKIP LOCKED)."""
    ids = {add_run(engine, f"u{i}") for i in range(200)}
    got: dict[str, list[int]] = {}
    barrier = threading.Barrier(4)

    def worker(name: str) -> None:
        barrier.wait()
        mine: list[int] = []
        while batch := claim_as(engine, name, 7):
            mine += [r.id for r in batch]
        got[name] = mine

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [i for share in got.values() for i in share]
    assert sorted(everything) == sorted(ids)


def test_retry_reuses_frozen_events_and_attaches_nothing_new(engine: Engine) -> None:
    """Freeze once: a retried attempt renders the same events, later ones wait."""
    run_id = add_run(engine, "u")
    first = add_event(engine, "u")
    claim_as(engine, "w1")
    later = add_event(engine, "u")
    expire_leases(engine)
    with engine.connect() as conn:
        assert watchdog.reset_expired_once(conn, max_attempts=5) == (1, 0)
    [again] = claim_as(engine, "w2")
    assert (again.id, again.attempt) == (run_id, 2)
    assert attached(engine, run_id) == [first]
    with engine.connect() as conn:
        waiting = conn.execute(
            text("SELECT id FROM digest_events WHERE digest_run_id IS NULL")
        ).scalars()
        assert list(waiting) == [later]


def test_worker_whose_lease_was_taken_cannot_mark_the_run_sent(engine: Engine) -> None:
    """Fencing: the late worker's commit changes nothing; the new owner's commit lands."""
    run_id = add_run(engine, "u")
    add_event(engine, "u")
    [stale] = claim_as(engine, "slow")
    expire_leases(engine)
    with engine.connect() as conn:
        watchdog.reset_expired_once(conn, max_attempts=5)
    [fresh] = claim_as(engine, "fast")
    with engine.connect() as conn:
        assert claim.finish_batch(conn, "slow", [sent(stale)]) == set()
    row = run_row(engine, run_id)
    assert (row.status, row.locked_by, row.attempt) == ("processing", "fast", 2)
    with engine.connect() as conn:
        assert claim.finish_batch(conn, "fast", [sent(fresh)]) == {run_id}
        deliveries = conn.execute(text("SELECT attempt, status FROM deliveries")).all()
    assert run_row(engine, run_id).status == "sent"
    assert [tuple(d) for d in deliveries] == [(2, "sent")]


def test_same_owner_with_a_stale_attempt_is_fenced_too(engine: Engine) -> None:
    """The fence checks the attempt as well as the owner name."""
    run_id = add_run(engine, "u")
    [run] = claim_as(engine, "w")
    old = run._replace(attempt=run.attempt - 1)
    with engine.connect() as conn:
        assert claim.finish_batch(conn, "w", [sent(old)]) == set()
    assert run_row(engine, run_id).status == "processing"


def test_watchdog_fails_runs_out_of_attempts(engine: Engine) -> None:
    """An expired lease on the last attempt becomes a visible failure, not a silent loop."""
    run_id = add_run(engine, "u")
    for _ in range(3):
        claim_as(engine, "crashy")
        expire_leases(engine)
        with engine.connect() as conn:
            watchdog.reset_expired_once(conn, max_attempts=3)
    row = run_row(engine, run_id)
    assert (row.status, row.attempt) == ("failed", 3)
    assert "lease expired 3 times" in row.last_error


def test_release_returns_runs_without_spending_an_attempt(engine: Engine) -> None:
    """Graceful shutdown gives unsent runs back, frozen events still attached."""
    run_id = add_run(engine, "u")
    event = add_event(engine, "u")
    claim_as(engine, "w")
    with engine.connect() as conn:
        assert claim.release(conn, "w", [(bucket_of("u"), run_id, 1)]) == 1
    row = run_row(engine, run_id)
    assert (row.status, row.attempt, row.locked_by) == ("pending", 0, None)
    assert attached(engine, run_id) == [event]


def test_retry_outcome_reschedules_with_backoff(engine: Engine) -> None:
    """A transient failure puts the run back to pending, due after the backoff."""
    run_id = add_run(engine, "u")
    [run] = claim_as(engine, "w")
    outcome = Outcome(run, RunStatus.PENDING, 1, error="transient: 451", retry_in=120.0)
    with engine.connect() as conn:
        assert claim.finish_batch(conn, "w", [outcome]) == {run_id}
        delay = conn.execute(
            text("SELECT extract(epoch FROM scheduled_for - now()) FROM digest_runs")
        ).scalar_one()
    assert 100 < float(delay) <= 120
    assert run_row(engine, run_id).status == "pending"
    assert claim_as(engine, "w") == []


def add_many_runs(engine: Engine) -> None:
    """20,000 runs, one in 50 of them due, and as many users with a waiting event each."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO digest_runs (bucket, user_id, cadence, period_start, scheduled_for, "
                "status) "
                "SELECT digest_bucket('u' || g), 'u' || g, 'daily', now(), "
                "now() - interval '1 minute', "
                "CASE WHEN g % 50 = 0 THEN 'pending' ELSE 'sent' END "
                "FROM generate_series(1, 20000) g"
            )
        )
        conn.execute(
            text(
                "INSERT INTO digest_events (bucket, user_id, category, entity_type, entity_id) "
                "SELECT digest_bucket('u' || g), 'u' || g, 'comment', 'post', 'p' "
                "FROM generate_series(1, 20000) g"
            )
        )
        conn.execute(text("ANALYZE"))


def test_claim_uses_the_pending_partial_index(engine: Engine) -> None:
    """The claim's scan reads the small partial index of pending runs, not the table, and
    its update finds the runs it chose by key: joined to them, it read the whole table."""
    add_many_runs(engine)
    with engine.begin() as conn:
        plan = conn.execute(
            text("EXPLAIN (FORMAT JSON) " + str(claim.claim_statement(100).text)),
            {"me": "w", "lease": 60, "cap": 50, "now": datetime.now(UTC)},
        ).scalar_one()
    assert "digest_runs_due_idx" in json.dumps(plan)
    assert not seq_scans_of_runs(plan)


def test_a_batch_is_recorded_through_its_own_runs_not_every_held_run(engine: Engine) -> None:
    """With statistics taken while nothing was held (as they usually say) and 2,000 runs
    now held, recording 50 of them looks each up by id; the watchdog alone reads the lease
    index. Through the lease index, each batch's record walked every held run."""
    add_many_runs(engine)  # 400 due runs, analysed while none is held
    held = claim_as(engine, "w", 400)
    outcomes = [sent(run) for run in held[:50]]
    captured: dict[str, Any] = {}

    class Capture:
        def begin(self) -> contextlib.nullcontext[None]:
            return contextlib.nullcontext()

        def execute(self, statement: Any, params: dict[str, Any]) -> list[Any]:
            captured.update(params)
            return []

    claim.finish_batch(Capture(), "w", outcomes)  # type: ignore[arg-type]
    with engine.begin() as conn:
        record = conn.execute(
            text("EXPLAIN (FORMAT JSON) " + str(claim.RUN_FINISH_MANY.text)), captured
        ).scalar_one()
        sweep = conn.execute(
            text("EXPLAIN (FORMAT JSON) " + str(watchdog.RUN_RESET_EXPIRED.bind(ALL).text)),
            {"max_attempts": 5, "restart_grace": 300, "backoff_base": 30, "backoff_cap": 3600},
        ).scalar_one()
    assert "digest_runs_lease_idx" not in json.dumps(record)
    assert "digest_runs_lease_idx" in json.dumps(sweep)
    # nor does it read the whole table because statistics say no run is held
    assert not seq_scans_of_runs(record)


def plan_nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    """A node of EXPLAIN (FORMAT JSON) and all the nodes under it."""
    return [node, *(n for child in node.get("Plans", ()) for n in plan_nodes(child))]


def seq_scans_of_runs(plan: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The sequential scans of `digest_runs` in an EXPLAIN (FORMAT JSON) plan."""
    return [
        node
        for node in plan_nodes(plan[0]["Plan"])
        if node.get("Relation Name") == "digest_runs" and node["Node Type"] == "Seq Scan"
    ]


def test_the_claim_is_planned_once_per_connection(engine: Engine) -> None:
    """PostgreSQL keeps the claim's generic plan (the one through the indexes) instead of
    planning every claim afresh."""
    add_many_runs(engine)
    with engine.connect() as conn:
        for _ in range(12):  # psycopg prepares on the 5th; the server compares 5 plans more
            with conn.begin():
                claim.claim_batch(conn, "w", 1, 60, 50)
        generic, custom = conn.execute(
            text(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
                " WHERE statement LIKE '%WITH due AS%'"
            )
        ).one()
    assert generic > 0, f"{custom} custom plans, no generic one"


def test_recording_again_after_a_lost_acknowledgement_counts_as_landed(engine: Engine) -> None:
    """The commit of a batch's outcomes landed but its reply was lost; the worker records
    the same outcomes again: they count as landed, with no second delivery row."""
    run_id = add_run(engine, "u")
    [run] = claim_as(engine, "w")
    with engine.connect() as conn:
        assert claim.finish_batch(conn, "w", [sent(run)]) == {run_id}
        assert claim.finish_batch(conn, "w", [sent(run)]) == {run_id}
        deliveries = conn.execute(text("SELECT count(*) FROM deliveries")).scalar_one()
    assert deliveries == 1


def test_a_retry_later_recorded_again_counts_as_landed(engine: Engine) -> None:
    """The same for a transient failure put back to pending: recorded again, it landed (and
    is not logged as a lost lease), with one `deferred` delivery row."""
    run_id = add_run(engine, "u")
    [run] = claim_as(engine, "w")
    later = Outcome(
        run,
        RunStatus.PENDING,
        1,
        error="transient: 451 try again",
        retry_in=60,
        delivery=Delivery("a@example.com", "null", DeliveryStatus.DEFERRED, reason="451 try again"),
    )
    with engine.connect() as conn:
        assert claim.finish_batch(conn, "w", [later]) == {run_id}
        assert claim.finish_batch(conn, "w", [later]) == {run_id}
        deliveries = conn.execute(text("SELECT count(*) FROM deliveries")).scalar_one()
    assert deliveries == 1


def test_a_watchdog_reset_is_not_taken_for_our_retry_later(engine: Engine) -> None:
    """The lease ran out and the watchdog put the run back to pending: a late record of the
    same attempt, also pending, did not land."""
    run_id = add_run(engine, "u")
    [run] = claim_as(engine, "w")
    expire_leases(engine)
    with engine.connect() as conn:
        watchdog.reset_expired_once(conn, max_attempts=3)
        late = Outcome(run, RunStatus.PENDING, 1, error="transient: 451 try again", retry_in=60)
        assert claim.finish_batch(conn, "w", [late]) == set()
    row = run_row(engine, run_id)
    assert (row.status, row.last_error.startswith("lease expired")) == ("pending", True)


def test_an_outcome_the_watchdog_wrote_is_not_taken_for_ours(engine: Engine) -> None:
    """The lease ran out on the last attempt and the watchdog failed the run: a late record
    of the same attempt did not land, even though it too says failed."""
    run_id = add_run(engine, "u")
    [run] = claim_as(engine, "w")
    expire_leases(engine)
    with engine.connect() as conn:
        watchdog.reset_expired_once(conn, max_attempts=1)
        late = Outcome(run, RunStatus.FAILED, 1, error="permanent: 550 no such user")
        assert claim.finish_batch(conn, "w", [late]) == set()
    assert run_row(engine, run_id).last_error.startswith("lease expired")
