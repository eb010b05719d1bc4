"""Producer side: validate notification events and store them, one at a time or in bulk by COPY.

Validation is the same for the Python API and for `digest events import`, and happens here,
at the boundary, so that the database only ever sees rows it accepts.
"""

from __future__ import annotations

import enum
import functools
import json
import os
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from typing import Any, Final, Literal, TypeAlias, TypeVar

import orjson
import psycopg
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from digest.config import Settings
from digest.db import raw
from digest.errors import DigestError, ValidationError

MAX_TEXT: Final = 1000
MAX_PAYLOAD_BYTES: Final = 64 * 1024
CATEGORY_PATTERN: Final = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
# C0 and C1 controls and the Unicode line/paragraph separators: line breaks in all but name.
_CONTROL: Final = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
EVENT_FIELDS: Final = (
    "user_id",
    "category",
    "entity_type",
    "entity_id",
    "actor_id",
    "payload",
    "created_at",
    "event_key",
)
_EVENT_FIELD_SET: Final = frozenset(EVENT_FIELDS)
# Rows flow through COPY in chunks: memory stays flat however long the input is.
CHUNK_ROWS: Final = 20_000
# How many bad lines an all-or-nothing failure lists (the rest are counted).
BAD_LINES_SHOWN: Final = 20
UTF8_BOM: Final = b"\xef\xbb\xbf"
# created_at must fall in this range: anything PostgreSQL and Python can both read back.
EARLIEST: Final = datetime(1970, 1, 1, tzinfo=UTC)
LATEST: Final = datetime(9999, 1, 1, tzinfo=UTC)

EVENT_INSERT = text(
    """
    INSERT INTO digest_events
           (user_id, category, entity_type, entity_id, actor_id, payload, created_at, event_key)
    VALUES (:user_id, :category, :entity_type, :entity_id, :actor_id, CAST(:payload AS jsonb),
            COALESCE(CAST(:created_at AS timestamptz), now()), :event_key)
    ON CONFLICT (user_id, event_key) WHERE event_key IS NOT NULL DO NOTHING
    RETURNING id
    """
)
TRANSACTION_NOW = text("SELECT now()")
# ON COMMIT DROP: nothing is left behind on a pooled connection, even after a rollback.
EVENT_STAGE_CREATE = text(
    """
    CREATE TEMP TABLE IF NOT EXISTS digest_events_stage (
        user_id text, category text, entity_type text, entity_id text, actor_id text,
        payload jsonb, created_at timestamptz, event_key text
    ) ON COMMIT DROP
    """
)
# TRUNCATE, not DELETE: temp tables are never autovacuumed, dead rows would pile up.
EVENT_STAGE_TRUNCATE = text("TRUNCATE digest_events_stage")
EVENT_INSERT_FROM_STAGE: Final = """
    INSERT INTO digest_events
           (user_id, category, entity_type, entity_id, actor_id, payload, created_at, event_key)
    SELECT user_id, category, entity_type, entity_id, actor_id, payload, created_at, event_key
      FROM digest_events_stage
    ON CONFLICT (user_id, event_key) WHERE event_key IS NOT NULL DO NOTHING
    """
# Pipeline mode needs libpq 14 or later (the psycopg[binary] wheels bundle one).
PIPELINE: Final = psycopg.Pipeline.is_supported()
_COLUMNS = "user_id, category, entity_type, entity_id, actor_id, payload, created_at, event_key"
EVENT_COPY: Final = f"COPY digest_events ({_COLUMNS}) FROM STDIN"
EVENT_STAGE_COPY: Final = f"COPY digest_events_stage ({_COLUMNS}) FROM STDIN"

# One validated event in EVENT_FIELDS order, payload serialized; created_at None = now().
EventRow: TypeAlias = tuple[str, str, str, str, str | None, str, datetime | None, str | None]
# A row as COPY sends it: created_at filled in, now() as ISO 8601 text (dumping a datetime
# costs psycopg more than all the other fields of the row together).
CopyRow: TypeAlias = tuple[str, str, str, str, str | None, str, datetime | str, str | None]

_PAYLOAD_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
# For exactly these types orjson writes what _PAYLOAD_ENCODER writes, many times faster.
# Anything else goes to json: floats (orjson writes NaN as null, 1e-05 as 0.00001), and
# subclasses, enums, UUIDs and dates (orjson would write them; json refuses them).
_ORJSON_SCALARS: Final = frozenset({str, int, bool, type(None)})
_ORJSON_TYPES: Final = _ORJSON_SCALARS | {dict, list, tuple}


