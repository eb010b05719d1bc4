"""digest: one well-made email per user per period, from a stream of notification events.

The producer API is importable from the package: `digest.record_event(engine, ...)` and
`digest.record_events(engine, rows)`.
"""

from digest.ingest.events import EventIn, record_event, record_events

__all__ = ["EventIn", "record_event", "record_events"]
