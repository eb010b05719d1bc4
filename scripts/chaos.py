"""`scripts/chaos.py` (`make chaos`): drain a backlog through faults, then prove nothing was lost.

What it does, in one process that plays everything around the workers:

1. Starts a private PostgreSQL under `.digest/chaos-pgdata` (never the demo's or the
   tests' server), recreates the database `digest_chaos`, migrates it, seeds USERS
   recipients with EVENTS_PER_USER events each (plus a few with none, and one suppressed
   address) and schedules one due run per recipient.
2. Starts the two providers in threads: an SMTP server (aiosmtpd) and an SES endpoint (an
   HTTP server that hands each sesv2 `send_email` to moto's SES, in process). Both record
   every message they accepted, by its Message-ID (`<digest.run-ID.bBUCKET@…>`).
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

The harness itself is in scripts/chaos_lib/, one concern a module (its docstring lists
them); the verdict (chaos_lib/audit.py) is pure and unit-tested.
"""

from __future__ import annotations

import fcntl
import logging
import sys
from pathlib import Path

from rich.console import Console

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chaos_lib.run import Chaos  # noqa: E402  (scripts/ is on sys.path)
from chaos_lib.settings import LOGS, parse_options  # noqa: E402


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
