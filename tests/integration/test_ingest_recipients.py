"""Recipients in: `digest recipients import/set/show` and the upsert, on a real database."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from sqlalchemy import Engine, text

from digest.ingest.recipients import BATCH_ROWS, upsert_recipients
from digest.recipients import get_recipient

Invoke = Callable[..., Result]


@pytest.fixture
def run(digest_cli: Invoke) -> Invoke:
    """Invoke `digest recipients ...` against this test's database."""
    return functools.partial(digest_cli, "recipients")


def write_jsonl(path: Path, rows: list[Any], *, tail: str = "") -> Path:
    """Write rows as JSON Lines (plus raw `tail` text) and return the path."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail, encoding="utf-8")
    return path


def stored(engine: Engine) -> dict[str, dict[str, Any]]:
    """Every recipient row by user_id."""
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM recipients")).mappings().all()
    return {row["user_id"]: dict(row) for row in rows}


def add_pending_run(engine: Engine, user_id: str, status: str = "pending") -> None:
    """Insert a daily digest run for `user_id` in `status`, as the scheduler would."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO digest_runs (bucket, user_id, cadence, period_start, scheduled_for,"
                " status)"
                " VALUES (digest_bucket(:u), :u, 'daily', now(), now() + interval '1 hour', :s)"
            ),
            {"u": user_id, "s": status},
        )


def run_statuses(engine: Engine, user_id: str) -> list[str]:
    """Statuses of a user's runs, oldest first."""
    with engine.connect() as conn:
        return list(
            conn.execute(
                text("SELECT status FROM digest_runs WHERE user_id = :u ORDER BY id"),
                {"u": user_id},
            ).scalars()
        )


def test_import_jsonl_with_defaults(engine: Engine, run: Any, tmp_path: Path) -> None:
    """JSONL import stores int user_ids as text, normalises emails and fills the defaults."""
    path = write_jsonl(
        tmp_path / "people.jsonl",
        [
            {"user_id": 42, "email": "Ana@Example.COM", "name": "Ana <b>"},
            {
                "user_id": "b",
                "email": "bo@example.org",
                "cadence": "weekly",
                "timezone": "Asia/Tokyo",
                "send_hour": "7",
                "weekly_day": "fri",
                "locale": "pt-BR",
            },
        ],
    )
    result = run("import", str(path))
    assert result.exit_code == 0, result.output
    assert "2 recipients" in result.stdout
    assert "2 created, 0 updated, 0 unchanged" in result.stdout
    rows = stored(engine)
    assert {k: rows["42"][k] for k in ("email", "name", "cadence", "timezone")} == {
        "email": "Ana@example.com",
        "name": "Ana <b>",
        "cadence": "daily",
        "timezone": "UTC",
    }
    assert (rows["42"]["send_hour"], rows["42"]["weekly_day"], rows["42"]["locale"]) == (8, 1, "en")
    assert (rows["b"]["send_hour"], rows["b"]["weekly_day"], rows["b"]["locale"]) == (7, 5, "pt-BR")


def test_import_csv_with_bom_and_crlf(engine: Engine, run: Any, tmp_path: Path) -> None:
    """CSV with a BOM, CRLF, spaces and empty cells imports; empty cells mean defaults."""
    path = tmp_path / "people.csv"
    path.write_bytes(
        b"\xef\xbb\xbfuser_id, email ,name,cadence,weekly_day\r\n"
        b'1, one@example.com ,"Doe, Jane",weekly,sunday\r\n'
        b"2,two@example.com,,,\r\n"
        b"\r\n"
    )
    result = run("import", str(path))
    assert result.exit_code == 0, result.output
    rows = stored(engine)
    assert (rows["1"]["email"], rows["1"]["name"], rows["1"]["weekly_day"]) == (
        "one@example.com",
        "Doe, Jane",
        7,
    )
    assert (rows["2"]["name"], rows["2"]["cadence"], rows["2"]["weekly_day"]) == (None, "daily", 1)