class _FromEnv(enum.Enum):
    FROM_ENV = "from the environment"


FROM_ENV: Final = _FromEnv.FROM_ENV
"""Default for `categories`: the allow-list of DIGEST_CATEGORIES, if set."""

Categories: TypeAlias = Collection[str] | Literal[_FromEnv.FROM_ENV] | None


@dataclass(frozen=True, slots=True)
class EventIn:
    """One event as a producer describes it (the typed alternative to a mapping)."""

    user_id: str | int
    category: str
    entity_type: str
    entity_id: str | int
    actor_id: str | int | None = None
    payload: Mapping[str, Any] | None = None
    created_at: datetime | str | None = None
    event_key: str | int | None = None


@dataclass(frozen=True, slots=True)
class BadLine:
    """A line of an input file that was refused, and why."""

    source: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.reason}"


class BadInputError(DigestError):
    """An all-or-nothing import refused a file because some of its lines are bad."""

    def __init__(self, source: str, shown: list[BadLine], count: int) -> None:
        self.source, self.shown, self.count = source, shown, count
        noun = "line" if count == 1 else "lines"
        lines = [
            f"{source}: {count} bad {noun}, nothing was imported "
            "(fix them, or use --skip-bad to import the good lines)",
            *(str(bad) for bad in shown),
        ]
        if count > len(shown):
            lines.append(f"and {count - len(shown)} more")
        super().__init__("\n".join(lines))


@dataclass(frozen=True, slots=True)
class EventImport:
    """What an import did: events stored, keyed duplicates ignored, bad lines skipped."""

    loaded: int
    duplicates: int
    skipped: int


def env_categories() -> frozenset[str] | None:
    """The category allow-list from DIGEST_CATEGORIES (None when unset)."""
    return _categories_from(os.environ.get("DIGEST_CATEGORIES", ""))


@functools.lru_cache(maxsize=8)
def _categories_from(raw: str) -> frozenset[str] | None:
    # Only this variable: a producer must not fail over an unrelated worker setting. Cached
    # by its text, so a changed variable still applies at the next event.
    return Settings.from_env({"DIGEST_CATEGORIES": raw}).categories


def _allow_list(categories: Categories) -> frozenset[str] | None:
    if categories is FROM_ENV:
        return env_categories()
    return None if categories is None else frozenset(categories)


def _show(value: object) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def unknown_fields(unknown: Iterable[object], known: Iterable[str]) -> str:
    """The reason for unknown fields: at most three names, each shortened, then the known."""
    names = sorted(str(k) for k in unknown)
    shown = ", ".join(_show(name) for name in names[:3])
    if len(names) > 3:
        shown += f" and {len(names) - 3} more"
    return f"unknown field {shown} (known: {', '.join(known)})"


def text_field(name: str, value: object) -> str:
    """A required, non-empty identifier-like string (ints become strings), or ValidationError."""
    if type(value) is str:
        # Fast path: a plain printable ASCII id, the overwhelming case at 150,000 events/s.
        if (
            0 < len(value) <= MAX_TEXT
            and value.isascii()
            and value.isprintable()
            and value[0] != " "
            and value[-1] != " "
        ):
            return value
        return _checked_text(name, value)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if value is None:
        raise ValidationError(f"{name} is required")
    raise ValidationError(f"{name} must be a string, got {_json_type(value)}")


def _checked_text(name: str, value: str) -> str:
    if not value:
        raise ValidationError(f"{name} must not be empty")
    if len(value) > MAX_TEXT:
        raise ValidationError(f"{name} is longer than {MAX_TEXT} characters")
    if "\x00" in value:
        raise ValidationError(f"{name} contains a NUL character")
    if _CONTROL.search(value):
        raise ValidationError(f"{name} contains a control character: {_show(value)}")
    if "\ufeff" in value:  # a BOM from a concatenated file: "\ufeff42" would never match 42
        raise ValidationError(f"{name} contains a byte order mark (U+FEFF): {_show(value)}")
    # " 42" would never match recipient "42": refuse it rather than lose the event.
    if value[0].isspace() or value[-1].isspace():
        raise ValidationError(f"{name} has leading or trailing whitespace: {_show(value)}")
    try:
        value.encode()
    except UnicodeEncodeError:  # lone surrogates, from "\ud800" escapes in JSON
        raise ValidationError(f"{name} is not valid Unicode (lone surrogate)") from None
    return value


def optional_text(name: str, value: object) -> str | None:
    """Like text_field, but None (absent) is allowed."""
    return None if value is None else text_field(name, value)


