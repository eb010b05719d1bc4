"""The verdict: emails per run set against the attempts that could have sent them (pure).

Everything comes in as plain data (records.py): the database's end state, the mail the
providers accepted, what the harness did (its Tally) and the attempts whose worker logged
a lost lease. No I/O here, so every rule is unit-tested (tests/unit/test_chaos_audit.py).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence, Set
from dataclasses import dataclass

from chaos_lib.records import Attempt, Delivery, EndState, Received, Run, Tally

OUTAGE = "postgres outage"
RESTART = "postgres restart"
TOLD = ("killed", "stopped", "stopped while starting")  # exits the harness caused
# Where an event may end up; anything else (e.g. "waiting although a run is due") fails.
EVENT_STATES_OK = frozenset(
    {"waiting", "waiting for a retry", "in a sent run", "in a failed run", "in a skipped run"}
)


@dataclass(frozen=True)
class Check:
    """One line of the verdict."""

    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Story:
    """Each attempt of one run as the records and the harness tell it."""

    attempts: dict[int, str]  # attempt -> "deferred", "sent", "killed", "no record"...
    unknown: int  # attempts recorded with an unknown outcome (a lost reply)
    interrupted: list[str]  # why each unrecorded attempt may have sent, the database's last


def story_of(run: Run, rows: Sequence[Delivery], tally: Tally, lease_lost: Set[Attempt]) -> Story:
    """The attempts of `run` that may have handed its message over without recording it."""
    attempts: dict[int, str] = {}
    for d in rows:
        attempts[d.attempt] = "+".join(filter(None, (attempts.get(d.attempt), d.status)))
    interrupted: list[str] = []
    for attempt in range(1, run.attempt + 1):
        if attempt in attempts:
            continue
        why = tally.orphans.get((run.id, attempt))
        if why not in TOLD and (run.id, attempt) in tally.outage_at_risk:
            why = OUTAGE  # a worker that exited on its own in the outage counts too
        if why is None and (run.id, attempt) in tally.at_risk:
            why = RESTART
        if why is None and (run.id, attempt) in lease_lost:
            why = "lease lost"
        attempts[attempt] = why or "no record"
        if why is not None:
            interrupted.append(why)
    # a copy is put down to the database's outages only when nothing else explains it
    interrupted.sort(key=lambda why: why in (OUTAGE, RESTART))
    unknown = sum(1 for d in rows if d.status == "unknown")
    return Story(attempts, unknown, interrupted)


class Audit:
    """Every invariant of a chaos run, judged from plain data; `checks` is the verdict."""

    def __init__(
        self,
        end: EndState,
        received: Sequence[Received],
        tally: Tally,
        lease_lost: Set[Attempt],
        *,
        delivery: str,  # at-least-once | at-most-once (then no duplicate may be)
        outage: bool,  # a long outage was asked for: its check is shown
    ) -> None:
        runs = end.runs
        self.status: Counter[str] = Counter(r.status for r in runs.values())
        self.reasons: Counter[str] = Counter(
            reason_group(r.last_error) for r in runs.values() if r.status in ("failed", "skipped")
        )
        self.without_reason = [
            r.id
            for r in runs.values()
            if r.status in ("failed", "skipped") and not (r.last_error or "").strip()
        ]
        self.delivery_status: Counter[str] = Counter(d.status for d in end.deliveries)
        rows_by_run: dict[int, list[Delivery]] = {}
        for d in end.deliveries:
            rows_by_run.setdefault(d.run_id, []).append(d)
        emails: dict[int, list[Received]] = {}
        self.stray = 0
        for item in received:
            if item.run_id is None or item.run_id not in runs:
                self.stray += 1
            else:
                emails.setdefault(item.run_id, []).append(item)
        self.emails = len(received)
        self.by_provider: Counter[str] = Counter(r.provider for r in received)
        self.runs_received = len(emails)
        self.sent_by: Counter[str] = Counter()
        self.bad_sent_rows: list[int] = []
        self.not_received: list[int] = []
        self.unexplained: list[int] = []
        self.differing: list[int] = []
        self.duplicates = 0
        self.duplicated_runs = 0
        self.delivered_unsent = 0
        self.explained: Counter[str] = Counter()
        self.interrupted_by: Counter[str] = Counter()
        self.db_duplicates: Counter[str] = Counter()  # duplicates only an outage explains
        self.db_unrecorded: Counter[str] = Counter()  # emails out, their run not sent
        self.copies_per_sent_run: Counter[int] = Counter()
        self.examples: list[str] = []  # the story of each duplicated run
        for run in runs.values():
            self._judge(run, rows_by_run.get(run.id, []), emails.get(run.id, []), tally, lease_lost)
        self._windows(runs, emails, tally)
        self._recovery(runs, tally)
        self.checks = self._checks(end, received, tally, delivery=delivery, outage=outage)

    def _judge(
        self,
        run: Run,
        rows: list[Delivery],
        copies: list[Received],
        tally: Tally,
        lease_lost: Set[Attempt],
    ) -> None:
        """One run: its `sent` record, the mail received for it, and who sent each copy."""
        sent_rows = [d for d in rows if d.status == "sent"]
        if len(sent_rows) != (1 if run.status == "sent" else 0):
            self.bad_sent_rows.append(run.id)
        if run.status == "sent" and sent_rows:
            self.sent_by[sent_rows[0].transport] += 1
            if not any(c.provider == sent_rows[0].transport for c in copies):
                self.not_received.append(run.id)
        elif copies:
            self.delivered_unsent += len(copies)
        if len({c.digest for c in copies}) > 1:
            self.differing.append(run.id)
        story = story_of(run, rows, tally, lease_lost)
        interrupted = story.interrupted
        if run.status == "sent":
            self.copies_per_sent_run[len(copies)] += 1
        extra = len(copies) - len(sent_rows)
        if extra > 0:
            if extra > story.unknown + len(interrupted):
                self.unexplained.append(run.id)
            by_unknown = min(extra, story.unknown)
            self.explained["unknown"] += by_unknown
            cut = extra - by_unknown
            self.explained["interrupted"] += min(cut, len(interrupted))
            for why in interrupted[:cut]:
                self.interrupted_by[why] += 1
            # the database's own share: emails again, or out but not recorded as sent
            for fault in (OUTAGE, RESTART):
                share = interrupted[:cut].count(fault)
                again = min(share, max(0, len(copies) - 1))
                self.db_duplicates[fault] += again
                self.db_unrecorded[fault] += share - again
        if len(copies) > 1:
            self.duplicates += len(copies) - 1
            self.duplicated_runs += 1
            providers = counts(Counter(c.provider for c in copies))
            attempts = ", ".join(f"{a} {story.attempts[a]}" for a in sorted(story.attempts))
            self.examples.append(
                f"run {run.id} ({run.status}): {len(copies)} emails ({providers}); "
                f"attempts: {attempts}"
            )

    def _windows(
        self, runs: dict[int, Run], emails: dict[int, list[Received]], tally: Tally
    ) -> None:
        """How long after the provider took a message its outcome was recorded."""
        self.windows: list[float] = []
        self.held_through_outage: list[float] = []  # of mail out before it, recorded after
        began, ended = tally.outage_window or (0.0, 0.0)
        for run in runs.values():
            copies = emails.get(run.id, [])
            if run.status != "sent" or not copies or run.completed is None:
                continue
            done = float(run.completed)
            before = [c.at for c in copies if c.at <= done]
            taken = max(before) if before else min(c.at for c in copies)
            window = max(0.0, done - taken)
            self.windows.append(window)
            if ended and taken < began and done > ended:
                self.held_through_outage.append(window)
        # the attempts in flight at the long outage that a worker kill or stop cut short
        self.outage_cut = len(tally.outage_orphans)

    def _recovery(self, runs: dict[int, Run], tally: Tally) -> None:
        """Leases held by workers that died: where are those runs now?"""
        self.recovered: Counter[str] = Counter()
        self.unrecovered: list[int] = []
        for (run_id, attempt), _why in tally.orphans.items():
            run = runs[run_id]
            if run.status == "processing" or (run.status == "pending" and run.attempt == attempt):
                self.unrecovered.append(run_id)
            elif run.attempt > attempt:
                self.recovered["claimed again"] += 1
            elif run.status == "failed" and (run.last_error or "").startswith("lease expired"):
                self.recovered["failed at max attempts"] += 1
            else:
                self.recovered["had landed"] += 1
        self.orphans = len(tally.orphans)

    def _checks(
        self,
        end: EndState,
        received: Sequence[Received],
        tally: Tally,
        *,
        delivery: str,
        outage: bool,
    ) -> list[Check]:
        """Every check in the order they are printed."""
        checks: list[Check] = []
        bad_states = {s: n for s, n in end.event_states.items() if s not in EVENT_STATES_OK}
        checks.append(
            Check(
                "every event accounted for",
                not bad_states,
                ", ".join(f"{n} {s}" for s, n in sorted(end.event_states.items())),
            )
        )
        miscounted = [
            r.id for r in end.runs.values() if r.status == "sent" and r.event_count != r.attached
        ]
        checks.append(
            Check(
                "sent runs carry their events",
                not miscounted,
                f"event_count = events attached for all {self.status['sent']} sent runs"
                if not miscounted
                else f"{len(miscounted)} differ, e.g. runs {miscounted[:5]}",
            )
        )
        left = end.left
        checks.append(
            Check(
                "no run left due or in flight",
                left.processing == 0 and left.due == 0,
                f"{left.processing} processing, {left.due} due, {left.later} waiting for a retry"
                + ("" if tally.drained else " (drain deadline reached)"),
            )
        )
        checks.append(
            Check(
                "failed and skipped runs say why",
                not self.without_reason,
                f"{self.status['failed']} failed, {self.status['skipped']} skipped, all with "
                "a reason"
                if not self.without_reason
                else f"runs without a reason: {self.without_reason[:5]}",
            )
        )
        checks.append(
            Check(
                "one 'sent' delivery per sent run",
                not self.bad_sent_rows,
                "exactly one for each sent run, none for the others"
                if not self.bad_sent_rows
                else f"{len(self.bad_sent_rows)} runs, e.g. {self.bad_sent_rows[:5]}",
            )
        )
        checks.append(
            Check(
                "every sent run was received",
                not self.not_received,
                f"{self.status['sent']} sent runs, each received by the provider it names"
                if not self.not_received
                else f"{len(self.not_received)} never received, e.g. {self.not_received[:5]}",
            )
        )
        checks.append(
            Check(
                "no stray emails",
                not self.stray,
                f"{len(received)} emails, all of known runs"
                if not self.stray
                else f"{self.stray} emails of no run",
            )
        )
        checks.append(
            Check(
                "every email has an attempt that may have sent it",
                not self.unexplained,
                self.duplicates_text()
                if not self.unexplained
                else f"{len(self.unexplained)} runs with more emails than attempts that "
                f"could send: {self.unexplained[:5]}",
            )
        )
        t = tally
        if outage:
            checks.append(
                Check(
                    "long outage: no duplicates",
                    self.db_duplicates[OUTAGE] + self.db_unrecorded[OUTAGE] == 0,
                    f"PostgreSQL down {t.outage_seconds:.0f}s from {t.outage_began or 0:.0f}s: "
                    f"{len(t.outage_at_risk)} attempts in flight ({self.outage_cut} held by "
                    f"workers that exited), {len(self.held_through_outage)} emails "
                    "sent before it recorded after it; " + self.db_text(OUTAGE),
                )
            )
        checks.append(
            Check(
                "restarts: no duplicates",
                self.db_duplicates[RESTART] + self.db_unrecorded[RESTART] == 0,
                f"{sum(n for k, n in t.faults.items() if k.startswith('postgres restart'))} "
                f"restarts, {len(t.at_risk)} attempts in flight; " + self.db_text(RESTART),
            )
        )
        if delivery == "at-most-once":
            checks.append(
                Check(
                    "at-most-once: no duplicates",
                    self.duplicates == 0,
                    f"{self.duplicates} duplicate emails",
                )
            )
        checks.append(
            Check(
                "every copy is the same bytes",
                not self.differing,
                "retries resent identical messages"
                if not self.differing
                else f"runs whose copies differ: {self.differing[:5]}",
            )
        )
        checks.append(
            Check(
                "leases of dead workers recovered",
                not self.unrecovered,
                self.recovery_text()
                if not self.unrecovered
                else f"still held: {self.unrecovered[:5]}",
            )
        )
        providers = Counter(r.provider for r in received)
        checks.append(
            Check(
                "both providers carried mail",
                providers["smtp"] > 0 and providers["ses"] > 0,
                f"smtp {providers['smtp']}, ses {providers['ses']} emails",
            )
        )
        missing = [k for k in t.produced if k not in end.stored_keys]
        checks.append(
            Check(
                "producer's events stored",
                not missing,
                f"{len(t.produced)} recorded during the faults, all stored"
                if not missing
                else f"{len(missing)} missing, e.g. {missing[:3]}",
            )
        )
        checks.append(
            Check(
                "workers exited only when told",
                not t.unexpected_exits,
                f"{t.workers_started} started"
                if not t.unexpected_exits
                else "; ".join(t.unexpected_exits[:3]),
            )
        )
        return checks

    def check(self, name: str) -> Check:
        """The check called `name`."""
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(name)

    def db_text(self, fault: str) -> str:
        """What only this fault of the database explains."""
        text = f"{self.db_duplicates[fault]} duplicates"
        if self.db_unrecorded[fault]:
            text += f", {self.db_unrecorded[fault]} emails of runs not recorded as sent"
        return text

    def window_text(self) -> str:
        """The send-to-record window: from the provider taking a message to its record."""
        if not self.windows:
            return "no sent run"
        w = sorted(self.windows)
        text = (
            f"median {w[len(w) // 2]:.2f}s, p99 {w[int(len(w) * 0.99)]:.2f}s, "
            f"max {w[-1]:.1f}s over {len(w)} sent runs"
        )
        if self.held_through_outage:
            text += (
                f"; {len(self.held_through_outage)} held through the long outage, recorded "
                f"up to {max(self.held_through_outage):.0f}s after they were sent"
            )
        return text

    def duplicates_text(self) -> str:
        return (
            f"{self.duplicates} duplicates in {self.duplicated_runs} runs; emails beyond the "
            f"recorded sends (unsent runs' included): {self.explained['unknown']} after a lost "
            f"reply, {self.explained['interrupted']} after an attempt cut short"
        )

    def recovery_text(self) -> str:
        parts = ", ".join(f"{k} {n}" for k, n in sorted(self.recovered.items()))
        return f"{self.orphans} leases left by dead workers: {parts or 'none'}"


def counts(counter: Counter[str]) -> str:
    """`a 1, b 2`: a counter in key order."""
    return ", ".join(f"{k} {n}" for k, n in sorted(counter.items()))


def reason_group(error: str | None) -> str:
    """A failure reason without its run-specific parts, to group similar ones."""
    reason = error or "(none)"
    reason = re.sub(r"\(worker [^)]*\)", "(worker …)", reason)
    reason = re.sub(r"127\.0\.0\.1:\d+", "host", reason)
    reason = re.sub(r"https?://\S+", "URL", reason)
    return reason[:110]