def test_reimport_changes_nothing(engine: Engine, run: Any, tmp_path: Path) -> None:
    """Importing the same file again writes nothing and cancels no pending run."""
    rows = [{"user_id": i, "email": f"u{i}@example.com", "cadence": "weekly"} for i in range(50)]
    path = write_jsonl(tmp_path / "people.jsonl", rows)
    assert run("import", str(path)).exit_code == 0
    before = stored(engine)
    add_pending_run(engine, "7")
    again = run("import", str(path))
    assert again.exit_code == 0, again.output
    assert "0 created, 0 updated, 50 unchanged" in again.stdout
    assert stored(engine) == before
    assert run_statuses(engine, "7") == ["pending"]


def test_import_schedule_change_cancels_pending_runs(
    engine: Engine, run: Any, tmp_path: Path
) -> None:
    """A re-import that changes one user's cadence cancels only that user's pending run."""
    rows = [{"user_id": i, "email": f"u{i}@example.com"} for i in range(3)]
    assert run("import", str(write_jsonl(tmp_path / "a.jsonl", rows))).exit_code == 0
    add_pending_run(engine, "1")
    add_pending_run(engine, "2")
    rows[1]["cadence"] = "weekly"
    result = run("import", str(write_jsonl(tmp_path / "b.jsonl", rows)))
    assert "0 created, 1 updated, 2 unchanged" in result.stdout
    assert run_statuses(engine, "1") == ["cancelled"]
    assert run_statuses(engine, "2") == ["pending"]


def test_missing_field_keeps_the_stored_value(engine: Engine, run: Any, tmp_path: Path) -> None:
    """A field a file leaves out keeps an existing recipient's value instead of the default."""
    run("set", "5", "--email", "five@example.com", "--cadence", "weekly", "--send-hour", "6")
    path = write_jsonl(tmp_path / "p.jsonl", [{"user_id": 5, "email": "new@example.com"}])
    result = run("import", str(path))
    assert result.exit_code == 0, result.output
    row = stored(engine)["5"]
    assert (row["email"], row["cadence"], row["send_hour"]) == ("new@example.com", "weekly", 6)


def test_repeated_user_id_last_row_wins(engine: Engine, run: Any, tmp_path: Path) -> None:
    """A user_id listed twice: rows apply in order, each field ends with its last given value.

    (The cadence of the first row stays: the second row leaves cadence out, and a missing
    field keeps what is stored, whether the repeat lands in the same upsert batch or not.)
    """
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"user_id": 1, "email": "first@example.com", "cadence": "off"},
            {"user_id": 1, "email": "last@example.com"},
        ],
    )
    assert run("import", str(path)).exit_code == 0
    row = stored(engine)["1"]
    assert (row["email"], row["cadence"]) == ("last@example.com", "off")


def test_upsert_api_in_several_batches(engine: Engine) -> None:
    """upsert_recipients handles more rows than one batch, and repeats across batches."""
    rows = [{"user_id": i, "email": f"u{i}@example.com"} for i in range(BATCH_ROWS + 100)]
    result = upsert_recipients(engine, [*rows, {"user_id": 3, "email": "x@example.com"}])
    assert (result.created, result.updated) == (BATCH_ROWS + 100, 1)
    assert len(stored(engine)) == BATCH_ROWS + 100
    assert get_recipient(engine, 3) is not None
    assert get_recipient(engine, 3)["email"] == "x@example.com"  # type: ignore[index]


