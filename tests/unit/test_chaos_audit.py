"""The chaos harness's verdict (scripts/chaos_lib/audit.py), from small hand-made inputs."""

from __future__ import annotations

import json
from collections.abc import Iterable

import pytest

from chaos_lib import logs
from chaos_lib.audit import Audit
from chaos_lib.records import Attempt, Delivery, EndState, Left, Received, Run, Tally

ACCOUNTED = "every event accounted for"
CARRY = "sent runs carry their events"
LEFT = "no run left due or in flight"
WHY = "failed and skipped runs say why"
ONE_SENT = "one 'sent' delivery per sent run"
RECEIVED = "every sent run was received"
STRAY = "no stray emails"
EXPLAINED = "every email has an attempt that may have sent it"
OUTAGE = "long outage: no duplicates"
RESTARTS = "restarts: no duplicates"
AT_MOST_ONCE = "at-most-once: no duplicates"
SAME_BYTES = "every copy is the same bytes"
RECOVERED = "leases of dead workers recovered"
PROVIDERS = "both providers carried mail"
PRODUCER = "producer's events stored"
EXITS = "workers exited only when told"


def sent_run(run_id: int, attempt: int = 1, events: int = 2) -> Run:
    return Run(run_id, "sent", attempt, None, events, events, completed=1000.0)


def sent(run_id: int, attempt: int = 1, transport: str = "smtp") -> Delivery:
    return Delivery(run_id, attempt, "sent", transport)


def mail(
    run_id: int | None, provider: str = "smtp", body: str = "x", at: float = 999.0
) -> Received:
    return Received(provider, run_id, body, at)


def audit(
    runs: Iterable[Run],
    deliveries: Iterable[Delivery] = (),
    received: Iterable[Received] = (),
    tally: Tally | None = None,
    lease_lost: Iterable[Attempt] = (),
    *,
    event_states: dict[str, int] | None = None,
    left: Left | None = None,
    stored_keys: Iterable[str] = (),
    delivery: str = "at-least-once",
    outage: bool = True,
) -> Audit:
    end = EndState(
        event_states if event_states is not None else {"in a sent run": 2},
        left or Left(),
        {r.id: r for r in runs},
        list(deliveries),
        set(stored_keys),
    )
    return Audit(
        end,
        list(received),
        tally or Tally(),
        set(lease_lost),
        delivery=delivery,
        outage=outage,
    )


def twice(run_id: int, provider: str = "smtp") -> list[Received]:
    """Two identical copies of run `run_id`'s email."""
    return [mail(run_id, provider), mail(run_id, provider)]


def test_clean_run_passes_every_check() -> None:
    """One email per sent run, on both providers, nothing left: every check holds."""
    a = audit(
        [sent_run(1), sent_run(2)],
        [sent(1), sent(2, transport="ses")],
        [mail(1), mail(2, "ses")],
    )
    assert [c.name for c in a.checks if not c.ok] == []
    assert a.duplicates == 0


def test_events_sent_failed_skipped_or_waiting_are_accounted_for() -> None:
    """Events in a sent run, a failed or skipped run with a reason, or waiting are fine."""
    states = {
        "in a sent run": 5,
        "in a failed run": 1,
        "in a skipped run": 1,
        "waiting": 3,
        "waiting for a retry": 2,
    }
    assert audit([], event_states=states).check(ACCOUNTED).ok


@pytest.mark.parametrize(
    "state",
    [
        "waiting although a run is due",
        "in a failed run, no reason",
        "in a skipped run, no reason",
        "in a processing run",
        "in a run that does not exist",
    ],
)
def test_events_anywhere_else_fail(state: str) -> None:
    """An event waiting beside a due run, in a run without a reason or in flight fails."""
    check = audit([], event_states={"in a sent run": 5, state: 1}).check(ACCOUNTED)
    assert not check.ok
    assert f"1 {state}" in check.detail


def test_sent_run_must_count_its_events() -> None:
    """A sent run whose event_count differs from the events attached to it fails."""
    run = Run(1, "sent", 1, None, event_count=3, attached=2)
    assert not audit([run], [sent(1)], [mail(1)]).check(CARRY).ok


