"""The `digest` command group and what every command shares: settings, an engine made on
first use, and one clear line and a non-zero exit for every error.

Start-up stays light: `digest --help` loads click and the settings, nothing else. The
database driver, SQLAlchemy, rich, alembic and the rest are imported by the commands that
use them (docs/performance.md, "CLI start-up").
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from digest import logs
from digest.config import Settings
from digest.errors import DigestError
from digest.terminal import printable

if TYPE_CHECKING:
    from sqlalchemy import Engine

NO_SCHEMA = "the database has no digest schema yet: run `digest migrate`"


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
        """The database URL in use, starting the embedded server if none is configured."""
        if self._url is None:
            from digest import db

            self._url = db.resolve_url(self.settings.database_url, self.settings.data_dir)
        return self._url

    def engine(self) -> Engine:
        """The SQLAlchemy engine, created on first use."""
        if self._engine is None:
            from digest import db

            self._engine = db.make_engine(self.url())
        return self._engine

    def close(self) -> None:
        """Dispose of the engine, if one was made."""
        if self._engine is not None:
            self._engine.dispose()


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
            from digest.db import scrub_secrets

            message = _missing_schema(app, exc) or _describe(exc)
            # a driver's message may quote the URL it was given: never its password
            url = app.settings.database_url if app is not None else None
            raise UserError(scrub_secrets(message, [url])) from exc


def _describe(exc: Exception) -> str:
    if isinstance(exc, DigestError):
        return str(exc)
    from sqlalchemy.exc import DBAPIError, OperationalError

    if isinstance(exc, OperationalError):
        first = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        return f"database unavailable: {first}"
    if isinstance(exc, DBAPIError):
        first = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        return f"database error: {first}"
    return f"unexpected {type(exc).__name__}: {exc} (run with --debug for details)"


def _missing_schema(app: App | None, exc: Exception) -> str | None:
    """For a table or column that does not exist (a schema from before it, such as the
    bucket of migration 0007): what alembic says the schema is, and the fix."""
    if app is None or "psycopg" not in sys.modules:  # no database was asked anything
        return None
    import psycopg.errors
    from sqlalchemy.exc import DBAPIError

    # COPY (imports) raises the driver's error itself, everything else SQLAlchemy's wrapper
    driver_error = exc.orig if isinstance(exc, DBAPIError) else exc
    if not isinstance(driver_error, psycopg.errors.UndefinedTable | psycopg.errors.UndefinedColumn):
        return None
    try:
        return schema_problem(app.engine())
    except DBAPIError:  # cannot tell: the table's own error says enough
        return None


def schema_problem(engine: Engine) -> str | None:
    """None when the schema is at this version's head, else the line that says to migrate."""
    from digest import migrate

    current = migrate.current(engine)
    if current is None:
        return NO_SCHEMA
    head = migrate.head()
    if current != head:
        return (
            f"the database schema is at {current}, this digest needs {head}: run `digest migrate`"
        )
    return None


def fail(message: str) -> NoReturn:
    """Stop the command with `digest: error: MESSAGE`, exit code 1."""
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
    logs.setup(logging.DEBUG if debug else settings.log_level, settings.log_format)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    app = App(settings=settings, debug=debug)
    ctx.obj = app
    ctx.call_on_close(app.close)
