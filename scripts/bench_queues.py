"""`make bench`, row 4: generic PostgreSQL job queues doing digest's job.

What a team would build on procrastinate or pgqueuer: the scheduler's due runs enqueued as
one job per run; each job loads its user's waiting events and recipient, groups them in
Python, renders and builds the message with digest's own `Worker.prepare` (the same
rendering and MIME path as `digest work`, so the comparison isolates the queue machinery),
hands it to the null transport, then marks the events taken, the run sent and records the
delivery in one transaction.

Worker settings, one worker process each, chosen from each library's documentation:

- procrastinate: the job is a plain (sync) task, which procrastinate runs in a thread;
  worker concurrency 1, its default ("do not use concurrency if you have synchronous
  blocking tasks"); `run_worker_async(wait=False)` returns once the queue is empty.
- pgqueuer: entrypoints must be async; blocking work goes through `asyncio.to_thread`, as
  pgqueuer's own error message says (the default executor: min(32, cores + 4) threads).
  `QueueManager.run(mode=drain)` with the default batch_size=10 and
  max_concurrent_tasks=20, the smallest the library accepts for that batch size (its
  default, unlimited, would have one worker take the whole queue at once). The driver is
  asyncpg, pgqueuer's first-class one: its PsycopgDriver, which shares one connection
  between LISTEN and queries, drained only 50-350 no-op jobs/s here against 4,000+.

The no-op rows run the same task shapes with an empty body: the queue's own cost per job.
Each library's tables live in a database of its own on the same server, recreated each run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from digest.db import libpq_url
from digest.grouping import build_digest
from digest.models import ClaimedRun, Event, OutgoingMessage, Recipient
from digest.worker import Worker

# procrastinate's concurrency and pgqueuer's settings, as described above.
PROCRASTINATE_CONCURRENCY = 1
PGQUEUER_BATCH_SIZE = 10
PGQUEUER_MAX_CONCURRENT = 2 * PGQUEUER_BATCH_SIZE

RUN_LOAD = text(
    """
    SELECT r.bucket, r.user_id, r.cadence AS run_cadence, r.period_start,
           coalesce(r.frozen_at, now()) AS frozen_at,
           c.email, c.name, c.cadence, c.timezone, c.locale,
           c.id AS recipient_id, c.subscription_version
      FROM digest_runs r JOIN recipients c USING (user_id)
     WHERE r.id = :run
    """
)
EVENT_LIST_UNSENT = text(
    """
    SELECT id, category, entity_type, entity_id, actor_id, payload, created_at
      FROM digest_events WHERE user_id = :user_id AND digest_run_id IS NULL
     ORDER BY created_at
    """
)
EVENT_MARK_TAKEN = text("UPDATE digest_events SET digest_run_id = :run WHERE id = ANY(:ids)")
RUN_MARK_DONE = text(
    "UPDATE digest_runs SET status = :status, attempt = attempt + 1, completed_at = now(), "
    "event_count = :n, message_id = :message_id WHERE id = :run"
)
DELIVERY_INSERT = text(
    """
    INSERT INTO deliveries (bucket, run_id, user_id, recipient, transport, message_id, attempt,
                            status)
    VALUES (digest_bucket(:user_id), :run, :user_id, :recipient, :transport, :message_id, 1,
            'sent')
    """
)
RUNS_SENT = text("SELECT count(*) FROM digest_runs WHERE id = ANY(:ids) AND status = 'sent'")


@dataclass(frozen=True)
class Drain:
    """`jobs` jobs drained by one worker in `seconds`."""

    jobs: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class QueueResult:
    """One library's figures: the digest jobs and the no-op jobs."""

    library: str
    version: str
    digests: Drain
    noop: Drain


@dataclass(frozen=True)
class JobContext:
    """What every digest job needs, built once per worker (a team's module globals)."""

    engine: Engine
    worker: Worker  # its `prepare` renders and builds the message, as `digest work` does


def digest_job(ctx: JobContext, run_id: int) -> str:
    """One run, start to finish, as a generic queue's job; returns its final status."""
    with ctx.engine.begin() as conn:
        run = conn.execute(RUN_LOAD, {"run": run_id}).one()
        rows = conn.execute(EVENT_LIST_UNSENT, {"user_id": run.user_id}).all()
    events = [Event(*row) for row in rows]
    if not events:
        with ctx.engine.begin() as conn:
            conn.execute(
                RUN_MARK_DONE, {"status": "skipped", "n": 0, "message_id": None, "run": run_id}
            )
        return "skipped"
    worker = ctx.worker
    prepared = worker.composer.compose(
        ClaimedRun(
            run_id,
            run.bucket,
            run.user_id,
            run.run_cadence,
            run.period_start,
            1,
            run.frozen_at,
            recipient=Recipient(
                run.user_id,
                run.email,
                run.name,
                run.cadence,
                run.timezone,
                run.locale,
                None,
                None,
                run.recipient_id,
                run.subscription_version,
            ),
            digest=build_digest(events, worker.settings.group_cap),
        )
    )
    if not isinstance(prepared, OutgoingMessage):
        raise SystemExit(f"bench run {run_id} cannot be sent: {prepared.error}")
    result = worker.transport.send(prepared)
    with ctx.engine.begin() as conn:
        conn.execute(EVENT_MARK_TAKEN, {"run": run_id, "ids": [e.id for e in events]})
        conn.execute(
            RUN_MARK_DONE,
            {"status": "sent", "n": len(events), "message_id": prepared.message_id, "run": run_id},
        )
        conn.execute(
            DELIVERY_INSERT,
            {
                "run": run_id,
                "user_id": run.user_id,
                "recipient": prepared.to_address,
                "transport": result.transport,
                "message_id": prepared.message_id,
            },
        )
    return "sent"


