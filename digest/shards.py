"""Which buckets lie together: the shard map, and statements written for one shard.

On Citus the per-user tables are hash-distributed by `bucket`: each shard holds the
buckets Citus's hash sends to it, which are not a contiguous range. A statement that names
only buckets of one shard is routed to the node holding it, and only such a statement may
use `FOR UPDATE SKIP LOCKED` there. On one PostgreSQL the whole table is one "shard" of
all 4,096 buckets. The map is read from the database once per process (`for_engine`).

A statement over a shard's buckets (the claim, the scheduler, the watchdog, purge, the
queue's figures) is written with `{shard:COLUMN}` wherever a table needs the filter, and
bound to a shard's buckets as SQL text (`Sharded.bind`): a contiguous range becomes
`COLUMN BETWEEN lo AND hi` (one PostgreSQL: `BETWEEN 0 AND 4095`, free), a Citus shard's
list an array constant `COLUMN = ANY('{…}'::smallint[])`. Not a parameter: in a cached
generic plan PostgreSQL compares a parameter array element by element on every row (2.7 s
against 55 ms for 200,000 rows and 4,096 buckets, docs/performance.md), while a constant
array is hashed once. The buckets are ours, never user input.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, TypeAlias, TypeVar

from sqlalchemy import Connection, Engine, TextClause, text

from digest.buckets import BUCKETS

Buckets: TypeAlias = tuple[int, ...]
"""Some buckets, sorted and distinct."""

T = TypeVar("T")

ALL: Final[Buckets] = tuple(range(BUCKETS))

# Whether the server has Citus at all (its catalog cannot be named where it does not).
CITUS_FIND = text("SELECT to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL")
# Whether the runs table is distributed; only asked where Citus is installed.
CITUS_RUNS_DISTRIBUTED = text(
    "SELECT EXISTS (SELECT 1 FROM pg_dist_partition "
    "WHERE logicalrelid = to_regclass('digest_runs'))"
)
# Each bucket's shard of digest_runs (the per-user tables are co-located: the same map).
SHARD_MAP_LOAD = text(
    f"""
    SELECT CAST(b AS smallint), get_shard_id_for_distribution_column('digest_runs',
                                                                      CAST(b AS smallint))
      FROM generate_series(0, {BUCKETS - 1}) AS b
    """
)


def predicate(column: str, buckets: Buckets) -> str:
    """SQL true for the rows of `column` in `buckets` (one of this package's columns)."""
    if not buckets:
        raise ValueError("no buckets")
    low, high = buckets[0], buckets[-1]
    if high - low + 1 == len(buckets):
        return f"{column} BETWEEN {low:d} AND {high:d}"
    return f"{column} = ANY('{{{','.join(str(int(b)) for b in buckets)}}}'::smallint[])"


class _Shard:
    """`format` support: `{shard:r.bucket}` becomes the predicate on `r.bucket`."""

    def __init__(self, buckets: Buckets):
        self.buckets = buckets

    def __format__(self, column: str) -> str:
        return predicate(column, self.buckets)


def render(template: str, buckets: Buckets, **parts: object) -> str:
    """`template` with each `{shard:COLUMN}` bound to `buckets` (and `parts` filled in)."""
    return template.format(shard=_Shard(buckets), **parts)


@dataclass(frozen=True, eq=False)
class Sharded:
    """A statement over the rows of some buckets of one shard (`{shard:COLUMN}` marks the
    filter of each table it reads or writes)."""

    template: str

    def bind(self, buckets: Buckets) -> TextClause:
        """The statement for `buckets` (cached: one text and one server plan per shard)."""
        return _bound(self.template, buckets)


@functools.lru_cache(maxsize=4096)
def _bound(template: str, buckets: Buckets) -> TextClause:
    return text(render(template, buckets))


@dataclass(frozen=True)
class ShardMap:
    """The buckets of each shard, in the order of their shard ids."""

    shards: tuple[Buckets, ...]
    _index: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index = [-1] * BUCKETS
        for number, buckets in enumerate(self.shards):
            for bucket in buckets:
                index[bucket] = number
        if -1 in index:
            raise ValueError("the shard map leaves buckets out")
        object.__setattr__(self, "_index", tuple(index))

    @property
    def distributed(self) -> bool:
        """More than one shard (Citus)."""
        return len(self.shards) > 1

    def shard_of(self, bucket: int) -> int:
        """The number of the shard holding `bucket`."""
        return self._index[bucket]

    def group(
        self, items: Iterable[T], bucket: Callable[[T], int]
    ) -> list[tuple[Buckets, list[T]]]:
        """`items` by shard, each with the buckets of its items (for one statement each)."""
        by_shard: dict[int, tuple[set[int], list[T]]] = {}
        for item in items:
            b = bucket(item)
            buckets, members = by_shard.setdefault(self._index[b], (set(), []))
            buckets.add(b)
            members.append(item)
        return [(tuple(sorted(b)), members) for b, members in by_shard.values()]

    def slices(self, parts: int) -> list[Buckets]:
        """At least `parts` disjoint sets of buckets covering them all, each within one
        shard: the shards, each cut into contiguous runs of its buckets when there are
        fewer shards than `parts` (the scheduler's slices)."""
        if parts < 1:
            raise ValueError(f"parts must be at least 1, got {parts}")
        cuts = -(-parts // len(self.shards))
        out: list[Buckets] = []
        for buckets in self.shards:
            size = -(-len(buckets) // cuts)
            out.extend(buckets[i : i + size] for i in range(0, len(buckets), size))
        return out


SINGLE: Final = ShardMap((ALL,))
"""One PostgreSQL: every bucket in one shard."""


def load(conn: Connection) -> ShardMap:
    """The shard map of the database `conn` is on: Citus's, else SINGLE."""
    if not conn.execute(CITUS_FIND).scalar_one():
        return SINGLE
    if not conn.execute(CITUS_RUNS_DISTRIBUTED).scalar_one():
        return SINGLE
    by_shard: dict[int, list[int]] = {}
    for bucket, shard in conn.execute(SHARD_MAP_LOAD):
        by_shard.setdefault(int(shard), []).append(int(bucket))
    return ShardMap(tuple(tuple(sorted(by_shard[s])) for s in sorted(by_shard)))


_maps: dict[str, ShardMap] = {}
_maps_lock = threading.Lock()


def _cached(engine: Engine) -> tuple[str, ShardMap | None]:
    key = engine.url.render_as_string(hide_password=False)
    with _maps_lock:
        return key, _maps.get(key)


def _remember(key: str, found: ShardMap) -> ShardMap:
    with _maps_lock:
        _maps[key] = found
    return found


def for_engine(engine: Engine) -> ShardMap:
    """The shard map of `engine`'s database, read once per process (restart the workers
    after moving shards: a stale map only makes statements span shards, which Citus
    refuses for the claim and runs on several nodes otherwise)."""
    key, found = _cached(engine)
    if found is None:
        with engine.connect() as conn:
            found = _remember(key, load(conn))
    return found


def for_connection(conn: Connection) -> ShardMap:
    """The shard map of `conn`'s database (`for_engine`), read on `conn` itself the first
    time: the caller may hold its engine's only connection (`digest work`'s live status has
    a pool of one). A transaction the read had to begin is rolled back, leaving `conn` as
    it was."""
    key, found = _cached(conn.engine)
    if found is None:
        began = not conn.in_transaction()
        found = _remember(key, load(conn))
        if began:
            conn.rollback()
    return found


@dataclass
class Rotation:
    """Which shard a worker claims from next: round robin, skipping for `quiet_seconds` the
    shards that had nothing due (so a busy worker does not ask them at every batch), unless
    all of them had: then every shard is asked again (one PostgreSQL's one shard always)."""

    count: int
    quiet_seconds: float
    clock: Callable[[], float] = time.monotonic
    _next: int = 0
    _quiet_until: dict[int, float] = field(default_factory=dict)

    def order(self) -> Sequence[int]:
        """The shards to try now, in turn, the quiet ones left out."""
        now = self.clock()
        turn = [(self._next + i) % self.count for i in range(self.count)]
        awake = [s for s in turn if self._quiet_until.get(s, 0.0) <= now]
        return awake or turn

    def claimed(self, shard: int) -> None:
        """`shard` gave work: the next claim starts at the one after it."""
        self._quiet_until.pop(shard, None)
        self._next = (shard + 1) % self.count

    def empty(self, shard: int) -> None:
        """`shard` had nothing due: leave it out for a while."""
        self._quiet_until[shard] = self.clock() + self.quiet_seconds
