"""The `digest` subprocesses the harness starts (workers, `digest watchdog`): spawned with the
chaos settings, signalled, reaped; each writes its log under LOGS."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from chaos_lib.settings import BATCH_SIZE, LEASE_SECONDS, LOGS, ROOT, SEND_CONCURRENCY


@dataclass
class Proc:
    """A `digest` subprocess we started."""

    name: str
    popen: subprocess.Popen[bytes]
    log: IO[bytes]
    told: str | None = None  # "kill" or "term" once we signalled it

    @property
    def pid(self) -> int:
        return self.popen.pid


class Processes:
    """Starts `digest` commands with the chaos settings; tracks and reaps them."""

    def __init__(self, url: str, env: dict[str, str]) -> None:
        self.url = url
        self.env = env
        self.serial = 0
        self.workers: list[Proc] = []  # running (or not yet reaped)
        self.commands: list[Proc] = []  # `digest watchdog` runs in progress

    def spawn(self, name: str, *args: str) -> Proc:
        self.serial += 1
        log = (LOGS / f"{self.serial:03d}-{name}.log").open("wb")
        popen = subprocess.Popen(
            [sys.executable, "-m", "digest", "--database-url", self.url, *args],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C on the harness reaches only the harness
        )
        return Proc(name, popen, log)

    def start_worker(self, transport: str) -> Proc:
        proc = self.spawn(
            "work-" + transport.replace(",", "+"),
            "work",
            "--processes",
            "1",
            "--transport",
            transport,
            "--send-concurrency",
            str(SEND_CONCURRENCY),
            "--lease",
            str(LEASE_SECONDS),
            "--batch-size",
            str(BATCH_SIZE),
        )
        self.workers.append(proc)
        return proc

    def signal(self, proc: Proc, sig: signal.Signals) -> None:
        if proc.told != "kill":
            proc.told = "kill" if sig == signal.SIGKILL else "term"
        with suppress(ProcessLookupError):
            os.kill(proc.pid, sig)

    def exited(self) -> list[Proc]:
        """Workers that have exited since the last call (reaped, logs closed)."""
        done = [p for p in self.workers if p.popen.poll() is not None]
        for proc in done:
            self.workers.remove(proc)
            proc.log.close()
        return done

    def reap_commands(self) -> list[tuple[Proc, str]]:
        """Finished commands with their output."""
        done = [p for p in self.commands if p.popen.poll() is not None]
        finished = []
        for proc in done:
            self.commands.remove(proc)
            proc.log.close()
            finished.append((proc, Path(proc.log.name).read_text(errors="replace")))
        return finished

    def stop_all(self, grace: float) -> None:
        """SIGTERM every worker and command, SIGKILL what is left after `grace` seconds."""
        everyone = self.workers + self.commands
        for proc in everyone:
            if proc.popen.poll() is None:
                self.signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in everyone:
            try:
                proc.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.signal(proc, signal.SIGKILL)
                proc.popen.wait()