def fresh_database(server: str, name: str) -> str:
    """(Re)create database `name` on `server`; its libpq URL."""
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {name}")
    return libpq_url(make_url(server).set(database=name).render_as_string(False))


def _check_sent(ctx: JobContext, run_ids: Sequence[int], library: str) -> None:
    with ctx.engine.connect() as conn:
        sent = conn.execute(RUNS_SENT, {"ids": list(run_ids)}).scalar_one()
    if sent != len(run_ids):
        raise SystemExit(f"{library} bench went wrong: {sent} of {len(run_ids)} runs sent")


async def _timed(work: Callable[[], Coroutine[Any, Any, None]]) -> float:
    started = time.perf_counter()
    await work()
    return time.perf_counter() - started


# -- procrastinate --------------------------------------------------------------------------


def run_procrastinate(
    queue_url: str, ctx: JobContext, run_ids: Sequence[int], noop_jobs: int
) -> QueueResult:
    """Drain `noop_jobs` no-op jobs, then one digest job per run in `run_ids`."""
    return asyncio.run(_procrastinate(queue_url, ctx, run_ids, noop_jobs))


async def _procrastinate(
    queue_url: str, ctx: JobContext, run_ids: Sequence[int], noop_jobs: int
) -> QueueResult:
    # Only `make bench` installs the bench extra: `make lint` type-checks without it.
    import procrastinate  # type: ignore[import-not-found, unused-ignore]
    from procrastinate.types import JSONDict  # type: ignore[import-not-found, unused-ignore]

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=queue_url))

    def digest_run(run_id: int) -> None:
        digest_job(ctx, run_id)

    def noop() -> None:
        return None

    digest_task = app.task(name="digest_run")(digest_run)
    noop_task = app.task(name="noop")(noop)

    async def drain() -> None:
        await app.run_worker_async(
            wait=False, concurrency=PROCRASTINATE_CONCURRENCY, install_signal_handlers=False
        )

    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        await noop_task.batch_defer_async(*({} for _ in range(noop_jobs)))
        noop_seconds = await _timed(drain)
        arguments: list[JSONDict] = [{"run_id": run_id} for run_id in run_ids]
        await digest_task.batch_defer_async(*arguments)
        digest_seconds = await _timed(drain)
    _check_sent(ctx, run_ids, "procrastinate")
    return QueueResult(
        "procrastinate",
        _version("procrastinate"),
        Drain(len(run_ids), digest_seconds),
        Drain(noop_jobs, noop_seconds),
    )


# -- pgqueuer -------------------------------------------------------------------------------


def run_pgqueuer(
    queue_url: str, ctx: JobContext, run_ids: Sequence[int], noop_jobs: int
) -> QueueResult:
    """Drain `noop_jobs` no-op jobs, then one digest job per run in `run_ids`."""
    return asyncio.run(_pgqueuer(queue_url, ctx, run_ids, noop_jobs))


async def _pgqueuer(
    queue_url: str, ctx: JobContext, run_ids: Sequence[int], noop_jobs: int
) -> QueueResult:
    import asyncpg  # type: ignore[import-untyped, import-not-found, unused-ignore]
    from pgqueuer import (  # type: ignore[import-not-found, unused-ignore]
        AsyncpgDriver,
        Job,
        Queries,
        QueueManager,
    )
    from pgqueuer.types import QueueExecutionMode  # type: ignore[import-not-found, unused-ignore]

    async def digest_run(job: Job) -> None:
        assert job.payload is not None
        await asyncio.to_thread(digest_job, ctx, int(job.payload))

    def nothing() -> None:
        return None

    async def noop(job: Job) -> None:
        await asyncio.to_thread(nothing)

    async def drain(entrypoint: str, payloads: list[bytes | None]) -> float:
        conn = await asyncpg.connect(queue_url)
        try:
            queries = Queries(AsyncpgDriver(conn))
            await queries.enqueue([entrypoint] * len(payloads), payloads, [0] * len(payloads))
            manager = QueueManager(queries)
            manager.entrypoint(entrypoint)(digest_run if entrypoint == "digest_run" else noop)

            async def run() -> None:
                await manager.run(
                    batch_size=PGQUEUER_BATCH_SIZE,
                    max_concurrent_tasks=PGQUEUER_MAX_CONCURRENT,
                    mode=QueueExecutionMode.drain,
                )

            return await _timed(run)
        finally:
            await conn.close()

    conn = await asyncpg.connect(queue_url)
    try:
        await Queries(AsyncpgDriver(conn)).install()
    finally:
        await conn.close()
    noop_seconds = await drain("noop", [None] * noop_jobs)
    digest_seconds = await drain("digest_run", [str(run_id).encode() for run_id in run_ids])
    _check_sent(ctx, run_ids, "pgqueuer")
    return QueueResult(
        "pgqueuer",
        _version("pgqueuer"),
        Drain(len(run_ids), digest_seconds),
        Drain(noop_jobs, noop_seconds),
    )


def _version(distribution: str) -> str:
    from importlib.metadata import version

    return version(distribution)
