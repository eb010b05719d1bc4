"""Events in: the producer API, bulk COPY, and `digest events add/import` on a real database."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text

from digest.errors import ValidationError
from digest.ingest.events import EventIn, record_event, record_events, validate_event
from digest.ingest.store import CHUNK_ROWS

NASTY = '<script>alert("x")</script> & \'quotes\' "double" <b>bold</b>'


Invoke = Callable[..., Result]


@pytest.fixture
def run(digest_cli: Invoke) -> Invoke:
    """Invoke `digest events ...` against this test's database."""
    return functools.partial(digest_cli, "events")


def event(i: int, **extra: Any) -> dict[str, Any]:
    """A valid event for user u{i % 7}."""
    return {
        "user_id": f"u{i % 7}",
        "category": "comment",
        "entity_type": "post",
        "entity_id": str(i % 5),
        **extra,
    }


def write_jsonl(path: Path, rows: list[Any], *, tail: str = "") -> Path:
    """Write rows as JSON Lines (plus raw `tail` text) and return the path."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail, encoding="utf-8")
    return path


def count(engine: Engine) -> int:
    """How many events are stored."""
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM digest_events")).scalar_one())


def test_import_stores_every_field(engine: Engine, run: Any, tmp_path: Path) -> None:
    """An import stores each line's fields; naive created_at is UTC; HTML stays verbatim."""
    path = write_jsonl(
        tmp_path / "events.jsonl",
        [
            event(1, actor_id=9, payload={"title": NASTY}, created_at="2026-01-02T03:04:05"),
            event(2, created_at="2026-01-02T03:04:05+02:00", event_key="k2"),
            event(3),
        ],
    )
    result = run("import", str(path))
    assert result.exit_code == 0, result.output
    assert "3 events in " in result.stdout
    assert "/s): 3 new, 0 already there" in result.stdout
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT user_id, actor_id, payload, created_at, event_key "
                "FROM digest_events ORDER BY entity_id"
            )
        ).all()
    assert rows[0] == ("u1", "9", {"title": NASTY}, datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), None)
    assert rows[1].created_at == datetime(2026, 1, 2, 1, 4, 5, tzinfo=UTC)
    assert rows[1].event_key == "k2"
    assert rows[2].payload == {}
    assert abs(rows[2].created_at - datetime.now(UTC)) < timedelta(minutes=5)


def test_import_ignores_known_event_keys(engine: Engine, run: Any, tmp_path: Path) -> None:
    """Keyed events repeated in a file or re-imported are stored once; the summary says so."""
    rows = [event(i, event_key=f"k{i}") for i in range(10)] + [event(3, event_key="k3")]
    path = write_jsonl(tmp_path / "keyed.jsonl", rows)
    first = run("import", str(path))
    assert first.exit_code == 0, first.output
    assert "11 events in " in first.stdout
    assert "10 new, 1 already there" in first.stdout
    again = run("import", str(path))
    assert again.exit_code == 0, again.output
    assert "0 new, 11 already there" in again.stdout
    assert count(engine) == 10


def test_import_tolerates_bom_crlf_and_blank_lines(
    engine: Engine, run: Any, tmp_path: Path
) -> None:
    """A UTF-8 BOM on line 1, CRLF line ends and blank lines load without complaint."""
    body = "\r\n".join([json.dumps(event(1)), "", "   ", json.dumps(event(2)), ""])
    path = tmp_path / "windows.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())
    result = run("import", str(path))
    assert result.exit_code == 0, result.output
    assert count(engine) == 2


def test_import_reads_stdin(engine: Engine, run: Any) -> None:
    """`-` reads the events from standard input."""
    result = run("import", "-", stdin=(json.dumps(event(1)) + "\n").encode())
    assert result.exit_code == 0, result.output
    assert "<stdin>: 1 event in " in result.stdout
    assert count(engine) == 1


