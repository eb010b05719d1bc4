"""What `digest work` shows while it runs: a live status on a terminal, and the counts its
worker processes share to make it.

Each worker publishes its counts into a slot of its own in a shared array after every
claim and every recorded batch (`ObservedWorker`, a `Worker` that also says when the queue
runs empty). The command's process reads those slots, and the queue from the database
(`digest.stats.queue_now`), once a second, and redraws two lines with rich. No log line is
parsed. rich is imported only when the status is shown.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping, MutableSequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from digest.channels.base import Transport
from digest.config import Settings
from digest.errors import first_line
from digest.heartbeat import Heartbeat
from digest.stats import QueueNow
from digest.terminal import plural
from digest.worker import Worker

if TYPE_CHECKING:
    from multiprocessing.context import SpawnContext

    from rich.console import Console
    from rich.live import Live

    from digest.worker import _Batch, _Claimed

log = logging.getLogger(__name__)

# What each worker publishes, in its slot's order.
FIELDS = ("claimed", "sent", "skipped", "failed", "retried", "lost", "released", "events")
REFRESH_SECONDS = 1.0
RATE_WINDOW_SECONDS = 10.0


class Counters:
    """Each worker process's counts, one slot per process, readable by the command's process."""

    def __init__(self, cells: MutableSequence[int], processes: int) -> None:
        self.cells, self.processes = cells, processes

    @classmethod
    def local(cls, processes: int = 1) -> Counters:
        """Counters for workers in this process."""
        return cls([0] * processes * len(FIELDS), processes)

    @classmethod
    def shared(cls, ctx: SpawnContext, processes: int) -> Counters:
        """Counters in shared memory, passed to spawned worker processes as they start. One
        writer per slot and whole 64-bit cells: no lock is needed."""
        cells: MutableSequence[int] = ctx.RawArray("q", processes * len(FIELDS))
        return cls(cells, processes)

    def publish(self, slot: int, values: Mapping[str, int]) -> None:
        """Set slot `slot`'s counts."""
        base = slot * len(FIELDS)
        for offset, name in enumerate(FIELDS):
            self.cells[base + offset] = values[name]

    def total(self) -> dict[str, int]:
        """Every slot's counts summed."""
        width = len(FIELDS)
        return {
            name: sum(self.cells[slot * width + offset] for slot in range(self.processes))
            for offset, name in enumerate(FIELDS)
        }


class ObservedWorker(Worker):
    """A worker that publishes its counts to `counters` and, with `say_idle`, logs one line
    each time it finds no run due (instead of polling in silence)."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        transport: Transport,
        *,
        stop: threading.Event | None = None,
        counters: Counters | None = None,
        slot: int = 0,
        say_idle: bool = True,
        drain: bool = False,
    ) -> None:
        super().__init__(engine, settings, transport, stop=stop)
        self.counters, self.slot = counters, slot
        self.say_idle, self.drain = say_idle, drain
        self.claimed = 0
        self.idle = False

    def claim_batch(self, beat: Heartbeat) -> _Claimed | None:
        """Claim as the worker does, then count the runs, or say the queue is empty."""
        claimed = super().claim_batch(beat)
        if claimed is None:
            if self.say_idle and not self.idle:
                then = "stopping (--drain)" if self.drain else "waiting for one"
                log.info("queue_empty: no run is due; %s", then)
            self.idle = True
        else:
            self.idle = False
            self.claimed += len(claimed.runs)
        self.publish()
        return claimed

    def finish_batch(self, batch: _Batch, beat: Heartbeat) -> None:
        """Record as the worker does, then publish the counts."""
        super().finish_batch(batch, beat)
        self.publish()

    def publish(self) -> None:
        """Copy this worker's counts into its slot."""
        if self.counters is not None:
            self.counters.publish(self.slot, {**vars(self.stats), "claimed": self.claimed})


