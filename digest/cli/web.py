"""`digest serve` (the unsubscribe pages) and `digest suppress ...` (addresses never mailed).

uvicorn, starlette and rich load when these commands run, not for `digest --help`.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING

import click

from digest.cli.app import App
from digest.errors import DigestError
from digest.terminal import printable

if TYPE_CHECKING:
    import uvicorn

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@click.command("serve")
@click.option("--host", help="Address to listen on (DIGEST_WEB_HOST; default 127.0.0.1).")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    help="Port to listen on (DIGEST_WEB_PORT; default 8000; 0 picks a free one).",
)
@click.pass_obj
def serve(app: App, host: str | None, port: int | None) -> None:
    """Serve the one-click unsubscribe pages (/u/TOKEN) and /healthz over HTTP.

    Needs DIGEST_SECRET_KEY (the key the emails' links were signed with) and
    DIGEST_BASE_URL set to the public URL this server is reached at, usually behind a
    TLS-terminating proxy. Stops cleanly on SIGTERM or Ctrl-C.
    """
    import uvicorn

    from digest.web.app import create_app, require_secret

    settings = app.settings
    require_secret(settings)  # before anything starts, even the embedded database
    host = host or settings.web_host
    port = settings.web_port if port is None else port
    with _listen(host, port) as listener:
        web_app = create_app(app.engine(), settings)
        bound_port = listener.getsockname()[1]
        shown_host = f"[{host}]" if ":" in host else host
        click.echo(
            f"serving unsubscribe pages on http://{shown_host}:{bound_port} "
            f"(links in emails point at {settings.base_url}/u/...)"
        )
        # No access log: every unsubscribe URL carries its token, and tokens stay out of logs.
        config = uvicorn.Config(
            web_app,
            log_config=None,  # keep the `digest` log format
            access_log=False,
            server_header=False,
            ws="none",
            timeout_graceful_shutdown=10,
        )
        server = uvicorn.Server(config)
        with _stop_signals_stop(server):
            server.run(sockets=[listener])


@contextmanager
def _stop_signals_stop(server: uvicorn.Server) -> Iterator[None]:
    """SIGTERM/SIGINT stop `server` gracefully, and `serve` then exits 0.

    uvicorn installs its own handlers while it serves and afterwards re-raises the signal
    under the handlers it found: with the defaults that kills the process (SIGTERM) or
    raises KeyboardInterrupt (SIGINT). Ours only ask the server to stop, which covers a
    signal arriving before uvicorn's handlers are in place too, and makes the echo harmless.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        server.should_exit = True

    previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket, or one clear line (uvicorn would log and exit on its own)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise DigestError(f"cannot listen on {host}:{port}: {reason}") from None


@click.group("suppress")
def suppress() -> None:
    """Addresses never mailed (bounces, complaints, manual blocks): add, remove, list.

    Addresses are compared in lower case; a suppressed address's digest runs end
    `skipped` with reason `suppressed: REASON`.
    """


@suppress.command("add")
@click.argument("email")
@click.option("--reason", default="manual", show_default=True, help="Why; shown in run reasons.")
@click.option("--source", default="manual", show_default=True, help="Who or what added it.")
@click.pass_obj
def suppress_add(app: App, email: str, reason: str, source: str) -> None:
    """Never mail EMAIL again (until it is removed); adding it twice keeps the first reason."""
    from digest import suppressions

    address = suppressions.normalise(email)
    if suppressions.add(app.engine(), address, reason, source):
        click.echo(f"suppressed {address}")
    else:
        click.echo(f"{address} was already suppressed")


@suppress.command("remove")
@click.argument("email")
@click.pass_obj
def suppress_remove(app: App, email: str) -> None:
    """Mail EMAIL again from its next digest on."""
    from digest import suppressions

    address = suppressions.normalise(email)
    if suppressions.remove(app.engine(), address):
        click.echo(f"removed {address}")
    else:
        click.echo(f"{address} was not suppressed")


@suppress.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--limit", type=click.IntRange(min=1), help="Show at most this many (newest first).")
@click.pass_obj
def suppress_list(app: App, as_json: bool, limit: int | None) -> None:
    """Suppressed addresses, newest first."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from digest import suppressions

    rows = suppressions.list_(app.engine(), limit)
    if as_json:
        records = [
            {
                "email": row.email,
                "reason": row.reason,
                "source": row.source,
                "created_at": row.created_at.isoformat(),
            }
            for row in rows
        ]
        click.echo(json.dumps(records, indent=2))
        return
    if not rows:
        click.echo("no suppressed addresses")
        return
    table = Table(show_header=True)
    for column in ("email", "reason", "source", "since"):
        table.add_column(column, overflow="fold")
    for row in rows:
        since = row.created_at.isoformat(sep=" ", timespec="seconds")
        # Text, not str: a reason like `[bold]` is data, not rich markup; and printable: a
        # bounce's diagnostic text may carry terminal escape sequences.
        cells = (Text(printable(value)) for value in (row.email, row.reason, row.source))
        table.add_row(*cells, since)
    Console(highlight=False).print(table)
