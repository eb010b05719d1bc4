"""`digest work`: claim due runs, freeze, group, render, send, and record the outcome.

The loop is thin (`Worker.run`); each step is a plain function or method testable alone.
No transaction is open while a message is being sent: claim+freeze commit first, the
outcomes of the whole batch commit afterwards in one fenced statement.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.queues
import os
import queue
import random
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from digest import claim, content, message, retry, transports, unsubscribe, watchdog
from digest.claim import ClaimedRun, Delivery, Outcome
from digest.config import Settings
from digest.content import RecipientRow
from digest.db import make_engine
from digest.grouping import DigestContent
from digest.render import Recipient, Renderer
from digest.transports.base import OutgoingMessage, SendError, Transport

log = logging.getLogger(__name__)

# Used to sign unsubscribe links when no DIGEST_SECRET_KEY is set; only the `file` and
# `null` transports accept it (their mail never reaches a real inbox).
DEV_SECRET = "digest-development-key-not-for-real-mail"

# Consecutive failed attempts to reach the database before a worker gives up and exits
# non-zero (with the backoff, about a minute and a half at the default poll interval).
MAX_OUTAGES = 6


def worker_id() -> str:
    """host:pid:random, unique per worker process and readable in `locked_by`."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"


def signing_key(settings: Settings, transport_name: str) -> str:
    """The key for unsubscribe tokens; real transports refuse to run without one."""
    if settings.secret_key:
        return settings.secret_key
    if transport_name in ("file", "null"):
        return DEV_SECRET
    from digest.errors import DigestError

    raise DigestError(f"DIGEST_SECRET_KEY must be set to send real mail ({transport_name})")


@dataclass
class WorkerStats:
    """Counts of run outcomes this worker produced."""

    batches: int = 0
    sent: int = 0
    skipped: int = 0
    failed: int = 0
    retried: int = 0
    lost: int = 0
    released: int = 0
    events: int = 0

    def add(self, outcome: Outcome, landed: bool) -> None:
        if not landed:
            self.lost += 1
            return
        if outcome.status == "pending":
            self.retried += 1
        else:
            setattr(self, outcome.status, getattr(self, outcome.status) + 1)
        if outcome.status == "sent":
            self.events += outcome.event_count or 0


@dataclass
class _Heartbeat:
    """Extends the lease of in-flight runs from a side thread, so a slow batch keeps them."""

    engine: Engine
    me: str
    lease_seconds: float
    in_flight: set[int] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)

    def hold(self, ids: list[int]) -> None:
        with self.lock:
            self.in_flight = set(ids)

    def run(self) -> None:
        interval = max(self.lease_seconds / 3, 0.5)
        while not self.stop.wait(interval):
            with self.lock:
                ids = sorted(self.in_flight)
            if not ids:
                continue
            try:
                with self.engine.connect() as conn:
                    claim.extend_lease(conn, self.me, ids, self.lease_seconds)
            except Exception:  # a missed beat is survivable; the next one retries
                log.exception("heartbeat failed")


