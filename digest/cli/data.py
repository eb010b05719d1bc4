"""`digest recipients ...` and `digest events ...`: getting people and events into the database.

The database, rich and the import code load when a command runs, not for `digest --help`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import ExitStack, closing, contextmanager
from typing import IO, TYPE_CHECKING, Any

import click

from digest import untrusted
from digest.cli.app import App
from digest.errors import DigestError
from digest.ingest.fields import MAX_PAYLOAD_BYTES
from digest.models import Cadence
from digest.terminal import plural

if TYPE_CHECKING:
    from rich.console import Console

    from digest.ingest.lines import BadLine
    from digest.ingest.recipients import Format

# Progress is redrawn every this many bytes, not every line: a million redraws would cost
# more than the import.
PROGRESS_STEP = 1 << 20
FORMATS: dict[str, Format] = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}


CADENCES = tuple(c.value for c in Cadence)


def _lines(
    stream: IO[bytes], total: int | None, label: str, console: Console
) -> Generator[bytes, None, None]:
    # A progress bar by bytes read, on a terminal only: logs and pipes get nothing.
    if not console.is_terminal:
        yield from stream
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(label, total=total)
        unreported = 0
        for line in stream:
            unreported += len(line)
            if unreported >= PROGRESS_STEP:
                progress.advance(task, unreported)
                unreported = 0
            yield line


@contextmanager
def _open_lines(path: str, console: Console) -> Iterator[Iterable[bytes]]:
    """The file's lines as bytes (`-` is stdin), with a progress bar on a terminal."""
    with ExitStack() as stack:
        if path == "-":
            stream: IO[bytes] = sys.stdin.buffer
            total = None
        else:
            try:
                stream = stack.enter_context(open(path, "rb"))
            except OSError as exc:
                raise DigestError(f"cannot read {path}: {exc.strerror}") from None
            total = os.fstat(stream.fileno()).st_size
        label = f"reading {_source(path)}"
        yield stack.enter_context(closing(_lines(stream, total, label, console)))


def _source(path: str) -> str:
    return "<stdin>" if path == "-" else path


def _report_bad(console: Console) -> Callable[[BadLine], None]:
    def report(bad: BadLine) -> None:
        # Through the console, so lines print above a running progress bar.
        console.print(f"digest: skipped {bad}", markup=False, highlight=False, soft_wrap=True)

    return report


def _rate(count: int, seconds: float) -> str:
    return f"{count / seconds:,.0f}" if seconds > 0 else "-"


# ---------------------------------------------------------------------------- recipients


@click.group("recipients")
def recipients() -> None:
    """Who gets digests, how often and when: import in bulk, set one, show one."""


@recipients.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "csv"]),
    help="Input format; default by extension (.csv, or .jsonl/.ndjson/.json); stdin is jsonl.",
)
@click.option("--skip-bad", is_flag=True, help="Import the good lines; report bad ones, exit 0.")
@click.pass_obj
def recipients_import(app: App, file: str, fmt: Format | None, skip_bad: bool) -> None:
    """Create or update recipients from FILE (JSON Lines or CSV with a header; `-` is stdin).

    Fields: user_id (required); email (required for a new recipient); name; cadence
    daily|weekly|off; timezone (IANA name, e.g. Europe/Berlin); send_hour 0-23 (local
    time); weekly_day 1-7 (Monday=1) or mon..sun; locale (e.g. en, pt-BR);
    muted_categories (a JSON list, or text like "like,follow"; [] for none): left out of
    the digests; quiet_hours (local, e.g. 22:00-07:00, or off): alerts wait for their end.
    Unknown fields or columns are refused.

    A field that is missing (or an empty CSV cell) keeps an existing recipient's value, the
    email too, so a file of user_id and send_hour changes only the hours; a new recipient
    gets the default: cadence daily, timezone UTC, send_hour 8, weekly_day 1, locale en.
    A row that changes nothing writes nothing, so importing the same file again changes
    nothing. A changed cadence, timezone, send_hour or weekly_day cancels that user's
    pending digest runs; the next `digest schedule` creates the right one.

    A user_id listed more than once: the rows apply in order, as if imported one after
    another, so each field ends with the value of the last row that gives it.

    All or nothing: the file is imported in one transaction. If any line is bad, nothing
    is written and the command fails, listing the bad lines (first 20) with their numbers.
    With --skip-bad the good lines are written, each bad one is reported on stderr, and
    the exit status is 0.
    """
    from rich.console import Console

    from digest.ingest.recipients import import_recipients

    fmt = fmt or _format_of(file)
    console = Console(stderr=True)
    started = time.perf_counter()
    with _open_lines(file, console) as lines:
        result = import_recipients(
            app.engine(),
            lines,
            fmt=fmt,
            source=_source(file),
            skip_bad=skip_bad,
            on_bad=_report_bad(console),
        )
    seconds = time.perf_counter() - started
    summary = (
        f"{_source(file)}: {plural(result.rows, 'recipient')} in {seconds:.1f}s "
        f"({_rate(result.rows, seconds)}/s): {result.created:,} created, "
        f"{result.updated:,} updated, {result.unchanged:,} unchanged"
    )
    if result.skipped:
        summary += f"; {plural(result.skipped, 'bad line')} skipped"
    click.echo(summary)


