"""Recipients in: who gets a digest, how often and when; validated at the boundary, upserted
in bulk (imports) or one at a time (`digest recipients set`). Reads are in
`digest.recipients`.

A field an input leaves out keeps the stored value of an existing recipient and gets its
default for a new one; an update that changes nothing writes nothing, so re-importing the
same file neither touches `updated_at` nor cancels pending runs. A changed schedule
(cadence, zone, hour, day) cancels the user's pending runs in the same transaction, as
every write path of recipients does (`digest.recipients.cancel_pending_runs`).
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, time
from functools import cache
from typing import Any, Final, Literal

from sqlalchemy import Connection, Engine, text

from digest import recipients
from digest.buckets import bucket_of
from digest.channels.email.mime import HeaderError, validate_email
from digest.db import atomic, raw
from digest.errors import ValidationError
from digest.ingest import lines as input_lines
from digest.ingest.events import CATEGORY_PATTERN
from digest.ingest.fields import CONTROL, MAX_TEXT, json_type, show, text_field, unknown_fields
from digest.ingest.lines import BadLine, BadLines, read_jsonl
from digest.models import Cadence

RECIPIENT_FIELDS: Final = (
    "user_id",
    "email",
    "name",
    "cadence",
    "timezone",
    "send_hour",
    "weekly_day",
    "locale",
    "muted_categories",
    "quiet_hours",
)
_FIELD_SET: Final = frozenset(RECIPIENT_FIELDS)
WEEKDAYS: Final = {
    name: number
    for number, day in enumerate(
        ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"), 1
    )
    for name in (day, day[:3])
}
# Zone names Python can load that are not zones PostgreSQL knows (the scheduler converts
# times with `AT TIME ZONE`, so such a recipient would never be scheduled).
_HOST_ONLY_ZONES: Final = frozenset({"localtime", "posixrules"})
LOCALE_PATTERN: Final = re.compile(r"[A-Za-z]{2,8}(?:[-_][A-Za-z0-9]{1,8})*")
CADENCES: Final = tuple(c.value for c in Cadence)
MAX_MUTED: Final = 100  # as the recipients_muted_categories_check constraint
QUIET_HOURS_PATTERN: Final = re.compile(r"(\d{1,2}):(\d\d)\s*-\s*(\d{1,2}):(\d\d)")
CLOCK_PATTERN: Final = re.compile(r"(\d{1,2}):(\d\d)")
_ENCODED_WORD = re.compile(r"=\?.*\?=", re.S)
# Rows per upsert statement: big enough to amortise the round trips, small enough to keep
# memory and each statement's lock set modest.
BATCH_ROWS: Final = 20_000
Format = Literal["jsonl", "csv"]

# Rows reach PostgreSQL by COPY into a staging table (dumping big parameter arrays costs
# more than the upsert itself), each with its user's bucket; `shape` numbers each set of
# given fields in the batch.
RECIPIENT_STAGE_CREATE = text(
    """
    CREATE TEMP TABLE IF NOT EXISTS recipients_stage (
        bucket smallint, user_id text, email text, name text, cadence text, timezone text,
        send_hour smallint, weekly_day smallint, locale text, muted_categories text[],
        quiet_start time, quiet_end time, shape smallint
    ) ON COMMIT DROP
    """
)
# TRUNCATE, not DELETE: temp tables are never autovacuumed, dead rows would pile up.
RECIPIENT_STAGE_TRUNCATE = text("TRUNCATE recipients_stage")
RECIPIENT_STAGE_COPY: Final = (
    "COPY recipients_stage (bucket, user_id, email, name, cadence, timezone, send_hour, "
    "weekly_day, locale, muted_categories, quiet_start, quiet_end, shape) FROM STDIN"
)
# The upsert, in two statements over the same staged rows: the first writes the rows that
# are new or whose schedule (cadence, zone, hour, day) changes, and returns the latter, whose
# pending runs are then cancelled in this transaction (`recipients.cancel_pending_runs_of`);
# the second writes the rows whose other fields change. Each decides on the row as it locks
# it (ON CONFLICT's WHERE sees the latest version), so what is compared is what is
# overwritten, as the trigger this replaces saw it. Rows are taken in key order so concurrent
# imports lock recipients in the same order and cannot deadlock. (xmax = 0) tells an
# inserted row from an updated one. Only a real change is written: an unchanged row keeps
# its updated_at. A recipient who got no digests (cadence off) and now gets them grows its
# subscription version (see `digest.unsubscribe`); an import never changes
# `unsubscribed_at`. The time comes in as :now: Citus refuses now() in ON CONFLICT DO UPDATE.
_UPSERT = """
    WITH upserted AS (
        INSERT INTO recipients AS r
               (bucket, user_id, email, name, cadence, timezone, send_hour, weekly_day, locale,
                muted_categories, quiet_start, quiet_end)
        SELECT bucket, user_id, email, name, cadence, timezone, send_hour, weekly_day, locale,
               muted_categories, quiet_start, quiet_end
          FROM recipients_stage
         WHERE shape = :shape
         ORDER BY bucket, user_id
        ON CONFLICT (bucket, user_id) DO UPDATE SET
            email = CASE WHEN :set_email THEN excluded.email ELSE r.email END,
            name = CASE WHEN :set_name THEN excluded.name ELSE r.name END,
            cadence = CASE WHEN :set_cadence THEN excluded.cadence ELSE r.cadence END,
            timezone = CASE WHEN :set_timezone THEN excluded.timezone ELSE r.timezone END,
            send_hour = CASE WHEN :set_send_hour THEN excluded.send_hour ELSE r.send_hour END,
            weekly_day = CASE WHEN :set_weekly_day THEN excluded.weekly_day
                              ELSE r.weekly_day END,
            locale = CASE WHEN :set_locale THEN excluded.locale ELSE r.locale END,
            muted_categories = CASE WHEN :set_muted_categories THEN excluded.muted_categories
                                    ELSE r.muted_categories END,
            quiet_start = CASE WHEN :set_quiet_hours THEN excluded.quiet_start
                               ELSE r.quiet_start END,
            quiet_end = CASE WHEN :set_quiet_hours THEN excluded.quiet_end ELSE r.quiet_end END,
            subscription_version = r.subscription_version
                + CASE WHEN :set_cadence AND r.cadence = 'off' AND excluded.cadence <> 'off'
                            AND r.unsubscribed_at IS NULL THEN 1 ELSE 0 END,
            updated_at = CAST(:now AS timestamptz)
        WHERE {changed}
        RETURNING (r.xmax = 0) AS created, r.user_id
    )
    SELECT count(*) FILTER (WHERE created),
           coalesce(array_agg(user_id) FILTER (WHERE NOT created), '{{}}')
      FROM upserted
