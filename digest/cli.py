"""The `digest` command line: one clear line and a non-zero exit for every error."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import click
import psycopg.errors
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from digest import db, migrate, stats, watchdog
from digest.config import Settings
from digest.errors import DigestError
from digest.terminal import printable


class UserError(click.ClickException):
    """Shown as `digest: error: <message>`, exit code 1."""

    def show(self, file: Any = None) -> None:
        # messages quote servers' replies: their control characters are shown, not obeyed
        # (a message's own lines, like an import's list of bad lines, stay lines)
        lines = self.format_message().split("\n")
        click.echo("digest: error: " + "\n".join(map(printable, lines)), err=True)


@dataclass
class App:
    """What every command gets: settings, and an engine made on first use."""

    settings: Settings
    debug: bool = False
    _engine: Engine | None = field(default=None, repr=False)
    _url: str | None = field(default=None, repr=False)

    def url(self) -> str:
        if self._url is None:
            self._url = db.resolve_url(self.settings.database_url, self.settings.data_dir)
        return self._url

    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = db.make_engine(self.url())
        return self._engine


class DigestGroup(click.Group):
    """Turns expected failures into one line; `--debug` shows the traceback instead."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            app = ctx.find_object(App)
            if app is not None and app.debug:
                raise
            message = _missing_schema(app, exc) or _describe(exc)
            # a driver's message may quote the URL it was given: never its password
            url = app.settings.database_url if app is not None else None
            raise UserError(db.scrub_secrets(message, [url])) from exc


def _describe(exc: Exception) -> str:
    if isinstance(exc, DigestError):
        return str(exc)
    if isinstance(exc, OperationalError):
        first = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        return f"database unavailable: {first}"
    if isinstance(exc, DBAPIError):
        first = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        return f"database error: {first}"
    return f"unexpected {type(exc).__name__}: {exc} (run with --debug for details)"


NO_SCHEMA = "the database has no digest schema yet: run `digest migrate`"


def _missing_schema(app: App | None, exc: Exception) -> str | None:
    """For a table that does not exist: what alembic says the schema is, and the fix."""
    # COPY (imports) raises the driver's error itself, everything else SQLAlchemy's wrapper
    driver_error = exc.orig if isinstance(exc, DBAPIError) else exc
    if app is None or not isinstance(driver_error, psycopg.errors.UndefinedTable):
        return None
    try:
        return _schema_problem(app.engine())
    except DBAPIError:  # cannot tell: the table's own error says enough
        return None


def _schema_problem(engine: Engine) -> str | None:
    """None when the schema is at this version's head, else the line that says to migrate."""
    current = migrate.current(engine)
    if current is None:
        return NO_SCHEMA
    head = migrate.head()
    if current != head:
        return (
            f"the database schema is at {current}, this digest needs {head}: run `digest migrate`"
        )
    return None


def _fail(message: str) -> NoReturn:
    raise UserError(message)


pass_app = click.make_pass_decorator(App)


@click.group(cls=DigestGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--database-url",
    envvar="DIGEST_DATABASE_URL",
    help="PostgreSQL URL. Default: the embedded server under DIGEST_DATA_DIR "
    "(~/.local/share/digest), started on demand.",
)
@click.option(
    "--settings",
    "settings_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML settings file (or DIGEST_SETTINGS_FILE); the environment overrides it.",
)
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.version_option(package_name="digest")
@click.pass_context
def cli(
    ctx: click.Context, database_url: str | None, settings_file: Path | None, debug: bool
) -> None:
    """Turn notification events into one well-made email per user per period.

    Typical production use: `digest migrate` once per release, `digest schedule` from cron
    every few minutes, N long-running `digest work` processes.
    """
    try:
        settings = Settings.from_env(file=settings_file)
    except DigestError as exc:
        raise UserError(str(exc)) from exc
    if database_url:
        settings = settings.with_(database_url=database_url)
    level = os.environ.get("DIGEST_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=logging.DEBUG if debug else getattr(logging, level, logging.INFO),
        format="%(asctime)s %(process)d %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    ctx.obj = App(settings=settings, debug=debug)
    ctx.call_on_close(lambda: ctx.obj._engine.dispose() if ctx.obj._engine else None)


@cli.command("migrate")
@pass_app
def migrate_cmd(app: App) -> None:
    """Create or upgrade the schema (alembic upgrade head); safe to run again."""
    before = migrate.current(app.engine())
    migrate.upgrade(app.engine())
    after = migrate.current(app.engine())
    click.echo(f"schema at {after}" + ("" if before == after else f" (was {before or 'empty'})"))


@cli.group("db")
def db_group() -> None:
    """The embedded PostgreSQL server (used when no --database-url is given)."""


@db_group.command("url")
@pass_app
def db_url(app: App) -> None:
    """Print the database URL in use (for psql), starting the embedded server if needed."""
    click.echo(db.libpq_url(app.url()))


@db_group.command("stop")
@pass_app
def db_stop(app: App) -> None:
    """Stop the embedded server under the data directory."""
    stopped = db.stop_embedded(app.settings.data_dir / "pgdata")
    click.echo("stopped" if stopped else "not running")


def _parse_now(value: str | None) -> datetime:
    if value is None:
        return datetime.now(UTC)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        _fail(f"--now: not an ISO 8601 time: {value!r}")
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@cli.command("schedule")
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
    help="Connections inserting at once, each over its own slice of the recipients "
    "(default DIGEST_SCHEDULE_JOBS or 2).",
)
@pass_app
def schedule_cmd(app: App, now_text: str | None, spread: int | None, jobs: int | None) -> None:
    """Create this period's digest run for every subscribed recipient (run it from cron).

    Idempotent and safe to run twice at once; each user gets at most one run per cadence
    and period, at their local send hour plus a stable per-user stagger. The recipients
    are split into --jobs slices by a hash of their user id, inserted at once on as many
    connections, each slice in its own transaction: if one fails, the next run of the
    command creates what it missed.
    """
    from digest.scheduler import schedule

    now = _parse_now(now_text)
    spread = app.settings.stagger_seconds if spread is None else spread
    jobs = app.settings.schedule_jobs if jobs is None else jobs
    engine = db.make_engine(app.url(), pool_size=jobs, max_overflow=0)
    try:
        created = schedule(engine, now, spread, jobs)
    finally:
        engine.dispose()
    click.echo(f"scheduled {created} new runs as of {now.isoformat()}")


