"""`digest deliveries`, `digest why` and `digest preview`: answers for a support ticket,
and a template author's look at a user's next digest."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from digest.cli.app import App, fail, pass_app
from digest.models import DeliveryStatus
from digest.terminal import printable

if TYPE_CHECKING:
    from digest.support import DeliveryRow

DELIVERY_STATUSES = tuple(s.value for s in DeliveryStatus)


@click.command("deliveries")
@click.option("--user", "user_id", help="Only this user id.")
@click.option("--email", help="Only this recipient address (any letter case).")
@click.option("--status", type=click.Choice(DELIVERY_STATUSES), help="Only this status.")
@click.option(
    "--since",
    metavar="ISO8601|7d|24h",
    help="Only deliveries from this time on, or this long ago (d, h, m).",
)
@click.option(
    "--limit", type=click.IntRange(min=1), default=50, show_default=True, help="Show at most."
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def deliveries(
    app: App,
    user_id: str | None,
    email: str | None,
    status: str | None,
    since: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Messages handed to a transport and what became of them, newest first.

    On a terminal: a table. Piped: tab-separated lines under a header line (`cut`, `awk`,
    a spreadsheet), one per delivery, never wrapped. --json: exact text, for programs.
    """
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from digest import support

    since_at = support.parse_since(since, datetime.now(UTC)) if since else None
    with app.engine().connect() as conn:
        rows = support.list_deliveries(
            conn, user_id=user_id, email=email, status=status, since=since_at, limit=limit
        )
    if as_json:
        # json.dumps escapes every control character (ensure_ascii): the text stays exact
        click.echo(json.dumps([_record(asdict(row)) for row in rows], indent=2))
        return
    console = Console(highlight=False)
    if not console.is_terminal:
        _print_tsv(rows)
        return
    if not rows:
        click.echo("no deliveries match")
        return
    table = Table(show_header=True)
    for column in (
        "time",
        "run",
        "user",
        "recipient",
        "transport",
        "status",
        "provider message id",
        "reason",
    ):
        table.add_column(column, overflow="fold", justify="right" if column == "run" else "left")
    for row in rows:
        # Text, not str: addresses and provider reasons are data, not rich markup; and
        # printable: a provider's reply may carry terminal escape sequences.
        table.add_row(
            row.created_at.astimezone(UTC).isoformat(sep=" ", timespec="seconds"),
            str(row.run_id),
            Text(printable(row.user_id)),
            Text(printable(row.recipient)),
            Text(printable(row.transport)),
            Text(row.status, style=_STATUS_STYLES.get(row.status, "")),
            Text(printable(row.provider_message_id or "")),
            Text(printable(row.reason or "")),
        )
    console.print(table)


TSV_COLUMNS = (
    "created_at",
    "run_id",
    "user_id",
    "recipient",
    "transport",
    "status",
    "provider_message_id",
    "reason",
)


def _print_tsv(rows: list[DeliveryRow]) -> None:
    """A header, then a line per delivery; `printable` turns tabs and line breaks in remote
    text into spaces, so a field never splits a line or a column."""
    click.echo("\t".join(TSV_COLUMNS))
    for row in rows:
        fields = asdict(row)
        fields["created_at"] = row.created_at.astimezone(UTC).isoformat(timespec="seconds")
        shown = ("" if fields[name] is None else str(fields[name]) for name in TSV_COLUMNS)
        click.echo("\t".join(map(printable, shown)))


_STATUS_STYLES: Mapping[str, str] = {
    DeliveryStatus.DELIVERED: "green",
    DeliveryStatus.SENT: "green",
    DeliveryStatus.BOUNCED: "red",
    DeliveryStatus.COMPLAINED: "red",
    DeliveryStatus.REJECTED: "red",
    DeliveryStatus.FAILED: "red",
    DeliveryStatus.SUPPRESSED: "yellow",
    DeliveryStatus.DEFERRED: "yellow",
    DeliveryStatus.UNKNOWN: "yellow",
}


@click.command("why")
@click.option("--user", "user_id", required=True, help="User id.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def why(app: App, user_id: str, as_json: bool) -> None:
    """Explain in plain words what happened to USER's last digest and what comes next."""
    from digest import support

    with app.engine().connect() as conn:
        facts, sentences = support.why(conn, user_id)
    if as_json:
        click.echo(
            json.dumps(
                {"user_id": user_id, "explanation": sentences, "facts": _record(asdict(facts))},
                indent=2,
            )
        )
        return
    for sentence in sentences:
        # plain lines: pasted into tickets, grepped, never wrapped; reasons in them come
        # from remote servers, so their control characters are shown, not obeyed
        click.echo(printable(sentence))


def _record(value: Any) -> Any:
    """`value` with datetimes as ISO 8601 text, for JSON."""
    if isinstance(value, dict):
        return {key: _record(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_record(item) for item in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value


@click.command("preview")
@click.option("--user", "user_id", required=True, help="User id.")
@click.option("--format", "fmt", type=click.Choice(["html", "text"]), default="html")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write to a file.")
@pass_app
def preview_cmd(app: App, user_id: str, fmt: str, out: Path | None) -> None:
    """Render USER's next digest as it would be sent now, changing nothing.

    When the digest would not be sent (cadence off, unsubscribed, a suppressed address),
    it is still rendered, and stderr says why it would not go out.
    """
    from digest import support
    from digest.preview import preview

    rendered = preview(app.engine(), app.settings, user_id)
    with app.engine().connect() as conn:
        warnings = support.preview_warnings(conn, user_id)
    for warning in warnings:
        click.echo(f"digest: warning: {printable(warning)}", err=True)
    body = rendered.html if fmt == "html" else f"Subject: {rendered.subject}\n\n{rendered.text}"
    if out:
        try:
            out.write_text(body, encoding="utf-8")
        except OSError as exc:
            fail(f"cannot write {out}: {exc.strerror or exc}")
        click.echo(f"wrote {out}")
    else:
        click.echo(body)
