"""The worker: batches of claimed runs through compose, send and record, overlapped, and
held through database outages until their outcomes are recorded.

One concern, kept in one module though it is long: the pipeline's overlap (a database
thread claims and records while this thread composes and the sending threads send) and
its recovery from outages share the same batches and state, and read as one loop. The
steps it drives live elsewhere: the SQL in `digest.claim`, composing in `digest.compose`,
the outcome of a send in `digest.retry`, the leases in `digest.heartbeat`, signals and
processes in `digest.cli.work`. No transaction is open while a message is being sent:
claim+freeze commit first, the outcomes of the whole batch commit afterwards in one
fenced statement.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import socket
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from digest import claim, logs, retry, shards, watchdog
from digest.channels.base import SendError, Transport
from digest.channels.ratelimit import TokenBucket
from digest.claim import Held
from digest.compose import Composer, make_renderer, signing_key
from digest.config import Settings
from digest.errors import first_line
from digest.heartbeat import Heartbeat
from digest.models import (
    ClaimedRun,
    DeliveryStatus,
    Outcome,
    OutgoingMessage,
    RunStatus,
)
from digest.render import Renderer

log = logging.getLogger(__name__)
INFO, WARNING, ERROR, CRITICAL = logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL

# A database outage (see `Worker.run`). A worker that holds nothing unrecorded gives up on
# a database it has not reached for this long and exits non-zero, for a supervisor to see.
# One that holds outcomes of mail it sent never does: those would be sent again.
MAX_OUTAGE_SECONDS = 120.0
# Retries back off from the poll interval to this, or to a quarter of the lease if that is
# shorter: held outcomes are recorded within seconds of the database answering again, well
# inside the lease the watchdog still grants after a restart.
OUTAGE_RETRY_MAX_SECONDS = 5.0
# Stopped (SIGTERM) while the database is away: how long the worker keeps trying to record
# what it sent before it exits anyway (systemd's TimeoutStopSec must exceed this plus one
# send's timeout).
STOP_GRACE_SECONDS = 20.0

# Batches whose sends may be queued or in progress while the next one is claimed and
# rendered: two keep the sending threads busy through a claim, a render and a commit.
BATCHES_AHEAD = 2


def worker_id() -> str:
    """host:pid:random, unique per worker process and readable in `locked_by`."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"


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
        """Count `outcome`, or a lost lease when it did not land."""
        status = outcome.status
        if not landed:
            self.lost += 1
        elif status == RunStatus.SENT:
            self.sent += 1
            self.events += outcome.event_count or 0
        elif status == RunStatus.PENDING:
            self.retried += 1
        elif status == RunStatus.SKIPPED:
            self.skipped += 1
        elif status == RunStatus.FAILED:
            self.failed += 1
        else:  # a worker decides nothing else
            raise ValueError(f"unexpected outcome status {status!r}")

    def __iadd__(self, other: WorkerStats) -> WorkerStats:
        for name, value in vars(other).items():
            setattr(self, name, getattr(self, name) + value)
        return self


@dataclass
class _Claimed:
    """A claimed batch with what its digests need, loaded but not yet rendered."""

    runs: list[ClaimedRun]
    started: float


@dataclass
class _Batch:
    """A claimed batch between its rendering and its recorded outcomes."""

    runs: list[ClaimedRun]
    started: float
    decided: list[Outcome] = field(default_factory=list)
    sending: list[tuple[ClaimedRun, Future[Outcome | None]]] = field(default_factory=list)
    unsent: list[Held] = field(default_factory=list)
    landed: set[int] | None = None  # set once its outcomes are recorded
    # run id -> ms from the start of its compose to its outcome (the sending threads write
    # their own runs' entries)
    took_ms: dict[int, float] = field(default_factory=dict)

    def sent(self) -> int:
        """Outcomes known and not recorded yet of mail that may be out: sent, or unknown."""
        if self.landed is not None:
            return 0
        done = (f.result() for _, f in self.sending if f.done() and not f.cancelled())
        return sum(
            1
            for o in (*self.decided, *done)
            if o is not None and (o.status == RunStatus.SENT or _unknown(o))
        )


