"""The SQL aggregation gives exactly the digest the pure reference (`digest.grouping`) gives."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text

from digest.buckets import bucket_of
from digest.content import load_contents, load_unsent_content
from digest.grouping import build_digest
from digest.models import Event

INSERT_EVENT = text(
    """
    INSERT INTO digest_events (bucket, user_id, category, entity_type, entity_id, actor_id, payload,
                               created_at, digest_run_id)
    VALUES (digest_bucket(:user_id), :user_id, :category, :entity_type, :entity_id, :actor_id,
            CAST(:payload AS jsonb), :created_at, :run_id)
    RETURNING id
    """
)

BASE = datetime(2026, 11, 1, tzinfo=UTC)

event_specs = st.lists(
    st.tuples(
        st.sampled_from(["comment", "like", "like", "mention", "follow", "share"]),
        st.sampled_from(["e1", "e2", "e3", "e4", "e5", "e6"]),
        st.one_of(st.none(), st.sampled_from(["a1", "a2", "a3", "a4", "a5"])),
        st.one_of(
            st.none(),
            st.sampled_from(["Ana", "Ben", "", "  ", "\u3000", "Zoë <b>", True]),
            st.integers(),
        ),
        st.integers(min_value=0, max_value=20),  # minutes: many ties on purpose
    ),
    max_size=60,
)

run_ids = itertools.count(1)


def insert(engine: Engine, run_id: int | None, specs: list[Any], user_id: str = "u") -> list[Event]:
    import json

    events = []
    with engine.begin() as conn:
        for category, entity_id, actor_id, name, minutes in specs:
            payload: dict[str, Any] = {"title": f"{category} on {entity_id}"}
            if name is not None:
                payload["actor_name"] = name
            created = BASE + timedelta(minutes=minutes)
            new_id = conn.execute(
                INSERT_EVENT,
                {
                    "user_id": user_id,
                    "category": category,
                    "entity_type": "post",
                    "entity_id": entity_id,
                    "actor_id": actor_id,
                    "payload": json.dumps(payload),
                    "created_at": created,
                    "run_id": run_id,
                },
            ).scalar_one()
            events.append(Event(new_id, category, "post", entity_id, actor_id, payload, created))
    return events


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(specs=event_specs, cap=st.integers(min_value=1, max_value=8))
def test_sql_grouping_equals_reference(engine: Engine, specs: list[Any], cap: int) -> None:
    """Groups, counts, actors, ranking, cap and totals agree for arbitrary events."""
    run_id = next(run_ids)
    events = insert(engine, run_id, specs)
    with engine.connect() as conn:
        got = load_contents(conn, [(bucket_of("u"), run_id)], cap)
    expected = build_digest(events, cap)
    if expected.is_empty:
        assert run_id not in got
    else:
        assert got[run_id] == expected


def test_batch_of_runs_is_one_query_and_runs_stay_apart(engine: Engine) -> None:
    """Several runs aggregate in one statement without mixing their events."""
    a = insert(engine, 1001, [("like", "e1", "a1", "Ana", 1), ("like", "e1", "a2", "Ben", 2)])
    b = insert(engine, 1002, [("comment", "e1", "a3", "Cy", 3)], user_id="other")
    with engine.connect() as conn:
        runs = [(bucket_of("u"), 1001), (bucket_of("other"), 1002), (bucket_of("u"), 1003)]
        got = load_contents(conn, runs, 50)
    assert got == {1001: build_digest(a, 50), 1002: build_digest(b, 50)}
    assert got[1001].groups[0].actor_names == ("Ben", "Ana")


def test_heavy_user_is_capped_with_exact_more_count(engine: Engine) -> None:
    """10,000 events over 300 entities: the top 50 groups and "250 more", from one aggregate."""
    with engine.begin() as conn:
        conn.execute(
            text(
                """
                INSERT INTO digest_events (bucket, user_id, category, entity_type, entity_id,
                                           actor_id, payload, created_at, digest_run_id)
                SELECT digest_bucket('heavy'), 'heavy', 'like', 'post', 'p' || (g % 300),
                       'a' || (g % 97),
                       jsonb_build_object('title', 'Post ' || (g % 300)),
                       timestamptz '2026-11-01' + g * interval '1 second', 77
                  FROM generate_series(1, 10000) g
                """
            )
        )
    with engine.connect() as conn:
        digest = load_contents(conn, [(bucket_of("heavy"), 77)], 50)[77]
    assert (len(digest.groups), digest.total_groups, digest.more_groups) == (50, 300, 250)
    assert digest.total_events == 10000
    counts = [g.event_count for g in digest.groups]
    assert counts == sorted(counts, reverse=True)
    # 10000 = 300*33 + 100: entities p1..p100 have 34 events, the rest 33
    assert counts[0] == 34
    assert digest.groups[0].actor_count == 34  # 34 events, actors cycle through 97 ids


def test_names_of_whitespace_alone_are_no_names(engine: Engine) -> None:
    """The SQL's test for a usable name agrees with `str.strip` on every character Python
    counts as whitespace, and on look-alikes that are not; no name is "", never the id."""
    spaces = [chr(c) for c in range(0x3001) if chr(c).isspace()]
    lookalikes = ["\u200b", "\u180e", "\ufeff", "\x1b", "\u2060"]
    specs = [("share", f"e{i}", f"a{i}", name * 2, 1) for i, name in enumerate(spaces + lookalikes)]
    events = insert(engine, 1004, specs)
    with engine.connect() as conn:
        got = load_contents(conn, [(bucket_of("u"), 1004)], 50)[1004]
    assert got == build_digest(events, 50)
    names = {g.entity_id: g.actor_names for g in got.groups}
    assert names["e0"] == ("",)  # a tab is no name, and the actor id is not one either
    assert names[f"e{len(spaces)}"] == ("\u200b" * 2,)  # a zero-width space is one


def test_single_likes_fold_and_rank_in_sql_as_in_the_reference(engine: Engine) -> None:
    """Likes alone on their post fold into one summary beyond the cap; mentions and
    comments lead; the same digest as the pure reference."""
    specs: list[Any] = [("like", f"p{i}", f"a{i % 4}", f"Name {i % 4}", i) for i in range(12)]
    specs += [("like", "big", f"a{i}", "X", 1) for i in range(5)]
    specs += [("comment", "c1", "a1", "Ana", 30), ("mention", "m1", None, None, 40)]
    events = insert(engine, 1005, specs)
    with engine.connect() as conn:
        got = load_contents(conn, [(bucket_of("u"), 1005)], 2)[1005]
    assert got == build_digest(events, 2)
    assert [g.entity_id for g in got.groups] == ["m1", "c1"]
    assert got.folded_likes is not None
    assert (got.folded_likes.posts, got.folded_likes.actor_count) == (12, 4)
    assert got.more_groups == 1  # the five-like post, beyond the cap


def test_unsent_preview_sees_only_waiting_events(engine: Engine) -> None:
    """Preview aggregates the user's unattached events and nothing already in a run."""
    waiting = insert(engine, None, [("mention", "e2", "a1", "Ana", 5)])
    insert(engine, 5, [("like", "e1", "a2", "Ben", 1)])
    with engine.connect() as conn:
        digest = load_unsent_content(conn, "u", 50)
    assert digest == build_digest(waiting, 50)
