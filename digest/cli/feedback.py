"""`digest feedback ingest FILE|-`: SES feedback from a file, as the webhook would apply it.

Files are trusted operator input (an export, a replay from a queue): no signature check, but
the same strict parsing as the webhook. All or nothing: the whole file is checked before
anything is applied, then it is applied in one transaction, so a bad line, or one the
database refuses, changes nothing and is reported as `FILE:LINE: reason`. SNS envelopes keep
their MessageId, so ingesting the same file twice changes nothing the second time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import IO, Any

import click

from digest import untrusted
from digest.cli.app import App
from digest.errors import DigestError, ValidationError
from digest.feedback.ses import MAX_BODY_BYTES, FeedbackError, parse_event, unwrap
from digest.ingest.lines import BAD_LINES_SHOWN, UTF8_BOM
from digest.terminal import plural

# One document is at most what one SNS message can carry.
MAX_DOCUMENT_BYTES = MAX_BODY_BYTES


@click.group("feedback")
def feedback() -> None:
    """SES bounce, complaint and delivery feedback."""


@feedback.command("ingest")
@click.argument("source", type=click.File("rb"))
@click.option(
    "--transient-limit",
    type=click.IntRange(min=1),
    help="Transient bounces in a row that suppress an address (DIGEST_TRANSIENT_BOUNCE_LIMIT; 3).",
)
@click.pass_obj
def feedback_ingest(app: App, source: IO[bytes], transient_limit: int | None) -> None:
    """Apply SES events from FILE (or - for stdin): one JSON document, or JSON Lines.

    Each document is an SNS Notification envelope or a bare SES event, at most 256 KB,
    nested at most 64 deep, with no number over 100 characters, no NaN or Infinity, no NUL
    and no lone surrogate.

    All or nothing: the whole file is checked first, then applied in one transaction. A bad
    line, or one the database refuses, fails the command naming it (FILE:LINE: reason) and
    nothing is applied. Ingesting the same envelopes again changes nothing.
    """
    from sqlalchemy.exc import DataError, IntegrityError

    from digest.feedback.apply import ingest

    name = getattr(source, "name", None)
    name = name if isinstance(name, str) else "<stdin>"
    documents = parse_documents(source.read(), name)
    counts = {"new": 0, "replays": 0, "orphans": 0, "suppressed": 0}
    limit = transient_limit or app.settings.transient_bounce_limit
    with app.engine().begin() as conn:
        for number, document in documents:
            try:
                result = ingest(conn, document, transient_limit=limit)
            except (DataError, IntegrityError) as exc:
                first = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
                raise DigestError(
                    f"{name}:{number}: the database refused it: {first}; nothing was applied"
                ) from exc
            except FeedbackError as exc:
                raise DigestError(f"{name}:{number}: {exc}; nothing was applied") from None
            counts["replays" if result.replay else "new"] += 1
            counts["orphans"] += result.orphan
            counts["suppressed"] += len(result.suppressed)
    click.echo(
        f"{plural(len(documents), 'event')}: {counts['new']:,} new, "
        f"{counts['replays']:,} already seen, {counts['orphans']:,} unmatched, "
        f"{plural(counts['suppressed'], 'address', 'addresses')} suppressed"
    )


def parse_documents(data: bytes, source: str = "<input>") -> Sequence[tuple[int, Any]]:
    """(line number, document) for each JSON Lines line, or for a whole-file JSON document.

    Every document is checked here, as untrusted JSON and as an SES event; DigestError lists
    the bad lines as `SOURCE:LINE: reason`.
    """
    if data.startswith(UTF8_BOM):
        data = data[len(UTF8_BOM) :]
    try:
        content = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        where = data.count(b"\n", 0, exc.start) + 1
        raise DigestError(f"{source}:{where}: not valid UTF-8 (byte {exc.start + 1})") from None
    # Split on line feeds only: U+2028 and friends may sit inside a JSON string.
    lines = [(n, line.rstrip("\r")) for n, line in enumerate(content.split("\n"), start=1)]
    lines = [(n, line) for n, line in lines if line.strip()]
    if not lines:
        raise DigestError(f"{source}: no events in input")
    found: list[tuple[int, Any]] = []
    bad: list[tuple[int, str]] = []
    for index, (number, line) in enumerate(lines):
        try:
            found.append((number, _document(line)))
        except ValidationError as exc:
            if index == 0 and len(lines) > 1 and isinstance(exc, untrusted.NotJsonError):
                # Not JSON on its own: perhaps the file is one document over many lines.
                return [_whole(content, source, number)]
            bad.append((number, str(exc)))
    if bad:
        raise _bad(source, bad)
    return found


def _document(text: str) -> Any:
    """One document, checked as untrusted JSON and as an SES event (ValidationError if not)."""
    document = untrusted.loads(text, max_bytes=MAX_DOCUMENT_BYTES)
    parse_event(unwrap(document)[0])
    return document


def _whole(content: str, source: str, first: int) -> tuple[int, Any]:
    try:
        document = untrusted.loads(content, max_bytes=MAX_DOCUMENT_BYTES)
    except untrusted.NotJsonError as exc:
        reason = f"not valid JSON: {exc.msg} (column {exc.colno})"
        raise _bad(source, [(exc.lineno, reason)]) from None
    except untrusted.JsonError as exc:
        raise _bad(source, [(first, str(exc))]) from None
    if isinstance(document, list):
        raise _bad(source, [(first, "expected a JSON object per document, got an array")])
    try:
        parse_event(unwrap(document)[0])
    except FeedbackError as exc:
        raise _bad(source, [(first, str(exc))]) from None
    return first, document


def _bad(source: str, bad: list[tuple[int, str]]) -> DigestError:
    noun = "line" if len(bad) == 1 else "lines"
    shown = [f"{source}:{number}: {reason}" for number, reason in bad[:BAD_LINES_SHOWN]]
    more = [f"and {len(bad) - BAD_LINES_SHOWN} more"] if len(bad) > BAD_LINES_SHOWN else []
    return DigestError(
        "\n".join([f"{source}: {len(bad)} bad {noun}, nothing was applied", *shown, *more])
    )
