"""Operator commands: `digest migrate`, `db url|stop`, `schedule`, `watchdog`, `purge` and
`stats`. Each imports what it uses when it runs (`digest.cli.app`)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import click

from digest.cli.app import App, fail, pass_app
from digest.models import RunStatus
from digest.terminal import plural


@click.command("migrate")
@pass_app
def migrate_cmd(app: App) -> None:
    """Create or upgrade the schema (alembic upgrade head); safe to run again."""
    from digest import migrate

    before = migrate.current(app.engine())
    migrate.upgrade(app.engine())
    after = migrate.current(app.engine())
    click.echo(f"schema at {after}" + ("" if before == after else f" (was {before or 'empty'})"))


@click.group("db")
def db_group() -> None:
    """The embedded PostgreSQL server (used when no --database-url is given)."""


@db_group.command("url")
@pass_app
def db_url(app: App) -> None:
    """Print the database URL in use (for psql), starting the embedded server if needed."""
    from digest import db

    click.echo(db.libpq_url(app.url()))


@db_group.command("stop")
@pass_app
def db_stop(app: App) -> None:
    """Stop the embedded server under the data directory."""
    from digest import db

    stopped = db.stop_embedded(app.settings.data_dir / "pgdata")
    click.echo("stopped" if stopped else "not running")


def _parse_now(value: str | None) -> datetime:
    if value is None:
        return datetime.now(UTC)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        fail(f"--now: not an ISO 8601 time: {value!r}")
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@click.command("schedule")
@click.option(
    "--now", "now_text", metavar="ISO8601", help="Schedule as of this time (default: now)."
)
@click.option(
    "--spread",
    type=click.IntRange(min=0),
    help="Stagger runs over this many seconds after the send time "
    "(default DIGEST_STAGGER_SECONDS or 3600; 0 = none).",
)
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    help="Connections inserting at once, each over its own slice of the recipients' buckets "
    "(default DIGEST_SCHEDULE_JOBS or 2).",
)
@pass_app
def schedule_cmd(app: App, now_text: str | None, spread: int | None, jobs: int | None) -> None:
    """Create this period's digest run for every subscribed recipient (run it from cron).

    Idempotent and safe to run twice at once; each user gets at most one run per cadence
    and period, at their local send hour plus a stable per-user stagger. The recipients
    are split into slices of their buckets (a fixed hash of the user id; on Citus, at
    least one slice a shard), inserted --jobs at once on as many connections, each slice
    in its own transaction: if one fails, the next run of the command creates what it
    missed.
    """
    from digest import db
    from digest.scheduler import schedule

    now = _parse_now(now_text)
    spread = app.settings.stagger_seconds if spread is None else spread
    jobs = app.settings.schedule_jobs if jobs is None else jobs
    engine = db.make_engine(app.url(), pool_size=jobs, max_overflow=0)
    try:
        created = schedule(engine, now, spread, jobs)
    finally:
        engine.dispose()
    click.echo(f"scheduled {plural(created, 'new run')} as of {now.isoformat()}")


@click.command("watchdog")
@pass_app
def watchdog_cmd(app: App) -> None:
    """Return runs whose lease expired to the queue, due after the retry backoff of their
    attempt (or fail them after max attempts); none until the database has been up for
    DIGEST_RESTART_GRACE seconds (60)."""
    from digest import watchdog

    settings = app.settings
    with app.engine().connect() as conn:
        pending, failed = watchdog.reset_expired_once(
            conn,
            settings.max_attempts,
            restart_grace=settings.restart_grace_seconds,
            backoff_base=settings.backoff_base_seconds,
            backoff_cap=settings.backoff_max_seconds,
        )
    click.echo(f"requeued {pending}, failed {failed}")


@click.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def stats_cmd(app: App, as_json: bool) -> None:
    """Runs by status, the oldest due pending run, events waiting."""
    from digest import stats

    with app.engine().connect() as conn:
        report = stats.collect(conn)
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
    else:
        _print_report(report)


@click.command("purge")
@click.option(
    "--older-than",
    required=True,
    metavar="AGE",
    help="Age such as 90d, 12h or 30m: finished runs completed before then go.",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=10_000, show_default=True)
@pass_app
def purge_cmd(app: App, older_than: str, batch_size: int) -> None:
    """Delete events of finished runs, deliveries and finished runs older than AGE.

    Works in small batches (short transactions, safe beside running workers). Events still
    waiting for a digest, pending or processing runs, and suppressions are never purged.
    Nor is any run whose period started in the last 8 days, whatever AGE says: it is what
    stops `digest schedule` from creating that period's run, and sending its digest, again.
    """
    from digest.purge import parse_age, purge

    try:
        cutoff = datetime.now(UTC) - parse_age(older_than)
    except OverflowError:  # before year 1, or more days than a timedelta holds
        fail(f"--older-than: {older_than.strip()} reaches too far back")
    result = purge(app.engine(), cutoff, batch_size)
    click.echo(
        f"purged {plural(result.events, 'event')}, {plural(result.deliveries, 'delivery')}, "
        f"{plural(result.feedback, 'feedback event')}, {plural(result.runs, 'run')} "
        f"finished before {cutoff.isoformat(timespec='seconds')}"
    )


def _print_report(report: dict[str, Any]) -> None:
    """The stats report as a small table for people."""
    from rich.console import Console
    from rich.table import Table

    from digest.stats import RATE_KEYS

    console = Console()
    runs = Table(title="digest runs", show_header=True)
    for status in RunStatus:
        runs.add_column(status, justify="right")
    runs.add_row(*(str(report["runs"][s]) for s in RunStatus))
    console.print(runs)
    lag = report["oldest_due_lag_seconds"]
    console.print(
        f"due now: {report['due_now']}"
        + (f" (oldest due {report['oldest_due_pending']}, {lag:.0f}s late)" if lag else "")
    )
    console.print(
        f"events waiting: {report['events_waiting']:,} "
        f"for {plural(report['users_with_events_waiting'], 'user')}"
    )
    if report["deliveries_by_day"]:
        rates = Table(title="deliveries, last 7 days (UTC)")
        rates.add_column("day")
        for key in RATE_KEYS:
            rates.add_column(key, justify="right")
        for day in report["deliveries_by_day"]:
            rates.add_row(day["day"], *(str(day[key]) for key in RATE_KEYS))
        console.print(rates)
        console.print(
            f"complaint rate {report['complaint_rate_7d']:.2%}, "
            f"bounce rate {report['bounce_rate_7d']:.2%} (7 days)"
        )
    for warning in report["warnings"]:
        console.print(f"[bold red]warning:[/] {warning}")
    if report["recipients_with_unknown_timezone"]:
        unknown = report["recipients_with_unknown_timezone"]
        console.print(
            f"[yellow]warning:[/] {plural(unknown, 'recipient has', 'recipients have')} a "
            "time zone PostgreSQL does not know; "
            + ("it is" if unknown == 1 else "they are")
            + " not scheduled"
        )
