"""A user's bucket: the fixed hash of the user id that places every per-user row.

Every per-user table (recipients, digest_events, digest_runs, deliveries) carries
`bucket smallint`, the first 16 bits of the MD5 of the user id's UTF-8 bytes mod 4,096.
`digest` computes it whenever it writes a row (producers never pass one), in Python here
and in SQL as `digest_bucket(text)` (migration 0007) for rows SQL writes itself; a
property test checks that the two agree. On Citus the tables are distributed by it, so a
statement that names its buckets reaches one node; on one PostgreSQL it is only a column.

MD5 rather than PostgreSQL's `hashtext`: the function must be the same in both languages
and stay the same across server versions, and MD5 is in both standard libraries. 4,096
buckets: the most shards a deployment would want, times a margin, in a `smallint`.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from typing import Any, Final

BUCKETS: Final = 4096
"""How many buckets there are: `bucket_of` gives 0 to BUCKETS - 1."""

# The same function in SQL, created by migration 0007. Immutable (the planner may fold it)
# and strict; `convert_to` hashes UTF-8 whatever the server encoding, as Python does.
SQL_FUNCTION: Final = f"""
    CREATE OR REPLACE FUNCTION digest_bucket(user_id text) RETURNS smallint
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT CAST(CAST(CAST('x' || substr(md5(convert_to(user_id, 'UTF8')), 1, 4)
                                AS bit(16)) AS int) % {BUCKETS} AS smallint) $$
"""


def _md5_function() -> Callable[[bytes], Any]:
    """CPython's own MD5 (`_md5`, 0.3 µs on a short id), else OpenSSL's (0.7 µs)."""
    try:
        import _md5  # type: ignore[import-not-found,unused-ignore]
    except ImportError:  # pragma: no cover - builds without it
        return hashlib.md5
    return _md5.md5  # type: ignore[no-any-return,unused-ignore]


_md5 = _md5_function()


# Cached: producers write many rows per user, and a hit (0.2 µs) costs a fifth of the MD5.
@functools.lru_cache(maxsize=1 << 16)
def bucket_of(user_id: str) -> int:
    """The bucket of `user_id`: the first 16 bits of the MD5 of its UTF-8 bytes, mod 4,096."""
    digest: bytes = _md5(user_id.encode("utf-8")).digest()  # a spread, not security
    return ((digest[0] << 8) | digest[1]) % BUCKETS
