"""The CLI facing hostile text, bad settings and a fresh machine: control characters from
remote servers, passwords in URLs, plain-HTTP links in real mail, a database never
migrated, the data folder, outbox names across databases, and odd option values."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from digest import migrate
from digest.cli import cli
from digest.db import libpq_url, make_engine

# What a hostile SMTP server or SES diagnosticCode could hold: a window-title OSC, a
# screen clear, colour, CRLF, a C1 CSI and a right-to-left override.
HOSTILE = "550 \x1b]0;owned\x07\x1b[2J\x1b[31mred\r\nnext \x9b1m\u202edesrever"
RAW_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
NO_SCHEMA = "digest: error: the database has no digest schema yet: run `digest migrate`"


def sql(engine: Engine, statement: str, **params: Any) -> None:
    with engine.begin() as conn:
        conn.execute(text(statement), params)


def database_url(server_url: str, name: str) -> str:
    return libpq_url(make_url(server_url).set(database=name).render_as_string(False))


@pytest.fixture
def make_database(server_url: str, template_db: str) -> Iterator[Any]:
    """Creates databases on the test server (migrated or empty), dropped afterwards."""
    made: list[str] = []

    def make(*, migrated: bool) -> str:
        name = f"digest_h_{uuid.uuid4().hex[:12]}"
        template = f' TEMPLATE "{template_db}"' if migrated else ""
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"{template}')
        made.append(name)
        return database_url(server_url, name)

    yield make
    with psycopg.connect(server_url, autocommit=True) as admin:
        for name in made:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def invoke(url: str, *args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env={"DIGEST_DATABASE_URL": url, **(env or {})})


def one_error_line(result: Result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("digest: error: ")
    assert "unexpected" not in lines[0]
    return lines[0]


# -- 9: remote text reaches the terminal without its control characters --------------------


def hostile_history(engine: Engine) -> None:
    sql(
        engine,
        "INSERT INTO recipients (bucket, user_id, email, timezone) "
        "VALUES (digest_bucket('1'), '1', 'ana@example.com', 'UTC')",
    )
    sql(
        engine,
        """
        INSERT INTO digest_runs (bucket, user_id, cadence, period_start, scheduled_for, status,
                                 attempt, completed_at, last_error)
        VALUES (digest_bucket('1'), '1', 'daily', '2026-11-23', '2026-11-23', 'failed', 1,
                '2026-11-23 00:01', :reason)
        """,
        reason=HOSTILE,
    )
    sql(
        engine,
        """
        INSERT INTO deliveries (bucket, run_id, user_id, recipient, transport, message_id,
                                provider_message_id, attempt, status, reason, created_at)
        SELECT bucket, id, '1', 'ana@example.com', 'smtp', '<m@digest>', :provider, 1, 'bounced',
               :reason, '2026-11-23 00:01+00'
          FROM digest_runs
        """,
        reason=HOSTILE,
        provider="id\x1b[8m",
    )
    sql(
        engine,
        "INSERT INTO suppressions (email, reason, source) VALUES ('ana@example.com', :r, 'ses')",
        r=HOSTILE,
    )


# On a terminal rich draws a table, its own styles as SGR sequences (stripped before the
# check): a raw sequence from the data would leave its literal escape out of the output.
TERMINAL = {"TTY_COMPATIBLE": "1"}
RICH_STYLE = re.compile("\x1b\\[[0-9;]*m")


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (("deliveries",), {}),
        (("deliveries",), TERMINAL),
        (("why", "--user", "1"), {}),
        (("suppress", "list"), {}),
    ],
    ids=["deliveries-piped", "deliveries-table", "why", "suppress-list"],
)
def test_remote_text_is_printed_without_control_characters(
    digest_cli: Any, engine: Engine, args: tuple[str, ...], env: dict[str, str]
) -> None:
    """A bounce reason full of escape sequences shows them as visible text, inert."""
    hostile_history(engine)
    result = digest_cli(*args, env={"COLUMNS": "400", **env})
    assert result.exit_code == 0, result.output
    output = RICH_STYLE.sub("", result.output) if env else result.output
    assert not RAW_CONTROL.search(output), repr(output)
    assert "\\x1b[31mred" in output
    assert "\\u202edesrever" in output


@pytest.mark.parametrize(
    "args",
    [("deliveries", "--json"), ("why", "--user", "1", "--json"), ("suppress", "list", "--json")],
    ids=["deliveries", "why", "suppress-list"],
)
def test_json_output_escapes_control_characters_and_keeps_the_text(
    digest_cli: Any, engine: Engine, args: tuple[str, ...]
) -> None:
    """--json prints no raw control character yet gives back the reason exactly as stored."""
    hostile_history(engine)
    result = digest_cli(*args)
    assert result.exit_code == 0, result.output
    assert not RAW_CONTROL.search(result.output)
    assert HOSTILE in strings(json.loads(result.output))


def strings(value: Any) -> list[str]:
    """Every text inside a JSON value."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return [text for item in value for text in strings(item)]
    return []


