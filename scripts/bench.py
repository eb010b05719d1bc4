"""`make bench` (`make bench-quick`: the same rows at smaller sizes): one table, one run.

1-3. digests/s end to end (1 and 2 worker processes, and 2 with --pin-cpus, null
     transport; the targets use the plain rows), the naive way, and
     render-only (the CPU ceiling; end to end ÷ render-only is our efficiency), with the
     CPU each digest took: the whole machine's over an end-to-end drain (workers,
     PostgreSQL, neighbours; from /proc/stat), the renderer's own in a render-only row;
4.   the same job on generic queues, procrastinate and pgqueuer (scripts/bench_queues.py),
     and their no-op drain rates;
5-7. ingest (COPY and one event at a time), the scheduler over 1,000,000 recipients (on
     its default number of connections, and on one), and one user with 100,000 events in
     a fresh worker process (scripts/bench_scale.py);
8.   a 50 ms transport at 16 threads;
9.   CLI start-up: wall and CPU seconds of `digest --help` and `digest stats` in fresh
     processes (the best of a few tries).

All rows run against the same embedded PostgreSQL (its default, durable settings), each
group on databases of their own recreated each time. Figures on a shared 2-core machine
are noisy: read the ratios, which come from one run. Results go to bench-results.json.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import bench_queues  # noqa: E402  (scripts/ is on sys.path when run as a script)
import bench_scale  # noqa: E402

from digest import content, migrate, recipients  # noqa: E402
from digest.channels.email.null import NullTransport  # noqa: E402
from digest.compose import Composer, make_renderer  # noqa: E402
from digest.config import Settings  # noqa: E402
from digest.db import embedded_url, make_engine  # noqa: E402
from digest.models import ClaimedRun, OutgoingMessage, SendResult  # noqa: E402
from digest.scheduler import schedule_once  # noqa: E402
from digest.worker import Worker  # noqa: E402

DATABASE = "digest_bench"
SLOW_SECONDS = 0.05

SEED_RECIPIENTS = text(
    """
    INSERT INTO recipients (bucket, user_id, email, name, timezone)
    SELECT digest_bucket('u' || g), 'u' || g, 'user' || g || '@example.com', 'User ' || g,
           (ARRAY['UTC', 'America/New_York', 'Europe/Berlin', 'Asia/Tokyo'])[1 + g % 4]
      FROM generate_series(CAST(:first AS int), CAST(:last AS int)) g
    """
)
# `per_user` events per user over 5 entities: 5 groups each, popular posts shared widely;
# 1 hour to 1 minute old. Both statements seed users `first`..`last` (scripts/chaos.py too).
SEED_EVENTS = text(
    """
    INSERT INTO digest_events (bucket, user_id, category, entity_type, entity_id, actor_id,
                               payload, created_at)
    SELECT digest_bucket('u' || u), 'u' || u,
           (ARRAY['comment', 'like', 'mention', 'follow', 'share'])[1 + e % 5],
           'post', 'p' || ((u * 7 + e % 5) % 500), 'a' || ((u + e) % 1000),
           jsonb_build_object('title', 'A post about ' || ((u * 7 + e % 5) % 500),
                              'actor_name', 'Actor ' || ((u + e) % 1000),
                              'url', 'https://example.com/p/' || ((u * 7 + e % 5) % 500),
                              'excerpt', 'Nice one! I would add a few words about it.'),
           now() - interval '1 hour' + (e % 3540) * interval '1 second'
      FROM generate_series(CAST(:first AS int), CAST(:last AS int)) u,
           generate_series(1, :per_user) e
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
    startup: float = 0.0  # seconds before the first claim (end to end rows)
    cpu_seconds: float | None = None  # CPU spent on the digests (see each row's function)
    pinned: bool = False  # `digest work --pin-cpus`

    @property
    def key(self) -> str:
        """How the row's figures are named in bench-results.json: 1p, 2p, 2p_pinned."""
        return f"{self.processes}p" + ("_pinned" if self.pinned else "")

    @property
    def rate(self) -> float:
        return self.digests / self.seconds if self.seconds else 0.0

    @property
    def cpu_ms(self) -> float | None:
        """Milliseconds of CPU per digest."""
        return None if self.cpu_seconds is None else self.cpu_seconds * 1000 / self.digests


