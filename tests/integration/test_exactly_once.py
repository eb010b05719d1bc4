"""Exactly once in effect: concurrent producers, worker processes, SIGKILL, SIGTERM."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
RunDigest = Callable[..., subprocess.CompletedProcess[str]]  # the conftest fixture

ADD_RUNS_FOR_ALL = text(
    """
    INSERT INTO digest_runs (bucket, user_id, cadence, period_start, scheduled_for)
    SELECT bucket, user_id, 'daily', clock_timestamp(), now() FROM recipients
    """
)
ADD_EVENT = text(
    """
    INSERT INTO digest_events (bucket, user_id, category, entity_type, entity_id, actor_id, payload)
    VALUES (digest_bucket(:user_id), :user_id, 'comment', 'post', :entity, :actor,
            '{"title": "t"}')
    RETURNING id
    """
)


def add_recipients(engine: Engine, n: int) -> list[str]:
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO recipients (bucket, user_id, email) "
                "SELECT digest_bucket('u' || g), 'u' || g, 'u' || g || '@example.com' "
                "FROM generate_series(1, :n) g"
            ),
            {"n": n},
        )
    return [f"u{i}" for i in range(1, n + 1)]


def env_for(db_url: str, outbox: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DIGEST_DATABASE_URL=db_url,
        DIGEST_OUTBOX=str(outbox),
        DIGEST_POLL_INTERVAL="0.05",
        DIGEST_WATCHDOG_INTERVAL="1",
        **extra,
    )
    return env


def digest(*args: str, env: dict[str, str], log: Path) -> subprocess.Popen[str]:
    """Start the real CLI; its chatty log goes to a file (a full pipe would block it)."""
    with log.open("w") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "digest", *args],
            env=env,
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
        )


def wait_for(engine: Engine, sql: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            if conn.execute(text(sql)).scalar_one():
                return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for: {sql}")


def assert_exactly_once(engine: Engine, inserted: int, outbox: Path | None = None) -> None:
    """Every event sits in exactly one sent run or still waits (unattached, or frozen into a
    run that is pending again); each sent run went out once."""
    with engine.connect() as conn:
        total, waiting, in_sent, elsewhere = conn.execute(
            text(
                """
                SELECT count(*),
                       count(*) FILTER (WHERE e.digest_run_id IS NULL OR r.status = 'pending'),
                       count(*) FILTER (WHERE r.status = 'sent'),
                       count(*) FILTER (WHERE e.digest_run_id IS NOT NULL
                                          AND r.status NOT IN ('sent', 'pending'))
                  FROM digest_events e LEFT JOIN digest_runs r ON r.id = e.digest_run_id
                """
            )
        ).one()
        assert total == inserted, "an event was lost"
        assert elsewhere == 0, "an event is attached to a run that failed or vanished"
        assert waiting + in_sent == inserted
        mismatched = conn.execute(
            text(
                """
                SELECT r.id FROM digest_runs r
                 WHERE r.status = 'sent'
                   AND r.event_count <> (SELECT count(*) FROM digest_events e
                                          WHERE e.digest_run_id = r.id)
                """
            )
        ).all()
        assert mismatched == [], "a sent digest does not show exactly its frozen events"
        doubled = conn.execute(
            text(
                "SELECT run_id FROM deliveries WHERE status = 'sent' "
                "GROUP BY run_id HAVING count(*) > 1"
            )
        ).all()
        assert doubled == [], "a run was recorded as sent twice"
        sent_runs = set(
            conn.execute(text("SELECT id FROM digest_runs WHERE status = 'sent'")).scalars()
        )
        logged = set(
            conn.execute(text("SELECT run_id FROM deliveries WHERE status = 'sent'")).scalars()
        )
        assert sent_runs == logged
    if outbox is not None:
        # `digest work` writes into a folder of the database's own; a Worker made here, flat
        files = {int(p.stem.removeprefix("run-")) for p in outbox.rglob("run-*.eml")}
        assert files == sent_runs


@pytest.fixture
def outbox(tmp_path: Path) -> Path:
    return tmp_path / "outbox"


@pytest.fixture
def stop_children() -> Iterator[list[subprocess.Popen[str]]]:
    children: list[subprocess.Popen[str]] = []
    yield children
    for child in children:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_concurrent_producers_and_two_worker_processes(
    engine: Engine, db_url: str, outbox: Path, stop_children: list[subprocess.Popen[str]]
) -> None:
    """Out-of-order commits while 2 worker processes drain: nothing lost, nothing doubled."""
    users = add_recipients(engine, 40)
    log = outbox.parent / "worker.log"
    worker = digest(
        "work", "--processes", "2", "--batch-size", "7", env=env_for(db_url, outbox), log=log
    )
    stop_children.append(worker)
    inserted = 0
    lock = threading.Lock()
    stop = threading.Event()

    def producer(seed: int) -> None:
        nonlocal inserted
        rand = random.Random(seed)
        while not stop.is_set():
            with engine.begin() as conn:
                n = rand.randint(1, 5)
                for _ in range(n):
                    conn.execute(
                        ADD_EVENT,
                        {
                            "user_id": rand.choice(users),
                            "entity": f"p{rand.randint(1, 4)}",
                            "actor": f"a{rand.randint(1, 9)}",
                        },
                    )
                # hold the transaction open: its ids commit after later ones
                time.sleep(rand.choice([0, 0, 0.01, 0.05, 0.2]))
            with lock:
                inserted += n

    def run_maker() -> None:
        while not stop.is_set():
            with engine.begin() as conn:
                conn.execute(ADD_RUNS_FOR_ALL)
            time.sleep(0.3)

    threads = [threading.Thread(target=producer, args=(i,)) for i in range(4)]
    threads.append(threading.Thread(target=run_maker))
    for t in threads:
        t.start()
    time.sleep(4)
    stop.set()
    for t in threads:
        t.join()
    with engine.begin() as conn:  # a last round picks up everything that is left
        conn.execute(ADD_RUNS_FOR_ALL)
    wait_for(
        engine, "SELECT count(*) = 0 FROM digest_runs WHERE status IN ('pending', 'processing')"
    )
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0, log.read_text()[-3000:]
    assert inserted > 200
    assert_exactly_once(engine, inserted, outbox)
    with engine.connect() as conn:
        assert (
            conn.execute(
                text("SELECT count(*) FROM digest_events WHERE digest_run_id IS NULL")
            ).scalar_one()
            == 0
        )


# A worker whose transport takes 20 ms per message, so a test can kill it mid-batch.
SLOW_WORKER = """
import sys, threading, time
from digest.config import Settings
from digest.db import make_engine
from digest.channels.email.file import FileTransport
from digest.cli.work import install_stop_handlers
from digest.worker import Worker

