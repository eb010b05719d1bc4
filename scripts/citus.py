"""`scripts/citus.py start|stop|url`: a local Citus cluster for the Citus test tier and the bench.

A coordinator and two workers of the machine's PostgreSQL 15 with the Citus extension
(built by `../shared/vendor/citus/build.sh`), each in a data directory of its own under
`.digest/citus/` on loopback ports (the coordinator on `--port`, the workers on the next two).
PostgreSQL refuses to run as root, so as root every server command runs as the `postgres`
user. `start` is idempotent: it creates what is missing, starts what is stopped, adds the
workers once, and prints the coordinator's URL (a database `postgres`, user `postgres`,
trust authentication: a throw-away test cluster, fsync off).

    .venv/bin/python scripts/citus.py start     # prints postgresql://postgres@127.0.0.1:55432/postgres
    .venv/bin/python scripts/citus.py stop

Exit codes: 0 done; 1 a server failed (its log's last lines are printed); 2 Citus is not
installed (`build.sh` prints the path of citus.so once it is).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(os.environ.get("DIGEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
NODES = ("coordinator", "worker1", "worker2")
# Durability buys nothing in a test cluster; the workers' connections between nodes need room.
CONF = {
    "shared_preload_libraries": "'citus'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "300",
    "shared_buffers": "128MB",
    "listen_addresses": "'127.0.0.1'",
}


def citus_installed() -> bool:
    """Whether citus.so sits in the server's library folder."""
    try:
        libdir = subprocess.run(
            [str(BIN / "pg_config"), "--pkglibdir"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return False
    return (Path(libdir) / "citus.so").exists()


def _as_server_user(args: list[str]) -> list[str]:
    """`args` run as the `postgres` user when we are root (PostgreSQL refuses root)."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *args]
    return args


def _run(args: list[str]) -> None:
    subprocess.run(_as_server_user(args), check=True, capture_output=True, text=True)


def url(port: int, database: str = "postgres") -> str:
    """The libpq URL of the node on `port`."""
    return f"postgresql://postgres@127.0.0.1:{port}/{database}"


def _init(data: Path) -> None:
    data.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
    data.chmod(0o700)
    _run([str(BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"])
    with (data / "postgresql.conf").open("a") as conf:
        conf.write("\n# scripts/citus.py\n")
        for name, value in CONF.items():
            conf.write(f"{name} = {value}\n")
        conf.write(f"unix_socket_directories = '{data}'\n")


def _running(data: Path) -> bool:
    done = subprocess.run(
        _as_server_user([str(BIN / "pg_ctl"), "-D", str(data), "status"]), capture_output=True
    )
    return done.returncode == 0


def _start(data: Path, port: int) -> None:
    log = data.parent / f"{data.name}.log"
    if os.geteuid() == 0 and not log.exists():
        log.touch()
        shutil.chown(log, "postgres", "postgres")
    try:
        pg_ctl = [str(BIN / "pg_ctl"), "-D", str(data), "-o", f"-p {port}", "-l", str(log)]
        _run([*pg_ctl, "-w", "-t", "60", "start"])
    except subprocess.CalledProcessError:
        tail = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
        print("\n".join(tail), file=sys.stderr)
        raise SystemExit(f"citus: {data.name} did not start on port {port}") from None


def _wait(port: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            psycopg.connect(url(port), connect_timeout=2).close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def start(base: Path, port: int) -> str:
    """Create, start and join the three nodes as needed; returns the coordinator's URL."""
    base.mkdir(parents=True, exist_ok=True)
    ports = {name: port + i for i, name in enumerate(NODES)}
    for name, node_port in ports.items():
        data = base / name
        if not (data / "PG_VERSION").exists():
            _init(data)
        if not _running(data):
            _start(data, node_port)
        _wait(node_port)
        with psycopg.connect(url(node_port), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS citus")
    with psycopg.connect(url(port), autocommit=True) as conn:
        conn.execute("SELECT citus_set_coordinator_host('127.0.0.1', %s)", (port,))
        known = {
            row[0]
            for row in conn.execute("SELECT nodeport FROM pg_dist_node WHERE noderole = 'primary'")
        }
        for name in NODES[1:]:
            if ports[name] not in known:
                conn.execute("SELECT citus_add_node('127.0.0.1', %s)", (ports[name],))
    return url(port)


def stop(base: Path) -> None:
    """Stop every node that runs (fast shutdown)."""
    for name in NODES:
        data = base / name
        if (data / "PG_VERSION").exists() and _running(data):
            _run([str(BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("start", "stop", "url"))
    parser.add_argument("--base", type=Path, default=ROOT / ".digest" / "citus")
    parser.add_argument("--port", type=int, default=55432, help="the coordinator's port")
    options = parser.parse_args(argv)
    if options.action == "url":
        print(url(options.port))
        return 0
    if options.action == "stop":
        stop(options.base)
        return 0
    if not citus_installed():
        print(
            f"citus: not installed in {BIN.parent} (run ../shared/vendor/citus/build.sh as root)",
            file=sys.stderr,
        )
        return 2
    print(start(options.base, options.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
