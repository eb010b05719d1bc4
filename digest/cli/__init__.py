"""The `digest` command line: click commands only (parse, call, print), one clear line and a
non-zero exit for every error. Signals and worker processes live here too (`work`): no
other part of the package imports this one.
"""

from __future__ import annotations

from digest.cli.app import cli
from digest.cli.data import events, recipients
from digest.cli.feedback import feedback
from digest.cli.ops import db_group, migrate_cmd, purge_cmd, schedule_cmd, stats_cmd, watchdog_cmd
from digest.cli.support import deliveries, preview_cmd, why
from digest.cli.web import serve, suppress
from digest.cli.work import work_cmd

__all__ = ["cli", "main"]

for command in (
    migrate_cmd,
    db_group,
    schedule_cmd,
    work_cmd,
    watchdog_cmd,
    preview_cmd,
    stats_cmd,
    purge_cmd,
    recipients,
    events,
    serve,
    suppress,
    deliveries,
    why,
    feedback,
):
    cli.add_command(command)


def main() -> None:
    """Console entry point."""
    cli(prog_name="digest")
