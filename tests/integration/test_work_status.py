"""`digest work` as an operator watches it: a live status on a terminal, plain log lines
otherwise, and a line when the queue is empty. The real CLI runs in a process of its own,
on a pseudo-terminal or a pipe."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from digest.scheduler import schedule_once
from digest.terminal import plural

ROOT = Path(__file__).resolve().parent.parent.parent
# What a terminal shows besides text: colours, cursor moves, erased lines.
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def seed(engine: Engine, users: int) -> None:
    """`users` recipients with two events each and their runs, due now."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO recipients (bucket, user_id, email) "
                "SELECT digest_bucket('u' || g), 'u' || g, 'u' || g || '@example.com' "
                "FROM generate_series(1, :n) g"
            ),
            {"n": users},
        )
        conn.execute(
            text(
                """
                INSERT INTO digest_events (bucket, user_id, category, entity_type, entity_id,
                                           created_at)
                SELECT digest_bucket('u' || g), 'u' || g, 'comment', 'post', 'p' || e,
                       now() - interval '1 hour'
                  FROM generate_series(1, :n) g, generate_series(1, 2) e
                """
            ),
            {"n": users},
        )
        schedule_once(conn, datetime.now(UTC), 0)


def environment(db_url: str, tmp_path: Path) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "COLUMNS", "LINES")
    }
    return {
        **env,
        "DIGEST_DATABASE_URL": db_url,
        "DIGEST_OUTBOX": str(tmp_path / "outbox"),
        "DIGEST_POLL_INTERVAL": "0.05",
        "TERM": "xterm-256color",
    }


def on_terminal(args: list[str], env: dict[str, str], timeout: float = 90) -> tuple[int, str]:
    """Run `digest ARGS` with stdin, stdout and stderr on a pseudo-terminal of 120 columns;
    its exit code and everything it showed."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "digest", *args],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env=env,
        cwd=ROOT,
    )
    os.close(follower)
    shown = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.2)
            if not ready:
                continue
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: every holder of the terminal has closed it
                break
            if not data:
                break
            shown += data
        else:
            process.kill()
            raise AssertionError(f"digest {' '.join(args)} did not finish: {shown[-2000:]!r}")
        return process.wait(timeout=30), shown.decode(errors="replace")
    finally:
        os.close(leader)
        if process.poll() is None:
            process.kill()


@pytest.mark.parametrize("processes", [1, 2])
def test_work_on_a_terminal_shows_a_live_status_not_a_line_per_run(
    engine: Engine, db_url: str, tmp_path: Path, processes: int
) -> None:
    """On a terminal, in one process or two: a status of the queue (due, claimed, lag) and
    of this command (sent, failed, rate) that ends on the final counts; no per-run lines."""
    seed(engine, 5)
    args = ["work", "--drain", "--transport", "null", "--processes", str(processes)]
    code, shown = on_terminal(args, environment(db_url, tmp_path))
    assert code == 0, shown
    plain = ANSI.sub("", shown)
    assert "run_outcome" not in plain
    assert "queue_empty" not in plain  # the status says it
    assert re.search(r"queue +[\d,]+ due · [\d,]+ claimed · queue lag \d", plain), plain
    assert "this command  5 sent · 0 skipped · 0 failed · 0 retrying · " in plain, plain
    assert f"/s · {plural(processes, 'process')} · " in plain
    assert "sent 5, skipped 0, failed 0" in plain  # the summary remains


def test_work_in_a_pipe_logs_a_line_per_run_and_the_empty_queue(
    engine: Engine, db_url: str, tmp_path: Path
) -> None:
    """Not a terminal: one plain run_outcome line per run, no escape codes, and a line when
    no run is due any more."""
    seed(engine, 3)
    done = subprocess.run(
        [sys.executable, "-m", "digest", "work", "--drain", "--transport", "null"],
        env=environment(db_url, tmp_path),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.count(" run_outcome ") == 3
    assert "\x1b" not in done.stderr
    assert "queue_empty: no run is due; stopping (--drain)" in done.stderr


def test_an_idle_worker_says_the_queue_is_empty(
    engine: Engine, db_url: str, tmp_path: Path
) -> None:
    """A worker with nothing to do says so once, instead of silence, and stops on SIGTERM."""
    process = subprocess.Popen(
        [sys.executable, "-m", "digest", "work", "--transport", "null"],
        env=environment(db_url, tmp_path),
        cwd=ROOT,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stderr is not None
        said = bytearray()
        deadline = time.monotonic() + 60
        while b"queue_empty" not in said and time.monotonic() < deadline:
            ready, _, _ = select.select([process.stderr], [], [], 0.2)
            if ready:
                said += os.read(process.stderr.fileno(), 65536)
        time.sleep(0.5)  # a few idle polls more: still one line
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        said += process.stderr.read()
        text_said = said.decode()
        assert "queue_empty: no run is due; waiting for one" in text_said, text_said
        assert text_said.count("queue_empty") == 1
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()
