"""Hostile import files (issue 5): `digest events import` and `digest recipients import`.

Files mix good lines with every kind of bad one: broken JSON, trailing garbage, values of
the wrong JSON type (user_id as an object, payload as a string or list, created_at as a
number or garbage), unknown fields with 100,000-character names, 70 KB and 100,000-bracket
lines, raw NUL bytes, invalid UTF-8, BOMs in the wrong place, lone surrogates, times that
PostgreSQL would store but Python could not read back; and the harmless oddities: a UTF-8
BOM at the start, CRLF (and, in CSV, bare CR) line ends, blank lines, no final line end.
The properties:

- all or nothing (the default): a file with bad lines fails with exit code 1 and
  `digest: error: FILE: N bad lines, nothing was imported (...)`, then `FILE:LINE: reason`
  for the first 20 bad lines in file order (`and K more` after), and nothing is written; a
  file without bad lines loads exactly its good lines;
- `--skip-bad`: exit 0, exactly the good lines land, each bad line is reported once as
  `digest: skipped FILE:LINE: reason`, and the summary counts them;
- never a traceback or an "unexpected" error, and every reported line stays short (a
  reason quotes at most ~60 characters of the input) whatever the line holds;
- CSV is read as a whole: a line that is not UTF-8 fails the file even with --skip-bad
  (a quoted cell may span lines, so a broken line cannot be skipped on its own);
- a user_id listed more than once (42 and "42" are the same user): the rows apply in file
  order, as if imported one after another, so each field ends with the value of the last
  row that gives it and a field no row gives keeps the stored value (or the default). That
  holds whatever the upsert batch size; it used not to (a repeat in the same batch of
  20,000 replaced the earlier row wholesale, a repeat in the next batch merged).
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text

from digest.channels.email.mime import validate_email
from digest.ingest import recipients as recipients_module
from digest.ingest.lines import UTF8_BOM
from digest.ingest.recipients import BATCH_ROWS, WEEKDAYS
from digest.terminal import plural

Invoke = Callable[..., Result]

FAST = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# A reported line holds the path, the line number and a reason that quotes at most ~60
# characters of the input: this is plenty.
REASON_LIMIT = 260


@dataclass(frozen=True)
class Line:
    """One line of an import file: its bytes (no line end) and, if bad, a piece of the
    reason it must be reported with. `bom_first`: a line that is only bad when it is not the
    first line of the file (a BOM is fine at the very start)."""

    data: bytes
    reason: str | None = None
    row: dict[str, Any] | None = None  # a good recipient row, as parsed
    bom_first: bool = False


def encode(value: object, *, ascii_only: bool = False) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only).encode()


# --- events ---------------------------------------------------------------------------------

PAYLOAD_TEXT = [
    "<script>alert(1)</script>",
    '" onmouseover="alert(1)',
    "{{#x}}{{/x}} {{{html}}} {{> partial}}",
    "javascript:alert(1)",
    "line\r\nbreak\u2028sep",
    "\u202eevil\u202c",
    "👨\u200d👩\u200d👧 🇵🇹 e\u0301",
    "مرحبا",
    "x" * 5000,
]
good_events = st.fixed_dictionaries(
    {
        "user_id": st.sampled_from(["u1", 42, "ü-ñ", "用户-7", "a" * 1000]),
        "category": st.sampled_from(["comment", "like", "post.liked", "x_y-z"]),
        "entity_type": st.sampled_from(["post", "фото", "album"]),
        "entity_id": st.sampled_from(["1", 2, "p/ü", "9" * 30]),
    },
    optional={
        "actor_id": st.sampled_from(["7", 8, None, "אנה"]),
        "payload": st.dictionaries(
            st.sampled_from(["title", "url", "excerpt", "actor_name", "{{title}}"]),
            st.one_of(
                st.sampled_from(PAYLOAD_TEXT),
                st.sampled_from([1e308, 2**80, -(2**63), 0.5, True, None, [1, [2]]]),
            ),
            max_size=4,
        )
        | st.none(),
        "created_at": st.sampled_from(
            [
                "2026-01-02T03:04:05Z",
                "2026-01-02T03:04:05+14:00",
                "2026-01-02T03:04:05.123456-12:00",
                "2026-01-02",
                "2026-01-02 03:04:05",
                None,
            ]
        ),
    },
).map(lambda event: Line(encode(event, ascii_only=len(str(event)) % 2 == 0)))

EVENT = {"user_id": "u1", "category": "comment", "entity_type": "post", "entity_id": "1"}


def bad_event(reason: str, **fields: Any) -> Line:
    return Line(encode({**EVENT, **fields}), reason)


BAD_EVENTS = [
    Line(b'{"user_id": "u1", ', "invalid JSON: Expecting property name"),
    Line(encode(EVENT) + b" trailing garbage", "invalid JSON: Extra data"),
    Line(encode(EVENT) + encode(EVENT), "invalid JSON: Extra data"),
    Line(b"garbage", "invalid JSON: Expecting value"),
    Line(b"[1, 2]", "an event must be a JSON object, got an array"),
    Line(b'"just a string"', "an event must be a JSON object, got a string"),
    Line(b"null", "an event must be a JSON object, got null"),
    Line(b"1e999", "an event must be a JSON object, got a number"),
    bad_event("user_id must be a string, got an object", user_id={"id": 1}),
    bad_event("user_id must be a string, got an array", user_id=[1]),
    bad_event("user_id must be a string, got a number", user_id=1.5),
    bad_event("user_id must be a string, got a boolean", user_id=True),
    bad_event("user_id is required", user_id=None),
    bad_event("user_id must not be empty", user_id=""),
    bad_event("user_id has leading or trailing whitespace", user_id=" 42"),
    bad_event("user_id contains a control character", user_id="a\nb"),
    bad_event("user_id contains a control character", user_id="a\u2028b"),
    bad_event("user_id contains a control character", user_id="a\x85b"),
    bad_event("user_id contains a byte order mark", user_id="\ufeff42"),
    bad_event("user_id is longer than 1000 characters", user_id="u" * 1001),
    bad_event("entity_id must be a string, got an object", entity_id={}),
    bad_event("category must be a name like", category="Bad Category"),
    bad_event("category must be a name like", category=5),
    bad_event("payload must be a JSON object, got a string", payload="x"),
    bad_event("payload must be a JSON object, got an array", payload=[1]),
    bad_event("payload must be a JSON object, got a number", payload=1),
    bad_event("payload must be a JSON object, got a boolean", payload=True),
    bad_event("payload is 70012 bytes serialized, over the 64 KB", payload={"t": "x" * 70_004}),
    bad_event("payload contains a NUL character", payload={"t": "a\x00b"}),
    Line(encode(EVENT)[:-1] + b', "payload": {"n": NaN}}', "payload is not valid JSON"),
    Line(
        encode(EVENT)[:-1] + b', "payload": {"n": ' + b"1" * 5000 + b"}}",
        "invalid JSON: Exceeds the limit (4300 digits)",
    ),
    Line(b"[" * 100_000, "invalid JSON: maximum recursion depth"),
    bad_event("created_at must be an ISO 8601 time", created_at="yesterday"),
    bad_event("created_at must be an ISO 8601 time", created_at="2026-13-01"),
    bad_event("created_at must be an ISO 8601 string, got a number", created_at=1_700_000_000),
    bad_event("created_at must be between 1970-01-01", created_at="0001-01-01T00:00:00+14:00"),
    bad_event("created_at must be between 1970-01-01", created_at="9999-12-31T23:59:59-14:00"),
    bad_event("unknown field 'kkkkkkkk", **{"k" * 100_000: 1}),
    bad_event("unknown field 'a', 'b', 'c' and 2 more", a=1, b=2, c=3, d=4, e=5),
    Line(b'{"user_id": "u\x00"}', "invalid JSON: Invalid control character"),
    Line(b"\x00", "invalid JSON: Expecting value"),
    Line(b"\xff\xfe{}", "not valid UTF-8 (byte 1)"),
    Line(b'{"user_id": "\xc3\x28"}', "not valid UTF-8 (byte 14)"),
    Line(encode(EVENT).replace(b'"u1"', b'"\\ud800"'), "user_id is not valid Unicode"),
    Line(UTF8_BOM + encode(EVENT), "BOM", bom_first=True),
    Line(b'{"a": 1}\r{"b": 2}', "bare CR line ends? use LF or CRLF"),
]
BLANK = [Line(b""), Line(b"   "), Line(b"\t")]


# --- recipients -----------------------------------------------------------------------------

USER_IDS = ["1", 1, "2", "ü", "a-b"]  # 1 and "1" are the same user
EMAILS = ["a@example.com", "B@Example.ORG", "c@bücher.example"]
NAMES = ["<script>alert(1)</script>", 'O\'Brien, "Jr"', "مرحبا", "👍🏽 Zoë", "  padded  ", ""]
good_recipient_rows = st.fixed_dictionaries(
    {"user_id": st.sampled_from(USER_IDS), "email": st.sampled_from(EMAILS)},
    optional={
        "name": st.sampled_from([*NAMES, None]),
        "cadence": st.sampled_from(["daily", "weekly", "off", " Weekly "]),
        "timezone": st.sampled_from(["UTC", "Europe/Lisbon", "Asia/Kathmandu", " Etc/GMT-14"]),
        "send_hour": st.sampled_from([0, 23, "7", 8]),
        "weekly_day": st.sampled_from([1, 7, "mon", "Sunday", "3"]),
        "locale": st.sampled_from(["en", "pt-BR", "zh_Hant_TW"]),
    },
)


def person(**fields: Any) -> dict[str, Any]:
    return {"user_id": "9", "email": "x@example.com", **fields}


BAD_RECIPIENTS: list[tuple[dict[str, Any], str]] = [
    ({"user_id": {"a": 1}, "email": "x@example.com"}, "user_id must be a string, got an object"),
    (person(user_id=1.5), "user_id must be a string, got a number"),
    (person(user_id=True), "user_id must be a string, got a boolean"),
    ({"email": "x@example.com"}, "user_id is required"),
    (person(user_id="\ufeff9"), "user_id contains a byte order mark"),
    ({"user_id": "9"}, "email is required"),
    (person(email=5), "email must be a string"),
    (person(email="not-an-email"), "invalid email address 'not-an-email'"),
    (person(email="x@example.com\r\nBcc: y@example.com"), "invalid email address"),
    (person(email="x" * 100_000 + "@example.com"), "email address is longer than 254"),
    (person(name="Ana\r\nBcc: y@example.com"), "name contains a line break"),
    (person(name="Ana\u2028Bcc: y@example.com"), "name contains a line break"),
    (person(name="An\x85a"), "name contains a line break"),
    (person(name="=?utf-8?q?=0D=0ABcc:_y@example.com?="), "name looks like MIME-encoded text"),
    (person(name=["Ana"]), "name must be a string"),
    (person(name="n" * 1001), "name is longer than 1000"),
    (person(cadence="hourly"), "cadence must be one of daily, weekly, off"),
    (person(cadence=1), "cadence must be one of"),
    (person(timezone="Mars/Olympus"), "unknown time zone 'Mars/Olympus'"),
    (person(timezone="../../etc/passwd"), "unknown time zone"),
    (person(timezone=5), "unknown time zone 5"),
    (person(send_hour=24), "send_hour must be a whole number from 0 to 23, got 24"),
    (person(send_hour=True), "send_hour must be a whole number"),
    (person(send_hour="7.5"), "send_hour must be a whole number"),
    (person(send_hour=-1), "send_hour must be a whole number"),
    (person(weekly_day=0), "weekly_day must be 1-7 (Monday=1)"),
    (person(weekly_day="someday"), "weekly_day must be 1-7"),
    (person(locale="english!"), "locale must look like"),
    (person(**{"c" * 100_000: 1}), "unknown field 'cccccc"),
]
BAD_RECIPIENT_LINES = [
    *(Line(encode(row), reason) for row, reason in BAD_RECIPIENTS),
    Line(b'{"user_id": "9", "email": ', "invalid JSON"),
    Line(encode(person()) + b"garbage", "invalid JSON: Extra data"),
    Line(b'["9", "x@example.com"]', "a recipient must be a JSON object"),
    Line(b"\xff", "not valid UTF-8"),
    Line(b'{"user_id": "9\x00"}', "invalid JSON"),
    Line(UTF8_BOM + encode(person()), "BOM", row=person(), bom_first=True),
]


def normalised(row: dict[str, Any]) -> dict[str, Any]:
    """The fields a valid recipient row gives, as they are stored."""
    out: dict[str, Any] = {"email": validate_email(row["email"])}
    for name, value in row.items():
        if value is None and name != "name":
            continue
        if name == "name":
            out[name] = (value or "").strip() or None
        elif name in ("cadence", "timezone", "locale"):
            out[name] = value.strip().lower() if name == "cadence" else value.strip()
        elif name == "send_hour":
            out[name] = int(value)
        elif name == "weekly_day":
            out[name] = WEEKDAYS.get(str(value).lower(), None) or int(value)
    return out


DEFAULTS = {
    "name": None,
    "cadence": "daily",
    "timezone": "UTC",
    "send_hour": 8,
    "weekly_day": 1,
    "locale": "en",
}


def expected_recipients(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The model: rows apply in order; a field a row leaves out keeps its value."""
    stored: dict[str, dict[str, Any]] = {}
    for row in rows:
        user = str(row["user_id"])
        stored[user] = {**stored.get(user, DEFAULTS), **normalised(row)}
    return stored


