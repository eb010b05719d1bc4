"""`digest work` and the processes it runs: the options, process supervision (spawning N
workers, collecting their stats, forwarding SIGTERM), the signal handlers that stop a
worker gracefully (and are put back when it returns), CPU pinning, and the per-process
tuning of the garbage collector and the GIL switch interval. The worker itself
(`digest.worker`) knows nothing of signals or processes: it stops when its event is set.

On a terminal the command shows a live status instead of a log line per run
(`digest.cli.status`); the worker processes then send their log records to this one, which
prints them above the status.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from digest import logs
from digest.cli.app import App, fail, pass_app, schema_problem
from digest.config import Settings
from digest.errors import DigestError
from digest.terminal import plural

if TYPE_CHECKING:
    import multiprocessing.process
    import multiprocessing.queues

    from digest.cli.status import Counters
    from digest.worker import WorkerStats

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# A signal handler as `signal.signal` takes and returns it.
Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None
# The GIL switch interval of a worker process (see `work_in_process`).
GIL_SWITCH_SECONDS = 0.001
# The logger of the per-run lines (`run_outcome`): quiet under a live status, but --debug.
PER_RUN_LOGGER = "digest.worker"


@click.command("work")
@click.option("--processes", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), help="Runs claimed per statement (100).")
@click.option("--drain", is_flag=True, help="Exit when no run is due instead of waiting.")
@click.option(
    "--transport",
    metavar="NAME[,NAME...]",
    help="file, null, smtp, ses, or a fallback list like ses,smtp (DIGEST_TRANSPORT; file).",
)
@click.option(
    "--outbox",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for `file`; each database writes into a folder of its own in it.",
)
@click.option("--lease", type=click.IntRange(min=5), help="Lease seconds per claimed run (300).")
@click.option(
    "--send-concurrency",
    type=click.IntRange(min=1),
    help="Sending threads per process (DIGEST_SEND_CONCURRENCY; 16).",
)
@click.option(
    "--max-send-rate",
    type=click.FloatRange(min=0.001),
    help="Messages per second per process, at most (DIGEST_MAX_SEND_RATE; unlimited).",
)
@click.option(
    "--delivery",
    type=click.Choice(["at-least-once", "at-most-once"]),
    help="After an unknown outcome: resend, or fail the run (DIGEST_DELIVERY; at-least-once).",
)
@click.option(
    "--pin-cpus",
    is_flag=True,
    help="Pin each worker process to one CPU, round robin over the CPUs this command may "
    "use (Linux). Faster where the workers have the CPUs to themselves; leave it off where "
    "other services share them.",
)
@pass_app
def work_cmd(
    app: App,
    processes: int,
    batch_size: int | None,
    drain: bool,
    transport: str | None,
    outbox: Path | None,
    lease: int | None,
    send_concurrency: int | None,
    max_send_rate: float | None,
    delivery: str | None,
    pin_cpus: bool,
) -> None:
    """Claim due runs, render and send digests, and record each outcome.

    Each process renders on its CPU while a database thread claims and loads the next
    batch and records finished ones, and sends through a pool of threads, so a slow
    provider does not serialize a batch. Runs the watchdog every few seconds too.
    SIGTERM or Ctrl-C: stop claiming, finish the sends in progress, give the rest back
    to the queue, exit 0. Real transports (smtp, ses) need DIGEST_SECRET_KEY and an
    https:// DIGEST_BASE_URL (http:// only on localhost). `file` writes into a folder of
    the database's own under the outbox.

    On a terminal: a live status (runs due and claimed, queue lag; sent, failed, rate)
    instead of a line per run (those with --debug). Otherwise: a log line per run, and a
    line when no run is due. A summary line at the end either way.
    """
    from sqlalchemy.exc import OperationalError

    from digest import channels, db
    from digest.compose import signing_key

    options = {
        "batch_size": batch_size,
        "outbox": outbox,
        "lease_seconds": lease,
        "send_concurrency": send_concurrency,
        "max_send_rate": max_send_rate,
        "delivery": delivery,
    }
    settings = app.settings.with_(**{k: v for k, v in options.items() if v is not None})
    # an empty --transport is a mistake, not a request for the default
    name = settings.transport if transport is None else transport
    # refuse a bad transport, a missing secret, plain-HTTP links in real mail or a database
    # without the schema here, in one line, before any process starts
    names = channels.parse(name)
    signing_key(settings, name)
    channels.require_https_links(settings, names)
    channels.make(name, settings).close()
    try:
        problem = schema_problem(app.engine())
    except OperationalError:  # the server is down: the workers wait for it, as in an outage
        problem = None
    if problem:
        fail(problem)
    if "file" in names:
        # one folder per database: run 7 of one database never overwrites run 7 of another
        settings = settings.with_(outbox=settings.outbox / db.database_tag(app.engine()))
    app.engine().dispose()  # the workers have engines of their own
    live = _status_shown()
    started = time.monotonic()
    total, errors = work_processes(
        app.url(),
        settings,
        name,
        processes,
        drain,
        pin_cpus=pin_cpus,
        live=live,
        quiet_runs=live and not app.debug,
    )
    elapsed = time.monotonic() - started
    written = f"; mail in {settings.outbox}" if "file" in names else ""
    click.echo(
        f"sent {total.sent}, skipped {total.skipped}, failed {total.failed}, "
        f"retrying {total.retried}, lease lost {total.lost}, released {total.released}; "
        f"{plural(total.events, 'event')} in {elapsed:.1f}s{written}",
        err=True,
    )
    if errors:
        fail("; ".join(errors))


def _status_shown() -> bool:
    """Whether stderr is a terminal that can redraw a status (not TERM=dumb); rich is
    imported only for a terminal."""
    if not sys.stderr.isatty():
        return False
    from rich.console import Console

    return Console(stderr=True).is_interactive


def install_stop_handlers(stop: threading.Event) -> dict[signal.Signals, Handler]:
    """SIGTERM/SIGINT: stop claiming, finish or release what is in flight, exit 0. Returns
    the handlers they replace (`restore_handlers` puts them back)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        logs.event(log, "stopping", signal=signal.Signals(signum).name)
        stop.set()

    return {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}