def _category(value: object, allowed: frozenset[str] | None) -> str:
    if type(value) is not str or not CATEGORY_PATTERN.fullmatch(value):
        raise ValidationError(
            f"category must be a name like 'comment' or 'post.liked' "
            f"(a-z, 0-9, '_', '.', '-'; at most 64), got {_show(value)}"
        )
    if allowed is not None and value not in allowed:
        raise ValidationError(
            f"unknown category {value!r} (allowed: {', '.join(sorted(allowed)) or 'none'})"
        )
    return value


def _has_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_nul(v) for v in value)
    return False


def _orjson_exact(value: dict[Any, Any] | list[Any] | tuple[Any, ...]) -> bool:
    """Whether `value` holds only the types orjson writes exactly as json does."""
    items = value.values() if type(value) is dict else value
    kinds = set(map(type, items))
    if kinds <= _ORJSON_SCALARS:
        return True
    return kinds <= _ORJSON_TYPES and all(
        _orjson_exact(item) for item in items if type(item) not in _ORJSON_SCALARS
    )


def _orjson_encode(data: dict[Any, Any]) -> str | None:
    """`data` as compact JSON by orjson, when that is exactly the text json writes; else None."""
    try:
        return orjson.dumps(data).decode() if _orjson_exact(data) else None
    except (TypeError, RecursionError):
        # orjson refuses non-str keys, integers beyond 64 bits, lone surrogates and nesting
        # over 255 deep, and a cycle makes the walk recurse without end: json decides those.
        return None


def _payload(value: object) -> str:
    if value is None:
        return "{}"
    if type(value) is not dict and not isinstance(value, Mapping):
        raise ValidationError(f"payload must be a JSON object, got {_json_type(value)}")
    if not value:
        return "{}"
    data = value if type(value) is dict else dict(value)
    try:
        encoded = _orjson_encode(data) or _PAYLOAD_ENCODER.encode(data)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"payload is not valid JSON: {exc}") from None
    except RecursionError:
        raise ValidationError("payload is nested too deeply") from None
    # The encoder writes NUL as \u0000, which jsonb refuses; the substring can also be an
    # escaped backslash followed by "u0000", hence the exact check only when it shows up.
    if "\\u0000" in encoded and _has_nul(data):
        raise ValidationError("payload contains a NUL character")
    if encoded.isascii():
        size = len(encoded)
    else:
        try:
            size = len(encoded.encode())
        except UnicodeEncodeError:
            raise ValidationError("payload is not valid Unicode (lone surrogate)") from None
    if size > MAX_PAYLOAD_BYTES:
        raise ValidationError(f"payload is {size} bytes serialized, over the 64 KB limit")
    return encoded


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return "null" if value is None else type(value).__name__


def _created_at(value: object) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise ValidationError(
                f"created_at must be an ISO 8601 time like 2026-01-31T08:00:00Z, got {_show(value)}"
            ) from None
    else:
        raise ValidationError(f"created_at must be an ISO 8601 string, got {_json_type(value)}")
    # A time without an offset is taken as UTC, never as the server's local time.
    moment = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    # PostgreSQL would store year 1 at +14:00 (1 BC in UTC), and every later read of the
    # user's events would fail: Python's datetime stops at years 1 and 9999.
    if not EARLIEST <= moment < LATEST:
        raise ValidationError(
            f"created_at must be between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d} (UTC), "
            f"got {_show(value if isinstance(value, str) else moment.isoformat())}"
        )
    return moment


def event_row(
    user_id: object,
    category: object,
    entity_type: object,
    entity_id: object,
    actor_id: object = None,
    payload: object = None,
    created_at: object = None,
    event_key: object = None,
    *,
    allowed: frozenset[str] | None = None,
) -> EventRow:
    """Validate one event's fields and return the row to store, or raise ValidationError."""
    return (
        text_field("user_id", user_id),
        _category(category, allowed),
        text_field("entity_type", entity_type),
        text_field("entity_id", entity_id),
        optional_text("actor_id", actor_id),
        _payload(payload),
        _created_at(created_at),
        optional_text("event_key", event_key),
    )