def person(**fields: Any) -> dict[str, Any]:
    """A valid recipient row, with `fields` added or replaced."""
    return {"user_id": 1, "email": "x@example.com", **fields}


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        (person(timezone="Mars/Olympus"), "unknown time zone 'Mars/Olympus'"),
        (person(timezone="localtime"), "unknown time zone 'localtime'"),
        (person(email="not-an-email"), "invalid email address 'not-an-email'"),
        ({"user_id": 1}, "email is required"),
        ({"email": "x@example.com"}, "user_id is required"),
        (person(user_id=True), "user_id must be a string"),
        (person(send_hour=24), "send_hour must be a whole number from 0 to 23, got 24"),
        (person(send_hour=7.5), "send_hour must be a whole number"),
        (person(weekly_day=0), "weekly_day must be 1-7 (Monday=1)"),
        (person(weekly_day="someday"), "weekly_day must be 1-7"),
        (person(cadence="hourly"), "cadence must be one of daily, weekly, off"),
        (person(name="A\r\nBcc: x"), "name contains a line break"),
        (person(locale="english!"), "locale must look like"),
        (person(cadense="daily"), "unknown field 'cadense'"),
    ],
)
def test_bad_row_fails_the_import(
    engine: Engine, run: Any, tmp_path: Path, row: dict[str, Any], reason: str
) -> None:
    """A bad row fails the whole import with `FILE:LINE: reason`; nothing is written."""
    good = {"user_id": "ok", "email": "ok@example.com"}
    path = write_jsonl(tmp_path / "people.jsonl", [good, row])
    result = run("import", str(path))
    assert result.exit_code == 1
    assert result.stderr.startswith(f"digest: error: {path}: 1 bad line, nothing was imported")
    assert f"{path}:2: {reason}" in result.stderr
    assert stored(engine) == {}


def test_skip_bad_imports_the_good_rows(engine: Engine, run: Any, tmp_path: Path) -> None:
    """--skip-bad writes the good rows, reports bad ones by line on stderr, exits 0."""
    path = tmp_path / "people.csv"
    path.write_text(
        "user_id,email,timezone\n"
        "1,one@example.com,Europe/Berlin\n"
        "2,two@example.com,Europe/Nowhere\n"
        "3,three@example.com\n"
        "4,four@example.com,UTC\n"
    )
    result = run("import", "--skip-bad", str(path))
    assert result.exit_code == 0, result.output
    assert "2 bad lines skipped" in result.stdout
    assert f"digest: skipped {path}:3: unknown time zone 'Europe/Nowhere'" in result.stderr
    assert f"digest: skipped {path}:4: has 2 fields, the header has 3" in result.stderr
    assert sorted(stored(engine)) == ["1", "4"]


def test_csv_unknown_column_fails_before_writing(engine: Engine, run: Any, tmp_path: Path) -> None:
    """An unknown CSV column fails the whole file, naming the column."""
    path = tmp_path / "people.csv"
    path.write_text("user_id,email,signup\n1,one@example.com,2020\n")
    result = run("import", str(path))
    assert result.exit_code == 1
    assert f"digest: error: {path}:1: unknown column 'signup'" in result.stderr
    assert stored(engine) == {}


def test_format_from_option_or_extension(engine: Engine, run: Any, tmp_path: Path) -> None:
    """An unknown extension needs --format; stdin defaults to JSON Lines."""
    path = tmp_path / "people.txt"
    path.write_text("user_id,email\n1,one@example.com\n")
    unknown = run("import", str(path))
    assert unknown.exit_code == 1
    assert "give --format csv|jsonl" in unknown.stderr
    assert run("import", "--format", "csv", str(path)).exit_code == 0
    line = json.dumps({"user_id": 2, "email": "two@example.com"}).encode()
    assert run("import", "-", stdin=line).exit_code == 0
    assert sorted(stored(engine)) == ["1", "2"]


def test_set_creates_then_changes_only_given_fields(engine: Engine, run: Any) -> None:
    """`recipients set` needs --email for a new user; later calls change only given fields."""
    missing = run("set", "9", "--cadence", "weekly")
    assert missing.exit_code == 1
    assert "an email is needed to create one" in missing.stderr
    created = run("set", "9", "--email", "nine@example.com", "--name", "Nine")
    assert created.exit_code == 0, created.output
    assert created.stdout.strip() == "created recipient 9"
    updated = run("set", "9", "--send-hour", "18", "--weekly-day", "tue")
    assert updated.stdout.strip() == "updated recipient 9: send_hour 8 -> 18, weekly_day 1 -> 2"
    row = stored(engine)["9"]
    assert (row["email"], row["name"], row["cadence"], row["send_hour"]) == (
        "nine@example.com",
        "Nine",
        "daily",
        18,
    )
    same = run("set", "9", "--send-hour", "18")
    assert same.stdout.strip() == "recipient 9 unchanged"
    cleared = run("set", "9", "--name", "")
    assert cleared.exit_code == 0, cleared.output
    assert stored(engine)["9"]["name"] is None