def restore_handlers(previous: dict[signal.Signals, Handler]) -> None:
    """Put back the signal handlers `install_stop_handlers` (or a `signal.signal`) replaced."""
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def work_in_process(
    url: str,
    settings: Settings,
    transport_name: str,
    drain: bool,
    *,
    counters: Counters | None = None,
    slot: int = 0,
    quiet_runs: bool = False,
) -> tuple[WorkerStats, str | None]:
    """Run one worker in this process until stopped; returns its stats and any fatal error.

    It publishes its counts to `counters` (for a live status), and with `quiet_runs` its
    per-run lines are off and it does not say when the queue is empty (the status shows it).
    """
    from digest import channels
    from digest.cli.status import ObservedWorker
    from digest.db import make_engine

    stop = threading.Event()
    previous = install_stop_handlers(stop)
    run_logger = logging.getLogger(PER_RUN_LOGGER)
    run_level = run_logger.level
    if quiet_runs:
        run_logger.setLevel(logging.WARNING)
    # The database thread waits on the server between short bursts of Python; under the
    # default 5 ms GIL switch interval each reply would wait for the rendering thread's slice
    # to run out, and the next batch would not be loaded in time.
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    try:
        # No ping on every checkout: a connection the server dropped fails its statement,
        # the pool is invalidated, and the loop's outage handling retries (`Worker.run`).
        engine = make_engine(url, pool_pre_ping=False)
        try:
            transport = channels.make(transport_name, settings)
            worker = ObservedWorker(
                engine,
                settings,
                transport,
                stop=stop,
                counters=counters,
                slot=slot,
                say_idle=not quiet_runs,
                drain=drain,
            )
            # What exists now (modules, templates) lives as long as the process: keep it
            # out of every later garbage collection, which otherwise walks it again and again.
            gc.freeze()
            stats = worker.run(drain=drain)
            return stats, worker.fatal
        finally:
            gc.unfreeze()
            engine.dispose()
    finally:
        sys.setswitchinterval(switch_interval)
        restore_handlers(previous)
        run_logger.setLevel(run_level)


def _child(
    url: str,
    settings: Settings,
    transport_name: str,
    drain: bool,
    log_level: int,
    results: multiprocessing.queues.Queue[tuple[WorkerStats, str | None]],
    cpu: int | None,
    counters: Counters,
    slot: int,
    log_queue: multiprocessing.queues.Queue[logging.LogRecord] | None,
    quiet_runs: bool,
) -> None:
    if log_queue is None:
        logs.setup(log_level, settings.log_format)
    else:  # under a live status: records go to the parent, which prints them above it
        from logging.handlers import QueueHandler

        logging.basicConfig(level=log_level, handlers=[QueueHandler(log_queue)])
    if cpu is not None:
        pin_to_cpu(cpu)
    results.put(
        work_in_process(
            url,
            settings,
            transport_name,
            drain,
            counters=counters,
            slot=slot,
            quiet_runs=quiet_runs,
        )
    )