class Worker:
    """One worker: claims batches until told to stop (or, with `drain`, until none are due)."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        transport: Transport,
        *,
        renderer: Renderer | None = None,
        stop: threading.Event | None = None,
        me: str | None = None,
        rand: random.Random | None = None,
    ):
        self.engine = engine
        self.settings = settings
        self.transport = transport
        self.renderer = renderer or Renderer(settings.templates_dir)
        self.stop = stop or threading.Event()
        self.me = me or worker_id()
        self.rand = rand or random.Random()
        self.key = signing_key(settings, transport.name)
        self.domain = settings.from_address.rpartition("@")[2] or "localhost"
        self.stats = WorkerStats()
        self.fatal: str | None = None

    # -- the loop -------------------------------------------------------------------------

    def run(self, *, drain: bool = False) -> WorkerStats:
        """Process batches until stopped; with `drain`, also stop when nothing is due."""
        beat = _Heartbeat(self.engine, self.me, self.settings.lease_seconds)
        beater = threading.Thread(target=beat.run, name="heartbeat", daemon=True)
        beater.start()
        next_watchdog = 0.0
        outages = 0
        try:
            while not self.stop.is_set() and self.fatal is None:
                try:
                    if time.monotonic() >= next_watchdog:
                        with self.engine.connect() as conn:
                            watchdog.reset_expired_once(conn, self.settings.max_attempts)
                        next_watchdog = time.monotonic() + self.settings.watchdog_interval_seconds
                    claimed = self.run_once(beat.hold)
                except OperationalError as exc:
                    # The database went away (restart, failover). Runs in flight come back
                    # through the watchdog; wait, then try again, but not forever.
                    outages += 1
                    if outages > MAX_OUTAGES:
                        self.fatal = f"database unavailable: {_first_line(exc)}"
                        log.critical("worker_stopping reason=%r", self.fatal)
                        break
                    delay = min(30.0, self.settings.poll_interval_seconds * 2**outages)
                    log.error(
                        "database_unavailable retry_in=%.1fs error=%r", delay, _first_line(exc)
                    )
                    self.stop.wait(delay)
                    continue
                outages = 0
                if claimed == 0:
                    if drain:
                        break
                    # jittered polling: idle workers do not hit the table in lockstep
                    self.stop.wait(
                        self.settings.poll_interval_seconds * self.rand.uniform(0.5, 1.5)
                    )
        finally:
            beat.stop.set()
            beater.join()
            self.transport.close()
        return self.stats

    def run_once(self, hold: Callable[[list[int]], None] = lambda ids: None) -> int:
        """Claim one batch and see it through; returns how many runs were claimed."""
        with self.engine.connect() as conn:
            runs = claim.claim_batch(
                conn, self.me, self.settings.batch_size, self.settings.lease_seconds
            )
        if not runs:
            return 0
        hold([r.id for r in runs])
        try:
            self.process(runs)
        finally:
            hold([])
        self.stats.batches += 1
        return len(runs)

    # -- one batch ------------------------------------------------------------------------

    def process(self, runs: list[ClaimedRun]) -> None:
        """Load, render and send a claimed batch, then record every outcome at once."""
        started = time.monotonic()
        with self.engine.connect() as conn:
            contents = content.load_contents(conn, [r.id for r in runs], self.settings.group_cap)
            recipients = content.load_recipients(conn, [r.user_id for r in runs])
        outcomes: list[Outcome] = []
        unsent: list[int] = []
        for run in runs:
            if self.stop.is_set() or self.fatal is not None:
                unsent.append(run.id)
                continue
            outcomes.append(
                self.handle(run, recipients.get(run.user_id), contents.get(run.id, content.EMPTY))
            )
        with self.engine.connect() as conn:
            landed = claim.finish_batch(conn, self.me, outcomes)
            self.stats.released += claim.release(conn, self.me, unsent)
        duration_ms = (time.monotonic() - started) * 1000 / max(len(runs), 1)
        for outcome in outcomes:
            ok = outcome.run.id in landed
            self.stats.add(outcome, ok)
            self._log(outcome, ok, duration_ms)

    def handle(
        self, run: ClaimedRun, recipient: RecipientRow | None, digest: DigestContent
    ) -> Outcome:
        """Decide, render and send one run; never raises (a bug fails the run, not the loop)."""
        try:
            prepared = self.prepare(run, recipient, digest)
            if isinstance(prepared, Outcome):
                return prepared
            return self.send(run, prepared, digest.total_events)
        except Exception as exc:
            log.exception("run_error run_id=%s", run.id)
            return Outcome(run, "failed", digest.total_events, error=f"internal error: {exc!r}")

    def prepare(
        self, run: ClaimedRun, recipient: RecipientRow | None, digest: DigestContent
    ) -> Outcome | OutgoingMessage:
        """The message to send, or the outcome that makes sending pointless."""
        count = digest.total_events
        if digest.is_empty:
            return Outcome(run, "skipped", 0, error="no events")
        if recipient is None:
            return Outcome(run, "skipped", count, error="no recipient")
        blocked = _blocked_reason(recipient)
        if blocked:
            return Outcome(
                run,
                "skipped",
                count,
                error=blocked,
                delivery=Delivery(
                    recipient.email, self.transport.name, "suppressed", reason=blocked
                ),
            )
        try:
            to_address = message.validate_email(recipient.email)
        except message.HeaderError as exc:
            return Outcome(run, "failed", count, error=f"invalid email address: {exc}")
        rendered = self.renderer.render(
            Recipient(
                user_id=recipient.user_id,
                email=to_address,
                name=recipient.name,
                cadence=recipient.cadence,
                timezone=recipient.timezone,
                locale=recipient.locale,
            ),
            digest,
            cadence=run.cadence,
            period_start=run.period_start,
            base_url=self.settings.base_url,
            unsubscribe_url=unsubscribe.unsubscribe_url(
                self.settings.base_url, self.key, recipient.user_id
            ),
        )
        message_id = message.make_message_id(run.id, self.domain)
        mime = message.build_message(
            from_name=self.settings.from_name,
            from_address=self.settings.from_address,
            to_name=recipient.name,
            to_address=to_address,
            subject=rendered.subject,
            html=rendered.html,
            text=rendered.text,
            message_id=message_id,
            idempotency_key=message.idempotency_key(run.id),
            list_unsubscribe_url=unsubscribe.unsubscribe_url(
                self.settings.base_url, self.key, recipient.user_id
            ),
            list_unsubscribe_mailto=None,
            date=run.frozen_at,
        )
        return OutgoingMessage(
            run_id=run.id,
            attempt=run.attempt,
            user_id=run.user_id,
            to_address=to_address,
            message_id=message_id,
            idempotency_key=message.idempotency_key(run.id),
            mime=mime,
            html=rendered.html,
        )

    def send(self, run: ClaimedRun, outgoing: OutgoingMessage, event_count: int) -> Outcome:
        """Hand the message to the transport and classify what happened."""
        try:
            result = self.transport.send(outgoing)
        except SendError as exc:
            if exc.kind == "fatal":
                self.fatal = exc.reason
                log.critical("transport_fatal transport=%s reason=%s", self.transport.name, exc)
            decision = retry.decide(
                exc.kind,
                exc.reason,
                attempt=run.attempt,
                max_attempts=self.settings.max_attempts,
                base=self.settings.backoff_base_seconds,
                cap=self.settings.backoff_max_seconds,
                retry_after=exc.retry_after,
                rand=self.rand,
            )
            delivery_status = {"pending": "deferred", "failed": "failed"}[decision.status]
            if exc.kind == "unknown":
                delivery_status = "unknown"
            return Outcome(
                run,
                decision.status,
                event_count,
                message_id=outgoing.message_id,
                error=decision.error,
                retry_in=decision.retry_in,
                delivery=Delivery(
                    outgoing.to_address,
                    self.transport.name,
                    delivery_status,
                    message_id=outgoing.message_id,
                    reason=exc.reason,
                ),
            )
        return Outcome(
            run,
            "sent",
            event_count,
            message_id=outgoing.message_id,
            delivery=Delivery(
                outgoing.to_address,
                result.transport,
                "sent",
                message_id=outgoing.message_id,
                provider_message_id=result.provider_message_id,
            ),
        )

    def _log(self, outcome: Outcome, landed: bool, duration_ms: float) -> None:
        status = outcome.status if landed else "lease_lost"
        log.info(
            "run_outcome run_id=%s user_id=%s status=%s attempt=%s events=%s duration_ms=%.1f%s",
            outcome.run.id,
            outcome.run.user_id,
            status,
            outcome.run.attempt,
            outcome.event_count,
            duration_ms,
            f" reason={outcome.error!r}" if outcome.error else "",
        )


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _blocked_reason(recipient: RecipientRow) -> str | None:
    if recipient.unsubscribed_at is not None:
        return "unsubscribed"
    if recipient.cadence == "off":
        return "cadence off"
    if recipient.suppressed_reason is not None:
        return f"suppressed: {recipient.suppressed_reason}"
    return None


# -- processes ----------------------------------------------------------------------------


def install_stop_handlers(stop: threading.Event) -> None:
    """SIGTERM/SIGINT: stop claiming, finish or release what is in flight, exit 0."""

    def handler(signum: int, frame: FrameType | None) -> None:
        log.info("stopping on %s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def work_in_process(
    url: str, settings: Settings, transport_name: str, drain: bool
) -> tuple[WorkerStats, str | None]:
    """Run one worker in this process until stopped; returns its stats and any fatal error."""
    stop = threading.Event()
    install_stop_handlers(stop)
    engine = make_engine(url)
    try:
        worker = Worker(engine, settings, transports.make(transport_name, settings), stop=stop)
        stats = worker.run(drain=drain)
        return stats, worker.fatal
    finally:
        engine.dispose()


def _child(
    url: str,
    settings: Settings,
    transport_name: str,
    drain: bool,
    log_level: int,
    results: multiprocessing.queues.Queue[tuple[WorkerStats, str | None]],
) -> None:
    logging.basicConfig(level=log_level, format=LOG_FORMAT)
    results.put(work_in_process(url, settings, transport_name, drain))


LOG_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s %(message)s"


def work_processes(
    url: str, settings: Settings, transport_name: str, processes: int, drain: bool
) -> tuple[WorkerStats, list[str]]:
    """Run `processes` workers (1 = in this process); returns summed stats and fatal errors."""
    if processes == 1:
        stats, fatal = work_in_process(url, settings, transport_name, drain)
        return stats, [fatal] if fatal else []
    # spawn, not fork: a child must not inherit the parent's connections or threads
    ctx = multiprocessing.get_context("spawn")
    results: multiprocessing.queues.Queue[tuple[WorkerStats, str | None]] = ctx.Queue()
    level = logging.getLogger().getEffectiveLevel()
    children = [
        ctx.Process(
            target=_child,
            args=(url, settings, transport_name, drain, level, results),
            name=f"digest-worker-{i}",
        )
        for i in range(processes)
    ]
    for child in children:
        child.start()

    def forward(signum: int, frame: FrameType | None) -> None:
        for child in children:
            if child.pid is not None and child.is_alive():
                os.kill(child.pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        collected: list[tuple[WorkerStats, str | None]] = []
        # a child killed by a signal never reports: stop waiting once all have exited
        while len(collected) < len(children):
            try:
                collected.append(results.get(timeout=0.5))
            except queue.Empty:
                if not any(child.is_alive() for child in children) and results.empty():
                    break
        total = WorkerStats()
        errors: list[str] = []
        for stats, fatal in collected:
            for name in vars(total):
                setattr(total, name, getattr(total, name) + getattr(stats, name))
            if fatal:
                errors.append(fatal)
        for child in children:
            child.join()
            if child.exitcode not in (0, None):
                errors.append(f"{child.name} exited with code {child.exitcode}")
        return total, errors
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