@pytest.mark.parametrize(
    ("left", "ok"),
    [(Left(processing=1), False), (Left(due=1), False), (Left(later=3), True)],
)
def test_no_run_may_be_left_due_or_in_flight(left: Left, ok: bool) -> None:
    """A run still processing or due fails; one waiting for a later retry does not."""
    assert audit([], left=left).check(LEFT).ok is ok


@pytest.mark.parametrize("status", ["failed", "skipped"])
def test_failed_and_skipped_runs_need_a_reason(status: str) -> None:
    """A failed or skipped run with a blank last_error fails; one with a reason passes."""
    assert not audit([Run(1, status, 1, "  ")]).check(WHY).ok
    assert audit([Run(1, status, 1, "no events")]).check(WHY).ok


@pytest.mark.parametrize(
    ("run", "deliveries"),
    [
        (sent_run(1), []),
        (sent_run(1, attempt=2), [sent(1, 1), sent(1, 2)]),
        (Run(1, "failed", 1, "550 refused"), [sent(1)]),
    ],
    ids=["sent-without-record", "sent-twice", "failed-with-sent-record"],
)
def test_exactly_one_sent_delivery_per_sent_run(run: Run, deliveries: list[Delivery]) -> None:
    """A sent run needs exactly one `sent` delivery, and an unsent run none."""
    assert not audit([run], deliveries, [mail(1)]).check(ONE_SENT).ok


def test_sent_run_must_be_received_by_the_provider_it_names() -> None:
    """A run recorded as sent by SES but received only by SMTP fails."""
    a = audit([sent_run(1)], [sent(1, transport="ses")], [mail(1, "smtp")])
    assert not a.check(RECEIVED).ok
    assert a.not_received == [1]


@pytest.mark.parametrize("run_id", [None, 99])
def test_email_of_no_run_fails(run_id: int | None) -> None:
    """An email whose Message-ID is no digest run's, or an unknown run's, is stray."""
    a = audit([sent_run(1)], [sent(1)], [mail(1), mail(run_id)])
    assert not a.check(STRAY).ok
    assert a.stray == 1


def test_duplicate_after_a_lost_reply_is_explained() -> None:
    """A second email after an attempt recorded with an unknown outcome is explained."""
    a = audit(
        [sent_run(1, attempt=2)],
        [Delivery(1, 1, "unknown", "smtp"), sent(1, 2)],
        twice(1),
    )
    assert a.check(EXPLAINED).ok
    assert (a.duplicates, a.explained["unknown"]) == (1, 1)


@pytest.mark.parametrize("how", ["killed", "stopped", "stopped while starting"])
def test_duplicate_after_a_worker_was_stopped_is_explained(how: str) -> None:
    """A second email after an attempt whose worker the harness killed or stopped is explained."""
    tally = Tally(orphans={(1, 1): how})
    a = audit([sent_run(1, attempt=2)], [sent(1, 2)], twice(1), tally)
    assert a.check(EXPLAINED).ok
    assert a.interrupted_by == {how: 1}


def test_duplicate_after_a_lost_lease_is_explained() -> None:
    """A second email after an attempt whose worker logged a lost lease is explained."""
    a = audit([sent_run(1, attempt=2)], [sent(1, 2)], twice(1), lease_lost={(1, 1)})
    assert a.check(EXPLAINED).ok
    assert a.interrupted_by == {"lease lost": 1}


@pytest.mark.parametrize("attempt", [1, 2])
def test_unexplained_duplicate_fails(attempt: int) -> None:
    """More emails than attempts that could have sent them fail the check."""
    a = audit([sent_run(1, attempt=attempt)], [sent(1, attempt)], twice(1))
    check = a.check(EXPLAINED)
    assert not check.ok
    assert a.unexplained == [1]