def test_bad_last_line_loads_nothing(engine: Engine, run: Any, tmp_path: Path) -> None:
    """All or nothing: a bad final line after whole COPY chunks leaves the table empty."""
    good = [event(i, event_key=f"k{i}") for i in range(CHUNK_ROWS + 10)] + [event(1)]
    path = write_jsonl(tmp_path / "events.jsonl", good, tail='{"user_id": "u1", "payload": [1]\n')
    result = run("import", str(path))
    assert result.exit_code == 1
    line = len(good) + 1
    assert result.stderr.splitlines()[0].startswith(
        "digest: error: " + f"{path}: 1 bad line, nothing was imported"
    )
    assert f"{path}:{line}: invalid JSON" in result.stderr
    assert count(engine) == 0


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"user_id": "u1", ', "invalid JSON: Expecting property name"),
        ("[1, 2]", "an event must be a JSON object, got an array"),
        (json.dumps(event(1, payload=[1])), "payload must be a JSON object, got an array"),
        (json.dumps(event(1, payload="x")), "payload must be a JSON object, got a string"),
        (json.dumps(event(1, category="Bad Category")), "category must be a name"),
        (json.dumps(event(1, category="")), "category must be a name"),
        (json.dumps(event(1, payoad={})), "unknown field 'payoad'"),
        (json.dumps({"category": "comment"}), "user_id is required"),
        (json.dumps(event(1, user_id="")), "user_id must not be empty"),
        (json.dumps(event(1, user_id=" 42")), "user_id has leading or trailing whitespace"),
        (json.dumps(event(1, entity_id=1.5)), "entity_id must be a string, got a number"),
        (json.dumps(event(1, created_at="yesterday")), "created_at must be an ISO 8601 time"),
        (json.dumps(event(1, created_at=1700000000)), "created_at must be an ISO 8601 string"),
        (json.dumps(event(1, actor_id="a\u0000b")), "actor_id contains a NUL character"),
        (json.dumps(event(1, payload={"t": "a\u0000b"})), "payload contains a NUL character"),
        (json.dumps(event(1, entity_type="x" * 1001)), "entity_type is longer than 1000"),
        (
            json.dumps(event(1, payload={"t": "x" * 70_000})),
            "payload is 70008 bytes serialized, over the 64 KB",
        ),
        ('{"user_id": "\\ud800", "category": "c"}', "user_id is not valid Unicode"),
        ("\ufeff" + json.dumps(event(1)), "byte order mark (BOM) is only allowed at the start"),
    ],
)
def test_bad_line_is_named_with_its_reason(
    engine: Engine, run: Any, tmp_path: Path, line: str, reason: str
) -> None:
    """Each kind of bad line fails the import with `FILE:LINE: reason` and stores nothing."""
    path = write_jsonl(tmp_path / "events.jsonl", [event(1)], tail=line + "\n")
    result = run("import", str(path))
    assert result.exit_code == 1
    assert f"{path}:2: {reason}" in result.stderr
    assert count(engine) == 0


def test_many_bad_lines_are_listed_up_to_20(run: Any, tmp_path: Path) -> None:
    """The failure lists the first 20 bad lines and counts the rest."""
    path = write_jsonl(tmp_path / "events.jsonl", [event(1)], tail="nope\n" * 25)
    result = run("import", str(path))
    assert result.exit_code == 1
    assert "25 bad lines, nothing was imported" in result.stderr
    assert f"{path}:21: invalid JSON" in result.stderr
    assert f"{path}:22:" not in result.stderr
    assert result.stderr.rstrip().endswith("and 5 more")


def test_skip_bad_loads_the_good_lines(engine: Engine, run: Any, tmp_path: Path) -> None:
    """--skip-bad stores the good lines, reports each bad one on stderr and exits 0."""
    path = tmp_path / "mixed.jsonl"
    path.write_text(
        "\n".join([json.dumps(event(1)), "{oops", json.dumps(event(2)), "[]", json.dumps(event(3))])
    )
    result = run("import", "--skip-bad", str(path))
    assert result.exit_code == 0, result.output
    assert ": 3 new, 0 already there; 2 bad lines skipped" in result.stdout
    assert f"digest: skipped {path}:2: invalid JSON" in result.stderr
    assert f"digest: skipped {path}:4: an event must be a JSON object" in result.stderr
    assert count(engine) == 3


def test_category_allow_list(engine: Engine, run: Any, tmp_path: Path, db_url: str) -> None:
    """With DIGEST_CATEGORIES set, another category is refused, naming the allowed ones."""
    path = write_jsonl(tmp_path / "events.jsonl", [event(1), event(2, category="share")])
    result = run("import", str(path), env={"DIGEST_CATEGORIES": "comment,like"})
    assert result.exit_code == 1
    assert f"{path}:2: unknown category 'share' (allowed: comment, like)" in result.stderr
    assert count(engine) == 0