def test_set_cadence_cancels_pending_runs(engine: Engine, run: Any) -> None:
    """Changing cadence cancels the user's pending run, leaves a processing one alone."""
    run("set", "u1", "--email", "u1@example.com")
    add_pending_run(engine, "u1")
    add_pending_run(engine, "u1", status="processing")
    result = run("set", "u1", "--cadence", "weekly")
    assert result.exit_code == 0, result.output
    assert "cadence daily -> weekly" in result.stdout
    assert "cancelled 1 pending run, the next" in result.stdout
    assert run_statuses(engine, "u1") == ["cancelled", "processing"]


def test_set_refuses_bad_values(run: Any) -> None:
    """`recipients set` reports an invalid value in one line and changes nothing."""
    result = run("set", "1", "--email", "a@example.com", "--timezone", "Nowhere/City")
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "digest: error: unknown time zone 'Nowhere/City' "
        "(use an IANA name like 'Europe/Berlin' or 'UTC')"
    )


def test_show_prints_the_row(run: Any) -> None:
    """`recipients show` prints the stored row, or fails for an unknown user."""
    run("set", "7", "--email", "seven@example.com", "--timezone", "America/New_York")
    shown = run("show", "7")
    assert shown.exit_code == 0, shown.output
    assert "email             seven@example.com" in shown.stdout
    assert "timezone          America/New_York" in shown.stdout
    as_json = json.loads(run("show", "7", "--json").stdout)
    assert as_json["send_hour"] == 8
    missing = run("show", "8")
    assert missing.exit_code == 1
    assert "digest: error: no recipient '8'" in missing.stderr


# -- muted categories and quiet hours ------------------------------------------------------


def test_import_muted_categories_and_quiet_hours(engine: Engine, run: Any, tmp_path: Path) -> None:
    """JSONL lists or comma-separated text of categories, and `HH:MM-HH:MM` quiet hours,
    are stored; `[]` and `off` clear them; a row without them keeps what is stored."""
    path = write_jsonl(
        tmp_path / "people.jsonl",
        [
            {
                "user_id": "a",
                "email": "a@example.com",
                "muted_categories": ["like", "follow", "like"],
                "quiet_hours": "22:00-07:00",
            },
            {"user_id": "b", "email": "b@example.com", "muted_categories": "post.shared, like"},
        ],
    )
    assert run("import", str(path)).exit_code == 0
    rows = stored(engine)
    assert rows["a"]["muted_categories"] == ["follow", "like"]
    assert (str(rows["a"]["quiet_start"]), str(rows["a"]["quiet_end"])) == ("22:00:00", "07:00:00")
    assert rows["b"]["muted_categories"] == ["like", "post.shared"]
    assert rows["b"]["quiet_start"] is None

    again = run("import", str(path))
    assert "0 created, 0 updated, 2 unchanged" in again.stdout

    csv_path = tmp_path / "people.csv"
    csv_path.write_text(
        "user_id,email,muted_categories,quiet_hours\n"
        "a,a@example.com,[],off\n"
        'b,b@example.com,,"8:30-9:15"\n'
    )
    result = run("import", str(csv_path))
    assert result.exit_code == 0, result.output
    rows = stored(engine)
    assert (rows["a"]["muted_categories"], rows["a"]["quiet_start"]) == ([], None)
    assert rows["b"]["muted_categories"] == ["like", "post.shared"]  # empty cell: kept
    assert (str(rows["b"]["quiet_start"]), str(rows["b"]["quiet_end"])) == ("08:30:00", "09:15:00")