# --- files and runs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class File:
    path: Path
    good: list[Line]  # in file order
    bad: list[tuple[int, Line]]  # (line number, line) in file order


def write(
    directory: Path, suffix: str, lines: list[Line], ends: list[bytes], bom: bool, last_end: bool
) -> File:
    """`lines` joined with `ends` (cycled), with a BOM first if `bom`; which are good or bad."""
    path = directory / f"{uuid.uuid4().hex}{suffix}"
    body = b""
    good: list[Line] = []
    bad: list[tuple[int, Line]] = []
    for number, line in enumerate(lines, 1):
        data = (UTF8_BOM if bom and number == 1 else b"") + line.data
        body += data + (ends[number % len(ends)] if number < len(lines) or last_end else b"")
        is_bad = line.reason is not None and not (line.bom_first and number == 1 and not bom)
        if is_bad:
            bad.append((number, line))
        elif line.data.strip() or line.row is not None:
            good.append(line)
    path.write_bytes(body)
    return File(path, good, bad)


def assert_clean_exit(result: Result, path: Path) -> None:
    """No traceback, no "unexpected" error, every line of output short."""
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    for line in (result.stdout + result.stderr).splitlines():
        assert "Traceback" not in line
        assert "unexpected" not in line
        assert len(line) <= len(str(path)) + REASON_LIMIT, line[:300]