def _format_of(path: str) -> Format:
    if path == "-":
        return "jsonl"
    fmt = FORMATS.get(os.path.splitext(path)[1].lower())
    if fmt is None:
        raise DigestError(
            f"cannot tell the format of {path} from its name: give --format csv|jsonl"
        )
    return fmt


@recipients.command("set")
@click.argument("user_id")
@click.option("--email", help="Address (required when the recipient is new).")
@click.option("--name", help="Display name ('' removes it).")
@click.option("--cadence", type=click.Choice(CADENCES), help="How often digests are sent.")
@click.option("--timezone", help="IANA time zone, e.g. Europe/Berlin.")
@click.option("--send-hour", help="Local hour to send, 0-23.")
@click.option("--weekly-day", help="Day for weekly digests: 1-7 (Monday=1) or mon..sun.")
@click.option("--locale", help="Language of the digest, e.g. en, pt-BR.")
@click.option(
    "--muted-categories",
    help="Categories left out of the digests, comma-separated, e.g. like,follow ('' for none).",
)
@click.option(
    "--quiet-hours",
    help="Local quiet hours, e.g. 22:00-07:00, or off (alerts wait for their end).",
)
@click.pass_obj
def recipients_set(
    app: App,
    user_id: str,
    email: str | None,
    name: str | None,
    cadence: str | None,
    timezone: str | None,
    send_hour: str | None,
    weekly_day: str | None,
    locale: str | None,
    muted_categories: str | None,
    quiet_hours: str | None,
) -> None:
    """Create or update one recipient; only the options given change.

    A changed cadence, timezone, send hour or weekly day cancels the user's pending digest
    runs; the next `digest schedule` creates the right one. Muted categories apply from the
    next digest on; quiet hours are kept for alerts (digests keep their send hour).
    """
    options = {
        "email": email,
        "name": name,
        "cadence": cadence,
        "timezone": timezone,
        "send_hour": send_hour,
        "weekly_day": weekly_day,
        "locale": locale,
        "muted_categories": muted_categories,
        "quiet_hours": quiet_hours,
    }
    changes = {key: value for key, value in options.items() if value is not None}
    if not changes:
        raise DigestError("nothing to change: give at least one of --email, --name, --cadence, ...")
    from digest.ingest.recipients import set_recipient

    result = set_recipient(app.engine(), user_id, changes)
    if result.action == "created":
        message = f"created recipient {user_id}"
    elif result.action == "updated":
        changed = ", ".join(
            f"{k} {_shown(k, old)} -> {_shown(k, new)}" for k, (old, new) in result.changes.items()
        )
        message = f"updated recipient {user_id}: {changed}"
    else:
        message = f"recipient {user_id} unchanged"
    if result.cancelled_runs:
        message += (
            f"; cancelled {plural(result.cancelled_runs, 'pending run')}, "
            "the next `digest schedule` creates the new one"
        )
    click.echo(message)


