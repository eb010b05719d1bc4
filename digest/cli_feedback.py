"""`digest feedback ingest FILE|-`: SES feedback from a file, as the webhook would apply it.

Files are trusted operator input (an export, a replay from a queue): no signature check, but
strict parsing. The whole file is parsed before anything is applied, so a bad line changes
nothing and is reported with its line number. SNS envelopes keep their MessageId, so
ingesting the same file twice changes nothing the second time.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import IO, Any

import click

from digest.cli_data import AppContext
from digest.errors import DigestError
from digest.feedback import FeedbackError, ingest, parse_event, unwrap


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
def feedback_ingest(app: AppContext, source: IO[bytes], transient_limit: int | None) -> None:
    """Apply SES events from FILE (or - for stdin): one JSON document, or JSON Lines.

    Each document is an SNS Notification envelope or a bare SES event.
    """
    documents = parse_documents(source.read())
    counts = {"new": 0, "replays": 0, "orphans": 0, "suppressed": 0}
    engine = app.engine()
    limit = transient_limit or app.settings.transient_bounce_limit
    for _, document in documents:
        result = ingest(engine, document, transient_limit=limit)
        counts["replays" if result.replay else "new"] += 1
        counts["orphans"] += result.orphan
        counts["suppressed"] += len(result.suppressed)
    click.echo(
        f"{len(documents)} events: {counts['new']} new, {counts['replays']} already seen, "
        f"{counts['orphans']} unmatched, {counts['suppressed']} addresses suppressed"
    )


def parse_documents(data: bytes) -> Sequence[tuple[int, Any]]:
    """(line number, document) for a whole-file JSON document or each JSON Lines line.

    Every document is checked as an SES event here; DigestError names the first bad line.
    """
    try:
        content = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DigestError(f"input is not UTF-8 (byte {exc.start})") from None
    found: list[tuple[int, Any]] = []
    try:
        found.append((1, json.loads(content)))
    except json.JSONDecodeError as whole:
        for number, line in enumerate(content.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                found.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                # On the first document it may be one document over many lines: the whole
                # file's error then points at the right line.
                error = exc if found else whole
                where = number if found else whole.lineno
                raise DigestError(f"line {where}: not JSON: {error.msg}") from None
    if not found:
        raise DigestError("no events in input")
    if len(found) == 1 and isinstance(found[0][1], list):  # a JSON array of documents
        raise DigestError("line 1: expected a JSON object per document, got an array")
    for number, document in found:
        try:
            parse_event(unwrap(document)[0])
        except FeedbackError as exc:
            raise DigestError(f"line {number}: {exc}") from None
    return found