def reported(stderr: str, prefix: str) -> Iterator[tuple[int, str]]:
    """(line number, reason) of each `prefix FILE:N: reason` line."""
    for line in stderr.splitlines():
        if line.startswith(prefix):
            number, _, reason = line[len(prefix) :].partition(": ")
            yield int(number), reason


def check_all_or_nothing(result: Result, file: File, stored: int) -> None:
    """Exit 1 naming the first 20 bad lines and nothing stored, or exit 0 and all stored."""
    assert_clean_exit(result, file.path)
    if not file.bad:
        assert result.exit_code == 0, result.output
        assert stored == len(file.good)
        return
    assert result.exit_code == 1
    noun = "line" if len(file.bad) == 1 else "lines"
    first, *rest = result.stderr.splitlines()
    assert first == (
        f"digest: error: {file.path}: {len(file.bad)} bad {noun}, nothing was imported "
        "(fix them, or use --skip-bad to import the good lines)"
    )
    listed = list(reported("\n".join(rest), f"{file.path}:"))
    assert [n for n, _ in listed] == [n for n, _ in file.bad[:20]]
    for (_, reason), (_, line) in zip(listed, file.bad, strict=False):
        assert line.reason is not None
        assert line.reason in reason, (line.reason, reason)
    if len(file.bad) > 20:
        assert rest[-1] == f"and {len(file.bad) - 20} more"
    assert stored == 0