@dataclass
class _Outage:
    """The database stopped answering at `since` (monotonic); `tries` retries so far."""

    since: float
    tries: int = 0
    cause: str = ""

    def seconds(self) -> float:
        return time.monotonic() - self.since


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
        # Every statement of the worker is atomic on its own: autocommit spares each one a
        # BEGIN and a COMMIT round trip.
        self.engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self.settings = settings
        self.transport = transport
        self.composer = Composer(
            settings,
            renderer or make_renderer(settings),
            signing_key(settings, transport.name),
            transport.name,
        )
        self.stop = stop or threading.Event()
        self.me = me or worker_id()
        self.rand = rand or random.Random()
        self.stats = WorkerStats()
        self.fatal: str | None = None
        self.at_most_once = settings.delivery == "at-most-once"
        # local transports (file, null) gain nothing from threads: call them in line
        self.inline_sends = bool(getattr(transport, "inline", False))
        self.limiter = TokenBucket(settings.max_send_rate) if settings.max_send_rate else None
        # Set while the database does not answer: the sending threads hand no more messages
        # to the transport (they go back unsent), as their outcomes could not be recorded.
        self.db_away = threading.Event()
        # Runs to give back unsent whose release the database has not confirmed yet.
        self.unreleased: list[Held] = []
        # Which shard to claim from next (one PostgreSQL: the one shard of all buckets); read
        # at the first claim, where a database that does not answer is an outage like any.
        self.shard_map: shards.ShardMap | None = None
        self.rotation = shards.Rotation(1, quiet_seconds=settings.poll_interval_seconds / 2)
        # False after a statement failed: a claim may have committed without its reply.
        self.swept = True

    # -- the loop -------------------------------------------------------------------------

    def run(self, *, drain: bool = False) -> WorkerStats:
        """Process batches until stopped; with `drain`, also stop when nothing is due.

        Work overlaps three ways: a database thread claims and loads the next batch, and
        records finished ones, while this thread renders the current one; the sending
        threads work through earlier batches meanwhile; and the oldest batch is recorded
        only once more than BATCHES_AHEAD are outstanding.

        When the database stops answering (a restart, a failover, a cut network) the worker
        sends nothing more and claims nothing, keeps every outcome it holds, and retries
        until the database answers: then it records those outcomes and gives back what it
        did not send, before anything new. The fence (owner + attempt + processing) makes a
        late record safe: if the run was taken back meanwhile it does not land, and the
        run is logged as lease_lost. While the database cannot be asked, nothing tells the
        worker its leases are gone (the watchdog grants a lease after a restart), so it
        does not give up on outcomes of sent mail; it exits on an outage only when it
        holds nothing, after MAX_OUTAGE_SECONDS.
        """
        beat = Heartbeat(self.engine, self.me, self.settings.lease_seconds)
        beater = threading.Thread(target=beat.run, name="heartbeat", daemon=True)
        beater.start()
        pool = ThreadPoolExecutor(self.settings.send_concurrency, thread_name_prefix="send")
        # One thread does the batch's database work in order: records finished batches and
        # claims and loads the next, while this thread renders.
        db = ThreadPoolExecutor(1, thread_name_prefix="db")
        ahead: Future[_Claimed | None] | None = None
        in_flight: deque[_Batch] = deque()
        recording: deque[tuple[_Batch, Future[None]]] = deque()
        next_watchdog = 0.0
        outage: _Outage | None = None
        try:
            while not self.stop.is_set() and self.fatal is None:
                try:
                    _recorded(recording, in_flight)
                    if outage is not None:
                        # what the worker holds is recorded before it claims anything new
                        self._record_held(recording, in_flight, beat)
                        self.db_away.clear()
                    if time.monotonic() >= next_watchdog:
                        with self.engine.connect() as conn:
                            watchdog.reset_expired_once(
                                conn,
                                self.settings.max_attempts,
                                restart_grace=self.settings.restart_grace_seconds,
                                backoff_base=self.settings.backoff_base_seconds,
                                backoff_cap=self.settings.backoff_max_seconds,
                            )
                        next_watchdog = time.monotonic() + self.settings.watchdog_interval_seconds
                    if ahead is None:
                        ahead = db.submit(self.claim_batch, beat)
                    claimed = ahead.result()
                    ahead = None
                    if claimed is not None:
                        if not self.stop.is_set():
                            ahead = db.submit(self.claim_batch, beat)
                        in_flight.append(self.start_batch(claimed, pool, beat))
                    while len(in_flight) > (BATCHES_AHEAD if claimed is not None else 0):
                        batch = in_flight.popleft()
                        recording.append((batch, db.submit(self.finish_batch, batch, beat)))
                    if claimed is None:
                        _recorded(recording, in_flight, wait=True)
                except OperationalError as exc:
                    self.db_away.set()
                    self.swept = False
                    self._give_back_ahead(ahead, beat)
                    ahead = None
                    if outage is None:
                        outage = _Outage(time.monotonic())
                    outage.tries += 1
                    outage.cause = first_line(exc)
                    held = len(in_flight) + len(recording) + len(self.unreleased)
                    if not held and outage.seconds() > MAX_OUTAGE_SECONDS:
                        self.fatal = f"database unavailable: {outage.cause}"
                        logs.event(log, "worker_stopping", CRITICAL, reason=self.fatal)
                        break
                    delay = self._retry_delay(outage.tries)
                    logs.event(
                        log,
                        "database_unavailable",
                        ERROR,
                        down_s=round(outage.seconds(), 1),
                        retry_in_s=round(delay, 1),
                        held_batches=len(in_flight) + len(recording),
                        held_sent=sum(b.sent() for b in in_flight),
                        error=outage.cause,
                    )
                    self.stop.wait(delay)
                    continue
                if outage is not None:
                    logs.event(log, "database_back", WARNING, down_s=round(outage.seconds(), 1))
                    outage = None
                if claimed is None:
                    if drain:
                        break
                    # jittered polling: idle workers do not hit the table in lockstep
                    self.stop.wait(
                        self.settings.poll_interval_seconds * self.rand.uniform(0.5, 1.5)
                    )
        finally:
            self._give_back_ahead(ahead, beat)
            self._record_before_exit(recording, in_flight, beat)
            db.shutdown(wait=True)
            pool.shutdown(wait=True, cancel_futures=True)
            beat.stop.set()
            beater.join()
            self.transport.close()
        return self.stats

    def _retry_delay(self, tries: int) -> float:
        """Seconds before the next try at an unanswering database: doubling from the poll
        interval up to OUTAGE_RETRY_MAX_SECONDS (a quarter of the lease if shorter)."""
        cap = min(OUTAGE_RETRY_MAX_SECONDS, self.settings.lease_seconds / 4)
        return min(cap, self.settings.poll_interval_seconds * 2.0 ** min(tries, 30))

    def _record_held(
        self,
        recording: deque[tuple[_Batch, Future[None]]],
        in_flight: deque[_Batch],
        beat: Heartbeat,
    ) -> None:
        """Record every batch this worker holds, oldest first, and give back the runs it
        did not send; raises OperationalError (keeping the rest) while the database is away.
        The database thread is idle by then: nothing is claimed ahead during an outage."""
        _recorded(recording, in_flight, wait=True)
        while in_flight:
            self.finish_batch(in_flight[0], beat)
            in_flight.popleft()
        self._release_unreleased(beat)
        if not self.swept:  # nothing is held now: what is still ours, a lost claim took
            with self.engine.connect() as conn:
                leftovers = claim.release_leftovers(conn, self.me)
            self.stats.released += leftovers
            self.swept = True
            if leftovers:
                # runs a claim took whose reply the outage lost
                logs.event(log, "released_leftovers", WARNING, runs=leftovers)

    def _record_before_exit(
        self,
        recording: deque[tuple[_Batch, Future[None]]],
        in_flight: deque[_Batch],
        beat: Heartbeat,
    ) -> None:
        """Stopping: record what is held; while the database is away keep trying for
        STOP_GRACE_SECONDS, then give up and say what will be sent again."""
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        tries = 0
        while True:
            try:
                self._record_held(recording, in_flight, beat)
                return
            except OperationalError as exc:
                self.db_away.set()
                self.swept = False
                tries += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    self._give_up(in_flight, first_line(exc))
                    return
                delay = min(self._retry_delay(tries), left)
                logs.event(
                    log,
                    "database_unavailable",
                    ERROR,
                    stopping=True,
                    retry_in_s=round(delay, 1),
                    held_batches=len(in_flight),
                    held_sent=sum(b.sent() for b in in_flight),
                    error=first_line(exc),
                )
                time.sleep(delay)

    def _give_up(self, in_flight: deque[_Batch], error: str) -> None:
        """Log, in one record, what this worker could not record before exiting: these runs
        wait for their leases to run out (unless a record landed unanswered), then the
        `sent` ones are sent again, or failed as unknown_outcome at most once (`then`)."""
        for batch in in_flight:
            self._settle(batch)
        logs.event(
            log,
            "gave_up_recording",
            CRITICAL,
            batches=len(in_flight),
            runs=sum(len(b.runs) for b in in_flight if b.landed is None),
            sent=sum(b.sent() for b in in_flight),
            unsent=len(self.unreleased) + sum(len(b.unsent) for b in in_flight),
            error=error,
            then="failed as unknown_outcome" if self.at_most_once else "sent again",
        )

    # -- one batch ------------------------------------------------------------------------

    def claim_batch(self, beat: Heartbeat) -> _Claimed | None:
        """Claim a batch with its digests and recipients, from the next shard with due runs
        (round robin; shards found empty are left out for half a poll interval); None when
        none has any."""
        runs: list[ClaimedRun] = []
        if self.shard_map is None:
            self.shard_map = shards.for_engine(self.engine)
            self.rotation.count = len(self.shard_map.shards)
        with self.engine.connect() as conn:  # autocommit: the claim is one statement
            for shard in self.rotation.order():
                runs = claim.claim_batch(
                    conn,
                    self.me,
                    self.settings.batch_size,
                    self.settings.lease_seconds,
                    self.settings.group_cap,
                    self.shard_map.shards[shard],
                )
                if runs:
                    self.rotation.claimed(shard)
                    break
                self.rotation.empty(shard)
        if not runs:
            return None
        beat.add(claim.holding(runs))
        return _Claimed(runs, time.monotonic())

    def _give_back(self, runs: list[ClaimedRun], beat: Heartbeat) -> None:
        """Release runs nothing was sent for now, rather than keep their leases alive with
        the heartbeat until the worker stops; kept, to release later, while the database is
        away."""
        self.unreleased.extend(claim.holding(runs))
        try:
            self._release_unreleased(beat)
        except OperationalError as exc:
            # kept, and given back when the database answers
            logs.event(
                log,
                "release_failed",
                WARNING,
                runs=len(self.unreleased),
                error=first_line(exc),
            )

    def _release_unreleased(self, beat: Heartbeat) -> None:
        """Give back the runs kept unsent; raises OperationalError while the database is
        away (and keeps them)."""
        if not self.unreleased:
            return
        held = list(self.unreleased)
        with self.engine.connect() as conn:
            self.stats.released += claim.release(conn, self.me, held)
        del self.unreleased[: len(held)]
        beat.drop(held)

    def _give_back_ahead(self, ahead: Future[_Claimed | None] | None, beat: Heartbeat) -> None:
        """Release the batch the loader claimed ahead, if any (stopping, or an outage)."""
        try:
            claimed = ahead.result() if ahead is not None else None
        except Exception:  # the claim or its load failed and rolled back: nothing is held
            return
        if claimed is not None:
            self._give_back(claimed.runs, beat)

    def start_batch(self, claimed: _Claimed, pool: ThreadPoolExecutor, beat: Heartbeat) -> _Batch:
        """Render a claimed batch, (at most once) mark it sending, and queue its sends."""
        try:
            return self._prepare_batch(claimed, pool)
        except BaseException:
            self._give_back(claimed.runs, beat)  # nothing was handed to a transport yet
            raise

    def _prepare_batch(self, claimed: _Claimed, pool: ThreadPoolExecutor) -> _Batch:
        batch = _Batch(claimed.runs, claimed.started)
        outgoing: list[tuple[ClaimedRun, OutgoingMessage, int, float]] = []
        for run in claimed.runs:
            started = time.monotonic()
            try:
                prepared = self.composer.compose(run)
            except Exception as exc:  # a bug fails the run, never the loop
                _run_error(run)
                prepared = Outcome(
                    run, RunStatus.FAILED, run.digest.total_events, error=f"internal error: {exc!r}"
                )
            if isinstance(prepared, Outcome):
                batch.decided.append(prepared)
                batch.took_ms[run.id] = _ms_since(started)
            else:
                outgoing.append((run, prepared, run.digest.total_events, started))
        if outgoing and self.at_most_once:
            with self.engine.connect() as conn:
                claim.mark_sending(conn, self.me, [run for run, _, _, _ in outgoing])
        for run, message_, count, started in outgoing:
            if self.inline_sends:
                outcome = self._send_one(batch, run, message_, count, started)
                if outcome is None:
                    batch.unsent.append((run.bucket, run.id, run.attempt))
                else:
                    batch.decided.append(outcome)
            else:
                sent = pool.submit(self._send_one, batch, run, message_, count, started)
                batch.sending.append((run, sent))
        return batch

    def _settle(self, batch: _Batch) -> None:
        """Wait for the batch's sends and take their outcomes (None: not sent)."""
        for run, future in batch.sending:
            if self.stop.is_set() or self.fatal is not None:
                future.cancel()  # not started yet: it goes back to the queue unsent
            result = None if future.cancelled() else future.result()
            if result is None:
                batch.unsent.append((run.bucket, run.id, run.attempt))
            else:
                batch.decided.append(result)
        batch.sending = []

    def finish_batch(self, batch: _Batch, beat: Heartbeat) -> None:
        """Wait for the batch's sends, record every outcome in one statement and give back
        the runs not sent; a failed try keeps the batch as it was, to be tried again."""
        self._settle(batch)
        with self.engine.connect() as conn:
            if batch.landed is None:
                batch.landed = claim.finish_batch(conn, self.me, batch.decided)
            if batch.unsent:
                self.stats.released += claim.release(conn, self.me, batch.unsent)
                batch.unsent = []
        beat.drop(claim.holding(batch.runs))
        self.stats.batches += 1
        for outcome in batch.decided:
            ok = outcome.run.id in batch.landed
            self.stats.add(outcome, ok)
            took = batch.took_ms.get(outcome.run.id)
            self._log(outcome, ok, _ms_since(batch.started) if took is None else took)

    def _send_one(
        self,
        batch: _Batch,
        run: ClaimedRun,
        outgoing: OutgoingMessage,
        count: int,
        started: float,
    ) -> Outcome | None:
        """In a sending thread: the outcome (its time since `started` noted in the batch),
        or None when the worker stopped (or cannot record outcomes) before sending."""
        if self.stop.is_set() or self.fatal is not None or self.db_away.is_set():
            return None
        if self.limiter is not None and not self.limiter.acquire(self.stop):
            return None
        try:
            outcome = self.send(run, outgoing, count)
        except Exception as exc:  # a transport bug fails the run, never the loop
            _run_error(run)
            outcome = Outcome(run, RunStatus.FAILED, count, error=f"internal error: {exc!r}")
        batch.took_ms[run.id] = _ms_since(started)
        return outcome

    def send(self, run: ClaimedRun, outgoing: OutgoingMessage, event_count: int) -> Outcome | None:
        """Hand the message to the transport and classify what happened.

        None: the transport cannot send at all (an account paused, no credentials). The
        worker stops, and the run goes back to the queue without spending its attempt.
        """
        try:
            result = self.transport.send(outgoing)
        except SendError as exc:
            if exc.kind == "fatal":
                self.fatal = exc.reason
                logs.event(
                    log,
                    "transport_fatal",
                    CRITICAL,
                    transport=self.transport.name,
                    reason=exc.reason,
                )
                return None
            return retry.after_failure(
                run,
                outgoing,
                exc,
                self.transport.name,
                event_count,
                max_attempts=self.settings.max_attempts,
                base=self.settings.backoff_base_seconds,
                cap=self.settings.backoff_max_seconds,
                rand=self.rand,
                at_most_once=self.at_most_once,
            )
        return retry.after_success(run, outgoing, result, event_count)

    def _log(self, outcome: Outcome, landed: bool, duration_ms: float) -> None:
        """One run_outcome record: lease_lost for an outcome the fence refused."""
        if not log.isEnabledFor(INFO):  # the bench turns these off: build nothing
            return
        reason = {"reason": outcome.error} if outcome.error else {}
        logs.event(
            log,
            "run_outcome",
            run_id=outcome.run.id,
            user_id=outcome.run.user_id,
            status=str(outcome.status) if landed else "lease_lost",
            attempt=outcome.run.attempt,
            events=outcome.event_count,
            duration_ms=round(duration_ms, 1),
            **reason,
        )


def _recorded(
    recording: deque[tuple[_Batch, Future[None]]], in_flight: deque[_Batch], *, wait: bool = False
) -> None:
    """Take the batches whose record is done (with `wait`, all of them) off `recording`.

    A batch whose record failed goes back to the front of `in_flight`, to be recorded
    again; the first failure is raised once every finished record has been looked at.
    """
    failed: list[_Batch] = []
    error: BaseException | None = None
    while recording and (wait or recording[0][1].done()):
        batch, future = recording.popleft()
        exc = future.exception()
        if exc is not None:
            failed.append(batch)
            error = error or exc
    in_flight.extendleft(reversed(failed))
    if error is not None:
        raise error


def _ms_since(started: float) -> float:
    return (time.monotonic() - started) * 1000


def _run_error(run: ClaimedRun) -> None:
    """A bug met while composing or sending `run`: its traceback, in its run's record."""
    logs.exception(log, "run_error", run_id=run.id, user_id=run.user_id, attempt=run.attempt)


def _unknown(outcome: Outcome) -> bool:
    return outcome.delivery is not None and outcome.delivery.status == DeliveryStatus.UNKNOWN
