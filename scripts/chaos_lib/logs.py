"""What the harness reads in the output of the `digest` processes it started.

Every `digest` process runs with DIGEST_LOG_FORMAT=json (settings.worker_env): its log is one
JSON record per line, and the harness reads their fields, never a message's wording.
"""

from __future__ import annotations

from pathlib import Path

from chaos_lib.records import Attempt
from digest.logs import read


def lease_lost(log: str) -> set[Attempt]:
    """Attempts whose worker logged that its outcome did not land (its lease was taken)."""
    return {
        (int(r["run_id"]), int(r["attempt"]))
        for r in read(log)
        if r.get("event") == "run_outcome" and r.get("status") == "lease_lost"
    }


def lease_lost_in(folder: Path) -> set[Attempt]:
    """`lease_lost` over every worker log in `folder`."""
    found: set[Attempt] = set()
    for path in folder.glob("*-work-*.log"):
        found |= lease_lost(path.read_text(errors="replace"))
    return found


def requeued(output: str) -> int:
    """How many runs a `digest watchdog` put back to pending: its run_lease_expired records."""
    return sum(
        1
        for r in read(output)
        if r.get("event") == "run_lease_expired" and r.get("status") == "pending"
    )
