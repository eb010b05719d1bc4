"""The bucket: a fixed, well spread hash of the user id (the SQL twin is checked against it
in tests/integration/test_buckets_stored.py)."""

from __future__ import annotations

import hashlib
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from digest.buckets import BUCKETS, bucket_of

USER_IDS = st.text(st.characters(codec="utf-8"), min_size=1, max_size=200)


@given(USER_IDS)
def test_the_bucket_is_the_first_16_bits_of_the_md5_mod_4096(user_id: str) -> None:
    """The definition, written out: MD5 of the UTF-8 bytes, first two bytes, mod 4,096."""
    first_two = hashlib.md5(user_id.encode("utf-8")).hexdigest()[:4]
    assert bucket_of(user_id) == int(first_two, 16) % BUCKETS
    assert 0 <= bucket_of(user_id) < BUCKETS


def test_buckets_spread_users_evenly() -> None:
    """409,600 sequential ids (100 a bucket) fill every bucket within a Poisson spread: none
    under half the mean or over 1.6 times it."""
    counts = Counter(bucket_of.__wrapped__(f"user-{i}") for i in range(100 * BUCKETS))
    assert len(counts) == BUCKETS
    assert 50 < min(counts.values()) <= max(counts.values()) < 160
