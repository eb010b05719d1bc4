"""The worker end to end on a real database: outcomes, reasons, retries, no dead loops."""

from __future__ import annotations

import contextlib
import email
import email.policy
import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from digest import logs, shards, watchdog
from digest.channels.base import SendError
from digest.channels.email.file import FileTransport
from digest.cli.work import worker_cpus
from digest.config import Settings
from digest.models import OutgoingMessage, SendResult
from digest.scheduler import schedule_once
from digest.worker import Worker

RunDigest = Callable[..., subprocess.CompletedProcess[str]]  # the conftest fixture

ADD_RECIPIENT = text(
    "INSERT INTO recipients (bucket, user_id, email, name) "
    "VALUES (digest_bucket(:user_id), :user_id, :email, :name)"
)
ADD_EVENTS = text(
    """
    INSERT INTO digest_events (bucket, user_id, category, entity_type, entity_id, actor_id, payload,
                               created_at)
    SELECT digest_bucket(:user_id), CAST(:user_id AS text), CAST(:category AS text), 'post',
           'p' || (g % :entities),
           'a' || g,
           jsonb_build_object('title', CAST(:title AS text), 'actor_name', 'Actor ' || g,
                              'url', 'https://example.com/p/' || (g % :entities)),
           now() - interval '1 hour' + g * interval '1 millisecond'
      FROM generate_series(1, :n) g
    """
)


def add_user(
    engine: Engine, user_id: str, *, email_addr: str | None = None, name: str = ""
) -> None:
    with engine.begin() as conn:
        conn.execute(
            ADD_RECIPIENT,
            {
                "user_id": user_id,
                "email": email_addr or f"{user_id}@example.com",
                "name": name or user_id.title(),
            },
        )


def add_events(
    engine: Engine,
    user_id: str,
    n: int,
    *,
    entities: int = 5,
    category: str = "comment",
    title: str = "Trip photos",
) -> None:
    with engine.begin() as conn:
        conn.execute(
            ADD_EVENTS,
            {
                "user_id": user_id,
                "n": n,
                "entities": entities,
                "category": category,
                "title": title,
            },
        )


def schedule(engine: Engine) -> int:
    with engine.begin() as conn:
        return schedule_once(conn, datetime.now(UTC), 0)


