"""Test fixtures: a real PostgreSQL, a migrated template database, a clean clone per test.

Server choice: `DIGEST_TEST_DATABASE_URL` when set; testcontainers' PostgreSQL when
`DIGEST_TEST_PG=docker`; otherwise the embedded server under `.digest/test-pgdata`.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine, TextClause
from sqlalchemy.engine import make_url

import digest
from digest import migrate
from digest.db import embedded_url, libpq_url, make_engine
from digest.shards import Sharded

ROOT = Path(__file__).resolve().parent.parent

# Durability buys nothing in a throw-away test cluster.
FAST_CONF = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


def with_database(url: str, name: str) -> str:
    """`url` pointing at database `name` instead."""
    return libpq_url(make_url(url).set(database=name).render_as_string(hide_password=False))


# Statements kept as plain strings (COPY, and those run through the driver directly).
_SQL_TEXT = re.compile(r"\s*(SELECT|INSERT|UPDATE|DELETE|WITH|COPY|CREATE|TRUNCATE)\b", re.I)
Statement = TextClause | Sharded | str


def named_statements() -> dict[str, Statement]:
    """`module.NAME` -> statement, for every module-level SQL constant in digest/: a
    TextClause, a `Sharded` statement, or SQL kept as a string (`statement_text` reads
    each). Every module file is walked, those of namespace packages (digest/ingest/)
    included."""
    found: dict[int, tuple[str, Statement]] = {}
    root = Path(digest.__file__).parent
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__main__":  # runs the command line when imported
            continue
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        module = importlib.import_module(name)
        for constant, value in vars(module).items():
            if not constant.isupper():
                continue
            if isinstance(value, TextClause | Sharded) or (
                isinstance(value, str) and _SQL_TEXT.match(value)
            ):
                # an imported constant is the same object: keep where it was seen first
                found.setdefault(id(value), (f"{name}.{constant}", value))
    return dict(found.values())


def statement_text(statement: Statement) -> str:
    """The SQL of a named statement (a `Sharded` one's template)."""
    if isinstance(statement, TextClause):
        return statement.text
    if isinstance(statement, Sharded):
        return statement.template
    return statement


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.db)


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """An admin URL for a PostgreSQL server the tests may create databases on."""
    if url := os.environ.get("DIGEST_TEST_DATABASE_URL"):
        yield url
    elif os.environ.get("DIGEST_TEST_PG") == "docker":
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16", driver=None) as container:
            yield container.get_connection_url()
    else:
        yield embedded_url(ROOT / ".digest" / "test-pgdata", extra_conf=FAST_CONF)


@pytest.fixture(scope="session")
def template_db(server_url: str) -> Iterator[str]:
    """Name of a database migrated once, cloned by every test."""
    name = f"digest_tmpl_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    engine = make_engine(with_database(server_url, name))
    migrate.upgrade(engine)
    engine.dispose()
    yield name
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db_url(server_url: str, template_db: str) -> Iterator[str]:
    """URL of a fresh, migrated database of this test's own."""
    name = f"digest_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    yield with_database(server_url, name)
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


Invoke = Callable[..., Result]


@pytest.fixture
def digest_cli(db_url: str, tmp_path: Path) -> Invoke:
    """Run the real `digest` command group against this test's database."""
    from digest.cli import cli

    def invoke(*args: str, env: dict[str, str] | None = None, stdin: bytes | None = None) -> Result:
        base = {"DIGEST_DATABASE_URL": db_url, "DIGEST_OUTBOX": str(tmp_path / "outbox")}
        return CliRunner().invoke(cli, list(args), env={**base, **(env or {})}, input=stdin)

    return invoke


RunDigest = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run_digest() -> RunDigest:
    """Run the real `digest` command in a process of its own, as cron or a shell would;
    its output is captured, and a hung command fails the test after `timeout` seconds."""

    def run(
        *args: str, env: dict[str, str], timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "digest", *args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """A SQLAlchemy engine on this test's database."""
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


# Runs the command as the `digest` script does, then lists the top-level packages it loaded.
_PROBE = """
import sys
from digest.cli import cli
try:
    cli.main(sys.argv[1:], prog_name="digest")
except SystemExit:
    pass
print(" ".join(sorted({name.partition(".")[0] for name in sys.modules})))
"""

LoadedBy = Callable[..., set[str]]


@pytest.fixture
def loaded_by() -> LoadedBy:
    """The top-level packages `digest ARGS` imports, run in a fresh interpreter."""

    def run(*args: str) -> set[str]:
        done = subprocess.run(
            [sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return set(done.stdout.splitlines()[-1].split())

    return run
