"""Logs as data: a fact is a record with an event name and named fields, written as
`key=value` text for people or as one JSON object per line for machines (DIGEST_LOG_FORMAT).

A call site names its event and fields, `event(log, "run_outcome", run_id=7, …)`; the
fields ride on the stdlib LogRecord (`extra=`), so tests read `record.run_id` and the chaos
harness reads the JSON keys, never a message's wording.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import IO, Any

from digest.config import LOG_FORMATS

TEXT_LAYOUT = "%(asctime)s %(process)d %(levelname)s %(name)s %(message)s"

# A field whose name says it holds a secret is never written, whatever a call site passes.
SECRET_NAME = re.compile(r"password|secret|token|credential", re.IGNORECASE)
REDACTED = "[redacted]"
# Text values written bare; anything else (spaces, quotes, control characters) is repr()'d,
# which escapes every control and bidi character, so a server's reply cannot drive a
# terminal or forge a line.
_BARE = re.compile(r"[\w.,:;/@+\-]+")
# What every LogRecord has of its own: anything else on a record came through `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "event",
}


def event(logger: logging.Logger, name: str, level: int = logging.INFO, /, **fields: Any) -> None:
    """Log the fact `name` at `level` with its `fields` as structured data on the record."""
    if logger.isEnabledFor(level):
        logger.log(level, name, extra={"event": name, **fields}, stacklevel=2)


def exception(logger: logging.Logger, name: str, /, **fields: Any) -> None:
    """`event` at ERROR with the traceback of the exception being handled."""
    logger.error(name, exc_info=True, extra={"event": name, **fields}, stacklevel=2)


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields of an event record, in the order the call site gave them."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


def events(records: Iterable[logging.LogRecord], name: str) -> list[dict[str, Any]]:
    """The fields of each record of event `name`, in order (what a test reads)."""
    return [fields(r) for r in records if r.__dict__.get("event") == name]


def _visible(name: str, value: object) -> object:
    return REDACTED if SECRET_NAME.search(name) else value


def _text(value: object) -> str:
    if isinstance(value, str):
        return value if _BARE.fullmatch(value) else repr(str(value))
    return str(value)


class TextFormatter(logging.Formatter):
    """`time pid LEVEL logger event k=v …`: an event's fields after its name, or the
    message of a record logged without one."""

    def __init__(self) -> None:
        super().__init__(TEXT_LAYOUT)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (stdlib name)
        name = record.__dict__.get("event")
        if isinstance(name, str):
            pairs = (f"{k}={_text(_visible(k, v))}" for k, v in fields(record).items())
            record.message = " ".join((name, *pairs))
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per record on one line: ts (UTC), level, logger, pid, then the event
    and its fields, or the message; a traceback as `exception`."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        data: dict[str, object] = {
            "ts": ts.replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
        }
        name = record.__dict__.get("event")
        if isinstance(name, str):
            data["event"] = name
            for key, value in fields(record).items():
                data.setdefault(key, _visible(key, value))
        else:
            data["message"] = record.getMessage()
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            data["stack"] = self.formatStack(record.stack_info)
        # default=str: a Path or a datetime becomes its text rather than failing the line
        return json.dumps(data, default=str)


def formatter(fmt: str) -> logging.Formatter:
    """The formatter for DIGEST_LOG_FORMAT `fmt` (`text` or `json`)."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"unknown log format {fmt!r}")
    return JsonFormatter() if fmt == "json" else TextFormatter()


def setup(level: int | str, fmt: str, *, stream: IO[str] | None = None) -> None:
    """Write records from `level` up to stderr (or `stream`) in `fmt`; for the CLI and each
    worker process, once. Does nothing where logging is already set up (as under pytest)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter(fmt))
    logging.basicConfig(level=level, handlers=[handler])


def read(output: str) -> Iterator[dict[str, Any]]:
    """The JSON records in a process's output, skipping every line that is not one (a
    traceback, a command's own summary)."""
    for line in output.splitlines():
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            yield record