@cli.command("work")
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
    """
    from digest import transports
    from digest.worker import signing_key, work_processes

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
    names = transports.parse(name)
    signing_key(settings, name)
    transports.require_https_links(settings, names)
    transports.make(name, settings).close()
    try:
        problem = _schema_problem(app.engine())
    except OperationalError:  # the server is down: the workers wait for it, as in an outage
        problem = None
    if problem:
        _fail(problem)
    if "file" in names:
        # one folder per database: run 7 of one database never overwrites run 7 of another
        settings = settings.with_(outbox=settings.outbox / db.database_tag(app.engine()))
    app.engine().dispose()  # the workers have engines of their own
    started = time.monotonic()
    total, errors = work_processes(app.url(), settings, name, processes, drain, pin_cpus=pin_cpus)
    elapsed = time.monotonic() - started
    written = f"; mail in {settings.outbox}" if "file" in names else ""
    click.echo(
        f"sent {total.sent}, skipped {total.skipped}, failed {total.failed}, "
        f"retrying {total.retried}, lease lost {total.lost}, released {total.released}; "
        f"{total.events} events in {elapsed:.1f}s{written}",
        err=True,
    )
    if errors:
        _fail("; ".join(errors))


@cli.command("watchdog")
@pass_app
def watchdog_cmd(app: App) -> None:
    """Return runs whose lease expired to the queue, due after the retry backoff of their
    attempt (or fail them after max attempts); none until the database has been up for
    DIGEST_RESTART_GRACE seconds (60)."""
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


@cli.command("preview")
@click.option("--user", "user_id", required=True, help="User id.")
@click.option("--format", "fmt", type=click.Choice(["html", "text"]), default="html")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write to a file.")
@pass_app
def preview_cmd(app: App, user_id: str, fmt: str, out: Path | None) -> None:
    """Render USER's next digest as it would be sent now, changing nothing."""
    from digest.preview import preview

    rendered = preview(app.engine(), app.settings, user_id)
    body = rendered.html if fmt == "html" else f"Subject: {rendered.subject}\n\n{rendered.text}"
    if out:
        try:
            out.write_text(body, encoding="utf-8")
        except OSError as exc:
            _fail(f"cannot write {out}: {exc.strerror or exc}")
        click.echo(f"wrote {out}")
    else:
        click.echo(body)


@cli.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def stats_cmd(app: App, as_json: bool) -> None:
    """Runs by status, the oldest due pending run, events waiting."""
    with app.engine().connect() as conn:
        report = stats.collect(conn)
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
    else:
        stats.print_report(report)


@cli.command("purge")
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
        _fail(f"--older-than: {older_than.strip()} reaches too far back")
    result = purge(app.engine(), cutoff, batch_size)
    click.echo(
        f"purged {result.events} events, {result.deliveries} deliveries, "
        f"{result.feedback} feedback events, {result.runs} runs "
        f"finished before {cutoff.isoformat(timespec='seconds')}"
    )


def _register_commands() -> None:
    from digest.cli_data import events, recipients
    from digest.cli_feedback import feedback
    from digest.cli_support import deliveries, why
    from digest.cli_web import serve, suppress

    for command in (recipients, events, serve, suppress, deliveries, why, feedback):
        cli.add_command(command)


_register_commands()


def main() -> None:
    """Console entry point."""
    cli(prog_name="digest")
