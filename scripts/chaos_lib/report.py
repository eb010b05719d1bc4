"""The printed verdict: a table of checks, one of counters, and the last line."""

from __future__ import annotations

import random

from rich.console import Console
from rich.table import Table

from chaos_lib.audit import Audit, counts
from chaos_lib.records import Tally
from chaos_lib.settings import Options


def report(console: Console, o: Options, audit: Audit, t: Tally, elapsed: float) -> int:
    """Print the checks and what happened; 0 iff every check holds, else 1."""
    checks = audit.checks
    table = Table(title=f"chaos checks (seed {o.seed})")
    table.add_column("check")
    table.add_column("")
    table.add_column("detail", overflow="fold")
    for c in checks:
        table.add_row(c.name, "[green]ok[/green]" if c.ok else "[red]FAIL[/red]", c.detail)
    console.print(table)

    counters = Table(title="what happened")
    counters.add_column("counter")
    counters.add_column("value", overflow="fold")
    counters.add_row(
        "time",
        f"{elapsed:.0f}s total: seed {t.seed_seconds:.1f}s, faults {t.chaos_seconds:.0f}s, "
        f"drain {t.drain_seconds:.0f}s ({t.backlog_at_end_of_chaos} runs left after the "
        f"faults)",
    )
    counters.add_row("faults", ", ".join(f"{k} {n}" for k, n in sorted(t.faults.items())))
    counters.add_row(
        "workers",
        f"{t.workers_started} started; exits: "
        + ", ".join(f"{k} {n}" for k, n in sorted(t.exits.items())),
    )
    counters.add_row(
        "cron watchdog",
        f"{t.watchdog_runs} runs ({t.watchdog_failures} failed), requeued {t.watchdog_requeued}",
    )
    counters.add_row(
        "producer",
        f"{len(t.produced)} events recorded, {t.producer_errors} errors retried",
    )
    counters.add_row(
        "runs",
        f"{counts(audit.status)} (users {t.users}: {o.users} at the start, "
        f"{t.waves} waves added while the faults went on)",
    )
    for reason, n in audit.reasons.most_common(8):
        counters.add_row("  failed/skipped", f"{n} x {reason}")
    counters.add_row(
        "deliveries",
        ", ".join(f"{k} {n}" for k, n in sorted(audit.delivery_status.items())),
    )
    counters.add_row("sent by", ", ".join(f"{k} {n}" for k, n in sorted(audit.sent_by.items())))
    counters.add_row(
        "emails received",
        f"{audit.emails} ({counts(audit.by_provider)})"
        f" for {audit.runs_received} runs; {audit.duplicates} duplicates in "
        f"{audit.duplicated_runs} runs",
    )
    counters.add_row(
        "  explained by",
        f"lost replies (unknown outcome) {audit.explained['unknown']}, attempts cut "
        f"short {audit.explained['interrupted']}"
        + "".join(f"; {k} {n}" for k, n in sorted(audit.interrupted_by.items())),
    )
    counters.add_row(
        "  emails per sent run",
        ", ".join(
            f"{n} runs {copies} email{'' if copies == 1 else 's'}"
            for copies, n in sorted(audit.copies_per_sent_run.items())
        ),
    )
    for example in random.Random(o.seed).sample(audit.examples, min(3, len(audit.examples))):
        counters.add_row("  e.g.", example)
    counters.add_row(
        "  emails of unsent runs",
        f"{audit.delivered_unsent} (a lost reply or a cut attempt that did deliver)",
    )
    counters.add_row("send -> record", audit.window_text())
    counters.add_row("leases recovered", audit.recovery_text())
    console.print(counters)

    for line in t.stuck:
        console.print(f"  still in flight: {line}", markup=False)
    failed = [c for c in checks if not c.ok]
    if failed:
        console.print(
            f"chaos: FAILED (seed {o.seed}): {failed[0].name}: {failed[0].detail}",
            markup=False,
        )
        return 1
    console.print(f"chaos: ok (seed {o.seed}, {elapsed:.0f}s)", markup=False)
    return 0
