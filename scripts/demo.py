"""`make demo`: the main job end to end on the embedded PostgreSQL, through the real CLI.

Recreates the `digest_demo` database each time (so running it twice gives the same
result), loads 1,200 recipients and 60,000 events, schedules, drains the queue with two
worker processes into ./outbox/digest_demo-…/, and prints a summary.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from demo_data import write  # noqa: E402  (scripts/ is on sys.path when run as a script)

from digest.db import embedded_url, libpq_url  # noqa: E402

DATABASE = "digest_demo"
console = Console()


def step(title: str, *args: str, env: dict[str, str]) -> float:
    """Run `digest ARGS`, show its last line, stop the demo if it fails; returns seconds."""
    console.print(f"[bold]$ digest {' '.join(args)}[/]  [dim]# {title}[/]")
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "digest", *args], env=env, cwd=ROOT, capture_output=True, text=True
    )
    elapsed = time.perf_counter() - started
    output = (done.stdout + done.stderr).strip().splitlines()
    if done.returncode != 0:
        console.print("\n".join(output[-20:]), style="red", markup=False)
        raise SystemExit(f"demo failed at: digest {' '.join(args)}")
    if output:
        console.print(f"  {output[-1]}", markup=False, highlight=False)
    return elapsed


def main() -> None:
    started = time.perf_counter()
    with console.status("starting the embedded PostgreSQL"):
        server = embedded_url(ROOT / ".digest" / "pgdata")
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {DATABASE}")
    url = libpq_url(make_url(server).set(database=DATABASE).render_as_string(False))
    env = dict(os.environ, DIGEST_DATABASE_URL=url, DIGEST_LOG_LEVEL="WARNING")
    data = ROOT / ".digest" / "demo"
    outbox = ROOT / "outbox"
    shutil.rmtree(outbox, ignore_errors=True)

    step("create the schema", "migrate", env=env)
    with console.status("writing the demo data set"):
        write(data, recipients=1200, events=60_000, seed=42, now=datetime.now(UTC))
    step(
        "1,200 recipients in 6 zones",
        "recipients",
        "import",
        str(data / "recipients.jsonl"),
        env=env,
    )
    step("60,000 events, 5 categories", "events", "import", str(data / "events.jsonl"), env=env)
    step("this period's runs, no stagger", "schedule", "--spread", "0", env=env)
    work_seconds = step(
        "drain the queue",
        "work",
        "--processes",
        "2",
        "--drain",
        "--transport",
        "file",
        "--outbox",
        str(outbox),
        env=env,
    )
    summarise(url, outbox, work_seconds, time.perf_counter() - started)


def summarise(url: str, outbox: Path, work_seconds: float, total_seconds: float) -> None:
    with psycopg.connect(url) as conn:
        by_status: dict[str, int] = dict(
            conn.execute("SELECT status, count(*) FROM digest_runs GROUP BY status").fetchall()
        )
        delivered = conn.execute(
            "SELECT coalesce(sum(event_count), 0) FROM digest_runs WHERE status = 'sent'"
        ).fetchone()
        sample = conn.execute(
            "SELECT id FROM digest_runs WHERE status = 'sent' ORDER BY event_count DESC, id LIMIT 1"
        ).fetchone()
    sent = by_status.get("sent", 0)
    table = Table(title="digest demo", show_header=False)
    table.add_column(justify="left")
    table.add_column(justify="right")
    for status in ("sent", "skipped", "failed", "pending", "processing"):
        table.add_row(f"runs {status}", str(by_status.get(status, 0)))
    table.add_row("events delivered", f"{delivered[0] if delivered else 0:,}")
    table.add_row("worker wall time (2 processes)", f"{work_seconds:.1f} s")
    table.add_row("digests/s", f"{sent / work_seconds:,.0f}")
    table.add_row("whole demo", f"{total_seconds:.1f} s")
    console.print(table)
    # `digest work` writes into a folder of the database's own under the outbox
    eml = next(outbox.glob(f"*/run-{sample[0]}.eml"), None) if sample else None
    if eml:
        console.print(f"sample email: {eml}")
        console.print(f"its HTML:     {eml.with_suffix('.html')}")
    if by_status.get("failed") or by_status.get("pending") or by_status.get("processing"):
        raise SystemExit("demo finished with runs not sent: see `digest stats`")


if __name__ == "__main__":
    main()
