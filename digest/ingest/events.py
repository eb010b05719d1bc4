"""Producer side: validate notification events and store them, one at a time or in bulk.

Validation is the same for the Python API and for `digest events import`, and happens here,
at the boundary, so that the database only ever sees rows it accepts (`digest.ingest.store`
writes them).
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
import os
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, TypeAlias

import orjson
from sqlalchemy import Connection, Engine

from digest.config import Settings
from digest.db import atomic
from digest.errors import ValidationError
from digest.ingest.fields import (
    MAX_PAYLOAD_BYTES,
    json_type,
    optional_text,
    show,
    text_field,
    unknown_fields,
)
from digest.ingest.lines import BadLine, BadLines, read_jsonl
from digest.ingest.store import EVENT_FIELDS, TRANSACTION_NOW, EventRow, insert_one, store_rows
from digest.terminal import plural

CATEGORY_PATTERN: Final = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
_EVENT_FIELD_SET: Final = frozenset(EVENT_FIELDS)
# created_at must fall in this range: anything PostgreSQL and Python can both read back.
EARLIEST: Final = datetime(1970, 1, 1, tzinfo=UTC)
LATEST: Final = datetime(9999, 1, 1, tzinfo=UTC)

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
# Seconds an event's created_at may be ahead of the database's clock; None: no limit.
ClockSkew: TypeAlias = float | Literal[_FromEnv.FROM_ENV] | None


@dataclass(frozen=True, slots=True)
class NotAfter:
    """The latest created_at accepted: the database's `now` plus the allowed `skew`."""

    latest: datetime
    skew: timedelta

    def refuse(self, moment: datetime) -> ValidationError:
        """The error for a `moment` past `latest`, naming the skew allowed."""
        seconds = int(self.skew.total_seconds())
        allowed = (
            plural(seconds // 60, "minute") if seconds % 60 == 0 else plural(seconds, "second")
        )
        return ValidationError(
            f"created_at {moment.isoformat()} is ahead of the database's clock by more than "
            f"{allowed} (DIGEST_MAX_CLOCK_SKEW); it would wait unseen until then"
        )


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
class EventImport:
    """What an import did: events stored, keyed duplicates ignored, bad lines skipped, and
    how many stored have no key (a second import of the file would store them again)."""

    loaded: int
    duplicates: int
    skipped: int
    keyless: int = 0


# A key derived from a line says how: `line-sha256:` and the hash of the line's canonical JSON.
LINE_KEY_PREFIX: Final = "line-sha256:"


def line_key(value: Mapping[str, Any]) -> str:
    """The event_key `--key-from-line` gives a line's object: a SHA-256 of the object
    re-serialised canonically (sorted keys, no spaces, ASCII escapes), so the same event
    written with other spacing or key order gets the same key."""
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return LINE_KEY_PREFIX + hashlib.sha256(canonical.encode()).hexdigest()


def _keyed_by_line(value: object) -> object:
    """A line's object with its derived key, unless it has an event_key of its own."""
    if type(value) is dict and value.get("event_key") is None:
        try:
            return {**value, "event_key": line_key(value)}
        except (TypeError, ValueError, RecursionError):  # validation says what is wrong
            return value
    return value


def env_categories() -> frozenset[str] | None:
    """The category allow-list from DIGEST_CATEGORIES (None when unset)."""
    return _categories_from(os.environ.get("DIGEST_CATEGORIES", ""))


@functools.lru_cache(maxsize=8)
def _categories_from(raw: str) -> frozenset[str] | None:
    # Only this variable: a producer must not fail over an unrelated worker setting. Cached
    # by its text, so a changed variable still applies at the next event.
    return Settings.from_env({"DIGEST_CATEGORIES": raw}).categories


def env_clock_skew() -> float:
    """DIGEST_MAX_CLOCK_SKEW in seconds (its default when unset)."""
    return _skew_from(os.environ.get("DIGEST_MAX_CLOCK_SKEW"))


@functools.lru_cache(maxsize=8)
def _skew_from(raw: str | None) -> float:
    env = {} if raw is None else {"DIGEST_MAX_CLOCK_SKEW": raw}
    return Settings.from_env(env).max_clock_skew_seconds


def _not_after(conn: Connection, skew: ClockSkew) -> NotAfter | None:
    """The bound on created_at, from the database's clock (one query), or None for no limit."""
    seconds = env_clock_skew() if skew is FROM_ENV else skew
    if seconds is None:
        return None
    now = conn.execute(TRANSACTION_NOW).scalar_one()
    try:
        allowed = timedelta(seconds=seconds)
        return NotAfter(now + allowed, allowed)
    except OverflowError:  # a skew of millennia reaches past year 9999: no limit
        return None


def _allow_list(categories: Categories) -> frozenset[str] | None:
    if categories is FROM_ENV:
        return env_categories()
    return None if categories is None else frozenset(categories)


def _category(value: object, allowed: frozenset[str] | None) -> str:
    if type(value) is not str or not CATEGORY_PATTERN.fullmatch(value):
        raise ValidationError(
            f"category must be a name like 'comment' or 'post.liked' "
            f"(a-z, 0-9, '_', '.', '-'; at most 64), got {show(value)}"
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
        raise ValidationError(f"payload must be a JSON object, got {json_type(value)}")
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


def _created_at(value: object, not_after: NotAfter | None = None) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise ValidationError(
                f"created_at must be an ISO 8601 time like 2026-01-31T08:00:00Z, got {show(value)}"
            ) from None
    else:
        raise ValidationError(f"created_at must be an ISO 8601 string, got {json_type(value)}")
    # A time without an offset is taken as UTC, never as the server's local time.
    moment = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    # PostgreSQL would store year 1 at +14:00 (1 BC in UTC), and every later read of the
    # user's events would fail: Python's datetime stops at years 1 and 9999.
    if not EARLIEST <= moment < LATEST:
        raise ValidationError(
            f"created_at must be between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d} (UTC), "
            f"got {show(value if isinstance(value, str) else moment.isoformat())}"
        )
    if not_after is not None and moment > not_after.latest:
        raise not_after.refuse(moment)
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
    not_after: NotAfter | None = None,
) -> EventRow:
    """Validate one event's fields and return the row to store, or raise ValidationError."""
    return (
        text_field("user_id", user_id),
        _category(category, allowed),
        text_field("entity_type", entity_type),
        text_field("entity_id", entity_id),
        optional_text("actor_id", actor_id),
        _payload(payload),
        _created_at(created_at, not_after),
        optional_text("event_key", event_key),
    )


def validate_event(
    event: object, *, allowed: frozenset[str] | None = None, not_after: NotAfter | None = None
) -> EventRow:
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
                not_after=not_after,
            )
        if not isinstance(event, Mapping):
            raise ValidationError(f"an event must be a JSON object, got {json_type(event)}")
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
        not_after=not_after,
    )


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
    max_clock_skew: ClockSkew = FROM_ENV,
) -> int | None:
    """Store one event and return its id; None when `event_key` was already stored for the user.

    With an Engine the event is committed at once; with a Connection it joins the caller's
    transaction (the caller commits). A `created_at` more than `max_clock_skew` seconds
    ahead of the database's clock (DIGEST_MAX_CLOCK_SKEW, 300) is refused; None: no limit.
    """

    def insert(conn: Connection) -> int | None:
        # The database's clock is asked only when the producer gives a time.
        not_after = _not_after(conn, max_clock_skew) if created_at is not None else None
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
            not_after=not_after,
        )
        return insert_one(conn, row)

    if isinstance(target, Engine):
        with target.begin() as conn:
            return insert(conn)
    return insert(target)