class Slow(FileTransport):
    def send(self, message):
        time.sleep(0.02)
        return super().send(message)

settings = Settings.from_env().with_(batch_size=50, lease_seconds=30)
stop = threading.Event()
install_stop_handlers(stop)
worker = Worker(make_engine(sys.argv[1]), settings, Slow(settings.outbox), stop=stop)
print("started", flush=True)
worker.run(drain=True)
"""


def slow_worker_mid_batch(
    engine: Engine, db_url: str, outbox: Path, children: list[subprocess.Popen[str]]
) -> subprocess.Popen[str]:
    """Start SLOW_WORKER and return once a batch has landed and the next one is in flight."""
    victim = subprocess.Popen(
        [sys.executable, "-c", SLOW_WORKER, db_url],
        env=env_for(db_url, outbox),
        cwd=ROOT,
        text=True,
        stderr=subprocess.DEVNULL,
    )
    children.append(victim)
    wait_for(
        engine,
        "SELECT count(*) FILTER (WHERE status = 'sent') >= 50 "
        "AND count(*) FILTER (WHERE status = 'processing') > 0 FROM digest_runs",
    )
    return victim


def seed_backlog(engine: Engine, users: int, per_user: int) -> int:
    add_recipients(engine, users)
    with engine.begin() as conn:
        conn.execute(
            text(
                """
                INSERT INTO digest_events (bucket, user_id, category, entity_type, entity_id,
                                           payload)
                SELECT digest_bucket('u' || u), 'u' || u, 'like', 'post', 'p' || (e % 3),
                       '{"title": "t"}'
                  FROM generate_series(1, :users) u, generate_series(1, :per_user) e
                """
            ),
            {"users": users, "per_user": per_user},
        )
        conn.execute(ADD_RUNS_FOR_ALL)
    return users * per_user


def test_sigkilled_worker_runs_are_recovered_by_watchdog(
    engine: Engine,
    db_url: str,
    outbox: Path,
    stop_children: list[subprocess.Popen[str]],
    run_digest: RunDigest,
) -> None:
    """SIGKILL mid-batch: the watchdog returns its runs, another worker completes them once."""
    inserted = seed_backlog(engine, users=300, per_user=4)
    # rescued runs due at once, even on a server started moments ago
    env = env_for(db_url, outbox, DIGEST_BACKOFF_BASE="0", DIGEST_RESTART_GRACE="0")
    victim = slow_worker_mid_batch(engine, db_url, outbox, stop_children)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    with engine.connect() as conn:
        orphaned = set(
            conn.execute(text("SELECT id FROM digest_runs WHERE status = 'processing'")).scalars()
        )
    assert orphaned, "the kill should have caught a batch in flight"
    # the lease has not expired yet: the watchdog leaves the runs alone
    watchdog = run_digest("watchdog", env=env)
    assert watchdog.stdout.strip() == "requeued 0, failed 0"
    with engine.begin() as conn:  # time passes: the lease runs out
        conn.execute(
            text(
                "UPDATE digest_runs SET lease_expires_at = now() - interval '1 second' "
                "WHERE status = 'processing'"
            )
        )
    watchdog = run_digest("watchdog", env=env)
    assert watchdog.stdout.strip() == f"requeued {len(orphaned)}, failed 0"
    rescuer = run_digest("work", "--drain", env=env)
    assert rescuer.returncode == 0, rescuer.stderr
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT id, status, attempt FROM digest_runs WHERE id = ANY(:ids)"),
            {"ids": list(orphaned)},
        ).all()
        assert {(status, attempt) for _, status, attempt in rows} == {("sent", 2)}
        assert (
            conn.execute(
                text("SELECT count(*) FROM digest_runs WHERE status <> 'sent'")
            ).scalar_one()
            == 0
        )
    assert_exactly_once(engine, inserted, outbox)


def test_sigterm_finishes_in_flight_and_releases_the_rest(
    engine: Engine, db_url: str, outbox: Path, stop_children: list[subprocess.Popen[str]]
) -> None:
    """SIGTERM mid-batch: exit 0, nothing left processing, unsent runs back to pending."""
    inserted = seed_backlog(engine, users=300, per_user=2)
    victim = slow_worker_mid_batch(engine, db_url, outbox, stop_children)
    victim.send_signal(signal.SIGTERM)
    assert victim.wait(timeout=30) == 0
    with engine.connect() as conn:
        counts: dict[str, Any] = dict(
            conn.execute(text("SELECT status, count(*) FROM digest_runs GROUP BY status")).all()
        )
        unspent = conn.execute(
            text("SELECT count(*) FROM digest_runs WHERE status = 'pending' AND attempt = 0")
        ).scalar_one()
    assert "processing" not in counts
    assert counts["pending"] > 0
    assert unspent == counts["pending"], "released runs keep their attempt budget"
    assert_exactly_once(engine, inserted, outbox)