def test_import_of_muted_categories_and_quiet_hours_cancels_only_with_the_schedule(
    engine: Engine, run: Any, tmp_path: Path
) -> None:
    """An import that changes only muted categories or quiet hours cancels no pending run;
    one that changes them with the cadence cancels the run and stores every field."""
    rows: list[dict[str, Any]] = [{"user_id": u, "email": f"{u}@example.com"} for u in "abc"]
    assert run("import", str(write_jsonl(tmp_path / "a.jsonl", rows))).exit_code == 0
    for user in "abc":
        add_pending_run(engine, user)
    rows[0]["muted_categories"] = ["like"]
    rows[1]["quiet_hours"] = "22:00-07:00"
    rows[2] |= {"cadence": "weekly", "muted_categories": ["follow"], "quiet_hours": "23:00-06:00"}
    result = run("import", str(write_jsonl(tmp_path / "b.jsonl", rows)))
    assert "0 created, 3 updated, 0 unchanged" in result.stdout
    assert [run_statuses(engine, u) for u in "abc"] == [["pending"], ["pending"], ["cancelled"]]
    got = stored(engine)
    assert (got["a"]["muted_categories"], str(got["b"]["quiet_start"])) == (["like"], "22:00:00")
    assert (got["c"]["cadence"], got["c"]["muted_categories"], str(got["c"]["quiet_end"])) == (
        "weekly",
        ["follow"],
        "06:00:00",
    )


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"quiet_hours": "22:00"}, "quiet_hours must be like '22:00-07:00' or 'off', got '22:00'"),
        ({"quiet_hours": "24:00-07:00"}, "quiet_hours must be like '22:00-07:00'"),
        ({"quiet_hours": "07:00-07:00"}, "quiet_hours must not start and end at the same time"),
        ({"quiet_hours": 22}, "quiet_hours must be like '22:00-07:00' or 'off', got 22"),
        ({"muted_categories": ["Likes!"]}, "muted_categories: 'Likes!' is not a category name"),
        ({"muted_categories": {"like": True}}, "muted_categories must be a list of categories"),
        ({"muted_categories": [f"c{n}" for n in range(101)]}, "at most 100 muted categories"),
    ],
)
def test_bad_muted_categories_or_quiet_hours_fail_the_import(
    engine: Engine, run: Any, tmp_path: Path, fields: dict[str, Any], reason: str
) -> None:
    """A bad quiet_hours or muted_categories value fails the import with one reason per line."""
    path = write_jsonl(tmp_path / "people.jsonl", [{"user_id": "1", "email": "a@x.org", **fields}])
    result = run("import", str(path))
    assert result.exit_code == 1
    assert f"{path}:1: {reason}" in result.stderr
    assert stored(engine) == {}


def test_set_and_show_quiet_hours_and_muted_categories(engine: Engine, run: Any) -> None:
    """`recipients set --quiet-hours/--muted-categories` change them ('off' and '' clear
    them) without cancelling runs; `recipients show` prints them as they were given."""
    run("set", "9", "--email", "nine@example.com")
    add_pending_run(engine, "9")
    changed = run("set", "9", "--quiet-hours", "22:00-07:00", "--muted-categories", "like,follow")
    assert changed.exit_code == 0, changed.output
    assert changed.stdout.strip() == (
        "updated recipient 9: muted_categories none -> follow,like, quiet_hours off -> 22:00-07:00"
    )
    assert run_statuses(engine, "9") == ["pending"]
    shown = run("show", "9")
    assert "muted_categories  follow,like" in shown.stdout
    assert "quiet_hours       22:00-07:00" in shown.stdout
    as_json = json.loads(run("show", "9", "--json").stdout)
    assert (as_json["muted_categories"], as_json["quiet_hours"]) == (
        ["follow", "like"],
        "22:00-07:00",
    )
    cleared = run("set", "9", "--quiet-hours", "off", "--muted-categories", "")
    assert cleared.stdout.strip() == (
        "updated recipient 9: muted_categories follow,like -> none, quiet_hours 22:00-07:00 -> off"
    )
    row = stored(engine)["9"]
    assert (row["muted_categories"], row["quiet_start"], row["quiet_end"]) == ([], None, None)


def test_set_refuses_bad_quiet_hours(engine: Engine, run: Any) -> None:
    """A bad --quiet-hours is one line, exit 1, and changes nothing."""
    run("set", "9", "--email", "nine@example.com")
    result = run("set", "9", "--quiet-hours", "late")
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "digest: error: quiet_hours must be like '22:00-07:00' or 'off', got 'late'"
    )
    assert stored(engine)["9"]["quiet_start"] is None
