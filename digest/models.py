"""The domain types every stage shares: events and digests, recipients, claimed runs and
their outcomes, messages and send results, and the status names of runs and deliveries.

Pure data: no database, no I/O. The types made once per digest on the worker's path are
named tuples, much cheaper to build than frozen dataclasses (docs/performance.md); the
rest are frozen dataclasses. Values read from the database
(a recipient's cadence, a run's cadence) stay plain `str`: they compare equal to the enum
members, and converting each would cost time per digest for nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal, NamedTuple


class RunStatus(StrEnum):
    """Where a digest run is in the queue (`digest_runs.status`)."""

    PENDING = "pending"
    PROCESSING = "processing"
    SENT = "sent"
    SKIPPED = "skipped"
    FAILED = "failed"
    CANCELLED = "cancelled"


class DeliveryStatus(StrEnum):
    """What became of one message handed to a transport (`deliveries.status`)."""

    SENT = "sent"
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    COMPLAINED = "complained"
    REJECTED = "rejected"
    FAILED = "failed"
    SUPPRESSED = "suppressed"
    DEFERRED = "deferred"
    UNKNOWN = "unknown"


class Cadence(StrEnum):
    """How often a recipient wants digests (`recipients.cadence`)."""

    DAILY = "daily"
    WEEKLY = "weekly"
    OFF = "off"


class RunCadence(StrEnum):
    """The kind of period a run covers (`digest_runs.cadence`)."""

    DAILY = "daily"
    WEEKLY = "weekly"
    IMMEDIATE = "immediate"


# The SES event types feedback records (`feedback_events.event_type`).
FEEDBACK_EVENT_TYPES = ("Bounce", "Complaint", "Delivery", "Reject", "DeliveryDelay", "Send")

# How a send failed (`channels.base.SendError`):
# - transient: try again later (throttling, 4xx, timeouts before DATA);
# - permanent: this message will never go (invalid address, 5xx for the recipient);
# - unknown: the provider may or may not have it (reply lost after DATA);
# - fatal: the transport itself cannot send (account paused): stop sending everywhere.
FailureKind = Literal["transient", "permanent", "unknown", "fatal"]


# -- events and digests -------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One notification event as stored in `digest_events`."""

    id: int
    category: str
    entity_type: str
    entity_id: str
    actor_id: str | None
    payload: Mapping[str, Any]
    created_at: datetime


class Group(NamedTuple):
    """All events about one entity in one category, summarised (a named tuple: the worker
    makes one per group of every digest)."""

    category: str
    entity_type: str
    entity_id: str
    event_count: int
    actor_count: int
    actor_names: tuple[str, ...]
    latest_at: datetime
    last_event_id: int
    payload: Mapping[str, Any]


class FoldedLikes(NamedTuple):
    """Likes alone on their post, two or more, folded into one line ("Ana, Ben and 5 others
    liked 7 of your posts"): the posts, the distinct actors, the latest three names."""

    posts: int
    actor_count: int
    actor_names: tuple[str, ...]


@dataclass(frozen=True)
class DigestContent:
    """The ranked, capped groups of one digest, the single likes folded into one line, and
    what was left out."""

    groups: tuple[Group, ...]
    total_groups: int  # every group, the folded ones included
    total_events: int
    folded_likes: FoldedLikes | None = None

    @property
    def more_groups(self) -> int:
        """How many groups neither shown nor folded ("and N more")."""
        folded = self.folded_likes.posts if self.folded_likes else 0
        return self.total_groups - len(self.groups) - folded

    @property
    def is_empty(self) -> bool:
        return self.total_events == 0


EMPTY_DIGEST = DigestContent(groups=(), total_groups=0, total_events=0)


class Recipient(NamedTuple):
    """Who a digest is for, with any suppression of their address: the worker's row (one
    per claimed run); the renderer reads the first six fields."""

    user_id: str
    email: str
    name: str | None
    cadence: str
    timezone: str
    locale: str
    unsubscribed_at: datetime | None = None
    suppressed_reason: str | None = None
    recipient_id: int = 0  # what unsubscribe tokens name (`digest.unsubscribe`); 0: unknown
    subscription_version: int = 0


# -- the queue ------------------------------------------------------------------------------


class ClaimedRun(NamedTuple):
    """A run this worker holds the lease on, for this attempt (a named tuple: one per run)."""

    id: int
    bucket: int  # the user's (`digest.buckets`)
    user_id: str
    cadence: str
    period_start: datetime
    attempt: int
    frozen_at: datetime
    sending_attempt: int | None = None  # set: an earlier attempt reached the send step
    recipient: Recipient | None = None  # None: no such recipient (any more)
    digest: DigestContent = EMPTY_DIGEST  # what the frozen events make


@dataclass(frozen=True)
class Delivery:
    """One send attempt's outcome, as logged in `deliveries`."""

    recipient: str
    transport: str
    status: DeliveryStatus
    message_id: str | None = None
    provider_message_id: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Outcome:
    """What became of one claimed run in this attempt: sent, skipped, failed, or pending
    (try again after `retry_in` seconds)."""

    run: ClaimedRun
    status: RunStatus
    event_count: int | None = None
    message_id: str | None = None
    error: str | None = None
    retry_in: float = 0.0
    delivery: Delivery | None = None


@dataclass(frozen=True)
class RetryDecision:
    """The run's next status (`pending` = try again after `retry_in` seconds) and why."""

    status: RunStatus
    retry_in: float
    error: str


# -- rendering and sending ------------------------------------------------------------------


class DigestRequest(NamedTuple):
    """Everything one digest is rendered from (a named tuple: one per digest)."""

    recipient: Recipient
    content: DigestContent
    cadence: str
    period_start: datetime
    base_url: str
    unsubscribe_url: str


@dataclass(frozen=True)
class RenderedDigest:
    """The three rendered parts of one digest email."""

    subject: str
    html: str
    text: str


@dataclass(frozen=True)
class OutgoingMessage:
    """A rendered digest ready to leave by email: the MIME message's bytes plus what
    tracking needs."""

    run_id: int
    attempt: int
    user_id: str
    to_address: str
    message_id: str
    idempotency_key: str
    data: bytes
    html: str
    bucket: int  # the user's: the SES tags carry it, for feedback to find the delivery


@dataclass(frozen=True)
class SendResult:
    """What a transport reports after the provider accepted a message."""

    transport: str
    provider_message_id: str | None = None
