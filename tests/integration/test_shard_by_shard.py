"""With the per-user tables in several shards (as on Citus), the worker claims one shard at a
time, round robin, and the scheduler, watchdog and reports go shard by shard: checked on
plain PostgreSQL with a shard map of four interleaved shards, which every statement follows
as it would Citus's."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from digest import claim, scheduler, shards, stats, watchdog
from digest.buckets import BUCKETS, bucket_of
from digest.channels.email.file import FileTransport
from digest.config import Settings
from digest.db import make_engine
from digest.models import ClaimedRun
from digest.shards import ShardMap
from digest.worker import Worker

FOUR = ShardMap(tuple(tuple(range(s, BUCKETS, 4)) for s in range(4)))
ADD_RECIPIENTS = text(
    """
    INSERT INTO recipients (bucket, user_id, email)
    SELECT digest_bucket('u' || g), 'u' || g, 'u' || g || '@example.com'
      FROM generate_series(1, :n) g
    """
)
ADD_EVENTS = text(
    """
    INSERT INTO digest_events (bucket, user_id, category, entity_type, entity_id, payload,
                               created_at)
    SELECT bucket, user_id, 'like', 'post', 'p1', '{"title": "t"}', now() - interval '1 minute'
      FROM recipients
    """
)


@pytest.fixture
def four_shards(engine: Engine) -> Iterator[Engine]:
    """`engine`, whose database digest takes for one of four shards."""
    key = engine.url.render_as_string(hide_password=False)
    shards._maps[key] = FOUR
    yield engine
    shards._maps.pop(key, None)


def test_the_worker_claims_one_shard_at_a_time_round_robin(
    four_shards: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every batch holds runs of one shard only; the worker moves to the next shard after
    each claim, leaving out those found empty; every run is sent once."""
    engine = four_shards
    with engine.begin() as conn:
        conn.execute(ADD_RECIPIENTS, {"n": 60})
        conn.execute(ADD_EVENTS)
    with engine.begin() as conn:
        assert scheduler.schedule_once(conn, datetime.now(UTC), 0) == 60
    # one shard with more runs than the others: it is still claimed from in turn
    per_shard = {
        s: sum(FOUR.shard_of(bucket_of(f"u{g}")) == s for g in range(1, 61)) for s in range(4)
    }
    batches: list[set[int]] = []
    real_claim = claim.claim_batch

    def recording(*args: Any, **kwargs: Any) -> list[ClaimedRun]:
        runs = real_claim(*args, **kwargs)
        if runs:
            batches.append({FOUR.shard_of(r.bucket) for r in runs})
        return runs

    monkeypatch.setattr(claim, "claim_batch", recording)
    outbox = tmp_path / "outbox"
    settings = Settings(outbox=outbox, batch_size=4)
    stats_ = Worker(engine, settings, FileTransport(outbox)).run(drain=True)
    assert stats_.sent == 60
    assert all(len(shard) == 1 for shard in batches), batches
    order = [next(iter(shard)) for shard in batches]
    assert sorted(order.count(s) for s in range(4)) == sorted(
        -(-n // 4) for n in per_shard.values()
    )
    # round robin: while every shard has runs left, the claims go 0, 1, 2, 3, 0, ...
    rounds = min(-(-n // 4) for n in per_shard.values())
    assert order[: 4 * rounds] == [0, 1, 2, 3] * rounds


def test_schedule_watchdog_and_stats_go_shard_by_shard(four_shards: Engine) -> None:
    """The scheduler creates each run once over the shards' slices and counts only the new;
    the watchdog takes back expired leases in every shard; the figures add up."""
    engine = four_shards
    with engine.begin() as conn:
        conn.execute(ADD_RECIPIENTS, {"n": 40})
    now = datetime.now(UTC)
    assert scheduler.schedule(engine, now, 0, jobs=2) == 40
    assert scheduler.schedule(engine, now, 0, jobs=2) == 0
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE digest_runs SET status = 'processing', attempt = 1, locked_by = 'gone',"
                " lease_expires_at = now() - interval '1 minute'"
            )
        )
    with engine.connect() as conn:
        assert watchdog.reset_expired_once(conn, 5) == (40, 0)
        figures = stats.collect(conn)
    assert figures["runs"]["pending"] == 40


def test_the_shard_map_is_read_through_the_callers_connection(db_url: str) -> None:
    """An engine whose one pooled connection the caller holds (the live status of `digest
    work`) still gets its shard map: read on that connection, which is left as it was."""
    engine = make_engine(db_url, pool_size=1, max_overflow=0, pool_timeout=1)
    shards._maps.pop(engine.url.render_as_string(hide_password=False), None)
    try:
        with engine.connect() as conn:
            assert shards.for_connection(conn) == shards.SINGLE
            assert not conn.in_transaction()
            with conn.begin():
                assert stats.queue_now(conn).due == 0
    finally:
        engine.dispose()
