"""The harness's settings: its files, the workers' configuration, the command-line options."""

from __future__ import annotations

import argparse
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATABASE = "digest_chaos"
PGDATA = ROOT / ".digest" / "chaos-pgdata"
LOGS = ROOT / ".digest" / "chaos-logs"
DOMAIN = "chaos.example.com"
SENDER = f"digest@{DOMAIN}"
REGION = "eu-west-1"
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
WATCHDOG_EVERY = 5.0  # seconds between `digest watchdog` runs (cron)
# The long outage: PostgreSQL stopped for this many seconds (drawn from the seed), longer
# than a worker used to wait (about 61 s at these settings) before it dropped what it had
# sent and exited.
OUTAGE_SECONDS = (65.0, 90.0)
QUICK_OUTAGE_SECONDS = (63.0, 68.0)


@dataclass(frozen=True)
class Options:
    """The command line, with the defaults of the full or the quick run filled in."""

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


def worker_env(options: Options, smtp_port: int, ses_url: str) -> dict[str, str]:
    """The environment of every `digest` process: the two stand-in providers, fast retries."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DIGEST_", "AWS_", "BOTO"))}
    env.update(
        {
            "DIGEST_SECRET_KEY": "chaos-secret-key",
            "DIGEST_FROM_ADDRESS": SENDER,
            "DIGEST_BASE_URL": f"https://{DOMAIN}",
            "DIGEST_SMTP_HOST": "127.0.0.1",
            "DIGEST_SMTP_PORT": str(smtp_port),
            "DIGEST_SMTP_SECURITY": "none",
            "DIGEST_SMTP_TIMEOUT": str(SMTP_TIMEOUT),
            "DIGEST_SES_REGION": REGION,
            "DIGEST_SES_ENDPOINT_URL": ses_url,
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
            "DIGEST_DELIVERY": options.delivery,
            "DIGEST_LOG_LEVEL": "INFO",
            "DIGEST_LOG_FORMAT": "json",  # the harness reads fields (chaos_lib.logs)
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }
    )
    return env
