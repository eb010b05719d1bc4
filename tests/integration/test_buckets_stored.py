"""The bucket in SQL agrees with Python, and every write path stores it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text

from digest.buckets import bucket_of
from digest.channels.email.file import FileTransport
from digest.config import Settings
from digest.ingest.events import record_event, record_events
from digest.ingest.recipients import set_recipient, upsert_recipients
from digest.scheduler import schedule_once
from digest.worker import Worker

# What PostgreSQL can store in text: no NUL, no lone surrogate.
USER_IDS = st.text(
    st.characters(codec="utf-8", exclude_characters="\x00"),
    min_size=1,
    max_size=300,
)
BUCKETS_IN_SQL = text("SELECT digest_bucket(u) FROM unnest(CAST(:ids AS text[])) AS u")


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ids=st.lists(USER_IDS, min_size=1, max_size=50))
def test_sql_and_python_give_every_user_the_same_bucket(engine: Engine, ids: list[str]) -> None:
    """`digest_bucket` (SQL) and `bucket_of` (Python) agree on random ids, Unicode included."""
    with engine.connect() as conn:
        in_sql = list(conn.execute(BUCKETS_IN_SQL, {"ids": ids}).scalars())
    assert in_sql == [bucket_of(u) for u in ids]


def test_every_write_path_stores_the_users_bucket(engine: Engine, tmp_path: Path) -> None:
    """Producers never pass a bucket: events one at a time and by COPY (keyed and not),
    recipient imports and `set`, the scheduler's runs and the worker's deliveries all
    store digest's own."""
    users = ["ana", "Bén", "日本語", "😀-42", "7"]
    upsert_recipients(
        engine, [{"user_id": u, "email": f"u{i}@example.com"} for i, u in enumerate(users)]
    )
    set_recipient(engine, "zoë", {"email": "zoe@example.com"})
    for u in users:
        record_event(engine, user_id=u, category="like", entity_type="post", entity_id="1")
    event = {"category": "like", "entity_type": "post", "entity_id": "2"}
    record_events(engine, [{"user_id": u, **event} for u in users])
    record_events(engine, [{"user_id": u, **event, "event_key": "k"} for u in users])
    with engine.begin() as conn:
        assert schedule_once(conn, datetime.now(UTC), 0) == len(users) + 1
    outbox = tmp_path / "outbox"
    stats = Worker(engine, Settings(outbox=outbox), FileTransport(outbox)).run(drain=True)
    assert stats.sent == len(users)
    with engine.connect() as conn:
        for table in ("recipients", "digest_events", "digest_runs", "deliveries"):
            rows = conn.execute(text(f"SELECT user_id, bucket FROM {table}")).all()
            assert len(rows) >= len(users), table
            assert all(bucket == bucket_of(user) for user, bucket in rows), table