def test_duplicate_only_the_long_outage_explains_fails() -> None:
    """A copy whose only explanation is an attempt in flight through the long outage fails."""
    tally = Tally(outage_at_risk={(1, 1)})
    a = audit([sent_run(1, attempt=2)], [sent(1, 2)], twice(1), tally)
    assert a.check(EXPLAINED).ok
    assert not a.check(OUTAGE).ok
    assert a.db_duplicates["postgres outage"] == 1


def test_duplicate_only_a_restart_explains_fails() -> None:
    """A copy whose only explanation is an attempt in flight at a restart fails."""
    tally = Tally(at_risk={(1, 1)})
    a = audit([sent_run(1, attempt=2)], [sent(1, 2)], twice(1), tally)
    assert a.check(EXPLAINED).ok
    assert not a.check(RESTARTS).ok
    assert a.check(OUTAGE).ok


def test_email_of_an_unsent_run_only_the_outage_explains_fails() -> None:
    """Mail out for a run never recorded as sent, put down to the outage alone, fails."""
    tally = Tally(outage_at_risk={(1, 1)})
    a = audit([Run(1, "failed", 1, "gave up")], [], [mail(1)], tally)
    check = a.check(OUTAGE)
    assert not check.ok
    assert "1 emails of runs not recorded as sent" in check.detail


def test_worker_killed_in_the_outage_is_blamed_not_the_outage() -> None:
    """An attempt in flight at the outage whose worker was killed is put down to the kill."""
    tally = Tally(orphans={(1, 1): "killed"}, outage_at_risk={(1, 1)})
    a = audit([sent_run(1, attempt=2)], [sent(1, 2)], twice(1), tally)
    assert a.check(OUTAGE).ok
    assert a.interrupted_by == {"killed": 1}


def test_worker_that_exited_on_its_own_in_the_outage_blames_the_outage() -> None:
    """A worker that exited untold through the outage does not excuse the outage's copy."""
    tally = Tally(orphans={(1, 1): "exit 1"}, outage_at_risk={(1, 1)})
    a = audit([sent_run(1, attempt=2)], [sent(1, 2)], twice(1), tally)
    assert not a.check(OUTAGE).ok


def test_duplicate_is_put_down_to_the_database_last() -> None:
    """With a restart and a kill both able to explain one copy, the kill takes it."""
    tally = Tally(orphans={(1, 2): "killed"}, at_risk={(1, 1)})
    a = audit([sent_run(1, attempt=3)], [sent(1, 3)], twice(1), tally)
    assert a.check(RESTARTS).ok
    assert a.interrupted_by == {"killed": 1}


def test_long_outage_check_only_when_there_was_one() -> None:
    """Without a long outage its check is left out of the verdict."""
    names = [c.name for c in audit([], outage=False).checks]
    assert OUTAGE not in names
    assert RESTARTS in names


def test_at_most_once_fails_on_any_duplicate() -> None:
    """In at-most-once mode even an explained duplicate fails."""
    deliveries = [Delivery(1, 1, "unknown", "smtp"), sent(1, 2)]
    runs = [sent_run(1, attempt=2)]
    a = audit(runs, deliveries, twice(1), delivery="at-most-once")
    assert a.check(EXPLAINED).ok
    assert not a.check(AT_MOST_ONCE).ok
    assert audit(runs, deliveries, [mail(1)], delivery="at-most-once").check(AT_MOST_ONCE).ok
    names = [c.name for c in audit(runs, deliveries, twice(1)).checks]
    assert AT_MOST_ONCE not in names


def test_copies_must_be_the_same_bytes() -> None:
    """Two copies of a run whose bodies differ fail."""
    copies = [mail(1, body="a"), mail(1, body="b")]
    a = audit([sent_run(1, attempt=2)], [Delivery(1, 1, "unknown", "smtp"), sent(1, 2)], copies)
    assert not a.check(SAME_BYTES).ok
    assert a.check(SAME_BYTES).detail == "runs whose copies differ: [1]"


@pytest.mark.parametrize(
    "run",
    [Run(1, "processing", 1), Run(1, "pending", 1)],
    ids=["still-processing", "pending-same-attempt"],
)
def test_lease_of_a_dead_worker_still_held_fails(run: Run) -> None:
    """A run a killed worker held that is still in its attempt has not been recovered."""
    a = audit([run], tally=Tally(orphans={(1, 1): "killed"}))
    assert not a.check(RECOVERED).ok


