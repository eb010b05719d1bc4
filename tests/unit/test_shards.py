"""The shard map, the shard filter written into statements, and the worker's rotation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from digest.buckets import BUCKETS, bucket_of
from digest.shards import ALL, SINGLE, Rotation, ShardMap, predicate, render


def striped(count: int) -> ShardMap:
    """`count` shards whose buckets interleave, as Citus's hash spreads them."""
    return ShardMap(tuple(tuple(range(s, BUCKETS, count)) for s in range(count)))


def test_a_contiguous_range_is_a_between_and_anything_else_a_constant_array() -> None:
    """One PostgreSQL's shard costs a range check; a Citus shard's list is an array constant
    (hashed once per statement), never a parameter."""
    assert predicate("r.bucket", ALL) == "r.bucket BETWEEN 0 AND 4095"
    assert predicate("bucket", (5, 6, 7)) == "bucket BETWEEN 5 AND 7"
    assert predicate("e.bucket", (1, 3, 4000)) == "e.bucket = ANY('{1,3,4000}'::smallint[])"
    with pytest.raises(ValueError, match="no buckets"):
        predicate("bucket", ())


def test_render_fills_every_table_of_a_statement() -> None:
    """`{shard:COLUMN}` becomes the filter on that column wherever it appears."""
    sql = render("WHERE {shard:a.bucket} AND {shard:b.bucket} AND x = '{{}}'", (2, 3))
    assert sql == "WHERE a.bucket BETWEEN 2 AND 3 AND b.bucket BETWEEN 2 AND 3 AND x = '{}'"


@given(st.lists(st.text(min_size=1), max_size=50), st.sampled_from([1, 2, 3, 8, 32]))
def test_grouping_keeps_each_item_with_its_shard(users: list[str], count: int) -> None:
    """Items group by the shard of their bucket; each group names only its own buckets."""
    shards = striped(count)
    groups = shards.group(users, bucket_of)
    assert sorted(u for _, members in groups for u in members) == sorted(users)
    for buckets, members in groups:
        assert {shards.shard_of(b) for b in buckets} == {shards.shard_of(bucket_of(members[0]))}
        assert set(buckets) == {bucket_of(u) for u in members}


@pytest.mark.parametrize(("count", "parts"), [(1, 1), (1, 2), (1, 5), (4, 2), (4, 8), (32, 2)])
def test_slices_cover_every_bucket_once_within_one_shard_each(count: int, parts: int) -> None:
    """The scheduler's slices: at least `parts` of them, disjoint, covering all buckets, none
    across two shards; one PostgreSQL's one shard is cut into contiguous ranges."""
    shards = SINGLE if count == 1 else striped(count)
    slices = shards.slices(parts)
    assert len(slices) >= parts
    assert sorted(b for s in slices for b in s) == list(ALL)
    assert all(len({shards.shard_of(b) for b in s}) == 1 for s in slices)
    if count == 1:
        assert all(predicate("b", s).startswith("b BETWEEN") for s in slices)


def test_a_map_that_leaves_buckets_out_is_refused() -> None:
    """Every bucket must lie in a shard, or rows of the missing ones would never be claimed."""
    with pytest.raises(ValueError, match="leaves buckets out"):
        ShardMap((tuple(range(100)),))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_rotation_is_round_robin_and_skips_empty_shards_for_a_while() -> None:
    """After a claim the next shard comes first; a shard found empty is left out for
    `quiet_seconds`, unless every shard is: then all are asked again."""
    clock = Clock()
    rotation = Rotation(4, quiet_seconds=1.0, clock=clock)
    assert list(rotation.order()) == [0, 1, 2, 3]
    rotation.claimed(0)
    assert list(rotation.order()) == [1, 2, 3, 0]
    rotation.empty(1)
    rotation.empty(2)
    assert list(rotation.order()) == [3, 0]
    rotation.claimed(3)
    assert list(rotation.order()) == [0, 3]
    clock.now = 1.5
    assert list(rotation.order()) == [0, 1, 2, 3]
    for shard in range(4):
        rotation.empty(shard)
    assert list(rotation.order()) == [0, 1, 2, 3]