@recipients.command("show")
@click.argument("user_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def recipients_show(app: App, user_id: str, as_json: bool) -> None:
    """Print one recipient as stored."""
    from digest.recipients import get_recipient

    row = get_recipient(app.engine(), user_id)
    if row is None:
        raise DigestError(f"no recipient {user_id!r}")
    if as_json:
        click.echo(json.dumps(row, indent=2, default=str))
        return
    width = max(map(len, row))
    for name, value in row.items():
        shown = ",".join(value) if isinstance(value, list) else "" if value is None else str(value)
        click.echo(f"{name:<{width}}  {shown}".rstrip())


def _shown(field: str, value: object) -> str:
    """A recipient field's value as `recipients set` reports a change of it."""
    if field == "muted_categories":
        return ",".join(value) or "none" if isinstance(value, tuple | list) else str(value)
    if field == "quiet_hours":
        return str(value) if value else "off"
    return str(value)


# -------------------------------------------------------------------------------- events


@click.group("events")
def events() -> None:
    """Notification events: record one, or import many."""


@events.command("add")
@click.option("--user", "user_id", required=True, help="Who the event is for.")
@click.option("--category", required=True, help="e.g. comment, post.liked.")
@click.option("--entity-type", required=True, help="What it is about, e.g. post.")
@click.option("--entity-id", required=True, help="Which one, e.g. 1234.")
@click.option("--actor", "actor_id", help="Who did it.")
@click.option(
    "--payload",
    help="A JSON object shown by the templates (at most 64 KB, nested 64 deep, numbers of "
    "100 characters; no NaN, NUL or lone surrogates).",
)
@click.option(
    "--created-at",
    help="ISO 8601 time (no offset = UTC); default now; at most DIGEST_MAX_CLOCK_SKEW "
    "(5 minutes) ahead of the database's clock.",
)
@click.option("--key", "event_key", help="Idempotency key: a second event with it is ignored.")
@click.pass_obj
def events_add(
    app: App,
    user_id: str,
    category: str,
    entity_type: str,
    entity_id: str,
    actor_id: str | None,
    payload: str | None,
    created_at: str | None,
    event_key: str | None,
) -> None:
    """Record one event; with --key, recording it again changes nothing."""
    data: dict[str, Any] | None = None
    if payload is not None:
        try:
            parsed = untrusted.loads(payload, max_bytes=MAX_PAYLOAD_BYTES)
        except untrusted.NotJsonError as exc:
            raise DigestError(f"--payload is not valid JSON: {exc.msg}") from None
        except untrusted.JsonError as exc:
            raise DigestError(f"--payload: {exc}") from None
        if not isinstance(parsed, dict):
            raise DigestError('--payload must be a JSON object, like \'{"title": "..."}\'')
        data = parsed
    from digest.ingest.events import record_event

    new_id = record_event(
        app.engine(),
        user_id=user_id,
        category=category,
        entity_type=entity_type,
        entity_id=entity_id,
        actor_id=actor_id,
        payload=data,
        created_at=created_at,
        event_key=event_key,
        categories=app.settings.categories,
        max_clock_skew=app.settings.max_clock_skew_seconds,
    )
    if new_id is None:
        click.echo(f"already recorded: user {user_id} has an event with key {event_key!r}")
    else:
        click.echo(f"recorded event {new_id}")


@events.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("--skip-bad", is_flag=True, help="Load the good lines; report bad ones, exit 0.")
@click.option(
    "--key-from-line",
    is_flag=True,
    help="Give each line without an event_key one derived from its content, so importing "
    "the file again adds nothing.",
)
@click.pass_obj
def events_import(app: App, file: str, skip_bad: bool, key_from_line: bool) -> None:
    """Load events from a JSON Lines FILE (one object per line; `-` reads stdin).

    Each line: {"user_id", "category", "entity_type", "entity_id", "actor_id"?,
    "payload"? (a JSON object), "created_at"? (ISO 8601; no offset = UTC; default now),
    "event_key"?}. Unknown fields are refused. Blank lines are skipped; a UTF-8 BOM on
    line 1 and CRLF line ends are fine. The file is streamed, so its size does not matter.

    All or nothing: the file loads in one transaction. If any line is bad, nothing is
    stored and the command fails, listing the bad lines (first 20) with their numbers.
    With --skip-bad the good lines are stored, each bad one is reported on stderr, and the
    exit status is 0.

    A line whose event_key the user already has (in the database or earlier in the file)
    is ignored, so re-importing a file of keyed events adds nothing. Lines without one are
    always new: --key-from-line gives each such line the key `line-sha256:` + the SHA-256
    of its JSON object re-serialised canonically (keys sorted, no spaces), so a re-import,
    even re-spaced or with its keys reordered, adds nothing (identical lines are one event).
    """
    from rich.console import Console

    from digest.ingest.events import import_events

    console = Console(stderr=True)
    started = time.perf_counter()
    with _open_lines(file, console) as lines:
        result = import_events(
            app.engine(),
            lines,
            source=_source(file),
            skip_bad=skip_bad,
            categories=app.settings.categories,
            on_bad=_report_bad(console),
            key_from_line=key_from_line,
            max_clock_skew=app.settings.max_clock_skew_seconds,
        )
    seconds = time.perf_counter() - started
    read = result.loaded + result.duplicates
    summary = (
        f"{_source(file)}: {plural(read, 'event')} in {seconds:.1f}s "
        f"({_rate(read, seconds)}/s): {result.loaded:,} new, "
        f"{result.duplicates:,} already there"
    )
    if result.skipped:
        summary += f"; {plural(result.skipped, 'bad line')} skipped"
    if result.keyless:
        summary += (
            f"; {result.keyless:,} {'has' if result.keyless == 1 else 'have'} no event_key: "
            "importing them again adds them again (--key-from-line prevents that)"
        )
    click.echo(summary)
