"""Logs are data: a fact is a record with named fields, rendered as key=value text for people
or as one JSON object per line for machines; secrets are never written."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator

import pytest

from digest import logs

LOGGER = "digest.test_logs"


@pytest.fixture
def captured() -> Iterator[list[logging.LogRecord]]:
    """Every record logged to LOGGER during the test, as the handlers would get it."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger(LOGGER)
    handler = Keep(logging.DEBUG)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)


def outcome(reason: str | None = None) -> None:
    log = logging.getLogger(LOGGER)
    if reason is None:
        logs.event(
            log,
            "run_outcome",
            run_id=7,
            user_id="ana",
            status="sent",
            attempt=1,
            events=3,
            duration_ms=12.5,
        )
    else:
        logs.event(
            log,
            "run_outcome",
            run_id=7,
            user_id="ana",
            status="sent",
            attempt=1,
            events=3,
            duration_ms=12.5,
            reason=reason,
        )


def test_an_event_carries_its_fields_on_the_record(captured: list[logging.LogRecord]) -> None:
    """`logs.event` puts the event name and each field on the record, in call order."""
    outcome()
    [record] = captured
    assert record.levelno == logging.INFO
    assert record.__dict__["event"] == "run_outcome"
    assert logs.fields(record) == {
        "run_id": 7,
        "user_id": "ana",
        "status": "sent",
        "attempt": 1,
        "events": 3,
        "duration_ms": 12.5,
    }
    assert record.funcName == "outcome"  # the call site, not the helper


def test_text_keeps_the_key_value_look(captured: list[logging.LogRecord]) -> None:
    """Text is `event k=v …` after the usual time, pid, level and logger; odd strings quoted."""
    outcome(reason="550 no such user\x1b[2J")
    line = logs.TextFormatter().format(captured[0])
    assert line.endswith(
        f" {os.getpid()} INFO {LOGGER} run_outcome run_id=7 user_id=ana status=sent attempt=1 "
        "events=3 duration_ms=12.5 reason='550 no such user\\x1b[2J'"
    )


def test_json_is_one_object_per_line_with_its_fields(captured: list[logging.LogRecord]) -> None:
    """JSON: ts, level, logger, pid, event, then the fields with their types, on one line."""
    outcome(reason="line one\nline two")
    line = logs.JsonFormatter().format(captured[0])
    assert "\n" not in line
    data = json.loads(line)
    assert list(data)[:5] == ["ts", "level", "logger", "pid", "event"]
    assert data["ts"].endswith("Z")
    assert (data["level"], data["logger"], data["pid"]) == ("INFO", LOGGER, os.getpid())
    assert {k: v for k, v in data.items() if k not in ("ts", "level", "logger", "pid")} == {
        "event": "run_outcome",
        "run_id": 7,
        "user_id": "ana",
        "status": "sent",
        "attempt": 1,
        "events": 3,
        "duration_ms": 12.5,
        "reason": "line one\nline two",
    }


def test_plain_messages_and_tracebacks_fit_both_formats(
    captured: list[logging.LogRecord],
) -> None:
    """A record logged without an event keeps its message; a traceback stays in its record."""
    log = logging.getLogger(LOGGER)
    log.info("stopping on %s", "SIGTERM", extra={"color_message": "\x1b[1mnoise"})
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logs.exception(log, "run_error", run_id=9)
    plain, failed = (json.loads(logs.JsonFormatter().format(r)) for r in captured)
    assert plain["message"] == "stopping on SIGTERM"
    assert "event" not in plain
    assert "color_message" not in plain  # others' extras stay out
    assert (failed["event"], failed["run_id"], failed["level"]) == ("run_error", 9, "ERROR")
    assert "RuntimeError: boom" in failed["exception"]
    text = logs.TextFormatter().format(captured[1])
    assert "run_error run_id=9\nTraceback" in text


def test_secret_fields_are_never_written(captured: list[logging.LogRecord]) -> None:
    """A field named like a password, token or secret is redacted in text and JSON alike."""
    log = logging.getLogger(LOGGER)
    logs.event(log, "oops", smtp_password="hunter2", token="abc.def", secret_key="k3y", user="x")
    [record] = captured
    for line in (logs.TextFormatter().format(record), logs.JsonFormatter().format(record)):
        assert not [secret for secret in ("hunter2", "abc.def", "k3y") if secret in line]
    data = json.loads(logs.JsonFormatter().format(record))
    assert data["smtp_password"] == data["token"] == data["secret_key"] == "[redacted]"
    assert data["user"] == "x"


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_setup_writes_the_chosen_format(fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`setup` sends records at or above the level to the stream, in the chosen format."""
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", root.level)
    stream = io.StringIO()
    logs.setup("WARNING", fmt, stream=stream)
    log = logging.getLogger(LOGGER)
    logs.event(log, "heartbeat_missed", runs=2)
    logs.event(log, "heartbeat_missed", logging.WARNING, runs=3)
    [line] = stream.getvalue().splitlines()
    if fmt == "json":
        assert (json.loads(line)["event"], json.loads(line)["runs"]) == ("heartbeat_missed", 3)
    else:
        assert line.endswith("WARNING digest.test_logs heartbeat_missed runs=3")


def test_read_takes_the_json_lines_and_skips_the_rest() -> None:
    """`logs.read` gives each JSON record of a process's output, ignoring any other line."""
    output = (
        '{"event": "run_outcome", "run_id": 1}\n'
        "Traceback (most recent call last):\n"
        '  File "x.py", line 1, in <module>\n'
        "{not json\n"
        '{"message": "stopping on SIGTERM"}\n'
    )
    assert list(logs.read(output)) == [
        {"event": "run_outcome", "run_id": 1},
        {"message": "stopping on SIGTERM"},
    ]
