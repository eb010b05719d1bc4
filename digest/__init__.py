"""digest: one well-made email per user per period, from a stream of notification events.

The producer API is importable from the package: `digest.record_event(engine, ...)` and
`digest.record_events(engine, rows)`. They are imported on first use, so that importing a
part of the package (`digest --help` imports `digest.cli`) does not load SQLAlchemy and
psycopg with them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from digest.ingest.events import EventIn, record_event, record_events

__all__ = ["EventIn", "record_event", "record_events"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from digest.ingest import events

        return getattr(events, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