class MachineCpu:
    """The machine's busy CPU seconds over time, from /proc/stat every 20 ms: every process
    counts (the workers, PostgreSQL, and any neighbour on a shared machine)."""

    STAT = Path("/proc/stat")

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> MachineCpu:
        if self.STAT.exists():
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        if self.thread.is_alive():
            self.thread.join()

    def _sample(self) -> None:
        tick = os.sysconf("SC_CLK_TCK")
        stopping = False
        while not stopping:
            stopping = self.done.is_set()  # one last sample once the row is over
            # cpu user nice system idle iowait irq softirq steal ...: all but idle and iowait
            fields = [int(v) for v in self.STAT.read_text().split("\n", 1)[0].split()[1:]]
            busy = (sum(fields) - fields[3] - fields[4]) / tick
            self.samples.append((time.time(), busy))
            self.done.wait(0.02)

    def between(self, start: float, end: float) -> float | None:
        """Busy CPU seconds between two wall-clock times, interpolated between samples."""
        if len(self.samples) < 2 or not self.samples[0][0] <= start < end <= self.samples[-1][0]:
            return None
        return self._at(end) - self._at(start)

    def _at(self, moment: float) -> float:
        for (t0, b0), (t1, b1) in itertools.pairwise(self.samples):
            if t0 <= moment <= t1:
                return b0 + (b1 - b0) * (moment - t0) / (t1 - t0) if t1 > t0 else b0
        raise ValueError(moment)


def fresh_database(server: str) -> str:
    return bench_queues.fresh_database(server, DATABASE)


def reset_runs(url: str, engine: Engine) -> int:
    """Every event waiting again and one due run per user: the same work for each row."""
    with engine.begin() as conn:
        for statement in RESET:
            conn.execute(text(statement))
        created = schedule_once(conn, datetime.now(UTC), 0)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    return created


# Runs sent, and the seconds from the first claim to the last recorded outcome by the
# server's clock.
DRAINED = text(
    "SELECT count(*) FILTER (WHERE status = 'sent'),"
    " extract(epoch FROM min(started_at)), extract(epoch FROM max(completed_at))"
    " FROM digest_runs"
)


def end_to_end(url: str, engine: Engine, processes: int, *, pinned: bool = False) -> Row:
    """`digest work --drain --transport null` in a process of its own, as a user runs it
    (per-run log lines off, as in the render-only row). The rate counts claim to commit,
    as the generic queues' rows do; starting the processes (imports, templates) is shown
    apart. Its CPU is the whole machine's over the same span (the embedded server shares
    the machine's clock)."""
    runs = reset_runs(url, engine)
    command = [sys.executable, "-m", "digest", "--database-url", url, "work", "--drain"]
    command += ["--transport", "null", "--processes", str(processes)]
    command += ["--pin-cpus"] if pinned else []
    started = time.perf_counter()
    quiet = {**os.environ, "DIGEST_LOG_LEVEL": "WARNING"}
    with MachineCpu() as cpu:
        done = subprocess.run(command, cwd=ROOT, env=quiet, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"digest work failed ({done.returncode}): {done.stderr.strip()}")
    with engine.connect() as conn:
        sent, first, last = conn.execute(DRAINED).one()
    if sent != runs:
        raise SystemExit(f"bench run went wrong: sent {sent} of {runs}")
    drained = float(last - first)
    name = f"end to end, {processes} process{'es' if processes > 1 else ''}"
    return Row(
        name + (", --pin-cpus" if pinned else ""),
        runs,
        drained,
        processes,
        startup=max(elapsed - drained, 0.0),
        cpu_seconds=cpu.between(float(first), float(last)),
        pinned=pinned,
    )