# -- 10: passwords in database URLs are never echoed -----------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:Hunter2@127.0.0.1:notaport/db",
        "postgresql://app:Hunter2@[::1/db",
        "host=127.0.0.1 password=Hunter2 port=x",
    ],
)
def test_database_url_errors_hide_the_password(url: str) -> None:
    """A bad DIGEST_DATABASE_URL is named in the error without its password."""
    line = one_error_line(invoke(url, "stats"))
    assert "Hunter2" not in line
    assert "127.0.0.1" in line or "[::1" in line


# -- 12 and 14: known transport names, and HTTPS links for real mail ----------------------


@pytest.mark.parametrize("transport", ["smtp", "ses", "file,smtp"])
def test_real_mail_with_an_http_base_url_is_refused_at_start(db_url: str, transport: str) -> None:
    """smtp/ses with an http:// DIGEST_BASE_URL stop in one line before any process starts."""
    env = {
        "DIGEST_SECRET_KEY": "k",
        "DIGEST_BASE_URL": "http://example.com",
        "DIGEST_SES_REGION": "eu-west-1",
    }
    line = one_error_line(invoke(db_url, "work", "--drain", "--transport", transport, env=env))
    assert "DIGEST_BASE_URL must be an https:// URL" in line


def test_real_mail_with_a_loopback_http_base_url_runs(db_url: str) -> None:
    """A loopback base URL (a developer's own machine) may stay plain HTTP."""
    env = {"DIGEST_SECRET_KEY": "k", "DIGEST_BASE_URL": "http://127.0.0.1:8000"}
    result = invoke(db_url, "work", "--drain", "--transport", "smtp", env=env)
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("transport", "message"),
    [
        ("", "no transport given"),
        (",", "no transport given"),
        ("pigeon", "unknown transport 'pigeon'"),
        ("smtp,pigeon", "unknown transport 'pigeon'"),
    ],
)
def test_bad_transport_names_are_refused_first(db_url: str, transport: str, message: str) -> None:
    """An empty or unknown transport is named as such, before any secret-key check."""
    line = one_error_line(invoke(db_url, "work", "--drain", "--transport", transport))
    assert message in line
    assert "DIGEST_SECRET_KEY" not in line


# -- 13: a database never migrated, and the data folder --------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("stats",),
        ("why", "--user", "1"),
        ("deliveries",),
        ("suppress", "list"),
        ("schedule",),
        ("work", "--drain", "--transport", "null"),
        ("work", "--drain", "--transport", "null", "--processes", "2"),
        ("watchdog",),
        ("preview", "--user", "1"),
        (
            "events",
            "add",
            "--user",
            "1",
            "--category",
            "c",
            "--entity-type",
            "post",
            "--entity-id",
            "1",
        ),
        ("recipients", "show", "1"),
        ("purge", "--older-than", "1d"),
    ],
    ids=lambda args: "-".join(args[:2]),
)
def test_a_database_never_migrated_says_run_migrate(
    make_database: Any, args: tuple[str, ...]
) -> None:
    """Every command that needs tables says, in one line, that `digest migrate` is missing."""
    url = make_database(migrated=False)
    assert one_error_line(invoke(url, *args)) == NO_SCHEMA


def test_an_import_into_a_database_never_migrated_says_run_migrate(
    make_database: Any, tmp_path: Path
) -> None:
    """`events import` (COPY, straight through psycopg) gives the same one line."""
    url = make_database(migrated=False)
    events = tmp_path / "events.jsonl"
    events.write_text(
        '{"user_id": "1", "category": "comment", "entity_type": "post", "entity_id": "1"}\n'
    )
    assert one_error_line(invoke(url, "events", "import", str(events))) == NO_SCHEMA