def short(seconds: float) -> str:
    """A duration in a status line: `45s`, `4m 12s`, `2h 5m`, `3d 4h`."""
    whole = max(int(seconds), 0)
    for unit, size, smaller, smaller_size in (
        ("d", 86_400, "h", 3_600),
        ("h", 3_600, "m", 60),
        ("m", 60, "s", 1),
    ):
        if whole >= size:
            rest = (whole % size) // smaller_size
            return f"{whole // size}{unit}" + (f" {rest}{smaller}" if rest else "")
    return f"{whole}s"


def status_lines(
    queue: QueueNow | None,
    problem: str | None,
    totals: Mapping[str, int],
    rate: float,
    processes: int,
    elapsed: float,
) -> tuple[str, str]:
    """The two lines of the status: the queue as the database has it, and this command."""
    if problem is not None:
        first = f"database unavailable, retrying: {problem}"
    elif queue is None:
        first = "reading the queue..."
    else:
        due = f"{queue.due:,}+" if queue.due_capped else f"{queue.due:,}"
        if queue.lag_seconds is not None:
            when = f"queue lag {short(queue.lag_seconds)}"
        elif queue.next_due_seconds is not None:
            when = f"queue empty, next run due in {short(queue.next_due_seconds)}"
        else:
            when = "queue empty, no run pending"
        first = f"{due} due · {queue.claimed:,} claimed · {when}"
    second = (
        f"{totals['sent']:,} sent · {totals['skipped']:,} skipped · "
        f"{totals['failed']:,} failed · {totals['retried']:,} retrying · "
    )
    if totals["lost"]:
        second += f"{totals['lost']:,} lease lost · "
    second += f"{rate:,.0f}/s · {plural(processes, 'process')} · {short(elapsed)}"
    return f"queue         {first}", f"this command  {second}"


class LiveStatus:
    """The status on a terminal (stderr), redrawn every second while the workers run.

    Log lines go above it: the root logger's stream handlers write through rich while it is
    shown. The last frame stays on screen when it stops.
    """

    def __init__(self, url: str, counters: Counters) -> None:
        from digest.db import make_engine

        self.counters = counters
        # its own connection, short timeouts: the status must not hang on an outage
        self.engine = make_engine(
            url, pool_size=1, max_overflow=0, connect_args={"connect_timeout": 2}
        )
        self.started = time.monotonic()
        self.samples: deque[tuple[float, int]] = deque()
        self.queue: QueueNow | None = None
        self.problem: str | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="status", daemon=True)
        self.live: Live | None = None
        self.streams: list[tuple[logging.StreamHandler[Any], Any]] = []

    def __enter__(self) -> LiveStatus:
        from rich.console import Console
        from rich.live import Live

        console: Console = Console(stderr=True)
        self.live = Live(console=console, auto_refresh=False, redirect_stdout=False)
        self.live.start()
        # log lines now go through rich (sys.stderr is its proxy), printed above the status
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is not None:
                self.streams.append((handler, handler.setStream(sys.stderr)))
        self.refresh()
        self.thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        try:
            self.refresh()  # the final counts stay on screen
        finally:
            assert self.live is not None
            self.live.stop()
            for handler, stream in self.streams:
                handler.setStream(stream)
            self.engine.dispose()

    def _run(self) -> None:
        while not self.stop.wait(REFRESH_SECONDS):
            self.refresh()

    def refresh(self) -> None:
        """Read the queue and the counters, and redraw."""
        from rich.text import Text
        from sqlalchemy.exc import DBAPIError

        from digest.stats import queue_now

        try:
            with self.engine.connect() as conn:
                self.queue, self.problem = queue_now(conn), None
        except DBAPIError as exc:
            self.problem = first_line(exc.orig or exc)
        now = time.monotonic()
        totals = self.counters.total()
        self.samples.append((now, totals["sent"]))
        while len(self.samples) > 2 and now - self.samples[0][0] > RATE_WINDOW_SECONDS:
            self.samples.popleft()
        then, sent_then = self.samples[0]
        rate = (totals["sent"] - sent_then) / (now - then) if now > then else 0.0
        first, second = status_lines(
            self.queue, self.problem, totals, rate, self.counters.processes, now - self.started
        )
        assert self.live is not None
        self.live.update(Text(f"{first}\n{second}", style="bold"), refresh=True)
