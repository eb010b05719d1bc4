"""`make bench`: digests/s end to end, render-only and the naive way, from one run.

All rows run against the same embedded PostgreSQL (its default, durable settings) on a
database of their own, `digest_bench`, recreated each time. Figures on a shared 2-core
machine are noisy: read the ratios, which come from one run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from digest import content, migrate, unsubscribe  # noqa: E402
from digest.config import Settings  # noqa: E402
from digest.db import embedded_url, libpq_url, make_engine  # noqa: E402
from digest.render import Recipient, Renderer  # noqa: E402
from digest.scheduler import schedule_once  # noqa: E402
from digest.transports.base import OutgoingMessage, SendResult  # noqa: E402
from digest.transports.null import NullTransport  # noqa: E402
from digest.worker import Worker, work_processes  # noqa: E402

DATABASE = "digest_bench"
SLOW_SECONDS = 0.05

SEED_RECIPIENTS = text(
    """
    INSERT INTO recipients (user_id, email, name, timezone)
    SELECT 'u' || g, 'user' || g || '@example.com', 'User ' || g,
           (ARRAY['UTC', 'America/New_York', 'Europe/Berlin', 'Asia/Tokyo'])[1 + g % 4]
      FROM generate_series(1, :users) g
    """
)
# `per_user` events per user over 5 entities: 5 groups each, popular posts shared widely.
SEED_EVENTS = text(
    """
    INSERT INTO digest_events (user_id, category, entity_type, entity_id, actor_id, payload,
                               created_at)
    SELECT 'u' || u, (ARRAY['comment', 'like', 'mention', 'follow', 'share'])[1 + e % 5],
           'post', 'p' || ((u * 7 + e % 5) % 500), 'a' || ((u + e) % 1000),
           jsonb_build_object('title', 'A post about ' || ((u * 7 + e % 5) % 500),
                              'actor_name', 'Actor ' || ((u + e) % 1000),
                              'url', 'https://example.com/p/' || ((u * 7 + e % 5) % 500),
                              'excerpt', 'Nice one! I would add a few words about it.'),
           now() - interval '1 hour' + e * interval '1 second'
      FROM generate_series(1, :users) u, generate_series(1, :per_user) e
    """
)
RESET = (
    "DELETE FROM deliveries",
    "DELETE FROM digest_runs",
    "UPDATE digest_events SET digest_run_id = NULL WHERE digest_run_id IS NOT NULL",
)


@dataclass
class Row:
    name: str
    digests: int
    seconds: float
    processes: int

    @property
    def rate(self) -> float:
        return self.digests / self.seconds if self.seconds else 0.0


def fresh_database(server: str) -> str:
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {DATABASE}")
    return libpq_url(make_url(server).set(database=DATABASE).render_as_string(False))


def reset_runs(url: str, engine: Engine) -> int:
    """Every event waiting again and one due run per user: the same work for each row."""
    with engine.begin() as conn:
        for statement in RESET:
            conn.execute(text(statement))
        created = schedule_once(conn, datetime.now(UTC), 0)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    return created


def end_to_end(url: str, engine: Engine, settings: Settings, processes: int) -> Row:
    runs = reset_runs(url, engine)
    started = time.perf_counter()
    stats, errors = work_processes(url, settings, "null", processes, drain=True)
    elapsed = time.perf_counter() - started
    if errors or stats.sent != runs:
        raise SystemExit(f"bench run went wrong: sent {stats.sent} of {runs}; {errors}")
    return Row(
        f"end to end, {processes} process{'es' if processes > 1 else ''}", runs, elapsed, processes
    )


class SlowTransport(NullTransport):
    """A provider that takes `delay` seconds per message (network + API time)."""

    name = "slow"
    inline = False  # it stands for a network provider: sends go through the pool

    def __init__(self, delay: float):
        self.delay = delay

    def send(self, message: OutgoingMessage) -> SendResult:
        time.sleep(self.delay)
        return super().send(message)


def slow_transport(url: str, engine: Engine, settings: Settings, concurrency: int) -> Row:
    """One worker process sending through a 50 ms transport with `concurrency` threads."""
    runs = reset_runs(url, engine)
    worker = Worker(
        engine,
        settings.with_(send_concurrency=concurrency, secret_key="bench"),
        SlowTransport(SLOW_SECONDS),
    )
    started = time.perf_counter()
    stats = worker.run(drain=True)
    elapsed = time.perf_counter() - started
    if stats.sent != runs:
        raise SystemExit(f"slow-transport run went wrong: sent {stats.sent} of {runs}")
    return Row(f"50 ms transport, {concurrency} threads, 1 process", runs, elapsed, 1)


def naive(url: str, engine: Engine, settings: Settings, limit: int) -> Row:
    from naive import drain

    reset_runs(url, engine)
    renderer = Renderer(settings.templates_dir)
    started = time.perf_counter()
    sent = drain(engine, settings, renderer, NullTransport(), limit)
    return Row("naive way, 1 process", sent, time.perf_counter() - started, 1)


def _render_slice(args: tuple[list[Any], Settings]) -> tuple[int, float]:
    """Render and build the MIME message of each digest, no database; (count, seconds)."""
    items, settings = args
    renderer = Renderer(settings.templates_dir)
    started = time.perf_counter()
    for recipient, digest, period_start in items:
        rendered = renderer.render(
            recipient,
            digest,
            cadence="daily",
            period_start=period_start,
            base_url=settings.base_url,
            unsubscribe_url=unsubscribe.unsubscribe_url(settings.base_url, "k", recipient.user_id),
        )
        _build(rendered, recipient)
    return len(items), time.perf_counter() - started


def _build(rendered: Any, recipient: Recipient) -> None:
    from digest import message

    message.build_message(
        from_name="Digest",
        from_address="digest@localhost",
        to_name=recipient.name,
        to_address=recipient.email,
        subject=rendered.subject,
        html=rendered.html,
        text=rendered.text,
        message_id="<x@localhost>",
        idempotency_key="k",
        list_unsubscribe_url="https://localhost/u/x",
        list_unsubscribe_mailto=None,
        date=datetime.now(UTC),
    )


def render_only(engine: Engine, settings: Settings, processes: int, count: int) -> Row:
    """The CPU ceiling: the same digests rendered in a tight loop, no database."""
    with engine.connect() as conn:
        run_ids = list(
            conn.execute(
                text("SELECT id FROM digest_runs WHERE status = 'sent' ORDER BY id LIMIT :n"),
                {"n": count},
            ).scalars()
        )
        digests = content.load_contents(conn, run_ids, settings.group_cap)
        rows = conn.execute(
            text(
                "SELECT r.id, c.user_id, c.email, c.name, c.cadence, c.timezone, c.locale, "
                "r.period_start FROM digest_runs r JOIN recipients c USING (user_id) "
                "WHERE r.id = ANY(:ids)"
            ),
            {"ids": run_ids},
        ).all()
    items = [(Recipient(*row[1:7]), digests[row[0]], row[7]) for row in rows]
    if processes == 1:
        done, seconds = _render_slice((items, settings))
        return Row("render only, 1 process", done, seconds, 1)
    slices = [(items[i::processes], settings) for i in range(processes)]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        results = pool.map(_render_slice, slices)
    return Row(
        f"render only, {processes} processes",
        sum(n for n, _ in results),
        max(s for _, s in results),
        processes,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--events-per-user", type=int, default=10)
    parser.add_argument("--naive-runs", type=int, default=1_000)
    parser.add_argument("--slow-users", type=int, default=3_000)
    parser.add_argument("--send-concurrency", type=int, default=16)
    parser.add_argument("--json", type=Path, default=ROOT / "bench-results.json")
    args = parser.parse_args()
    console = Console(width=120)

    server = embedded_url(ROOT / ".digest" / "pgdata")
    url = fresh_database(server)
    engine = make_engine(url)
    migrate.upgrade(engine)
    with (
        console.status(f"seeding {args.users} users x {args.events_per_user} events"),
        engine.begin() as conn,
    ):
        conn.execute(SEED_RECIPIENTS, {"users": args.users})
        conn.execute(SEED_EVENTS, {"users": args.users, "per_user": args.events_per_user})
    settings = Settings(transport="null", database_url=url)

    rows: list[Row] = []
    with console.status("naive way"):
        base = naive(url, engine, settings, args.naive_runs)
    for processes in (1, 2):
        with console.status(f"end to end, {processes} processes"):
            rows.append(end_to_end(url, engine, settings, processes))
    for processes in (1, 2):
        with console.status(f"render only, {processes} processes"):
            rows.append(render_only(engine, settings, processes, min(args.users, 4000)))
    rows.append(base)
    with console.status("slow transport"):
        with engine.begin() as conn:  # fewer users: 50 ms each adds up
            conn.execute(
                text("DELETE FROM recipients WHERE substr(user_id, 2)::int > :n"),
                {"n": args.slow_users},
            )
        slow = slow_transport(url, engine, settings, args.send_concurrency)
    rows.append(slow)
    engine.dispose()

    ceiling = {r.processes: r.rate for r in rows if r.name.startswith("render only")}
    table = Table(
        title=f"digest bench: {args.users} users x {args.events_per_user} events "
        "(5 groups each), null transport"
    )
    for column in ("row", "digests", "seconds", "digests/s", "x naive", "of render ceiling"):
        table.add_column(column, justify="left" if column == "row" else "right")
    for row in rows:
        if row is slow:
            table.add_section()
        efficiency = (
            f"{row.rate / ceiling[row.processes]:.2f}" if row.name.startswith("end to end") else ""
        )
        table.add_row(
            row.name,
            str(row.digests),
            f"{row.seconds:.2f}",
            f"{row.rate:,.0f}",
            f"{row.rate / base.rate:.1f}",
            efficiency,
        )
    console.print(table)
    ideal = args.send_concurrency / SLOW_SECONDS
    console.print(
        f"50 ms transport: {slow.rate:,.0f} digests/s = {slow.rate / ideal:.2f} of "
        f"{args.send_concurrency} threads / 0.05 s = {ideal:,.0f}/s"
    )

    by_name = {r.name: r.rate for r in rows}
    results = {
        "e2e_digests_per_s_1p": by_name["end to end, 1 process"],
        "e2e_digests_per_s_2p": by_name["end to end, 2 processes"],
        "render_only_digests_per_s_1p": by_name["render only, 1 process"],
        "render_only_digests_per_s_2p": by_name["render only, 2 processes"],
        "naive_digests_per_s": base.rate,
        "slow_transport_digests_per_s": slow.rate,
        "slow_transport_ideal_digests_per_s": args.send_concurrency / SLOW_SECONDS,
        "users": args.users,
        "events_per_user": args.events_per_user,
    }
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
