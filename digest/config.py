"""Settings from the environment: one frozen object, read once at the edge."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from digest.errors import DigestError

DELIVERY_MODES = ("at-least-once", "at-most-once")


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise DigestError(f"{name} must be a number, got {raw!r}") from None
    if value <= 0:
        raise DigestError(f"{name} must be positive, got {value}")
    return value


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise DigestError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise DigestError(f"{name} must be at least {minimum}, got {value}")
    return value


@dataclass(frozen=True)
class Settings:
    """Everything a digest process needs to know, with production-minded defaults."""

    database_url: str | None = None
    data_dir: Path = Path(".digest")
    transport: str = "file"
    outbox: Path = Path("outbox")
    batch_size: int = 50
    lease_seconds: int = 300
    max_attempts: int = 5
    group_cap: int = 50
    stagger_seconds: int = 3600
    backoff_base_seconds: int = 30
    backoff_max_seconds: int = 3600
    watchdog_interval_seconds: int = 15
    poll_interval_seconds: float = 1.0
    base_url: str = "http://localhost:8000"
    from_address: str = "digest@localhost"
    from_name: str = "Digest"
    secret_key: str | None = field(default=None, repr=False)
    categories: frozenset[str] | None = None
    templates_dir: Path = Path(__file__).resolve().parent.parent / "templates"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read DIGEST_* variables; a bad value is a one-line DigestError."""
        env = os.environ if env is None else env
        categories = env.get("DIGEST_CATEGORIES")
        base = cls()
        return cls(
            database_url=env.get("DIGEST_DATABASE_URL") or None,
            data_dir=Path(env.get("DIGEST_DATA_DIR", str(base.data_dir))),
            transport=env.get("DIGEST_TRANSPORT", base.transport),
            outbox=Path(env.get("DIGEST_OUTBOX", str(base.outbox))),
            batch_size=_int(env, "DIGEST_BATCH_SIZE", base.batch_size, 1),
            lease_seconds=_int(env, "DIGEST_LEASE_SECONDS", base.lease_seconds, 5),
            max_attempts=_int(env, "DIGEST_MAX_ATTEMPTS", base.max_attempts, 1),
            group_cap=_int(env, "DIGEST_GROUP_CAP", base.group_cap, 1),
            stagger_seconds=_int(env, "DIGEST_STAGGER_SECONDS", base.stagger_seconds, 0),
            backoff_base_seconds=_int(env, "DIGEST_BACKOFF_BASE", base.backoff_base_seconds, 0),
            backoff_max_seconds=_int(env, "DIGEST_BACKOFF_MAX", base.backoff_max_seconds, 0),
            watchdog_interval_seconds=_int(
                env, "DIGEST_WATCHDOG_INTERVAL", base.watchdog_interval_seconds, 1
            ),
            poll_interval_seconds=_float(env, "DIGEST_POLL_INTERVAL", base.poll_interval_seconds),
            base_url=env.get("DIGEST_BASE_URL", base.base_url).rstrip("/"),
            from_address=env.get("DIGEST_FROM_ADDRESS", base.from_address),
            from_name=env.get("DIGEST_FROM_NAME", base.from_name),
            secret_key=env.get("DIGEST_SECRET_KEY") or None,
            categories=(
                frozenset(c.strip() for c in categories.split(",") if c.strip())
                if categories
                else None
            ),
            templates_dir=Path(env.get("DIGEST_TEMPLATES", str(base.templates_dir))),
        )

    def with_(self, **changes: object) -> Settings:
        """A copy with some fields changed (command-line options override the environment)."""
        return replace(self, **changes)  # type: ignore[arg-type]
