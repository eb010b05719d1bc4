"""What the harness reads in the output of the `digest` processes it started.

Worker logs are text lines today (`run_outcome run_id=… status=lease_lost attempt=…`); each
thing read is one small function here, so a switch to structured records changes only these.
"""

from __future__ import annotations

import re
from pathlib import Path

from chaos_lib.records import Attempt

LEASE_LOST = re.compile(r"run_outcome run_id=(\d+) .*status=lease_lost attempt=(\d+)")
REQUEUED = re.compile(r"requeued (\d+)")


def lease_lost(log: str) -> set[Attempt]:
    """Attempts whose worker logged that its outcome did not land (its lease was taken)."""
    return {(int(m.group(1)), int(m.group(2))) for m in LEASE_LOST.finditer(log)}


def lease_lost_in(folder: Path) -> set[Attempt]:
    """`lease_lost` over every worker log in `folder`."""
    found: set[Attempt] = set()
    for path in folder.glob("*-work-*.log"):
        found |= lease_lost(path.read_text(errors="replace"))
    return found


def requeued(output: str) -> int | None:
    """How many runs a `digest watchdog` said it requeued; None if it said nothing of it."""
    found = REQUEUED.search(output)
    return int(found.group(1)) if found else None
