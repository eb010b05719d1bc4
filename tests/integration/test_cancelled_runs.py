"""A preference change that cancels a run gives the run's frozen events back to the next one."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from click.testing import Result
from sqlalchemy import Engine, text

from digest.channels.email.file import FileTransport
from digest.channels.email.smtp import SmtpTransport
from digest.config import Settings
from digest.scheduler import schedule_once
from digest.worker import Worker

Invoke = Callable[..., Result]

SECRET = "test-secret"
ADD_RECIPIENT = text(
    "INSERT INTO recipients (bucket, user_id, email) "
    "VALUES (digest_bucket(:u), :u, :u || '@example.com')"
)
ADD_EVENTS = text(
    """
    INSERT INTO digest_events (bucket, user_id, category, entity_type, entity_id, actor_id, payload,
                               created_at)
    SELECT digest_bucket(:u), CAST(:u AS text), 'comment', 'post', 'p1', 'a' || g,
           jsonb_build_object('title', 'Trip photos', 'actor_name', 'Actor ' || g),
           now() - interval '1 hour'
      FROM generate_series(1, 3) g
    """
)
RUNS = text(
    "SELECT id, cadence, status, attempt, event_count, frozen_at, last_error "
    "FROM digest_runs WHERE user_id = :u ORDER BY id"
)
EVENT_RUNS = text("SELECT digest_run_id FROM digest_events WHERE user_id = :u ORDER BY id")


@dataclass
class Relay:
    """An SMTP relay that greylists (451 at RCPT) while `greylisting`, then accepts."""

    greylisting: bool = True
    accepted: list[bytes] = field(default_factory=list)

    async def handle_RCPT(  # noqa: N802 (aiosmtpd's hook name)
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if self.greylisting:
            return "451 4.7.1 Greylisted, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.accepted.append(envelope.original_content)
        return "250 OK"


@pytest.fixture
def relay() -> Iterator[tuple[Relay, int]]:
    """A real aiosmtpd relay on 127.0.0.1; yields it and its port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    handler = Relay()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


def smtp_worker(engine: Engine, port: int, **overrides: Any) -> Worker:
    settings = Settings(
        secret_key=SECRET,
        smtp_host="127.0.0.1",
        smtp_port=port,
        smtp_security="none",
        smtp_timeout=5.0,
        **overrides,
    )
    return Worker(engine, settings, SmtpTransport(settings))


def schedule(engine: Engine) -> int:
    with engine.begin() as conn:
        return schedule_once(conn, datetime.now(UTC), 0)


def runs(engine: Engine, user_id: str) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(RUNS, {"u": user_id}))


def event_runs(engine: Engine, user_id: str) -> list[int | None]:
    with engine.connect() as conn:
        return list(conn.execute(EVENT_RUNS, {"u": user_id}).scalars())


def deferred_by_the_relay(engine: Engine, relay: Relay, port: int) -> int:
    """Ana's daily run, its 3 events frozen, waits for a retry after the relay's 451."""
    with engine.begin() as conn:
        conn.execute(ADD_RECIPIENT, {"u": "ana"})
        conn.execute(ADD_EVENTS, {"u": "ana"})
    assert schedule(engine) == 1
    stats = smtp_worker(engine, port).run(drain=True)
    assert (stats.sent, stats.retried) == (0, 1)
    [run] = runs(engine, "ana")
    assert (run.status, run.attempt, run.frozen_at is not None) == ("pending", 1, True)
    assert event_runs(engine, "ana") == [run.id] * 3
    assert relay.accepted == []
    return int(run.id)


def test_cadence_change_by_cli_gives_a_deferred_runs_events_to_the_weekly_run(
    engine: Engine, digest_cli: Invoke, relay: tuple[Relay, int]
) -> None:
    """451, then `recipients set --cadence weekly`: the events wait; the weekly run sends them."""
    server, port = relay
    daily = deferred_by_the_relay(engine, server, port)
    changed = digest_cli("recipients", "set", "ana", "--cadence", "weekly")
    assert changed.exit_code == 0, changed.output
    [run] = runs(engine, "ana")
    assert (run.id, run.status, run.frozen_at, run.event_count) == (daily, "cancelled", None, None)
    assert event_runs(engine, "ana") == [None] * 3
    why = digest_cli("why", "--user", "ana")
    assert "3 events are waiting for the next digest" in why.output
    assert schedule(engine) == 1
    server.greylisting = False
    stats = smtp_worker(engine, port).run(drain=True)
    assert (stats.sent, stats.skipped) == (1, 0)
    weekly = runs(engine, "ana")[-1]
    assert (weekly.cadence, weekly.status, weekly.event_count) == ("weekly", "sent", 3)
    assert event_runs(engine, "ana") == [weekly.id] * 3
    assert len(server.accepted) == 1


def test_a_run_that_may_have_been_sent_is_not_cancelled_and_keeps_its_events(
    engine: Engine, digest_cli: Invoke, tmp_path: Path
) -> None:
    """A run whose last attempt may have sent it is not cancelled: its events never go out twice."""
    with engine.begin() as conn:
        conn.execute(ADD_RECIPIENT, {"u": "ana"})
        conn.execute(ADD_EVENTS, {"u": "ana"})
    schedule(engine)
    with engine.begin() as conn:  # claimed, marked as sending, then the worker died
        run_id = conn.execute(
            text(
                "UPDATE digest_runs SET attempt = 1, sending_attempt = 1, frozen_at = now() "
                "RETURNING id"
            )
        ).scalar_one()
        conn.execute(text("UPDATE digest_events SET digest_run_id = :r"), {"r": run_id})
    assert digest_cli("recipients", "set", "ana", "--cadence", "weekly").exit_code == 0
    [run] = runs(engine, "ana")
    assert run.status == "pending"
    assert event_runs(engine, "ana") == [run_id] * 3
    settings = Settings(secret_key=SECRET, outbox=tmp_path, delivery="at-most-once")
    Worker(engine, settings, FileTransport(tmp_path)).run(drain=True)
    [run] = runs(engine, "ana")
    assert (run.status, run.last_error) == ("failed", "unknown_outcome: attempt 1 may have sent it")
    assert list(tmp_path.glob("*.eml")) == []