def record_events(
    target: Connection | Engine,
    rows: Iterable[Mapping[str, Any] | EventIn],
    *,
    categories: Categories = FROM_ENV,
    max_clock_skew: ClockSkew = FROM_ENV,
) -> int:
    """Store many events by COPY, all or none, and return how many were inserted.

    Rows whose (user_id, event_key) is already stored, or repeated in `rows`, are ignored
    and not counted. A bad row (a created_at beyond `max_clock_skew`, as for `record_event`,
    among them) raises ValidationError naming its index; nothing is stored.
    """
    allowed = _allow_list(categories)

    def validated(not_after: NotAfter | None) -> Iterator[EventRow]:
        for index, row in enumerate(rows):
            try:
                yield validate_event(row, allowed=allowed, not_after=not_after)
            except ValidationError as exc:
                raise ValidationError(f"rows[{index}]: {exc}") from None

    with atomic(target) as conn:
        inserted, _ = store_rows(conn, validated(_not_after(conn, max_clock_skew)))
    return inserted


def import_events(
    target: Connection | Engine,
    lines: Iterable[bytes],
    *,
    source: str = "<input>",
    skip_bad: bool = False,
    categories: Categories = FROM_ENV,
    on_bad: Callable[[BadLine], None] | None = None,
    key_from_line: bool = False,
    max_clock_skew: ClockSkew = FROM_ENV,
) -> EventImport:
    """Load JSON Lines events in one transaction, streaming; all or nothing unless `skip_bad`.

    All or nothing: any bad line raises BadInputError (listing the first bad lines by
    number) and nothing is stored. With `skip_bad` the good lines are stored and each bad
    one is passed to `on_bad`. With `key_from_line` a line without an event_key gets
    `line_key` of its object, so importing the file again stores nothing twice. A line
    dated beyond `max_clock_skew` is bad, as in `record_event`.
    """
    allowed = _allow_list(categories)
    bad = BadLines(source, on_bad if skip_bad else None)
    keyless = 0
    not_after: NotAfter | None = None

    def validate(value: object) -> EventRow:
        nonlocal keyless
        value = _keyed_by_line(value) if key_from_line else value
        row = validate_event(value, allowed=allowed, not_after=not_after)
        keyless += row[7] is None
        return row

    with atomic(target) as conn:
        not_after = _not_after(conn, max_clock_skew)
        rows = bad.valid(read_jsonl(lines), validate, skip_bad=skip_bad)
        inserted, ignored = store_rows(conn, rows)
        if bad.count and not skip_bad:
            raise bad.error()
    # a keyless row never conflicts: every one counted was stored
    return EventImport(inserted, ignored, bad.count, keyless)
