"""`make demo`: the main job end to end, through the real CLI, in the database plain `digest`
commands use, so that `digest stats`, `digest why --user 1` and `digest deliveries`
afterwards show the demo's data.

That database is the one `digest` resolves from the environment: DIGEST_DATABASE_URL, else
the embedded server under DIGEST_DATA_DIR (~/.local/share/digest by default), started if
needed. The demo replaces only a database that is empty or that a demo filled before (it
marks the recipients table); anything else it leaves alone and says how to run elsewhere.
It loads 1,200 recipients and 60,000 events, schedules, drains the queue with two worker
processes into ./outbox/<database>-…/, and prints a summary and the commands to try next.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg import sql
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from demo_data import write  # noqa: E402  (scripts/ is on sys.path when run as a script)

from digest.config import Settings  # noqa: E402
from digest.db import hide_password, libpq_url, resolve_url  # noqa: E402

# Set on the recipients table by the demo: a database that has it holds only demo data.
DEMO_MARK = "digest demo data: `make demo` replaces it"
TABLE_LIST = """
    SELECT tablename FROM pg_tables
     WHERE schemaname = current_schema() AND tablename <> 'alembic_version'
     ORDER BY tablename
"""
RECIPIENTS_GET_COMMENT = "SELECT obj_description(to_regclass('recipients'), 'pg_class')"
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


def make_room(url: str) -> None:
    """Empty the database for the demo if it is empty or a demo's; refuse anything else."""
    with psycopg.connect(url, autocommit=True) as conn:
        tables = [row[0] for row in conn.execute(TABLE_LIST)]
        filled = [
            name
            for name in tables
            if conn.execute(
                sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(sql.Identifier(name))
            ).fetchone()
            == (True,)
        ]
        marked = "recipients" in tables and conn.execute(RECIPIENTS_GET_COMMENT).fetchone() == (
            DEMO_MARK,
        )
        if filled and not marked:
            raise SystemExit(
                f"demo: the database {hide_password(url)} holds data the demo did not load "
                f"({', '.join(filled)}), and the demo would replace it. Run the demo on a "
                "server of its own, e.g. `DIGEST_DATA_DIR=/tmp/digest-demo make demo` (then "
                "`DIGEST_DATA_DIR=/tmp/digest-demo .venv/bin/digest stats`), or set "
                "DIGEST_DATABASE_URL to an empty database."
            )
        if filled:
            names = sql.SQL(", ").join(sql.Identifier(name) for name in tables)
            conn.execute(sql.SQL("TRUNCATE {} RESTART IDENTITY CASCADE").format(names))


def mark(url: str) -> None:
    """Say in the database that its data is the demo's, for the next demo to replace."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("COMMENT ON TABLE recipients IS {}").format(sql.Literal(DEMO_MARK)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=1200)
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--outbox", type=Path, default=ROOT / "outbox")
    args = parser.parse_args()
    started = time.perf_counter()
    settings = Settings.from_env()
    with console.status("starting the database"):
        # exactly what a plain `digest` command resolves, so the commands after the demo
        # read its data
        url = libpq_url(resolve_url(settings.database_url, settings.data_dir))
    make_room(url)
    env = dict(os.environ, DIGEST_DATABASE_URL=url, DIGEST_LOG_LEVEL="WARNING")
    data = ROOT / ".digest" / "demo"
    outbox = args.outbox
    shutil.rmtree(outbox, ignore_errors=True)

    step("create the schema", "migrate", env=env)
    mark(url)
    with console.status("writing the demo data set"):
        write(data, args.recipients, args.events, seed=42, now=datetime.now(UTC))
    step(
        f"{args.recipients:,} recipients in 6 zones",
        "recipients",
        "import",
        str(data / "recipients.jsonl"),
        env=env,
    )
    step(
        f"{args.events:,} events, 5 categories",
        "events",
        "import",
        str(data / "events.jsonl"),
        env=env,
    )
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
    where = (
        "the database in DIGEST_DATABASE_URL"
        if settings.database_url
        else f"the embedded server under {settings.data_dir}"
    )
    console.print(
        f"The demo's data is in {where}, the one plain `digest` commands use. Try:",
        markup=False,
        highlight=False,
    )
    for command in ("stats", "why --user 1", "deliveries --user 1", "preview --user 1"):
        console.print(f"  .venv/bin/digest {command}", markup=False, highlight=False)


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