def validate_event(event: object, *, allowed: frozenset[str] | None = None) -> EventRow:
    """Validate a mapping (unknown keys refused) or an EventIn into the row to store."""
    if type(event) is not dict:  # a plain dict, the usual case, skips the slower ABC checks
        if isinstance(event, EventIn):
            return event_row(
                event.user_id,
                event.category,
                event.entity_type,
                event.entity_id,
                event.actor_id,
                event.payload,
                event.created_at,
                event.event_key,
                allowed=allowed,
            )
        if not isinstance(event, Mapping):
            raise ValidationError(f"an event must be a JSON object, got {_json_type(event)}")
    if not event.keys() <= _EVENT_FIELD_SET:
        # A typo like "payoad" would otherwise silently drop data.
        raise ValidationError(unknown_fields(event.keys() - _EVENT_FIELD_SET, EVENT_FIELDS))
    get = event.get
    return event_row(
        get("user_id"),
        get("category"),
        get("entity_type"),
        get("entity_id"),
        get("actor_id"),
        get("payload"),
        get("created_at"),
        get("event_key"),
        allowed=allowed,
    )


@contextmanager
def atomic(target: Connection | Engine) -> Iterator[Connection]:
    """A transaction on an engine, or a savepoint in a caller's connection; undone on error.

    The savepoint means a failure undoes only our rows and leaves the caller's transaction
    usable.
    """
    if isinstance(target, Engine):
        with target.begin() as conn:
            yield conn
    else:
        with target.begin_nested():
            yield target


def record_event(
    target: Connection | Engine,
    *,
    user_id: str | int,
    category: str,
    entity_type: str,
    entity_id: str | int,
    actor_id: str | int | None = None,
    payload: Mapping[str, Any] | None = None,
    created_at: datetime | str | None = None,
    event_key: str | int | None = None,
    categories: Categories = FROM_ENV,
) -> int | None:
    """Store one event and return its id; None when `event_key` was already stored for the user.

    With an Engine the event is committed at once; with a Connection it joins the caller's
    transaction (the caller commits).
    """
    row = event_row(
        user_id,
        category,
        entity_type,
        entity_id,
        actor_id,
        payload,
        created_at,
        event_key,
        allowed=_allow_list(categories),
    )
    params = dict(zip(EVENT_FIELDS, row, strict=True))
    if isinstance(target, Engine):
        with target.begin() as conn:
            new_id = conn.execute(EVENT_INSERT, params).scalar_one_or_none()
    else:
        new_id = target.execute(EVENT_INSERT, params).scalar_one_or_none()
    return None if new_id is None else int(new_id)


def record_events(
    target: Connection | Engine,
    rows: Iterable[Mapping[str, Any] | EventIn],
    *,
    categories: Categories = FROM_ENV,
) -> int:
    """Store many events by COPY, all or none, and return how many were inserted.

    Rows whose (user_id, event_key) is already stored, or repeated in `rows`, are ignored
    and not counted. A bad row raises ValidationError naming its index; nothing is stored.
    """
    allowed = _allow_list(categories)

    def validated() -> Iterator[EventRow]:
        for index, row in enumerate(rows):
            try:
                yield validate_event(row, allowed=allowed)
            except ValidationError as exc:
                raise ValidationError(f"rows[{index}]: {exc}") from None

    with atomic(target) as conn:
        inserted, _ = store_rows(conn, validated())
    return inserted


