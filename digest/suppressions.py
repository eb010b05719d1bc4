"""Suppressed addresses: never mailed, whatever their recipients' preferences say.

The key is the whole address in lower case after `validate_email` (trimmed, IDNA domain;
`digest.channels.email.mime`), the same form the worker compares with
`lower(recipients.email)`. Adding an address twice keeps the first reason and source: the
database decides, not a check first.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Engine, TextClause, text

from digest.channels.email.mime import HeaderError, validate_email
from digest.db import atomic
from digest.errors import ValidationError

MAX_LABEL = 500  # reason and source end up in run reasons and log lines: keep them short

SUPPRESSION_ADD = text(
    """
    INSERT INTO suppressions (email, reason, source)
    VALUES (:email, :reason, :source)
    ON CONFLICT (email) DO NOTHING
    RETURNING email
    """
)
SUPPRESSION_REMOVE = text("DELETE FROM suppressions WHERE email = :email RETURNING email")
SUPPRESSION_GET = text(
    "SELECT email, reason, source, created_at FROM suppressions WHERE email = :email"
)
# LIMIT NULL is no limit.
SUPPRESSION_LIST = text(
    """
    SELECT email, reason, source, created_at
      FROM suppressions
     ORDER BY created_at DESC, email
     LIMIT CAST(:limit AS bigint)
    """
)


@dataclass(frozen=True)
class Suppression:
    """One suppressed address and why."""

    email: str
    reason: str
    source: str
    created_at: datetime


def normalise(address: str) -> str:
    """The suppression key of `address`, or ValidationError naming what is wrong with it."""
    try:
        return validate_email(address).lower()
    except HeaderError as exc:  # its message names the address and the rule
        raise ValidationError(str(exc)) from None


def add(target: Connection | Engine, email: str, reason: str, source: str) -> bool:
    """Suppress `email`; True if it was new, False if it was already suppressed (kept as is)."""
    params = {
        "email": normalise(email),
        "reason": _label("reason", reason),
        "source": _label("source", source),
    }
    with atomic(target) as conn:
        return conn.execute(SUPPRESSION_ADD, params).first() is not None


def remove(target: Connection | Engine, email: str) -> bool:
    """Lift the suppression of `email`; True if there was one."""
    with atomic(target) as conn:
        return conn.execute(SUPPRESSION_REMOVE, {"email": normalise(email)}).first() is not None


def get(target: Connection | Engine, email: str) -> Suppression | None:
    """The suppression of `email`, or None."""
    rows = _read(target, SUPPRESSION_GET, {"email": normalise(email)})
    return rows[0] if rows else None


def is_suppressed(target: Connection | Engine, email: str) -> bool:
    """Whether `email` (in any letter case) is suppressed."""
    return get(target, email) is not None


def list_(target: Connection | Engine, limit: int | None = None) -> list[Suppression]:
    """Suppressed addresses, newest first; at most `limit` of them when given."""
    if limit is not None and limit < 0:
        raise ValidationError(f"limit must be at least 0, got {limit}")
    return _read(target, SUPPRESSION_LIST, {"limit": limit})


def _read(
    target: Connection | Engine, statement: TextClause, params: dict[str, object]
) -> list[Suppression]:
    if isinstance(target, Engine):
        with target.connect() as conn:
            rows = conn.execute(statement, params).all()
    else:
        rows = target.execute(statement, params).all()
    return [Suppression(*row) for row in rows]


def _label(name: str, value: str) -> str:
    """A short one-line reason or source."""
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(f"{name} must not be empty")
    cleaned = " ".join(value.split())  # no newlines in run reasons or logs
    if len(cleaned) > MAX_LABEL:
        raise ValidationError(f"{name} is longer than {MAX_LABEL} characters")
    return cleaned