def worker_cpus(processes: int) -> list[int]:
    """The CPU for each of `processes` pinned workers: round robin over the CPUs this
    process may run on. Linux only (`sched_setaffinity`)."""
    if not hasattr(os, "sched_setaffinity"):
        raise DigestError("--pin-cpus needs Linux (os.sched_setaffinity)")
    cpus = sorted(os.sched_getaffinity(0))
    return [cpus[i % len(cpus)] for i in range(processes)]


def pin_to_cpu(cpu: int) -> None:
    """Keep this process, all its threads, on one CPU: the renderer, its database thread
    and their GIL hand-offs then share that core's caches instead of migrating."""
    os.sched_setaffinity(0, {cpu})
    logs.event(log, "worker_pinned", cpu=cpu)


def work_processes(
    url: str,
    settings: Settings,
    transport_name: str,
    processes: int,
    drain: bool,
    *,
    pin_cpus: bool = False,
    live: bool = False,
    quiet_runs: bool = False,
) -> tuple[WorkerStats, list[str]]:
    """Run `processes` workers (1 = in this process), each pinned to a CPU of its own if
    `pin_cpus`, under a live status on stderr if `live`; returns summed stats and fatal
    errors. `quiet_runs` turns the per-run lines off (see `work_in_process`)."""
    from digest.cli.status import Counters

    cpus: list[int | None] = list(worker_cpus(processes)) if pin_cpus else [None] * processes
    if processes == 1:
        counters = Counters.local()
        with _status(live, url, counters):
            if cpus[0] is not None:
                pin_to_cpu(cpus[0])
            stats, fatal = work_in_process(
                url, settings, transport_name, drain, counters=counters, quiet_runs=quiet_runs
            )
        return stats, [fatal] if fatal else []
    # spawn, not fork: a child must not inherit the parent's connections or threads
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    results: multiprocessing.queues.Queue[tuple[WorkerStats, str | None]] = ctx.Queue()
    log_queue: multiprocessing.queues.Queue[logging.LogRecord] | None = (
        ctx.Queue() if live else None
    )
    counters = Counters.shared(ctx, processes)
    level = logging.getLogger().getEffectiveLevel()
    children = [
        ctx.Process(
            target=_child,
            args=(
                url,
                settings,
                transport_name,
                drain,
                level,
                results,
                cpus[i],
                counters,
                i,
                log_queue,
                quiet_runs,
            ),
            name=f"digest-worker-{i}",
        )
        for i in range(processes)
    ]
    with _status(live, url, counters), _printing(log_queue):
        for child in children:
            child.start()
        return _supervise(children, results)


def _status(live: bool, url: str, counters: Counters) -> AbstractContextManager[object]:
    """The live status on stderr, or nothing."""
    if not live:
        return nullcontext()
    from digest.cli.status import LiveStatus

    return LiveStatus(url, counters)


@contextmanager
def _printing(
    log_queue: multiprocessing.queues.Queue[logging.LogRecord] | None,
) -> Iterator[None]:
    """Print the worker processes' log records through this process's handlers."""
    if log_queue is None:
        yield
        return
    from logging.handlers import QueueListener

    listener = QueueListener(log_queue, *logging.getLogger().handlers, respect_handler_level=True)
    listener.start()
    try:
        yield
    finally:
        listener.stop()


def _supervise(
    children: Sequence[multiprocessing.process.BaseProcess],
    results: multiprocessing.queues.Queue[tuple[WorkerStats, str | None]],
) -> tuple[WorkerStats, list[str]]:
    """Wait for the started worker processes (forwarding SIGTERM and SIGINT to them as
    SIGTERM); their summed stats and fatal errors."""
    import queue

    def forward(signum: int, frame: FrameType | None) -> None:
        for child in children:
            if child.pid is not None and child.is_alive():
                os.kill(child.pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in STOP_SIGNALS}
    try:
        collected: list[tuple[WorkerStats, str | None]] = []
        # a child killed by a signal never reports: stop waiting once all have exited
        while len(collected) < len(children):
            try:
                collected.append(results.get(timeout=0.5))
            except queue.Empty:
                if not any(child.is_alive() for child in children) and results.empty():
                    break
        from digest.worker import WorkerStats

        total = WorkerStats()
        errors: list[str] = []
        for stats, fatal in collected:
            total += stats
            if fatal:
                errors.append(fatal)
        for child in children:
            child.join()
            if child.exitcode not in (0, None):
                errors.append(f"{child.name} exited with code {child.exitcode}")
        return total, errors
    finally:
        restore_handlers(previous)