def test_leases_of_dead_workers_recovered() -> None:
    """Claimed again, failed for an expired lease at max attempts, or landed: all recovered."""
    runs = [
        sent_run(1, attempt=2),
        Run(2, "failed", 8, "lease expired (worker 1:2 gone)"),
        sent_run(3),
        Run(4, "pending", 2),
    ]
    orphans = {(1, 1): "killed", (2, 8): "killed", (3, 1): "stopped", (4, 1): "killed"}
    a = audit(runs, [sent(1, 2), sent(3)], [mail(1), mail(3)], Tally(orphans=orphans))
    assert a.check(RECOVERED).ok
    assert a.recovered == {"claimed again": 2, "failed at max attempts": 1, "had landed": 1}


def test_both_providers_must_carry_mail() -> None:
    """Mail through SMTP alone fails the check."""
    assert not audit([sent_run(1)], [sent(1)], [mail(1)]).check(PROVIDERS).ok


def test_producers_events_must_be_stored() -> None:
    """An event the producer recorded that is not in the database fails."""
    tally = Tally(produced=["u1/chaos-1", "u2/chaos-2"])
    assert not audit([], tally=tally, stored_keys={"u1/chaos-1"}).check(PRODUCER).ok
    assert audit([], tally=tally, stored_keys=tally.produced).check(PRODUCER).ok


def test_workers_may_exit_only_when_told() -> None:
    """A worker exit the harness did not cause fails."""
    tally = Tally(unexpected_exits=["007-work-smtp.log: exit 1"])
    check = audit([], tally=tally).check(EXITS)
    assert not check.ok
    assert check.detail == "007-work-smtp.log: exit 1"


def test_mail_held_through_the_outage_is_shown() -> None:
    """An email taken before the outage and recorded after it is counted as held through it."""
    tally = Tally(outage_window=(100.0, 170.0))
    a = audit([sent_run(1)], [sent(1)], [mail(1, at=90.0)], tally)
    assert a.held_through_outage == [910.0]
    assert a.check(OUTAGE).ok


def test_lost_leases_are_read_from_the_workers_json_records() -> None:
    """Only run_outcome records with status lease_lost name an attempt whose lease was lost;
    lines that are not JSON records (a traceback, the command's summary) are passed over."""
    log = "\n".join(
        [
            json.dumps(outcome(12, "u1", "lease_lost", 3)),
            json.dumps(outcome(13, "u2", "sent", 1)),
            json.dumps({"event": "run_lease_expired", "run_id": 14, "status": "pending"}),
            "run_outcome run_id=15 user_id=u3 status=lease_lost attempt=2",
            "sent 1, skipped 0, failed 0",
        ]
    )
    assert logs.lease_lost(log) == {(12, 3)}


def test_a_watchdogs_requeued_runs_are_counted_from_its_records() -> None:
    """`digest watchdog` requeued the runs its run_lease_expired records put back to pending."""
    output = "\n".join(
        json.dumps({"event": "run_lease_expired", "run_id": i, "status": status})
        for i, status in enumerate(["pending", "failed", "pending"])
    )
    assert logs.requeued(output) == 2
    assert logs.requeued(output + "\nrequeued 2, failed 1\n") == 2  # the summary adds none
    assert logs.requeued("requeued 0, failed 0\n") == 0


def outcome(run_id: int, user_id: str, status: str, attempt: int) -> dict[str, object]:
    """A worker's run_outcome record as DIGEST_LOG_FORMAT=json writes it."""
    return {
        "ts": "2025-01-01T00:00:00.000Z",
        "level": "INFO",
        "logger": "digest.worker",
        "pid": 4242,
        "event": "run_outcome",
        "run_id": run_id,
        "user_id": user_id,
        "status": status,
        "attempt": attempt,
        "events": 2,
        "duration_ms": 5.0,
    }
