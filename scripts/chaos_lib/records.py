"""Plain data: what the harness did and saw, and what the audit judges (no I/O here)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

Attempt = tuple[int, int]  # (run id, attempt)


@dataclass(frozen=True)
class Received:
    """One message a provider accepted."""

    provider: str  # smtp | ses
    run_id: int | None  # None: a Message-ID that is not a digest run's
    digest: str  # of the body with normalised line ends: copies must be the same bytes
    at: float  # time.time() when the provider took it


@dataclass(frozen=True)
class Run:
    """A row of `digest_runs` at the end, with the number of events attached to it."""

    id: int
    status: str
    attempt: int
    last_error: str | None = None
    event_count: int | None = None
    attached: int = 0
    completed: float | None = None  # epoch seconds of completed_at


@dataclass(frozen=True)
class Delivery:
    """A row of `deliveries`: one attempt's record of handing a run to a provider."""

    run_id: int
    attempt: int
    status: str
    transport: str


@dataclass(frozen=True)
class Left:
    """Runs not finished: in flight, due now, and waiting for a retry."""

    processing: int = 0
    due: int = 0
    later: int = 0


@dataclass(frozen=True)
class EndState:
    """What the database holds once the workers have stopped."""

    event_states: dict[str, int]  # where the events ended up (see sql.EVENT_STATES)
    left: Left
    runs: dict[int, Run]
    deliveries: list[Delivery]
    stored_keys: set[str]  # "user/event_key" of the producer's events in the database


@dataclass
class Tally:
    """What the harness did and saw."""

    faults: Counter[str] = field(default_factory=Counter)
    workers_started: int = 0
    exits: Counter[str] = field(default_factory=Counter)  # "killed", "stopped", "code 1"...
    unexpected_exits: list[str] = field(default_factory=list)
    watchdog_runs: int = 0
    watchdog_failures: int = 0
    watchdog_requeued: int = 0
    produced: list[str] = field(default_factory=list)  # event keys known to be stored
    producer_errors: int = 0
    seed_seconds: float = 0.0
    chaos_seconds: float = 0.0
    drain_seconds: float = 0.0
    drained: bool = False
    backlog_at_end_of_chaos: int = 0
    users: int = 0  # recipients u1..uN
    stuck: list[str] = field(default_factory=list)  # in flight at the drain deadline
    waves: int = 0  # times more users were added because the queue ran low
    # (run id, attempt) pairs an interrupted attempt may have sent, and why
    orphans: dict[Attempt, str] = field(default_factory=dict)
    at_risk: set[Attempt] = field(default_factory=set)  # in flight at a PG restart
    # the long outage: attempts in flight when PostgreSQL stopped or when it came back
    # (and those of them held by dead workers), when it began (seconds into the faults)
    # and how long it lasted
    outage_at_risk: set[Attempt] = field(default_factory=set)
    outage_orphans: set[Attempt] = field(default_factory=set)
    outage_began: float | None = None
    outage_seconds: float = 0.0
    outage_window: tuple[float, float] | None = None  # time.time() at its start and end