"""
_SCHEDULE_CHANGED = """(:set_cadence AND r.cadence IS DISTINCT FROM excluded.cadence)
           OR (:set_timezone AND r.timezone IS DISTINCT FROM excluded.timezone)
           OR (:set_send_hour AND r.send_hour IS DISTINCT FROM excluded.send_hour)
           OR (:set_weekly_day AND r.weekly_day IS DISTINCT FROM excluded.weekly_day)"""
# Muted categories and quiet hours move no run: a change of them alone cancels nothing.
_REST_CHANGED = """(:set_email AND r.email IS DISTINCT FROM excluded.email)
           OR (:set_name AND r.name IS DISTINCT FROM excluded.name)
           OR (:set_locale AND r.locale IS DISTINCT FROM excluded.locale)
           OR (:set_muted_categories
               AND r.muted_categories IS DISTINCT FROM excluded.muted_categories)
           OR (:set_quiet_hours AND (r.quiet_start IS DISTINCT FROM excluded.quiet_start
                                     OR r.quiet_end IS DISTINCT FROM excluded.quiet_end))"""
RECIPIENT_UPSERT_RESCHEDULING = text(_UPSERT.format(changed=_SCHEDULE_CHANGED))
RECIPIENT_UPSERT_REST = text(_UPSERT.format(changed=_REST_CHANGED))


@dataclass(slots=True)  # not frozen: one per row, and frozen ones are slow to build
class RecipientIn:
    """A validated recipient; `given` names the fields its input set (the rest are defaults).

    The defaults here are what a new recipient gets (the same as the schema's).
    """

    user_id: str
    email: str | None  # None when not given: an existing recipient's email is kept
    name: str | None = None
    cadence: str = Cadence.DAILY
    timezone: str = "UTC"
    send_hour: int = 8
    weekly_day: int = 1
    locale: str = "en"
    muted_categories: tuple[str, ...] = ()  # sorted, no repeats
    quiet_hours: str | None = None  # `22:00-07:00`, local time; None: none
    given: frozenset[str] = frozenset({"email"})


@dataclass(frozen=True, slots=True)
class RecipientImport:
    """What an import did: valid rows read, recipients created and updated, bad lines skipped."""

    rows: int
    created: int
    updated: int
    skipped: int

    @property
    def unchanged(self) -> int:
        """Rows that changed nothing (including earlier rows for a user_id listed again)."""
        return self.rows - self.created - self.updated


@dataclass(frozen=True, slots=True)
class RecipientSet:
    """What `set_recipient` did, the fields it changed (old, new), and runs it cancelled."""

    action: Literal["created", "updated", "unchanged"]
    changes: Mapping[str, tuple[object, object]]
    cancelled_runs: int


def _email(value: object) -> str:
    if value is None:
        raise ValidationError("email is required")
    if not isinstance(value, str):
        raise ValidationError(f"email must be a string, got {type(value).__name__}")
    try:
        return validate_email(value)
    except HeaderError as exc:  # its message names the address and what is wrong
        raise ValidationError(str(exc)) from None


def _name(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationError(f"name must be a string, got {type(value).__name__}")
    value = value.strip()
    if len(value) > MAX_TEXT:
        raise ValidationError(f"name is longer than {MAX_TEXT} characters")
    # The name goes into the To: header; line breaks there are header injection.
    if CONTROL.search(value):
        raise ValidationError(f"name contains a line break or control character: {show(value)}")
    # "=?utf-8?q?=0D=0ABcc:...?=" is an RFC 2047 encoded-word: mail code that parses the
    # To: header would decode it into a line break. No real name contains one.
    if _ENCODED_WORD.search(value):
        raise ValidationError(f"name looks like MIME-encoded text (=?...?=): {show(value)}")
    return value or None


def _cadence(value: object) -> str:
    cadence = value.strip().lower() if isinstance(value, str) else value
    if cadence not in CADENCES:
        raise ValidationError(f"cadence must be one of {', '.join(CADENCES)}, got {show(value)}")
    return str(cadence)


@cache
def _zone_exists(name: str) -> bool:
    if name in _HOST_ONLY_ZONES:
        return False
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _timezone(value: object) -> str:
    if not isinstance(value, str) or not _zone_exists(value.strip()):
        raise ValidationError(
            f"unknown time zone {show(value)} (use an IANA name like 'Europe/Berlin' or 'UTC')"
        )
    return value.strip()


def _whole(name: str, value: object, low: int, high: int) -> int:
    number: object = value
    if isinstance(value, str) and value.strip().isdigit():
        number = int(value.strip())
    if type(number) is not int or not low <= number <= high:
        raise ValidationError(
            f"{name} must be a whole number from {low} to {high}, got {show(value)}"
        )
    return number


def _weekly_day(value: object) -> int:
    if isinstance(value, str) and value.strip().lower() in WEEKDAYS:
        return WEEKDAYS[value.strip().lower()]
    try:
        return _whole("weekly_day", value, 1, 7)
    except ValidationError:
        raise ValidationError(
            f"weekly_day must be 1-7 (Monday=1) or a day name like 'mon' or 'monday', "
            f"got {show(value)}"
        ) from None


def _locale(value: object) -> str:
    if not isinstance(value, str) or not LOCALE_PATTERN.fullmatch(value.strip()):
        raise ValidationError(f"locale must look like 'en' or 'pt-BR', got {show(value)}")
    return value.strip()


def clock(value: str) -> time | None:
    """`H:MM` or `HH:MM` (24-hour) as a time, or None when it is not one."""
    match = CLOCK_PATTERN.fullmatch(value.strip())
    if match is None or int(match[1]) > 23 or int(match[2]) > 59:
        return None
    return time(int(match[1]), int(match[2]))


def quiet_window(start: time, end: time) -> str:
    """Quiet hours as they are written and stored in imports: `22:00-07:00`."""
    if start == end:
        raise ValidationError("quiet_hours must not start and end at the same time")
    return f"{start:%H:%M}-{end:%H:%M}"


def parse_quiet_hours(text: str) -> tuple[time, time] | None:
    """The (start, end) of a normalised `quiet_hours` value, or None for none."""
    start, _, end = text.partition("-")
    first, last = clock(start), clock(end)
    return None if first is None or last is None else (first, last)


def _quiet_hours(value: object) -> str | None:
    if isinstance(value, str) and value.strip().lower() == "off":
        return None
    match = QUIET_HOURS_PATTERN.fullmatch(value.strip()) if isinstance(value, str) else None
    start = clock(f"{match[1]}:{match[2]}") if match else None
    end = clock(f"{match[3]}:{match[4]}") if match else None
    if start is None or end is None:
        raise ValidationError(f"quiet_hours must be like '22:00-07:00' or 'off', got {show(value)}")
    return quiet_window(start, end)


def muted_categories(value: object) -> tuple[str, ...]:
    """Category names as a sorted tuple without repeats, from a list or from text like
    `like, follow` (`''` or `[]`: none); ValidationError names the first bad one."""
    if isinstance(value, str):
        text = value.strip()
        items: list[object] = [] if text in ("", "[]") else [i.strip() for i in text.split(",")]
        items = [i for i in items if i != ""]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise ValidationError(
            "muted_categories must be a list of categories or text like 'like,follow', "
            f"got {json_type(value)}"
        )
    for item in items:
        if not isinstance(item, str) or not CATEGORY_PATTERN.fullmatch(item):
            raise ValidationError(f"muted_categories: {show(item)} is not a category name")
    names = tuple(sorted({str(item) for item in items}))
    if len(names) > MAX_MUTED:
        raise ValidationError(f"at most {MAX_MUTED} muted categories, got {len(names)}")
    return names


_CHECKS: Final[tuple[tuple[str, Callable[[object], object]], ...]] = (
    ("name", _name),
    ("cadence", _cadence),
    ("timezone", _timezone),
    ("send_hour", lambda v: _whole("send_hour", v, 0, 23)),
    ("weekly_day", _weekly_day),
    ("locale", _locale),
    ("muted_categories", muted_categories),
    ("quiet_hours", _quiet_hours),
)


def validate_recipient(row: object, *, require_email: bool = True) -> RecipientIn:
    """Validate one input row (user_id, and email unless not required) into a RecipientIn.

    A missing or null field is "not given" (default for a new recipient, kept for an
    existing one); a null or empty name is given and means "no name".
    """
    if type(row) is not dict and not isinstance(row, Mapping):
        raise ValidationError("a recipient must be a JSON object")
    if not row.keys() <= _FIELD_SET:
        raise ValidationError(unknown_fields(row.keys() - _FIELD_SET, RECIPIENT_FIELDS))
    email = row.get("email")
    given = ["email"] if require_email or email is not None else []
    person = RecipientIn(
        text_field("user_id", row.get("user_id")), _email(email) if given else None
    )
    for name, check in _CHECKS:
        value = row.get(name)
        if value is not None or (name == "name" and name in row):
            setattr(person, name, check(value))
            given.append(name)
    person.given = frozenset(given)
    return person


def _upsert_batch(conn: Connection, batch: Mapping[str, RecipientIn]) -> tuple[int, int, int]:
    """Upsert one batch; (created, updated, runs cancelled by schedule changes)."""
    # One statement per set of given fields: a file usually has one.
    shapes: dict[frozenset[str], int] = {}
    conn.execute(RECIPIENT_STAGE_CREATE)
    conn.execute(RECIPIENT_STAGE_TRUNCATE)
    with raw(conn).cursor() as cursor, cursor.copy(RECIPIENT_STAGE_COPY) as copy:
        for r in batch.values():
            shape = shapes.setdefault(r.given, len(shapes))
            row = (r.email, r.name, r.cadence, r.timezone, r.send_hour, r.weekly_day, r.locale)
            quiet = r.quiet_hours.split("-") if r.quiet_hours else (None, None)
            copy.write_row(
                (bucket_of(r.user_id), r.user_id, *row, list(r.muted_categories), *quiet, shape)
            )
    created = updated = cancelled = 0
    now = datetime.now(UTC)
    for given, shape in shapes.items():
        params: dict[str, Any] = {f"set_{name}": name in given for name in RECIPIENT_FIELDS[1:]}
        params |= {"shape": shape, "now": now}
        new, rescheduled = conn.execute(RECIPIENT_UPSERT_RESCHEDULING, params).one()
        _, changed = conn.execute(RECIPIENT_UPSERT_REST, params).one()
        created += new
        updated += len(rescheduled) + len(changed)
        cancelled += recipients.cancel_pending_runs_of(conn, rescheduled)
    return created, updated, cancelled


NEEDS_EMAIL: Final = "email is required for a new recipient"
# Refuses the row numbered (line, or index) with the reason.
Refuse = Callable[[int, str], None]
# A validated row, or the reason its line is bad, numbered by line (or index).
Numbered = tuple[int, "RecipientIn | str"]


def _store(conn: Connection, rows: Iterable[Numbered], refuse: Refuse) -> tuple[int, int, int]:
    """Upsert numbered rows in batches, all or none; a row without an email for a user who
    has no recipient yet (stored, or from an earlier row) is refused and left out, like a
    bad line. Bad lines go to `refuse` in line order, found in a batch or before it."""
    count = created = updated = 0
    pending: list[Numbered] = []
    for numbered in rows:
        pending.append(numbered)
        if len(pending) >= BATCH_ROWS:
            n, c, u = _store_batch(conn, pending, refuse)
            count, created, updated, pending = count + n, created + c, updated + u, []
    if pending:
        n, c, u = _store_batch(conn, pending, refuse)
        count, created, updated = count + n, created + c, updated + u
    return count, created, updated


def _store_batch(conn: Connection, rows: list[Numbered], refuse: Refuse) -> tuple[int, int, int]:
    # Rows without an email change an existing recipient: the batch asks for the stored
    # emails once (earlier batches' rows are stored by now, in this transaction).
    emailless = {r.user_id for _, r in rows if not isinstance(r, str) and r.email is None}
    stored = recipients.emails_of(conn, emailless) if emailless else {}
    count = 0
    batch: dict[str, RecipientIn] = {}
    for number, row in rows:
        if isinstance(row, str):
            refuse(number, row)
            continue
        # A user_id repeated in one batch becomes one row (a statement cannot update the
        # same row twice): the later row's given fields over the earlier's, exactly what
        # two statements do when the repeat falls in the next batch. Either way the rows
        # apply in file order, and each field ends with the last value given for it.
        earlier = batch.get(row.user_id)
        if row.email is None:
            known = stored.get(row.user_id) if earlier is None else earlier.email
            if known is None:
                refuse(number, NEEDS_EMAIL)
                continue
            # Not given, so not written; it only fills the insert half of the upsert,
            # which PostgreSQL checks for NOT NULL before it finds the conflict.
            row.email = known
        count += 1
        batch[row.user_id] = row if earlier is None else _merged(earlier, row)
    if not batch:
        return count, 0, 0
    created, updated, _ = _upsert_batch(conn, batch)
    return count, created, updated


def _merged(earlier: RecipientIn, later: RecipientIn) -> RecipientIn:
    """One row with the effect of upserting `earlier`, then `later`."""
    merged = RecipientIn(later.user_id, later.email, given=earlier.given | later.given)
    for name in RECIPIENT_FIELDS[1:]:
        source = later if name in later.given else earlier
        setattr(merged, name, getattr(source, name))
    return merged


def upsert_recipients(
    target: Connection | Engine, rows: Iterable[Mapping[str, Any] | RecipientIn]
) -> RecipientImport:
    """Validate and upsert recipients in batches, all or none; a bad row (or one without an
    email for a user with no recipient yet) raises ValidationError."""

    def validated() -> Iterator[Numbered]:
        for index, row in enumerate(rows):
            if isinstance(row, RecipientIn):
                yield index, row
                continue
            try:
                yield index, validate_recipient(row, require_email=False)
            except ValidationError as exc:
                raise ValidationError(f"rows[{index}]: {exc}") from None

    def refuse(index: int, reason: str) -> None:
        raise ValidationError(f"rows[{index}]: {reason}")

    with atomic(target) as conn:
        count, created, updated = _store(conn, validated(), refuse)
    return RecipientImport(rows=count, created=created, updated=updated, skipped=0)


def read_csv(lines: Iterable[bytes], source: str) -> Iterator[tuple[int, object, str | None]]:
    """Recipient rows from CSV with a header row (`digest.ingest.lines.read_csv`): the
    columns are recipient fields, user_id among them."""
    return input_lines.read_csv(lines, source, fields=RECIPIENT_FIELDS, required=("user_id",))


def _checked(records: Iterable[tuple[int, object, str | None]]) -> Iterator[Numbered]:
    """Each record validated (email optional), or the reason its line is bad."""
    for number, value, reason in records:
        if reason is not None:
            yield number, reason
            continue
        try:
            yield number, validate_recipient(value, require_email=False)
        except ValidationError as exc:
            yield number, str(exc)


def import_recipients(
    target: Connection | Engine,
    lines: Iterable[bytes],
    *,
    fmt: Format,
    source: str = "<input>",
    skip_bad: bool = False,
    on_bad: Callable[[BadLine], None] | None = None,
) -> RecipientImport:
    """Upsert recipients from JSON Lines or CSV, in one transaction, all or nothing by default.

    Like `digest.ingest.events.import_events`: any bad line raises BadInputError and nothing is
    written; with `skip_bad` the good lines are written and each bad one goes to `on_bad`.
    """
    bad = BadLines(source, on_bad if skip_bad else None)
    records = read_jsonl(lines) if fmt == "jsonl" else read_csv(lines, source)

    with atomic(target) as conn:
        # Unlike the events import, a failing file is still written (then rolled back):
        # whether a row without an email is bad depends on the rows stored before it.
        count, created, updated = _store(conn, _checked(records), bad.add)
        if bad.count and not skip_bad:
            raise bad.error()
    return RecipientImport(rows=count, created=created, updated=updated, skipped=bad.count)


def set_recipient(
    target: Connection | Engine, user_id: str | int, changes: Mapping[str, object]
) -> RecipientSet:
    """Create or update one recipient, changing only the fields in `changes`.

    A new recipient needs an email. A changed cadence, zone, hour or day cancels the
    user's pending runs in the same transaction; the count is reported.
    """
    uid = text_field("user_id", user_id)
    if not changes:
        raise ValidationError("nothing to change: give at least one field")
    with atomic(target) as conn:
        current = recipients.get(conn, uid, lock=True)
        if current is None and changes.get("email") is None:
            raise ValidationError(f"no recipient {uid!r} yet: an email is needed to create one")
        wanted = validate_recipient({**changes, "user_id": uid}, require_email=False)
        if wanted.email is None and current is not None:
            # Not given, so not written; only fills the insert half of the upsert, which a
            # row locked above can never take.
            wanted.email = current["email"]
        _, _, cancelled = _upsert_batch(conn, {uid: wanted})
    if current is None:
        return RecipientSet("created", {}, cancelled)
    diff: dict[str, tuple[object, object]] = {
        name: (_comparable(current[name]), getattr(wanted, name))
        for name in RECIPIENT_FIELDS
        if name in wanted.given and _comparable(current[name]) != getattr(wanted, name)
    }
    return RecipientSet("updated" if diff else "unchanged", diff, cancelled)


def _comparable(value: object) -> object:
    """A stored value as `RecipientIn` holds it (arrays come back as lists)."""
    return tuple(value) if isinstance(value, list) else value