def runs(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        return {
            row.user_id: row for row in conn.execute(text("SELECT * FROM digest_runs ORDER BY id"))
        }


def make_worker(engine: Engine, tmp_path: Path, transport: Any = None, **settings: Any) -> Worker:
    settings.setdefault("secret_key", "test-secret")
    config = Settings(outbox=tmp_path / "outbox", **settings)
    return Worker(engine, config, transport or FileTransport(config.outbox))


class ScriptedTransport:
    """Fails the way it is told to for given users; sends everyone else."""

    name = "scripted"

    def __init__(self, failures: dict[str, Exception]):
        self.failures = failures
        self.sent: list[OutgoingMessage] = []

    def send(self, message: OutgoingMessage) -> SendResult:
        if failure := self.failures.get(message.user_id):
            raise failure
        self.sent.append(message)
        return SendResult(self.name, f"provider-{message.run_id}")

    def close(self) -> None:
        pass


class SlowFor:
    """Sends everyone, taking `seconds` for the users in `slow`."""

    name = "slow"

    def __init__(self, slow: set[str], seconds: float):
        self.slow = slow
        self.seconds = seconds

    def send(self, message: OutgoingMessage) -> SendResult:
        if message.user_id in self.slow:
            time.sleep(self.seconds)
        return SendResult(self.name, f"provider-{message.run_id}")

    def close(self) -> None:
        pass


def test_each_run_outcome_has_its_own_duration(
    engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """duration_ms is the run's own time to its outcome, not the batch's time shared out."""
    for user in ("slow", "fast", "empty"):
        add_user(engine, user)
    add_events(engine, "slow", 3)
    add_events(engine, "fast", 3)
    schedule(engine)
    worker = make_worker(engine, tmp_path, SlowFor({"slow"}, 0.6), send_concurrency=2)
    with caplog.at_level(logging.INFO, logger="digest.worker"):
        assert worker.run(drain=True).batches == 1
    took = {r["user_id"]: r["duration_ms"] for r in logs.events(caplog.records, "run_outcome")}
    assert took["slow"] >= 600
    assert took["fast"] < 300
    assert took["empty"] < 300


def test_digests_are_sent_and_empty_runs_skipped(
    engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Users with events get one email each; a user with none is skipped, with no email."""
    for user in ("ana", "ben", "cy"):
        add_user(engine, user)
        add_events(engine, user, 12)
    add_user(engine, "quiet")
    assert schedule(engine) == 4
    with caplog.at_level(logging.INFO, logger="digest.worker"):
        stats = make_worker(engine, tmp_path).run(drain=True)
    assert (stats.sent, stats.skipped, stats.failed, stats.events) == (3, 1, 0, 36)
    by_user = runs(engine)
    assert by_user["quiet"].status == "skipped"
    assert by_user["quiet"].last_error == "no events"
    for user in ("ana", "ben", "cy"):
        run = by_user[user]
        assert (run.status, run.event_count) == ("sent", 12)
        eml = tmp_path / "outbox" / f"run-{run.id}.eml"
        message = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
        assert message["To"].addresses[0].addr_spec == f"{user}@example.com"
        assert message["Message-ID"] == run.message_id
        assert (tmp_path / "outbox" / f"run-{run.id}.html").exists()
    outcomes = {r["user_id"]: r for r in logs.events(caplog.records, "run_outcome")}
    assert {
        u: (r["run_id"], r["status"], r["attempt"], r["events"]) for u, r in outcomes.items()
    } == {
        user: (run.id, run.status, 1, 12 if user != "quiet" else 0) for user, run in by_user.items()
    }
    assert all(r["duration_ms"] >= 0 for r in outcomes.values())
    with engine.connect() as conn:
        assert (
            conn.execute(text("SELECT count(*) FROM deliveries WHERE status = 'sent'")).scalar_one()
            == 3
        )
        assert (
            conn.execute(
                text("SELECT count(*) FROM digest_events WHERE digest_run_id IS NULL")
            ).scalar_one()
            == 0
        )


def test_bad_recipients_fail_or_skip_with_a_reason_and_the_queue_moves_on(
    engine: Engine, tmp_path: Path
) -> None:
    """An invalid address fails its run, a suppressed one is skipped; others still go out."""
    add_user(engine, "bad", email_addr="not an address")
    add_user(engine, "blocked")
    add_user(engine, "fine")
    for user in ("bad", "blocked", "fine"):
        add_events(engine, user, 3)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO suppressions (email, reason, source) "
                "VALUES ('blocked@example.com', 'hard bounce', 'ses')"
            )
        )
    schedule(engine)
    stats = make_worker(engine, tmp_path).run(drain=True)
    assert (stats.sent, stats.skipped, stats.failed) == (1, 1, 1)
    by_user = runs(engine)
    assert by_user["bad"].status == "failed"
    assert by_user["bad"].last_error.startswith("invalid email address")
    assert (by_user["blocked"].status, by_user["blocked"].last_error) == (
        "skipped",
        "suppressed: hard bounce",
    )
    assert by_user["fine"].status == "sent"


def test_transient_errors_retry_with_backoff_then_fail_after_max_attempts(
    engine: Engine, tmp_path: Path
) -> None:
    """451-style failures go back to pending with a delay; the last attempt fails, visibly."""
    add_user(engine, "flaky")
    add_events(engine, "flaky", 2)
    schedule(engine)
    transport = ScriptedTransport({"flaky": SendError("transient", "451 try again later")})
    worker = make_worker(engine, tmp_path, transport, max_attempts=3)
    for attempt in (1, 2, 3):
        worker.run(drain=True)
        run = runs(engine)["flaky"]
        assert run.attempt == attempt
        if attempt < 3:
            assert run.status == "pending"
            assert run.scheduled_for > datetime.now(UTC)
            with engine.begin() as conn:  # time passes
                conn.execute(text("UPDATE digest_runs SET scheduled_for = now()"))
    assert run.status == "failed"
    assert run.last_error == "gave up after 3 attempts: 451 try again later"
    with engine.connect() as conn:
        statuses = conn.execute(text("SELECT status FROM deliveries ORDER BY id")).scalars()
        assert list(statuses) == ["deferred", "deferred", "failed"]


def test_permanent_error_and_unexpected_exception_fail_only_their_run(
    engine: Engine, tmp_path: Path
) -> None:
    """A 5xx and a transport bug each fail one run with the reason; the batch goes on."""
    for user in ("gone", "buggy", "ok"):
        add_user(engine, user)
        add_events(engine, user, 1)
    schedule(engine)
    transport = ScriptedTransport(
        {
            "gone": SendError("permanent", "550 5.1.1 no such user"),
            "buggy": RuntimeError("boom"),
        }
    )
    stats = make_worker(engine, tmp_path, transport).run(drain=True)
    assert (stats.sent, stats.failed) == (1, 2)
    by_user = runs(engine)
    assert by_user["gone"].last_error == "permanent: 550 5.1.1 no such user"
    assert "internal error" in by_user["buggy"].last_error
    assert [m.user_id for m in transport.sent] == ["ok"]


def test_fatal_transport_error_stops_the_worker_and_keeps_runs(
    engine: Engine, tmp_path: Path
) -> None:
    """An account-level failure stops sending at once; every run stays queued, unspent."""
    for user in ("a", "b", "c"):
        add_user(engine, user)
        add_events(engine, user, 1)
    schedule(engine)
    transport = ScriptedTransport({u: SendError("fatal", "sending paused") for u in "abc"})
    worker = make_worker(engine, tmp_path, transport)
    worker.run(drain=True)
    assert worker.fatal == "sending paused"
    assert {(r.status, r.attempt) for r in runs(engine).values()} == {("pending", 0)}
    assert len(transport.sent) == 0


def test_heavy_user_gets_top_groups_and_exact_more(engine: Engine, tmp_path: Path) -> None:
    """10,000 events over 300 posts, the cap at 50: 50 groups rendered and "250 more",
    a link, in both parts."""
    add_user(engine, "heavy")
    add_events(engine, "heavy", 10_000, entities=300)
    schedule(engine)
    make_worker(engine, tmp_path, group_cap=50).run(drain=True)
    run = runs(engine)["heavy"]
    assert (run.status, run.event_count) == ("sent", 10_000)
    html = (tmp_path / "outbox" / f"run-{run.id}.html").read_text()
    eml = email.message_from_bytes(
        (tmp_path / "outbox" / f"run-{run.id}.eml").read_bytes(), policy=email.policy.default
    )
    body = eml.get_body(preferencelist=("plain",))
    assert body is not None
    plain = body.get_content()
    assert "250 more" in html
    assert "250 more" in plain
    assert html.count("https://example.com/p/") >= 50


def test_html_and_quotes_in_payload_are_escaped(engine: Engine, tmp_path: Path) -> None:
    """User content cannot inject markup or break out of an attribute."""
    add_user(engine, "x", name='Eve "<script>"')
    add_events(engine, "x", 1, title='<script>alert("x")</script> & "quoted"')
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE digest_events SET payload = payload || "
                '\'{"url": "javascript:alert(1)"}\'::jsonb'
            )
        )
    schedule(engine)
    make_worker(engine, tmp_path).run(drain=True)
    run = runs(engine)["x"]
    html = (tmp_path / "outbox" / f"run-{run.id}.html").read_text()
    assert "<script>" not in html
    assert "&lt;script&gt;" in html
    assert "javascript:" not in html


def test_a_retry_sends_the_same_bytes(engine: Engine, tmp_path: Path) -> None:
    """Frozen events and a frozen Date: attempt 2 builds the very message attempt 1 built."""
    add_user(engine, "r")
    add_events(engine, "r", 4)
    schedule(engine)
    seen: list[bytes] = []

    class FailOnce(ScriptedTransport):
        def send(self, message: OutgoingMessage) -> SendResult:
            seen.append(message.data)
            if len(seen) == 1:
                raise SendError("transient", "421 busy")
            return super().send(message)

    worker = make_worker(engine, tmp_path, FailOnce({}))
    worker.run(drain=True)
    add_events(engine, "r", 3)  # arrives between the attempts: waits for the next digest
    with engine.begin() as conn:  # an hour passes before the retry
        conn.execute(
            text(
                "UPDATE digest_runs SET scheduled_for = now(), "
                "frozen_at = frozen_at - interval '1 hour'"
            )
        )
    worker.run(drain=True)
    assert len(seen) == 2
    first, second = (email.message_from_bytes(b, policy=email.policy.default) for b in seen)
    # the Date is the run's first attempt, not the moment of the retry
    assert second["Date"].datetime == runs(engine)["r"].frozen_at.replace(microsecond=0)
    del first["Date"], second["Date"]
    assert first.as_bytes() == second.as_bytes()
    assert runs(engine)["r"].event_count == 4


def test_heartbeat_keeps_a_slow_send_from_being_rescued(engine: Engine, tmp_path: Path) -> None:
    """A send longer than the lease keeps its run: the heartbeat extends the lease."""
    add_user(engine, "slow")
    add_events(engine, "slow", 1)
    schedule(engine)
    rescued = threading.Event()

    class Slow(ScriptedTransport):
        def send(self, message: OutgoingMessage) -> SendResult:
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:  # a watchdog runs while the send is slow
                with engine.connect() as conn:
                    if watchdog.reset_expired_once(conn, max_attempts=5) != (0, 0):
                        rescued.set()
                time.sleep(0.1)
            return super().send(message)

    stats = make_worker(engine, tmp_path, Slow({}), lease_seconds=1).run(drain=True)
    assert not rescued.is_set()
    assert (stats.sent, stats.lost) == (1, 0)
    assert runs(engine)["slow"].attempt == 1


def test_work_runs_the_watchdog_itself(engine: Engine, tmp_path: Path) -> None:
    """A run left behind by a dead worker is requeued and sent by `work`, no cron needed."""
    add_user(engine, "orphan")
    add_events(engine, "orphan", 2)
    schedule(engine)
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE digest_runs SET status = 'processing', attempt = 1, locked_by = 'dead', "
                "lease_expires_at = now() - interval '1 minute'"
            )
        )
    stats = make_worker(engine, tmp_path, backoff_base_seconds=0, restart_grace_seconds=0).run(
        drain=True
    )
    assert stats.sent == 1
    run = runs(engine)["orphan"]
    assert (run.status, run.attempt) == ("sent", 2)


def test_lost_database_is_retried_then_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No database, nothing held: it retries for MAX_OUTAGE_SECONDS, then stops, saying why."""
    from digest import worker as worker_module
    from digest.db import make_engine

    monkeypatch.setattr(worker_module, "MAX_OUTAGE_SECONDS", 0.5)
    dead = make_engine("postgresql://nobody@127.0.0.1:1/none")
    worker = make_worker(dead, tmp_path, poll_interval_seconds=0.01)
    worker.run(drain=True)
    assert worker.fatal is not None
    assert worker.fatal.startswith("database unavailable")


def test_sends_run_concurrently_up_to_the_limit(engine: Engine, tmp_path: Path) -> None:
    """A slow provider does not serialize the batch: up to send_concurrency sends at once."""
    for i in range(12):
        add_user(engine, f"c{i}")
        add_events(engine, f"c{i}", 1)
    schedule(engine)
    lock = threading.Lock()
    active = 0
    peak = 0
    everyone_in = threading.Barrier(4, timeout=10)

    class Slow(ScriptedTransport):
        def send(self, message: OutgoingMessage) -> SendResult:
            nonlocal active, peak
            with lock:
                active += 1
                peak = max(peak, active)
            with contextlib.suppress(threading.BrokenBarrierError):
                everyone_in.wait()  # only passes when 4 sends are in flight together
            with lock:
                active -= 1
            return super().send(message)

    stats = make_worker(engine, tmp_path, Slow({}), send_concurrency=4).run(drain=True)
    assert stats.sent == 12
    assert peak == 4


def crash_after_send(engine: Engine, tmp_path: Path, **settings: Any) -> ScriptedTransport:
    """A worker sends its batch and dies before recording it; its lease then runs out."""
    from concurrent.futures import ThreadPoolExecutor

    from digest.heartbeat import Heartbeat as _Heartbeat

    transport = ScriptedTransport({})
    doomed = make_worker(engine, tmp_path, transport, **settings)
    beat = _Heartbeat(engine, doomed.me, 60)
    claimed = doomed.claim_batch(beat)
    assert claimed is not None
    with ThreadPoolExecutor(2) as pool:
        batch = doomed.start_batch(claimed, pool, beat)
    [(_, future)] = batch.sending
    assert future.result() is not None  # the mail went out
    with engine.begin() as conn:
        conn.execute(text("UPDATE digest_runs SET lease_expires_at = now() - interval '1 s'"))
    return transport


def test_at_most_once_fails_a_run_whose_send_may_have_happened(
    engine: Engine, tmp_path: Path
) -> None:
    """at-most-once: after a crash between send and record, the run fails, never resends."""
    add_user(engine, "once")
    add_events(engine, "once", 1)
    schedule(engine)
    first = crash_after_send(engine, tmp_path, delivery="at-most-once")
    second = ScriptedTransport({})
    make_worker(
        engine,
        tmp_path,
        second,
        delivery="at-most-once",
        backoff_base_seconds=0,
        restart_grace_seconds=0,
    ).run(drain=True)
    run = runs(engine)["once"]
    assert (run.status, run.last_error) == ("failed", "unknown_outcome: attempt 1 may have sent it")
    assert (len(first.sent), len(second.sent)) == (1, 0)


def test_at_least_once_resends_after_the_same_crash(engine: Engine, tmp_path: Path) -> None:
    """at-least-once (default): the same crash leads to a resend with the same Message-ID."""
    add_user(engine, "twice")
    add_events(engine, "twice", 1)
    schedule(engine)
    first = crash_after_send(engine, tmp_path)
    second = ScriptedTransport({})
    make_worker(engine, tmp_path, second, backoff_base_seconds=0, restart_grace_seconds=0).run(
        drain=True
    )
    assert runs(engine)["twice"].status == "sent"
    assert first.sent[0].message_id == second.sent[0].message_id


@pytest.mark.parametrize(
    ("delivery", "status", "error"),
    [
        ("at-least-once", "pending", "unknown: reply lost after DATA"),
        ("at-most-once", "failed", "unknown_outcome: reply lost after DATA"),
    ],
)
def test_unknown_outcome_follows_the_delivery_setting(
    engine: Engine, tmp_path: Path, delivery: str, status: str, error: str
) -> None:
    """A lost reply after DATA is retried (at-least-once) or failed (at-most-once)."""
    add_user(engine, "u")
    add_events(engine, "u", 1)
    schedule(engine)
    transport = ScriptedTransport({"u": SendError("unknown", "reply lost after DATA")})
    make_worker(engine, tmp_path, transport, delivery=delivery).run(drain=True)
    run = runs(engine)["u"]
    assert (run.status, run.last_error) == (status, error)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT status FROM deliveries")).scalar_one() == "unknown"


def test_list_unsubscribe_carries_https_and_mailto(engine: Engine, tmp_path: Path) -> None:
    """RFC 8058 headers: the signed HTTPS link, the mailto when configured, One-Click."""
    add_user(engine, "h")
    add_events(engine, "h", 1)
    schedule(engine)
    transport = ScriptedTransport({})
    make_worker(
        engine,
        tmp_path,
        transport,
        base_url="https://mail.example.com",
        unsubscribe_mailto="unsubscribe@example.com",
    ).run(drain=True)
    mime = email.message_from_bytes(transport.sent[0].data, policy=email.policy.default)
    assert isinstance(mime, EmailMessage)
    header = str(mime["List-Unsubscribe"])
    assert header.startswith("<https://mail.example.com/u/")
    assert "<mailto:unsubscribe@example.com?subject=unsubscribe-" in header
    assert mime["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert mime["X-Digest-Idempotency-Key"] == f"digest-run-{runs(engine)['h'].id}"
    html = mime.get_body(preferencelist=("html",))
    assert html is not None
    assert "https://mail.example.com/u/" in html.get_content()


def fail_first_call(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> None:
    """`module.name` raises a dropped connection's OperationalError once, then works."""
    from sqlalchemy.exc import OperationalError

    real = getattr(module, name)
    calls = 0

    def flaky(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OperationalError(name, {}, Exception("server closed the connection"))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, flaky)


def test_a_claim_the_database_drops_is_made_again(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database drops during a claim: the statement took nothing (it is atomic on its
    own), and the batch is claimed again and sent after the outage, on its first attempt."""
    from digest import claim

    for user in ("a", "b"):
        add_user(engine, user)
        add_events(engine, user, 2)
    schedule(engine)
    fail_first_call(monkeypatch, claim, "claim_batch")
    worker = make_worker(engine, tmp_path, poll_interval_seconds=0.01, lease_seconds=60)
    worker.run(drain=True)
    assert {user: row.status for user, row in runs(engine).items()} == {"a": "sent", "b": "sent"}
    assert {row.attempt for row in runs(engine).values()} == {1}


def test_a_batch_is_claimed_with_its_digests_in_one_autocommit_statement(
    engine: Engine, tmp_path: Path
) -> None:
    """Claim, freeze, digests and recipients come back from one statement, and every
    statement the worker sends runs in autocommit: no BEGIN and COMMIT round trips around
    statements that are atomic on their own."""
    from sqlalchemy import event

    from digest.heartbeat import Heartbeat as _Heartbeat

    for user in ("a", "b", "c"):
        add_user(engine, user)
        add_events(engine, user, 3)
    schedule(engine)
    worker = make_worker(engine, tmp_path)
    sent: list[tuple[str, bool]] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        sent.append((statement, conn.connection.driver_connection.autocommit))

    shards.for_engine(worker.engine)  # read once per process, before the first claim
    event.listen(worker.engine, "before_cursor_execute", record)
    beat = _Heartbeat(worker.engine, worker.me, 60)
    claimed = worker.claim_batch(beat)
    assert claimed is not None
    assert len(sent) == 1
    assert {run.user_id: run.digest.total_events for run in claimed.runs} == {
        "a": 3,
        "b": 3,
        "c": 3,
    }
    assert all(run.recipient is not None for run in claimed.runs)
    worker._give_back(claimed.runs, beat)
    worker.run(drain=True)
    assert {user: row.status for user, row in runs(engine).items()} == dict.fromkeys("abc", "sent")
    assert all(autocommit for _, autocommit in sent), [s for s, a in sent if not a]


def test_a_batch_claimed_ahead_goes_back_when_the_worker_stops(
    engine: Engine, tmp_path: Path
) -> None:
    """The loader claims the next batch while this one renders; stopping gives it back
    unsent, its attempt unspent, instead of leaving it held until its lease runs out."""
    for user in ("a", "b", "c"):
        add_user(engine, user)
        add_events(engine, user, 1)
    schedule(engine)
    stop = threading.Event()

    class StopAfterOne(FileTransport):
        def send(self, message: OutgoingMessage) -> SendResult:
            stop.set()
            return super().send(message)

    config = Settings(outbox=tmp_path / "outbox", secret_key="test-secret", batch_size=1)
    stats = Worker(engine, config, StopAfterOne(config.outbox), stop=stop).run()
    assert stats.sent == 1
    states = sorted((row.status, row.attempt, row.locked_by) for row in runs(engine).values())
    assert states == [("pending", 0, None), ("pending", 0, None), ("sent", 1, None)]


def test_a_batch_whose_record_fails_is_recorded_on_the_next_try(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recording a batch's outcomes fails once (the database dropped): the worker records
    the same outcomes again after the outage instead of leaving the runs processing."""
    from digest import claim

    for user in ("a", "b", "c", "d"):
        add_user(engine, user)
        add_events(engine, user, 1)
    schedule(engine)
    fail_first_call(monkeypatch, claim, "finish_batch")
    worker = make_worker(engine, tmp_path, batch_size=1, poll_interval_seconds=0.01)
    stats = worker.run(drain=True)
    assert {user: row.status for user, row in runs(engine).items()} == dict.fromkeys("abcd", "sent")
    assert {row.attempt for row in runs(engine).values()} == {1}
    assert (stats.sent, stats.lost) == (4, 0)


def test_a_missed_heartbeat_logs_one_line_not_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """While the database restarts every beat fails: a warning line each, no traceback."""
    from digest.db import make_engine
    from digest.heartbeat import Heartbeat as _Heartbeat

    beat = _Heartbeat(make_engine("postgresql://nobody@127.0.0.1:1/none"), "me", 1.5)
    beat.add([(0, 1, 1), (0, 2, 1)])
    beater = threading.Thread(target=beat.run)
    with caplog.at_level(logging.WARNING, logger="digest.heartbeat"):
        beater.start()
        time.sleep(0.8)  # one beat: every max(lease / 3, 0.5) s
        beat.stop.set()
        beater.join()
    records = [r for r in caplog.records if r.name == "digest.heartbeat"]
    assert records
    assert all(
        (r.__dict__.get("event"), r.__dict__.get("runs")) == ("heartbeat_missed", 2)
        for r in records
    )
    assert all(r.exc_info is None for r in records)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux only")
def test_pin_cpus_gives_each_worker_process_its_cpu(
    engine: Engine, db_url: str, tmp_path: Path, run_digest: RunDigest
) -> None:
    """`work --processes 2 --pin-cpus`: each child pins itself, round robin over the CPUs
    the command may use, and the drain sends as usual."""
    for user in ("p1", "p2", "p3"):
        add_user(engine, user)
        add_events(engine, user, 2)
    with engine.begin() as conn:
        schedule_once(conn, datetime.now(UTC), 0)
    env = {
        **os.environ,
        "DIGEST_DATABASE_URL": db_url,
        "DIGEST_LOG_LEVEL": "INFO",
        "DIGEST_LOG_FORMAT": "json",
        "DIGEST_OUTBOX": str(tmp_path / "out"),
    }
    done = run_digest("work", "--drain", "--processes", "2", "--pin-cpus", env=env)
    assert done.returncode == 0, done.stderr
    assert "sent 3," in done.stderr
    pinned = [r for r in logs.read(done.stderr) if r.get("event") == "worker_pinned"]
    assert len({r["pid"] for r in pinned}) == 2, done.stderr
    assert sorted(r["cpu"] for r in pinned) == sorted(worker_cpus(2))


def test_json_logs_give_each_run_outcome_as_one_object(
    engine: Engine, db_url: str, tmp_path: Path, run_digest: RunDigest
) -> None:
    """DIGEST_LOG_FORMAT=json: every log line of `digest work`, in every worker process, is
    one JSON object; each run's outcome is one record with its fields."""
    for user in ("j1", "j2", "j3"):
        add_user(engine, user)
        add_events(engine, user, 2)
    add_user(engine, "j4")
    schedule(engine)
    env = {
        **os.environ,
        "DIGEST_DATABASE_URL": db_url,
        "DIGEST_LOG_LEVEL": "INFO",
        "DIGEST_LOG_FORMAT": "json",
        "DIGEST_OUTBOX": str(tmp_path / "out"),
    }
    done = run_digest("work", "--drain", "--processes", "2", env=env)
    assert done.returncode == 0, done.stderr
    *lines, summary = done.stderr.splitlines()
    assert summary.startswith("sent 3, skipped 1,")  # the command's own summary, not a log
    records = [json.loads(line) for line in lines]  # every log line is an object
    outcomes = {r["user_id"]: r for r in records if r.get("event") == "run_outcome"}
    assert {
        u: (r["run_id"], r["status"], r["attempt"], r["events"]) for u, r in outcomes.items()
    } == {user: (run.id, run.status, 1, run.event_count) for user, run in runs(engine).items()}
    assert all(r["level"] == "INFO" and r["logger"] == "digest.worker" for r in outcomes.values())
    assert all(isinstance(r["duration_ms"], float) for r in outcomes.values())


def test_worker_cpus_go_round_robin_over_the_allowed_cpus(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {5, 2}, raising=False)
    monkeypatch.setattr(os, "sched_setaffinity", lambda pid, cpus: None, raising=False)
    assert worker_cpus(3) == [2, 5, 2]


def test_a_worker_process_restores_the_signal_handlers_it_found(
    engine: Engine, db_url: str, tmp_path: Path
) -> None:
    """`digest work`'s SIGTERM/SIGINT handlers live only as long as the worker: on return the
    handlers the process had before are back."""
    from digest.cli.work import work_in_process

    add_user(engine, "sig")
    add_events(engine, "sig", 2)
    schedule(engine)

    def before(signum: int, frame: object) -> None:
        raise AssertionError("not expected to run")

    previous = {sig: signal.signal(sig, before) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        settings = Settings(outbox=tmp_path / "outbox", secret_key="test-secret")
        stats, fatal = work_in_process(db_url, settings, "file", drain=True)
        assert (stats.sent, fatal) == (1, None)
        assert signal.getsignal(signal.SIGTERM) is before
        assert signal.getsignal(signal.SIGINT) is before
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