def test_events_add_records_once_per_key(engine: Engine, run: Any) -> None:
    """`events add --key` records the event once; the second call says it was already there."""
    args = ["add", "--user", "42", "--category", "comment", "--entity-type", "post"]
    args += ["--entity-id", "7", "--actor", "ana", "--payload", json.dumps({"t": NASTY})]
    args += ["--created-at", "2026-03-01T10:00:00Z", "--key", "evt-1"]
    first = run(*args)
    assert first.exit_code == 0, first.output
    assert first.stdout.startswith("recorded event ")
    second = run(*args)
    assert second.exit_code == 0, second.output
    assert "already recorded" in second.stdout
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT user_id, actor_id, payload FROM digest_events")).all()
    assert stored == [("42", "ana", {"t": NASTY})]


@pytest.mark.parametrize(
    ("payload", "message"),
    [("{nope", "--payload is not valid JSON"), ("[1]", "--payload must be a JSON object")],
)
def test_events_add_refuses_bad_payload(run: Any, payload: str, message: str) -> None:
    """`events add` with a payload that is not a JSON object fails with one clear line."""
    result = run(
        "add", "--user", "1", "--category", "c", "--entity-type", "t", "--entity-id", "1",
        "--payload", payload,
    )  # fmt: skip
    assert result.exit_code == 1
    assert f"digest: error: {message}" in result.stderr


def test_record_event_returns_id_or_none(engine: Engine) -> None:
    """record_event returns the new id, and None for a repeated event_key of the same user."""
    common: dict[str, Any] = {"category": "comment", "entity_type": "post", "entity_id": 1}
    first = record_event(engine, user_id=1, event_key="k", categories=None, **common)
    assert isinstance(first, int)
    assert record_event(engine, user_id=1, event_key="k", categories=None, **common) is None
    other = record_event(engine, user_id=2, event_key="k", categories=None, **common)
    assert isinstance(other, int)
    assert other != first
    assert count(engine) == 2


def test_record_event_joins_the_callers_transaction(engine: Engine) -> None:
    """With a Connection, the event commits or rolls back with the caller's transaction."""
    with engine.connect() as conn:
        record_event(conn, user_id=1, category="c", entity_type="t", entity_id=1, categories=None)
        conn.rollback()
    assert count(engine) == 0
    with engine.begin() as conn:
        record_event(conn, user_id=1, category="c", entity_type="t", entity_id=1, categories=None)
    assert count(engine) == 1