def store_rows(conn: Connection, rows: Iterable[EventRow]) -> tuple[int, int]:
    """COPY validated rows inside `conn`'s transaction; returns (inserted, ignored duplicates).

    Keyless rows stream straight into digest_events (nothing can conflict with them). From
    the first keyed row on, rows go in chunks through a temporary staging table and
    `INSERT ... ON CONFLICT DO NOTHING`, because COPY itself cannot skip a duplicate.
    """
    # now() is the transaction's start time: exactly what the column default would give.
    now = conn.execute(TRANSACTION_NOW).scalar_one().astimezone(UTC).isoformat()
    pending: Iterator[CopyRow] = ((*row[:6], row[6] or now, row[7]) for row in rows)
    driver = raw(conn)
    inserted = ignored = 0
    try:
        with driver.cursor() as cursor:
            chunk: list[CopyRow] = []
            # `rows` is usually a validating generator: it runs inside the COPY block, so the
            # server ingests what was sent while Python parses the next rows.
            with cursor.copy(EVENT_COPY) as copy:
                for row in pending:
                    if row[7] is not None:
                        chunk.append(row)
                        break
                    copy.write_row(row)
                    inserted += 1
            chunk.extend(islice(pending, CHUNK_ROWS - len(chunk)) if chunk else ())
            while chunk:
                conn.execute(EVENT_STAGE_CREATE)
                conn.execute(EVENT_STAGE_TRUNCATE)
                with cursor.copy(EVENT_STAGE_COPY) as copy:
                    for row in chunk:
                        copy.write_row(row)
                # Pipeline mode sends the INSERT without waiting for it: the next chunk is
                # validated while the server inserts this one.
                with driver.pipeline() if PIPELINE else nullcontext():
                    cursor.execute(EVENT_INSERT_FROM_STAGE)
                    following = list(islice(pending, CHUNK_ROWS))
                inserted += cursor.rowcount
                ignored += len(chunk) - cursor.rowcount
                chunk = following
    except (psycopg.DataError, psycopg.IntegrityError) as exc:
        raise DigestError(f"the database refused the events: {_first_line(exc)}") from exc
    except DBAPIError as exc:
        if isinstance(exc.orig, psycopg.DataError | psycopg.IntegrityError):
            raise DigestError(f"the database refused the events: {_first_line(exc.orig)}") from exc
        raise
    return inserted, ignored


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def read_jsonl(lines: Iterable[bytes]) -> Iterator[tuple[int, object, str | None]]:
    """Parse JSON Lines: yields (line number, value, None) or (line number, None, reason).

    Blank lines are skipped; CRLF ends are fine; a UTF-8 BOM is accepted on line 1 only.
    """
    for number, line in enumerate(lines, 1):
        if number == 1 and line.startswith(UTF8_BOM):
            line = line[3:]
        elif line.startswith(UTF8_BOM):
            yield number, None, "byte order mark (BOM) is only allowed at the start of the file"
            continue
        if not line or line.isspace():
            continue
        try:
            # Without the line end, a JSON error's column points into the line.
            decoded = line.rstrip(b"\r\n").decode()
        except UnicodeDecodeError as exc:
            yield number, None, f"not valid UTF-8 (byte {exc.start + 1})"
            continue
        try:
            yield number, json.loads(decoded), None
        except json.JSONDecodeError as exc:
            # JSON strings cannot hold a raw CR: here it can only be a line end.
            hint = "; bare CR line ends? use LF or CRLF" if "\r" in decoded else ""
            yield number, None, f"invalid JSON: {exc.msg} (column {exc.colno}{hint})"
        except (ValueError, RecursionError) as exc:  # huge integers, deep nesting
            yield number, None, f"invalid JSON: {exc}"


T = TypeVar("T")


class BadLines:
    """Collects an import's bad lines: counts all, keeps the first few, reports as asked."""

    def __init__(self, source: str, on_bad: Callable[[BadLine], None] | None) -> None:
        self.source, self.on_bad = source, on_bad
        self.shown: list[BadLine] = []
        self.count = 0

    def add(self, line: int, reason: str) -> None:
        """Record bad line `line`."""
        bad = BadLine(self.source, line, reason)
        self.count += 1
        if len(self.shown) < BAD_LINES_SHOWN:
            self.shown.append(bad)
        if self.on_bad is not None:
            self.on_bad(bad)

    def error(self) -> BadInputError:
        """The all-or-nothing failure for these bad lines."""
        return BadInputError(self.source, self.shown, self.count)

    def valid(
        self,
        records: Iterable[tuple[int, object, str | None]],
        validate: Callable[[object], T],
        *,
        skip_bad: bool,
    ) -> Iterator[T]:
        """The records that validate, each bad one recorded with its line number.

        Once the file is known to fail (all or nothing), reading goes on only to count and
        list the bad lines.
        """
        for number, value, reason in records:
            if reason is not None:
                self.add(number, reason)
                continue
            try:
                row = validate(value)
            except ValidationError as exc:
                self.add(number, str(exc))
                continue
            if skip_bad or not self.count:
                yield row


def import_events(
    target: Connection | Engine,
    lines: Iterable[bytes],
    *,
    source: str = "<input>",
    skip_bad: bool = False,
    categories: Categories = FROM_ENV,
    on_bad: Callable[[BadLine], None] | None = None,
) -> EventImport:
    """Load JSON Lines events in one transaction, streaming; all or nothing unless `skip_bad`.

    All or nothing: any bad line raises BadInputError (listing the first bad lines by
    number) and nothing is stored. With `skip_bad` the good lines are stored and each bad
    one is passed to `on_bad`.
    """
    allowed = _allow_list(categories)
    bad = BadLines(source, on_bad if skip_bad else None)

    with atomic(target) as conn:
        rows = bad.valid(
            read_jsonl(lines),
            lambda value: validate_event(value, allowed=allowed),
            skip_bad=skip_bad,
        )
        inserted, ignored = store_rows(conn, rows)
        if bad.count and not skip_bad:
            raise bad.error()
    return EventImport(loaded=inserted, duplicates=ignored, skipped=bad.count)