@dataclass(frozen=True)
class Startup:
    """One command run in fresh processes: the best wall and CPU seconds of `tries`."""

    command: str
    wall: float
    cpu: float
    tries: int


STARTUP_TRIES = 5


def cli_startup(url: str, args: tuple[str, ...], tries: int = STARTUP_TRIES) -> Startup:
    """`digest ARGS` in a fresh process `tries` times, as a shell runs it; each try's CPU is
    the child's own (user + system, from the kernel's accounting of finished children)."""
    command = [sys.executable, "-m", "digest", *args]
    env = {**os.environ, "DIGEST_DATABASE_URL": url}
    walls, cpus = [], []
    for _ in range(tries):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        walls.append(time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode:
            raise SystemExit(f"digest {' '.join(args)} failed: {done.stderr.strip()}")
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return Startup(f"digest {' '.join(args)}", min(walls), min(cpus), tries)


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
    renderer = make_renderer(settings)
    started = time.perf_counter()
    sent = drain(engine, settings, renderer, NullTransport(), limit)
    return Row("naive way, 1 process", sent, time.perf_counter() - started, 1)


def _render_slice(args: tuple[list[ClaimedRun], Settings]) -> tuple[int, float, float]:
    """Compose each run as the worker does (render and MIME bytes), no database; (count,
    seconds, CPU seconds of this process)."""
    runs, settings = args
    composer = Composer(settings, make_renderer(settings), "k", "null")
    gc.freeze()  # as `digest work` does once its templates are loaded
    started, cpu = time.perf_counter(), time.process_time()
    for run in runs:
        if not isinstance(composer.compose(run), OutgoingMessage):
            raise SystemExit(f"bench run {run.id} composes no message")
    return len(runs), time.perf_counter() - started, time.process_time() - cpu


def render_only(engine: Engine, settings: Settings, processes: int, count: int) -> Row:
    """The CPU ceiling: the same digests composed in a tight loop, no database."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT id, bucket, user_id, cadence, period_start, attempt, frozen_at"
                " FROM digest_runs"
                " WHERE status = 'sent' ORDER BY id LIMIT :n"
            ),
            {"n": count},
        ).all()
        digests = content.load_contents(
            conn, [(row.bucket, row.id) for row in rows], settings.group_cap
        )
        people = recipients.load_many(conn, [row.user_id for row in rows])
    runs = [
        ClaimedRun(
            row.id,
            row.bucket,
            row.user_id,
            row.cadence,
            row.period_start,
            row.attempt,
            row.frozen_at,
            recipient=people[row.user_id],
            digest=digests[row.id],
        )
        for row in rows
    ]
    # fresh processes, as the end-to-end rows have
    slices = [(runs[i::processes], settings) for i in range(processes)]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        results = pool.map(_render_slice, slices)
    return Row(
        f"render only, {processes} process{'es' if processes > 1 else ''}",
        sum(n for n, _, _ in results),
        max(s for _, s, _ in results),
        processes,
        cpu_seconds=sum(c for _, _, c in results),
    )


def queue_rows(
    server: str, url: str, engine: Engine, settings: Settings, jobs: int, noop_jobs: int
) -> list[bench_queues.QueueResult]:
    """Row 4: the first `jobs` due runs as one job each, on procrastinate then pgqueuer."""
    results = []
    for library, run in (
        ("procrastinate", bench_queues.run_procrastinate),
        ("pgqueuer", bench_queues.run_pgqueuer),
    ):
        reset_runs(url, engine)
        with engine.connect() as conn:
            run_ids = list(
                conn.execute(
                    text("SELECT id FROM digest_runs ORDER BY id LIMIT :n"), {"n": jobs}
                ).scalars()
            )
        queue_url = bench_queues.fresh_database(server, f"{DATABASE}_{library}")
        job_engine = make_engine(url)
        worker = Worker(
            job_engine,
            settings.with_(secret_key="bench"),
            NullTransport(),
            renderer=make_renderer(settings),
        )
        ctx = bench_queues.JobContext(job_engine, worker)
        try:
            results.append(run(queue_url, ctx, run_ids, noop_jobs))
        finally:
            job_engine.dispose()
    return results


@dataclass(frozen=True)
class Sizes:
    users: int
    naive_runs: int
    slow_users: int
    queue_jobs: int
    noop_jobs: int
    ingest_events: int
    keyed_events: int
    single_events: int
    schedule_recipients: int
    heavy_events: int


FULL = Sizes(
    users=10_000,
    naive_runs=1_000,
    slow_users=3_000,
    queue_jobs=3_000,
    noop_jobs=5_000,
    ingest_events=1_000_000,
    keyed_events=200_000,
    single_events=5_000,
    schedule_recipients=1_000_000,
    heavy_events=100_000,
)
QUICK = Sizes(
    users=3_000,
    naive_runs=200,
    slow_users=600,
    queue_jobs=600,
    noop_jobs=1_000,
    ingest_events=100_000,
    keyed_events=20_000,
    single_events=1_000,
    schedule_recipients=100_000,
    heavy_events=100_000,
)
MILLION = 1_000_000

# Targets of issue 5: (label, key in the results, bound, True when the figure must be >= it).
TARGETS = (
    ("end to end (1 process) >= 20x the naive way", "e2e_1p_over_naive", 20.0, True),
    ("end to end (1 process) >= 3x procrastinate", "e2e_1p_over_procrastinate", 3.0, True),
    ("end to end (1 process) >= 1.5x pgqueuer", "e2e_1p_over_pgqueuer", 1.5, True),
    ("efficiency, 1 process >= 0.6 of render only", "efficiency_1p", 0.6, True),
    ("efficiency, 2 processes >= 0.6 of render only", "efficiency_2p", 0.6, True),
    ("COPY ingest >= 150,000 events/s", "ingest_copy_events_per_s", 150_000.0, True),
    ("scheduler, 1,000,000 recipients <= 20 s", "schedule_1m_seconds", 20.0, False),
    ("100,000-event user < 3 s", "heavy_user_seconds", 3.0, False),
    ("100,000-event user peak RSS < 200 MB", "heavy_user_peak_rss_mb", 200.0, False),
    ("digest --help < 0.3 s of CPU", "startup_help_cpu_seconds", 0.3, False),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, same rows and keys")
    parser.add_argument("--events-per-user", type=int, default=10)
    parser.add_argument("--send-concurrency", type=int, default=16)
    parser.add_argument("--json", type=Path, default=ROOT / "bench-results.json")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    form = "QUICK FORM (make bench-quick): smaller sizes" if args.quick else "full form"
    console = Console(width=150)
    console.print(f"[bold]digest bench, {form}[/]")
    began = time.perf_counter()

    server = embedded_url(ROOT / ".digest" / "pgdata")
    url = fresh_database(server)
    engine = make_engine(url)
    migrate.upgrade(engine)
    with (
        console.status(f"seeding {sizes.users} users x {args.events_per_user} events"),
        engine.begin() as conn,
    ):
        users = {"first": 1, "last": sizes.users}
        conn.execute(SEED_RECIPIENTS, users)
        conn.execute(SEED_EVENTS, {**users, "per_user": args.events_per_user})
    settings = Settings(transport="null", database_url=url)

    rows: list[Row] = []
    with console.status("naive way"):
        base = naive(url, engine, settings, sizes.naive_runs)
    # Each row below is the better of two tries, so that a neighbour's burst on this shared
    # machine lowers neither the ceiling nor what is compared with it.
    with console.status("end to end, 1 process"):
        rows.append(max((end_to_end(url, engine, 1) for _ in range(2)), key=lambda r: r.rate))
    with console.status("end to end, 2 processes, without and with --pin-cpus"):
        # alternating, so that a neighbour's burst does not fall on one of the two only
        tries = [
            end_to_end(url, engine, 2, pinned=pinned) for _ in range(2) for pinned in (False, True)
        ]
        for pinned in (False, True):
            rows.append(max((r for r in tries if r.pinned == pinned), key=lambda r: r.rate))
    for processes in (1, 2):
        with console.status(f"render only, {processes} processes"):
            count = min(sizes.users, 4000)
            tries = [render_only(engine, settings, processes, count) for _ in range(2)]
            rows.append(max(tries, key=lambda row: row.rate))
    rows.append(base)
    with console.status("procrastinate and pgqueuer"):
        queues = queue_rows(server, url, engine, settings, sizes.queue_jobs, sizes.noop_jobs)
    with console.status("slow transport"):
        with engine.begin() as conn:  # fewer users: 50 ms each adds up
            conn.execute(
                text("DELETE FROM recipients WHERE substr(user_id, 2)::int > :n"),
                {"n": sizes.slow_users},
            )
        slow = slow_transport(url, engine, settings, args.send_concurrency)
    with console.status("CLI start-up"):
        startups = [cli_startup(url, ("--help",)), cli_startup(url, ("stats",))]
    engine.dispose()

    scale_url = bench_queues.fresh_database(server, bench_scale.DATABASE)
    scale = make_engine(scale_url)
    migrate.upgrade(scale)
    with console.status(f"ingest: {sizes.ingest_events:,} events by COPY"):
        ingest = bench_scale.ingest(
            scale, scale_url, sizes.ingest_events, sizes.keyed_events, sizes.single_events
        )
    with console.status(f"scheduler: {sizes.schedule_recipients:,} recipients"):
        # The default number of connections, and one connection (a single statement).
        schedule_jobs = tuple(sorted({1, settings.schedule_jobs}))
        scheduled_by_jobs = bench_scale.schedule(
            scale, scale_url, sizes.schedule_recipients, settings.stagger_seconds, schedule_jobs
        )
        scheduled = scheduled_by_jobs[settings.schedule_jobs]
    with console.status(f"one user with {sizes.heavy_events:,} events"):
        heavy = bench_scale.heavy_user(scale, scale_url, sizes.heavy_events)
    scale.dispose()

    by_name = {r.name: r.rate for r in rows}
    e2e_1p = by_name["end to end, 1 process"]
    ceiling = {r.processes: r.rate for r in rows if r.name.startswith("render only")}
    schedule_1m = scheduled.seconds * MILLION / scheduled.count
    results: dict[str, float] = {
        "e2e_digests_per_s_1p": e2e_1p,
        "e2e_digests_per_s_2p": by_name["end to end, 2 processes"],
        "naive_digests_per_s": base.rate,
        "render_only_digests_per_s_1p": by_name["render only, 1 process"],
        "render_only_digests_per_s_2p": by_name["render only, 2 processes"],
        "e2e_1p_over_naive": e2e_1p / base.rate,
        "efficiency_1p": e2e_1p / ceiling[1],
        "efficiency_2p": by_name["end to end, 2 processes"] / ceiling[2],
        "e2e_digests_per_s_2p_pinned": by_name["end to end, 2 processes, --pin-cpus"],
        "efficiency_2p_pinned": by_name["end to end, 2 processes, --pin-cpus"] / ceiling[2],
        **{f"e2e_startup_seconds_{r.key}": r.startup for r in rows if r.startup},
        **{
            f"{'e2e' if r.name.startswith('end') else 'render_only'}_cpu_ms_per_digest_"
            f"{r.key}": r.cpu_ms
            for r in rows
            if r.cpu_ms is not None and not r.name.startswith("naive")
        },
        **{f"{q.library}_digests_per_s": q.digests.rate for q in queues},
        **{f"{q.library}_noop_jobs_per_s": q.noop.rate for q in queues},
        **{f"e2e_1p_over_{q.library}": e2e_1p / q.digests.rate for q in queues},
        "ingest_copy_events_per_s": ingest.copy.rate,
        "ingest_bare_copy_events_per_s": ingest.bare.rate,
        "ingest_copy_of_bare": ingest.copy.rate / ingest.bare.rate,
        "ingest_copy_keyed_events_per_s": ingest.copy_keyed.rate,
        "ingest_single_events_per_s": ingest.single.rate,
        "schedule_1m_seconds": schedule_1m,
        "schedule_measured_seconds": scheduled.seconds,
        "schedule_recipients": scheduled.count,
        "schedule_runs_per_s": scheduled.rate,
        "schedule_jobs": settings.schedule_jobs,
        "schedule_1m_seconds_1_connection": scheduled_by_jobs[1].seconds
        * MILLION
        / scheduled.count,
        "heavy_user_seconds": heavy.seconds,
        "heavy_user_peak_rss_mb": heavy.peak_rss_mb,
        "heavy_user_idle_rss_mb": heavy.idle_rss_mb,
        "heavy_user_events": heavy.events,
        "slow_transport_digests_per_s": slow.rate,
        "slow_transport_ideal_digests_per_s": args.send_concurrency / SLOW_SECONDS,
        "startup_help_seconds": startups[0].wall,
        "startup_help_cpu_seconds": startups[0].cpu,
        "startup_stats_seconds": startups[1].wall,
        "startup_stats_cpu_seconds": startups[1].cpu,
        "users": sizes.users,
        "events_per_user": args.events_per_user,
        "queue_jobs": sizes.queue_jobs,
        "quick": int(args.quick),
    }

    table = Table(
        title=f"digest bench, {'QUICK FORM' if args.quick else 'full form'}: {sizes.users:,} users"
        f" x {args.events_per_user} events (5 groups each), one run on one server"
    )
    for column in ("row", "n", "seconds", "rate", "ratios"):
        table.add_column(column, justify="left" if column in ("row", "ratios") else "right")

    def section(title: str) -> None:
        table.add_section()
        table.add_row(f"[bold]{title}[/]")

    table.add_row("[bold]1-3. digests, null transport[/]")
    for row in rows:
        ratios = [f"{row.rate / base.rate:.1f}x naive"]
        if row.name.startswith("end to end"):
            ratios.append(f"{row.rate / ceiling[row.processes]:.2f} of render ceiling")
            ratios.append(f"+{row.startup:.2f} s starting before the first claim")
            if row.cpu_ms is not None:
                ratios.append(f"{row.cpu_ms:.2f} ms of the machine's CPU per digest")
        elif row.name.startswith("render only") and row.cpu_ms is not None:
            ratios.append(f"{row.cpu_ms:.2f} ms of CPU per digest")
        table.add_row(
            row.name,
            f"{row.digests:,}",
            f"{row.seconds:.2f}",
            f"{row.rate:,.0f}/s",
            "; ".join(ratios),
        )
    section("4. the same digests, one job per run on a generic queue, 1 worker process")
    settings_note = {
        "procrastinate": f"sync task, concurrency {bench_queues.PROCRASTINATE_CONCURRENCY}",
        "pgqueuer": f"asyncpg, to_thread, batch {bench_queues.PGQUEUER_BATCH_SIZE}, "
        f"max {bench_queues.PGQUEUER_MAX_CONCURRENT} tasks",
    }
    for q in queues:
        table.add_row(
            f"{q.library} {q.version}, {settings_note[q.library]}",
            f"{q.digests.jobs:,}",
            f"{q.digests.seconds:.2f}",
            f"{q.digests.rate:,.0f}/s",
            f"ours (1p) {e2e_1p / q.digests.rate:.1f}x faster; "
            f"{q.digests.rate / base.rate:.1f}x naive",
        )
    for q in queues:
        table.add_row(
            f"{q.library}, no-op jobs of the same shape",
            f"{q.noop.jobs:,}",
            f"{q.noop.seconds:.2f}",
            f"{q.noop.rate:,.0f} jobs/s",
            f"{1000 / q.noop.rate:.2f} ms of queue per job; "
            f"{q.noop.rate / e2e_1p:.1f}x our digests/s",
        )
    section("5. ingest (digest.ingest), events/s")
    ingest_rows = (
        ("record_events, COPY, no event_key", ingest.copy),
        ("the same rows formatted once, bare COPY (the server's ceiling)", ingest.bare),
        ("record_events, COPY, with event_key (staged)", ingest.copy_keyed),
        ("record_event, one event per transaction", ingest.single),
    )
    for name, timed in ingest_rows:
        table.add_row(
            name,
            f"{timed.count:,}",
            f"{timed.seconds:.2f}",
            f"{timed.rate:,.0f}/s",
            f"{timed.rate / ingest.bare.rate:.2f} of the ceiling"
            if timed is ingest.copy
            else f"{timed.rate / ingest.copy.rate:.2f} of plain COPY",
        )
    section("6. scheduler (digest schedule), 8 zones, every recipient due")
    for jobs, timed in scheduled_by_jobs.items():
        per_million = timed.seconds * MILLION / timed.count
        default = " (the default)" if jobs == settings.schedule_jobs else ""
        table.add_row(
            f"{timed.count:,} recipients -> runs, {jobs} connection{'s' if jobs > 1 else ''}"
            + default,
            f"{timed.count:,}",
            f"{timed.seconds:.2f}",
            f"{timed.rate:,.0f} runs/s",
            f"{per_million:.1f} s per 1,000,000"
            + (" (scaled)" if timed.count != MILLION else "")
            + ("" if jobs == 1 else f"; {scheduled_by_jobs[1].seconds / timed.seconds:.2f}x 1"),
        )
    section("7. one user, fresh worker process, null transport")
    table.add_row(
        f"{heavy.events:,} events: claim, freeze, group, render, send, commit",
        "1",
        f"{heavy.seconds:.2f}",
        f"peak RSS {heavy.peak_rss_mb:.0f} MB",
        f"idle worker peak RSS {heavy.idle_rss_mb:.0f} MB "
        f"(+{heavy.peak_rss_mb - heavy.idle_rss_mb:.0f} MB)",
    )
    section("8. a slow provider")
    ideal = args.send_concurrency / SLOW_SECONDS
    table.add_row(
        slow.name,
        f"{slow.digests:,}",
        f"{slow.seconds:.2f}",
        f"{slow.rate:,.0f}/s",
        f"{slow.rate / ideal:.2f} of {args.send_concurrency} threads / 0.05 s = {ideal:,.0f}/s",
    )
    section("9. CLI start-up, fresh processes")
    for startup in startups:
        table.add_row(
            startup.command,
            f"best of {startup.tries}",
            f"{startup.wall:.2f}",
            f"{startup.cpu:.2f} s CPU",
            "wall and CPU seconds from start to exit",
        )
    console.print(table)

    targets = Table(title="targets")
    for column in ("target", "measured", "verdict"):
        targets.add_column(column)
    for label, key, bound, at_least in TARGETS:
        value = results[key]
        met = value >= bound if at_least else value <= bound
        if key == "schedule_1m_seconds":
            label += f", {settings.schedule_jobs} connections (the default)"
            if scheduled.count != MILLION:
                label += f" (scaled from {scheduled.count:,})"
        targets.add_row(label, f"{value:,.2f}", "met" if met else "[bold red]MISSED[/]")
    console.print(targets)

    args.json.write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"{form}: {time.perf_counter() - began:.0f} s in all; wrote {args.json}")


if __name__ == "__main__":
    main()