def test_an_older_schema_says_run_migrate(make_database: Any) -> None:
    """A schema behind this version's migrations names both revisions and the fix."""
    url = make_database(migrated=False)
    engine = make_engine(url)
    try:
        migrate.upgrade(engine, "0002")  # before feedback_events, which purge needs
    finally:
        engine.dispose()
    line = one_error_line(invoke(url, "purge", "--older-than", "1d"))
    assert line == (
        "digest: error: the database schema is at 0002, this digest needs "
        f"{migrate.head()}: run `digest migrate`"
    )


@pytest.mark.slow
def test_the_embedded_server_lives_in_one_place_whatever_the_folder(tmp_path: Path) -> None:
    """Without a URL every folder reaches the same embedded server, under the user's data dir."""
    home = tmp_path / "home"
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("DIGEST_") and key != "XDG_DATA_HOME"
    }
    env["HOME"] = str(home)
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    pgdata = home / ".local" / "share" / "digest" / "pgdata"

    def digest(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "digest", *args],
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=120,
        )

    try:
        urls = [digest("db", "url", cwd=folder) for folder in (first, second)]
        assert [u.returncode for u in urls] == [0, 0], urls[0].stderr + urls[1].stderr
        assert urls[0].stdout == urls[1].stdout
        assert (pgdata / "PG_VERSION").exists()
        assert not (first / ".digest").exists()
        assert not (second / ".digest").exists()
        fresh = digest("stats", cwd=second)
        assert (fresh.returncode, fresh.stderr.strip()) == (1, NO_SCHEMA)
    finally:
        stopped = digest("db", "stop", cwd=tmp_path)
        assert stopped.returncode == 0, stopped.stderr


# -- 14: outbox names across databases, and odd option values ------------------------------


def one_run(url: str) -> None:
    engine = make_engine(url)
    try:
        sql(
            engine,
            "INSERT INTO recipients (bucket, user_id, email, timezone) "
            "VALUES (digest_bucket('1'), '1', 'ana@example.com', 'UTC')",
        )
        sql(
            engine,
            """
            INSERT INTO digest_events (bucket, user_id, category, entity_type, entity_id, payload)
            VALUES (digest_bucket('1'), '1', 'comment', 'post', 'p1',
                    jsonb_build_object('title', CAST(:title AS text)))
            """,
            title=f"only in {make_url(url).database}",
        )
        sql(
            engine,
            "INSERT INTO digest_runs (bucket, user_id, cadence, period_start, scheduled_for) "
            "VALUES (digest_bucket('1'), '1', 'daily', now() - interval '1 hour', "
            "now() - interval '1 hour')",
        )
    finally:
        engine.dispose()


def test_file_outboxes_of_two_databases_never_collide(make_database: Any, tmp_path: Path) -> None:
    """Run 1 of one database and run 1 of another land in two files, both kept."""
    outbox = tmp_path / "outbox"
    urls = [make_database(migrated=True) for _ in range(2)]
    for url in urls:
        one_run(url)
        result = invoke(url, "work", "--drain", "--transport", "file", "--outbox", str(outbox))
        assert result.exit_code == 0, result.output
        assert "sent 1," in result.output
    files = sorted(outbox.rglob("*.eml"))
    assert len(files) == 2
    bodies = [f.read_bytes() for f in files]
    for url in urls:
        name = make_url(url).database
        assert sum(f"only in {name}".encode() in body for body in bodies) == 1
    # The same database again writes to the same folder: a retry overwrites, never duplicates.
    again = invoke(urls[0], "work", "--drain", "--transport", "file", "--outbox", str(outbox))
    assert again.exit_code == 0
    assert len({f.parent for f in files}) == 2
    assert sorted(outbox.rglob("*.eml")) == files


def test_deliveries_since_too_far_back_is_one_line(db_url: str) -> None:
    """`--since 99999999d` says it reaches too far back instead of an OverflowError."""
    line = one_error_line(invoke(db_url, "deliveries", "--since", "99999999d"))
    assert "--since: 99999999d reaches too far back" in line


def test_purge_older_than_too_far_back_is_one_line(db_url: str) -> None:
    """`purge --older-than 99999999d` says it reaches too far back, deleting nothing."""
    line = one_error_line(invoke(db_url, "purge", "--older-than", "99999999d"))
    assert line == "digest: error: --older-than: 99999999d reaches too far back"


def test_preview_into_a_missing_folder_is_one_line(db_url: str, engine: Engine) -> None:
    """`preview --out` into a folder that does not exist names the file and the reason."""
    one_run(db_url)
    line = one_error_line(invoke(db_url, "preview", "--user", "1", "--out", "/no/such/dir/x.html"))
    assert line == "digest: error: cannot write /no/such/dir/x.html: No such file or directory"