def test_record_event_uses_the_environment_allow_list(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """By default the API applies DIGEST_CATEGORIES, like the command line, as it is at
    each call (the parsed list is cached by the variable's text)."""
    monkeypatch.setenv("DIGEST_CATEGORIES", "comment,like")
    with pytest.raises(match="unknown category 'share'"):
        record_event(engine, user_id=1, category="share", entity_type="t", entity_id=1)
    assert record_event(engine, user_id=1, category="like", entity_type="t", entity_id=1)
    monkeypatch.setenv("DIGEST_CATEGORIES", "share")
    assert record_event(engine, user_id=1, category="share", entity_type="t", entity_id=1)
    with pytest.raises(match="unknown category 'like'"):
        record_event(engine, user_id=1, category="like", entity_type="t", entity_id=1)


def test_record_events_copies_thousands(engine: Engine) -> None:
    """record_events stores mappings and EventIn by COPY; keyed duplicates are not counted."""
    rows: list[dict[str, Any] | EventIn] = [
        event(i, payload={"n": i, "html": NASTY}) for i in range(3000)
    ]
    rows += [
        EventIn(user_id=i, category="like", entity_type="photo", entity_id=i) for i in range(2000)
    ]
    rows += [event(i, user_id="u1", event_key=f"k{i % 1500}") for i in range(2000)]  # 500 again
    assert record_events(engine, rows, categories=None) == 6500
    assert record_events(engine, rows[-2000:], categories=None) == 0
    with engine.connect() as conn:
        assert count(engine) == 6500
        payload = conn.execute(
            text("SELECT payload FROM digest_events WHERE payload ->> 'n' = '2999'")
        ).scalar_one()
    assert payload == {"n": 2999, "html": NASTY}


def test_keyed_duplicates_across_chunks(engine: Engine) -> None:
    """A key repeated in a later staging chunk is ignored; keyless rows around it all load."""
    keyed = [event(i, user_id="u1", event_key=f"k{i}") for i in range(CHUNK_ROWS)]
    rows = [event(1), *keyed, event(2), *keyed[:300], event(3)]
    assert record_events(engine, rows, categories=None) == CHUNK_ROWS + 3
    assert count(engine) == CHUNK_ROWS + 3


def test_record_events_is_all_or_nothing(engine: Engine) -> None:
    """A bad row makes record_events store nothing and leaves a caller's transaction usable."""
    rows: list[dict[str, Any]] = [event(i) for i in range(CHUNK_ROWS + 5)] + [event(1, payload=1)]
    with pytest.raises(match=rf"rows\[{CHUNK_ROWS + 5}\]: payload must be"):
        record_events(engine, rows, categories=None)
    assert count(engine) == 0
    with engine.begin() as conn:
        record_event(conn, user_id=1, category="c", entity_type="t", entity_id=1, categories=None)
        with pytest.raises(ValidationError):
            record_events(conn, rows, categories=None)
        assert record_events(conn, rows[:3], categories=None) == 3
    assert count(engine) == 4


# The characters COPY's text format must escape, and others that JSON or COPY treat specially.
COPY_SPECIAL = st.sampled_from(["\\", "\t", "\n", "\r", "\x00", '"', "é", "\u2028", "\ud800"])
COPY_TEXT = st.text(st.characters() | COPY_SPECIAL, max_size=10)
# Ids that validation lets through hold backslashes ("\\N", "\\." too) but no control characters.
IDS = st.text(st.characters(exclude_categories=("Cc", "Cs")) | st.just("\\"), min_size=1)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.just(2**64) | st.floats() | COPY_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(COPY_TEXT, inner, max_size=3),
    max_leaves=12,
)
PAYLOADS = st.dictionaries(COPY_TEXT | st.integers(), JSON_VALUES, max_size=4)
PAYLOAD_FROM_JSON = text(
    "SELECT CAST(ref AS jsonb)::text FROM unnest(CAST(:refs AS text[])) WITH ORDINALITY r(ref, n) "
    "ORDER BY n"
)
REFERENCE = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    st.lists(
        st.fixed_dictionaries(
            {"user_id": IDS, "entity_type": IDS, "payload": PAYLOADS},
            optional={"actor_id": IDS, "event_key": IDS},
        ),
        min_size=1,
        max_size=20,
    )
)
def test_copy_stores_fields_and_payloads_exactly(
    engine: Engine, drafts: list[dict[str, Any]]
) -> None:
    """COPY stores ids with backslashes as given and each payload as the jsonb of json's text."""
    rows = []
    for number, draft in enumerate(drafts):
        row = {**draft, "category": "comment", "entity_id": number}
        if "event_key" in row:  # unique, or a repeat would (rightly) be ignored
            row["event_key"] += str(number)
        try:
            validate_event(row)
        except ValidationError:  # NaN, NUL, lone surrogates, padded ids: refused as before
            continue
        rows.append(row)
    with engine.connect() as conn:
        assert record_events(conn, rows, categories=None) == len(rows)
        stored = conn.execute(
            text(
                "SELECT user_id, entity_type, actor_id, event_key, payload::text "
                "FROM digest_events ORDER BY CAST(entity_id AS int)"
            )
        ).all()
        refs = [REFERENCE.encode(row["payload"]) for row in rows]
        expected = conn.execute(PAYLOAD_FROM_JSON, {"refs": refs}).scalars().all()
        conn.rollback()
    assert [tuple(row)[:4] for row in stored] == [
        (row["user_id"], row["entity_type"], row.get("actor_id"), row.get("event_key"))
        for row in rows
    ]
    assert [row.payload for row in stored] == expected


def test_rows_without_created_at_get_the_transactions_now(engine: Engine) -> None:
    """created_at left out is exactly now(), whatever the session's time zone; given is kept."""
    given_at = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL TIME ZONE 'Asia/Kathmandu'"))  # +05:45
        rows = [event(1), event(2, created_at=given_at), event(3, event_key="k")]
        assert record_events(conn, rows, categories=None) == 3
        stored = conn.execute(
            text("SELECT created_at = now() FROM digest_events ORDER BY entity_id")
        ).scalars()
        assert list(stored) == [True, False, True]
    with engine.connect() as conn:
        moment = conn.execute(text("SELECT created_at FROM digest_events WHERE entity_id = '2'"))
        assert moment.scalar_one() == given_at
