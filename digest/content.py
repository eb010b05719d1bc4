"""What goes into a digest, computed in SQL: group, rank and cap a whole batch at once.

The aggregate follows the rules of `digest.grouping` exactly (a test compares the two on
random data), but costs one statement per batch whatever the number of events: a user
with 100,000 events returns at most `cap` rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, TextClause, text

from digest import recipients, shards
from digest.buckets import bucket_of
from digest.models import EMPTY_DIGEST, DigestContent, FoldedLikes, Group

# The grouping as common table expressions over `{events}`, a relation of one run's (or
# several runs') events: (run_id, id, category, entity_type, entity_id, actor_id, created_at,
# payload). It ends in `digests`: one row per run that has events, its ranked and capped
# groups as one JSON array (one value to decode per digest instead of a row per group, with
# `latest_at` in UTC), its folded single likes (or null) and its totals. `{events}` is one
# of the fixed relations of this module and `digest.claim`, never user input. `digests` is
# MATERIALIZED: computed once per statement whatever the planner guesses of its size.
# (Joined to the runs a claim froze, it was planned as a nested loop that grouped the whole
# batch again for each run as soon as the freeze's estimate fell to one row: the bucket in
# the join makes the planner multiply two selectivities where the user id already implies
# the bucket; 300 ms a claim of 100 instead of 17.)
_GROUPING = """
    ev AS (
        SELECT e.run_id, e.id, e.category, e.entity_type, e.entity_id, e.actor_id,
               e.created_at, e.payload,
               -- grouping.actor_name: a string with more than Python's whitespace
               -- (str.strip) in it, else '' (unnamed; never the actor id)
               CASE WHEN jsonb_typeof(e.payload -> 'actor_name') = 'string'
                     AND e.payload ->> 'actor_name' ~ {named}
                    THEN e.payload ->> 'actor_name' ELSE '' END AS actor_name,
               row_number() OVER (
                   PARTITION BY e.run_id, e.category, e.entity_type, e.entity_id
                   ORDER BY e.created_at DESC, e.id DESC) AS group_pos,
               row_number() OVER (
                   PARTITION BY e.run_id, e.category, e.entity_type, e.entity_id, e.actor_id
                   ORDER BY e.created_at DESC, e.id DESC) AS actor_pos
          FROM {events} e
    ), groups AS (
        SELECT run_id, category, entity_type, entity_id,
               count(*) AS event_count,
               count(*) FILTER (WHERE actor_pos = 1 AND actor_id IS NOT NULL) AS actor_count,
               max(created_at) AS latest_at,
               max(id) FILTER (WHERE group_pos = 1) AS last_event_id,
               (array_agg(payload) FILTER (WHERE group_pos = 1))[1] AS payload,
               (array_agg(actor_name ORDER BY created_at DESC, id DESC)
                    FILTER (WHERE actor_pos = 1 AND actor_id IS NOT NULL))[1:3] AS actor_names,
               min(actor_id) AS only_actor  -- the actor of a one-event group
          FROM ev
         GROUP BY run_id, category, entity_type, entity_id
    ), folding AS (
        -- grouping.is_single_like, folded when a run has two or more
        SELECT g.*,
               category = 'like' AND event_count = 1
               AND count(*) FILTER (WHERE category = 'like' AND event_count = 1)
                       OVER (PARTITION BY run_id) >= 2 AS folded
          FROM groups g
    ), ranked AS (
        SELECT f.*,
               -- grouping.PRIORITY (written searched: Citus breaks a simple one)
               row_number() OVER (PARTITION BY run_id, folded
                                  ORDER BY CASE WHEN category = 'mention' THEN 0
                                                WHEN category = 'comment' THEN 1
                                                WHEN category = 'like' THEN 3 ELSE 2 END,
                                           event_count DESC, latest_at DESC,
                                           last_event_id DESC) AS rank,
               row_number() OVER (PARTITION BY run_id, folded, only_actor
                                  ORDER BY latest_at DESC, last_event_id DESC) AS actor_rank,
               count(*) OVER (PARTITION BY run_id) AS total_groups,
               CAST(sum(event_count) OVER (PARTITION BY run_id) AS bigint) AS total_events
          FROM folding f
    ), digests AS MATERIALIZED (
        SELECT run_id, max(total_groups) AS total_groups, max(total_events) AS total_events,
               coalesce(json_agg(json_build_array(category, entity_type, entity_id,
                                                  event_count, actor_count,
                                                  latest_at AT TIME ZONE 'UTC',
                                                  last_event_id, payload,
                                                  coalesce(actor_names, '{{}}'))
                                 ORDER BY rank) FILTER (WHERE NOT folded AND rank <= :cap),
                        CAST('[]' AS json)) AS groups,
               CASE WHEN bool_or(folded) THEN json_build_array(
                   count(*) FILTER (WHERE folded),
                   count(DISTINCT only_actor) FILTER (WHERE folded),
                   coalesce((array_agg(actor_names[1] ORDER BY latest_at DESC, last_event_id DESC)
                                 FILTER (WHERE folded AND actor_rank = 1
                                         AND only_actor IS NOT NULL))[1:3], '{{}}'))
               END AS folded_likes
          FROM ranked
         GROUP BY run_id
    )