def check_skip_bad(result: Result, file: File, stored: int) -> None:
    """Exit 0, every good line stored, every bad line reported once, in order."""
    assert_clean_exit(result, file.path)
    assert result.exit_code == 0, result.output
    skipped = list(reported(result.stderr, f"digest: skipped {file.path}:"))
    assert [n for n, _ in skipped] == [n for n, _ in file.bad]
    for (_, reason), (_, line) in zip(skipped, file.bad, strict=True):
        assert line.reason is not None
        assert line.reason in reason, (line.reason, reason)
    if file.bad:
        assert f"{plural(len(file.bad), 'bad line')} skipped" in result.stdout
    else:
        assert "skipped" not in result.stdout
    assert stored == len(file.good)


def reset(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE digest_events, recipients RESTART IDENTITY CASCADE"))


def count(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def stored_recipients(engine: Engine) -> dict[str, dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT user_id, email, name, cadence, timezone, send_hour, weekly_day, locale"
                " FROM recipients"
            )
        ).mappings()
        return {row["user_id"]: {k: v for k, v in row.items() if k != "user_id"} for row in rows}


line_ends = st.lists(st.sampled_from([b"\n", b"\r\n"]), min_size=1, max_size=2)


# --- events: the properties --------------------------------------------------------------------


@FAST
@given(
    lines=st.lists(
        st.one_of(good_events, st.sampled_from(BAD_EVENTS), st.sampled_from(BLANK)), max_size=30
    ),
    ends=line_ends,
    bom=st.booleans(),
    last_end=st.booleans(),
)
def test_events_import_is_all_or_nothing_and_skip_bad_keeps_the_good(
    digest_cli: Invoke,
    engine: Engine,
    tmp_path: Path,
    lines: list[Line],
    ends: list[bytes],
    bom: bool,
    last_end: bool,
) -> None:
    """Any mix of good, bad and blank lines, any line ends, with or without a BOM."""
    file = write(tmp_path, ".jsonl", lines, ends, bom, last_end)
    reset(engine)
    result = digest_cli("events", "import", str(file.path))
    check_all_or_nothing(result, file, count(engine, "digest_events"))
    reset(engine)
    result = digest_cli("events", "import", "--skip-bad", str(file.path))
    check_skip_bad(result, file, count(engine, "digest_events"))
    assert f"/s): {len(file.good):,} new, 0 already there" in result.stdout


def test_every_bad_event_line_is_named_with_its_reason(
    digest_cli: Invoke, engine: Engine, tmp_path: Path
) -> None:
    """Each kind of bad line, in one CRLF file with a BOM: all named, in order, and then
    the good lines load with --skip-bad."""
    lines = [Line(encode(EVENT)), *BAD_EVENTS, Line(encode(EVENT))]
    file = write(tmp_path, ".jsonl", lines, [b"\r\n"], bom=True, last_end=True)
    assert len(file.bad) == len(BAD_EVENTS)
    result = digest_cli("events", "import", str(file.path))
    check_all_or_nothing(result, file, count(engine, "digest_events"))
    result = digest_cli("events", "import", "--skip-bad", str(file.path))
    check_skip_bad(result, file, count(engine, "digest_events"))


def test_a_stored_event_time_can_always_be_read_back(
    digest_cli: Invoke, engine: Engine, tmp_path: Path
) -> None:
    """The earliest and latest accepted times load and read back (year 1 at +14:00 used to
    be stored as 1 BC and break every later read of the user's events), with a clock skew
    allowed beyond year 9999."""
    times = ["1970-01-01T00:00:00Z", "9998-12-31T09:59:59-14:00", "1970-01-01T13:59:59+14:00"]
    path = tmp_path / "edges.jsonl"
    path.write_bytes(b"\n".join(encode({**EVENT, "created_at": t}) for t in times))
    skew = {"DIGEST_MAX_CLOCK_SKEW": str(10_000 * 366 * 86_400)}
    result = digest_cli("events", "import", str(path), env=skew)
    assert result.exit_code == 1  # the last one is 1969 in UTC
    assert f"{path}:3: created_at must be between 1970-01-01 and 9999-01-01" in result.stderr
    result = digest_cli("events", "import", "--skip-bad", str(path), env=skew)
    assert result.exit_code == 0, result.output
    with engine.connect() as conn:
        years = conn.execute(text("SELECT created_at FROM digest_events ORDER BY id")).scalars()
        assert [t.year for t in years] == [1970, 9998]  # read back: no DataError


# --- recipients: the properties ----------------------------------------------------------------


def recipient_line(row: dict[str, Any]) -> Line:
    return Line(encode(row, ascii_only=len(str(row)) % 2 == 0), row=row)


@FAST
@given(
    lines=st.lists(
        st.one_of(
            good_recipient_rows.map(recipient_line),
            st.sampled_from(BAD_RECIPIENT_LINES),
            st.sampled_from(BLANK),
        ),
        max_size=25,
    ),
    ends=line_ends,
    bom=st.booleans(),
    last_end=st.booleans(),
    batch_rows=st.sampled_from([1, 2, 3, BATCH_ROWS]),
)
def test_recipients_jsonl_import(
    digest_cli: Invoke,
    engine: Engine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    lines: list[Line],
    ends: list[bytes],
    bom: bool,
    last_end: bool,
    batch_rows: int,
) -> None:
    """All or nothing, --skip-bad, and repeated user ids folded in file order, whatever the
    upsert batch size."""
    monkeypatch.setattr(recipients_module, "BATCH_ROWS", batch_rows)
    file = write(tmp_path, ".jsonl", lines, ends, bom, last_end)
    rows = [line.row for line in file.good if line.row is not None]
    expected = expected_recipients(rows)
    reset(engine)
    result = digest_cli("recipients", "import", str(file.path))
    check_all_or_nothing(result, replace_good(file, expected), count(engine, "recipients"))
    if not file.bad:
        assert stored_recipients(engine) == expected
    reset(engine)
    result = digest_cli("recipients", "import", "--skip-bad", str(file.path))
    check_skip_bad(result, replace_good(file, expected), count(engine, "recipients"))
    assert stored_recipients(engine) == expected
    assert f"{plural(len(rows), 'recipient')} in" in result.stdout
    assert f"{len(expected):,} created" in result.stdout


def replace_good(file: File, expected: dict[str, Any]) -> File:
    """`file` with one good line per distinct user: what the recipients table counts."""
    return File(file.path, [Line(b"x")] * len(expected), file.bad)


CSV_HEADER = ["user_id", "email", "name", "cadence", "timezone", "send_hour", "weekly_day"]
CSV_HEADER += ["locale"]


def csv_line(cells: Sequence[object]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(cells)
    return out.getvalue().encode()


def csv_good(row: dict[str, Any]) -> Line:
    """A good row as a CSV line: a missing field, or a null name, is an empty cell."""
    cells = ["" if row.get(c) is None else row[c] for c in CSV_HEADER]
    # An empty or blank cell means "not given": the model must see the same.
    given = {c: row[c] for c in CSV_HEADER if row.get(c) is not None and str(row[c]).strip()}
    return Line(csv_line(cells), row=given)


def csv_bad(reason: str, **fields: object) -> Line:
    row: dict[str, object] = {"user_id": "9", "email": "x@example.com", **fields}
    return Line(csv_line([row.get(c, "") for c in CSV_HEADER]), reason)


BAD_CSV_LINES = [
    csv_bad("user_id contains a control character", user_id="9\x85x"),
    csv_bad("user_id contains a byte order mark", user_id="\ufeff9"),
    csv_bad("email is required", email=""),
    csv_bad("user_id is required", user_id=" "),
    csv_bad("invalid email address 'not-an-email'", email="not-an-email"),
    csv_bad("email address is longer than 254", email="x" * 100_000 + "@example.com"),
    csv_bad("name contains a line break", name="Ana\u2028Bcc: y@example.com"),
    csv_bad("name looks like MIME-encoded text", name="=?utf-8?q?=0D=0ABcc:_y@example.com?="),
    csv_bad("cadence must be one of daily, weekly, off", cadence="hourly"),
    csv_bad("unknown time zone 'Mars/Olympus'", timezone="Mars/Olympus"),
    csv_bad("send_hour must be a whole number from 0 to 23, got '24'", send_hour=24),
    csv_bad("send_hour must be a whole number", send_hour="7.5"),
    csv_bad("weekly_day must be 1-7 (Monday=1)", weekly_day="someday"),
    csv_bad("locale must look like", locale="english!"),
    Line(b"9,x@example.com", "has 2 fields, the header has 8"),
    Line(b"9,x@example.com,,,,,,,extra", "has 9 fields, the header has 8"),
    Line(b"9,x@exa\x00mple.com,,,,,,", "invalid email address"),
    Line(b"9,x@example.com,An\x00a,,,,,", "name contains a line break or control character"),
    Line(b"9,x@example.com," + b"n" * 200_000 + b",,,,,", "bad CSV: field larger than field limit"),
]


@FAST
@given(
    lines=st.lists(
        st.one_of(
            good_recipient_rows.map(csv_good), st.sampled_from(BAD_CSV_LINES), st.just(Line(b""))
        ),
        max_size=25,
    ),
    ends=st.lists(st.sampled_from([b"\n", b"\r\n", b"\r"]), min_size=1, max_size=1),
    bom=st.booleans(),
    last_end=st.booleans(),
    batch_rows=st.sampled_from([1, 2, BATCH_ROWS]),
)
def test_recipients_csv_import(
    digest_cli: Invoke,
    engine: Engine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    lines: list[Line],
    ends: list[bytes],
    bom: bool,
    last_end: bool,
    batch_rows: int,
) -> None:
    """The same for CSV: LF, CRLF or bare-CR ("CSV (Macintosh)") files, with or without a
    BOM before the header; line numbers count the header as line 1."""
    monkeypatch.setattr(recipients_module, "BATCH_ROWS", batch_rows)
    file = write(tmp_path, ".csv", [Line(csv_line(CSV_HEADER)), *lines], ends, bom, last_end)
    file = File(file.path, file.good[1:], file.bad)  # the header is not a row
    rows = [line.row for line in file.good if line.row is not None]
    expected = expected_recipients(rows)
    reset(engine)
    result = digest_cli("recipients", "import", str(file.path))
    check_all_or_nothing(result, replace_good(file, expected), count(engine, "recipients"))
    reset(engine)
    result = digest_cli("recipients", "import", "--skip-bad", str(file.path))
    check_skip_bad(result, replace_good(file, expected), count(engine, "recipients"))
    assert stored_recipients(engine) == expected


def test_every_bad_recipient_line_is_named_with_its_reason(
    digest_cli: Invoke, engine: Engine, tmp_path: Path
) -> None:
    """Each kind of bad recipient line in one file: all named, in order."""
    good = recipient_line({"user_id": "ok", "email": "ok@example.com"})
    lines = [good, *BAD_RECIPIENT_LINES, good]
    file = write(tmp_path, ".jsonl", lines, [b"\r\n"], bom=True, last_end=False)
    assert len(file.bad) == len(BAD_RECIPIENT_LINES)
    result = digest_cli("recipients", "import", str(file.path))
    check_all_or_nothing(result, replace_good(file, {"ok": 1}), count(engine, "recipients"))
    result = digest_cli("recipients", "import", "--skip-bad", str(file.path))
    check_skip_bad(result, replace_good(file, {"ok": 1}), count(engine, "recipients"))


@pytest.mark.parametrize("skip_bad", [False, True])
def test_csv_with_invalid_utf8_fails_as_a_whole(
    digest_cli: Invoke, engine: Engine, tmp_path: Path, skip_bad: bool
) -> None:
    """Invalid UTF-8 in a CSV fails the file, naming the line, even with --skip-bad;
    nothing is written (not even the rows before it)."""
    path = tmp_path / "people.csv"
    path.write_bytes(
        b"user_id,email\r\n1,a@example.com\r\n2,b@exa\xffmple.com\r\n3,c@example.com\r\n"
    )
    result = digest_cli("recipients", "import", *(["--skip-bad"] if skip_bad else []), str(path))
    assert_clean_exit(result, path)
    assert result.exit_code == 1
    assert result.stderr == f"digest: error: {path}:3: not valid UTF-8 (byte 8)\n"
    assert count(engine, "recipients") == 0


def test_repeated_user_ids_fold_the_same_in_one_batch_or_several(
    digest_cli: Invoke, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """42 and "42" are one user; its rows apply in order, each field ends with the last
    value given for it, whether the repeats share an upsert batch or not."""
    rows = [
        {"user_id": 42, "email": "first@example.com", "cadence": "off", "name": "Ana"},
        {"user_id": "42", "email": "second@example.com", "timezone": "Asia/Tokyo"},
        {"user_id": 42, "email": "last@example.com", "name": None},
    ]
    path = tmp_path / "people.jsonl"
    path.write_bytes(b"\n".join(encode(r) for r in rows))
    results = {}
    for batch_rows in (BATCH_ROWS, 1):
        monkeypatch.setattr(recipients_module, "BATCH_ROWS", batch_rows)
        reset(engine)
        result = digest_cli("recipients", "import", str(path))
        assert result.exit_code == 0, result.output
        assert "3 recipients in" in result.stdout
        results[batch_rows] = stored_recipients(engine)
    assert results[1] == results[BATCH_ROWS]
    assert results[1] == {
        "42": {
            "email": "last@example.com",
            "name": None,  # given as null by the last row: no name
            "cadence": "off",  # from the first row: no later row gives a cadence
            "timezone": "Asia/Tokyo",
            "send_hour": 8,
            "weekly_day": 1,
            "locale": "en",
        }
    }


def test_bare_cr_csv_from_excel_for_mac(digest_cli: Invoke, engine: Engine, tmp_path: Path) -> None:
    """A "CSV (Macintosh)" file ends lines with a bare CR; it imports like any other."""
    path = tmp_path / "mac.csv"
    path.write_bytes(b'user_id,email,name\r1,a@example.com,Ana\r2,b@example.com,"Ben, Jr"\r')
    result = digest_cli("recipients", "import", str(path))
    assert result.exit_code == 0, result.output
    assert stored_recipients(engine)["2"]["name"] == "Ben, Jr"
    assert sorted(stored_recipients(engine)) == ["1", "2"]