"""


# Not one of the characters for which Python's str.isspace() is true (a test checks them).
_NAMED = (
    r"'[^\t\n\v\f\r\u001c-\u001f \u0085\u00a0\u1680\u2000-\u200a"
    r"\u2028\u2029\u202f\u205f\u3000]'"
)


def grouping(events: str) -> str:
    """The grouping's common table expressions (to follow `WITH`) over `events`."""
    return _GROUPING.format(events=events, named=_NAMED)


EVENT_COLUMNS = "e.id, e.category, e.entity_type, e.entity_id, e.actor_id, e.created_at, e.payload"


def _digests_of(run_id: str, where: str) -> TextClause:
    """The digests of the events matching `where`, grouped by `run_id` (fixed SQL below)."""
    return text(
        "WITH "
        + grouping(f"(SELECT {run_id} AS run_id, {EVENT_COLUMNS} FROM digest_events e {where})")
        + "SELECT run_id, total_groups, total_events, groups, folded_likes FROM digests"
    )


# Events frozen into the given runs (their buckets all in one shard).
EVENT_GROUPS_FOR_RUNS = _digests_of(
    "e.digest_run_id",
    "WHERE e.bucket = ANY(CAST(:buckets AS smallint[]))"
    " AND e.digest_run_id = ANY(CAST(:run_ids AS bigint[]))",
)

# A user's waiting events, as the next run would freeze and show them now (`digest
# preview`): the categories the recipient muted left out.
EVENT_GROUPS_UNSENT = _digests_of(
    "0::bigint",
    "WHERE e.bucket = :bucket AND e.user_id = :user_id AND e.digest_run_id IS NULL"
    " AND e.created_at <= now()"
    f" AND e.category <> ALL(coalesce({recipients.muted_of(':bucket', ':user_id')}, '{{}}'))",
)


def digest_content(
    total_groups: int, total_events: int, groups: list[Any], folded: list[Any] | None
) -> DigestContent:
    """A digest from a `digests` row of the grouping: its totals, its groups' JSON and its
    folded likes' JSON."""
    return DigestContent(
        tuple(
            Group(
                category,
                entity_type,
                entity_id,
                event_count,
                actor_count,
                tuple(actor_names),
                datetime.fromisoformat(latest_at + "+00:00"),  # UTC (docs/performance.md)
                last_event_id,
                payload,
            )
            for (
                category,
                entity_type,
                entity_id,
                event_count,
                actor_count,
                latest_at,
                last_event_id,
                payload,
                actor_names,
            ) in groups  # the order of json_build_array in _GROUPING
        ),
        total_groups,
        total_events,
        None if folded is None else FoldedLikes(folded[0], folded[1], tuple(folded[2])),
    )


def load_contents(
    conn: Connection, runs: Sequence[tuple[int, int]], cap: int
) -> dict[int, DigestContent]:
    """The digest of each run, given as (bucket, run id), from its frozen events; runs with
    no events are absent. One statement per shard."""
    found: dict[int, DigestContent] = {}
    for buckets, group in shards.for_connection(conn).group(runs, lambda run: run[0]):
        params = {"buckets": list(buckets), "run_ids": [run_id for _, run_id in group], "cap": cap}
        for run_id, *totals_and_groups in conn.execute(EVENT_GROUPS_FOR_RUNS, params):
            found[run_id] = digest_content(*totals_and_groups)
    return found


def load_unsent_content(conn: Connection, user_id: str, cap: int) -> DigestContent:
    """The digest a run for `user_id` would get if it froze now (changes nothing)."""
    params = {"bucket": bucket_of(user_id), "user_id": user_id, "cap": cap}
    row = conn.execute(EVENT_GROUPS_UNSENT, params).one_or_none()
    return EMPTY_DIGEST if row is None else digest_content(*row[1:])
