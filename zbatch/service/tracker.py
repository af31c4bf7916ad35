"""Batched job tracking: one scheduler query per cluster per poll, whatever the job count.

A job's outcome comes from the exit record its script wrote, checked against what the
scheduler says; it is recorded once, together with what the step still owes its recipe
(`owed.py`). A job that left the scheduler without a record is `lost`, never `succeeded`.
A job writes its records itself, so one that is malformed counts as no record, and an error
met with one job is logged and that job skipped: polling goes on for the others.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from zbatch.clusters import Cluster
from zbatch.errors import ZbatchError
from zbatch.model.jobs import ExitRecord, JobState, state_from_exit
from zbatch.schedulers.base import SchedulerStatus
from zbatch.service.ledger import Ledger, LedgerEntry
from zbatch.service.outcome import read_result
from zbatch.service.owed import owed_at_end

log = logging.getLogger(__name__)

# A status query that took the scheduler T seconds is not repeated within SLOW_FACTOR * T: the
# tracker takes at most ~1/SLOW_FACTOR of a busy scheduler's time (and of a shared login node).
SLOW_FACTOR = 10.0
# Scheduler verdicts that explain a record's non-zero exit better than the exit code does.
_EXPLAINING = (JobState.TIMEOUT, JobState.CANCELLED, JobState.OUT_OF_MEMORY, JobState.NODE_FAILURE)


@dataclass(frozen=True)
class Settled:
    state: JobState
    exit_code: int | None
    reason: str


_STILL_ACTIVE = (JobState.PENDING, JobState.RUNNING)


def as_requested(settled: Settled, cancel_requested: bool, has_record: bool) -> Settled:
    """A cancellation only when zbatch was asked for one."""
    if settled.state is JobState.CANCELLED and not cancel_requested and not has_record:
        # Nobody asked zbatch to cancel it: the job was killed (SGE reports a kill -9 and
        # a qdel alike), which is a failure of the job, not a user's cancellation.
        code = settled.exit_code if settled.exit_code is not None else 137
        return Settled(JobState.FAILED, code, f"killed ({settled.reason or 'signal'})")
    if cancel_requested and settled.state in (JobState.FAILED, JobState.LOST):
        # Asked to cancel, then ended badly: SGE's -notify warning signal often ends the
        # job before qdel's kill, and a job deleted while pending leaves no accounting.
        return Settled(JobState.CANCELLED, settled.exit_code, "cancelled on request")
    return settled


def settle(
    status: SchedulerStatus | None, record: ExitRecord | None, detail: SchedulerStatus | None = None
) -> Settled | None:
    """The final outcome of a job, or None while it is still queued or running."""
    # Accounting (detail) knows exit codes that a queue listing does not: prefer it.
    if detail is not None and detail.state.final:
        verdict: SchedulerStatus | None = detail
    else:
        verdict = status if status is not None and status.state.final else None
    if record is not None:
        if verdict is not None and verdict.state in _EXPLAINING and record.exit_code != 0:
            return Settled(verdict.state, record.exit_code, verdict.reason or verdict.raw_state)
        state = state_from_exit(record)
        reason = f"signal {record.signal}" if record.signal else ""
        if state is JobState.FAILED:
            reason = f"exit code {record.exit_code}"
        return Settled(state, record.exit_code, reason)
    if status is not None and not status.state.final:
        return None
    if status is None and detail is not None and detail.state in _STILL_ACTIVE:
        return None  # gone from the queue listing, but accounting has it running: ask again
    if verdict is None:
        return Settled(JobState.LOST, None, "gone from the scheduler without an exit record")
    if verdict.state is JobState.SUCCEEDED:
        return Settled(
            JobState.LOST,
            verdict.exit_code,
            "scheduler reports completion but the job wrote no exit record",
        )
    return Settled(verdict.state, verdict.exit_code, verdict.reason or verdict.raw_state)


def explained(cluster: Cluster, entry: LedgerEntry, settled: Settled) -> Settled:
    """A failure as the wrapper's result record explains it: its reason, and the tool's own
    exit code, instead of a bare "exit code N" (ZbatchError when it cannot be read yet)."""
    if settled.state is not JobState.FAILED:
        return settled
    result = read_result(cluster, entry)
    if result is None or result.success or not result.reason:
        return settled
    code = result.tool_exit_code or settled.exit_code
    return Settled(settled.state, code, result.reason)


def cancel_jobs(cluster: Cluster, ledger: Ledger, entries: list[LedgerEntry]) -> None:
    """Cancel through the scheduler, remembering that the cancellation was asked for."""
    for entry in entries:
        ledger.update(entry.key, cancel_requested=1)
    cluster.cancel([e.job_id for e in entries if e.job_id])


class Tracker:
    """Polls one cluster for the active jobs of one profile in the ledger."""

    def __init__(
        self,
        cluster: Cluster,
        ledger: Ledger,
        profile: str,
        interval_s: float = 2.0,
        max_interval_s: float = 60.0,
        recipe_ids: set[str] | None = None,
    ) -> None:
        self.recipe_ids = recipe_ids
        self.cluster = cluster
        self.ledger = ledger
        self.profile = profile
        self.interval_s = interval_s
        self.max_interval_s = max_interval_s
        self.queries = 0
        self.failures = 0
        self.last_query_s = 0.0

    def next_delay(self) -> float:
        """Back off while the scheduler is failing (double per failure) or slow (wait at least
        SLOW_FACTOR times the last query's duration); capped."""
        backoff = self.interval_s * 2.0**self.failures
        return float(min(self.max_interval_s, max(backoff, SLOW_FACTOR * self.last_query_s)))

    def active(self) -> list[LedgerEntry]:
        return [
            e
            for e in self.ledger.find(active_only=True, profile=self.profile)
            if self.recipe_ids is None or e.recipe_id in self.recipe_ids
        ]

    def has_active(self) -> bool:
        return bool(self.active())

    def poll_once(self) -> list[tuple[LedgerEntry, Settled]]:
        active = [e for e in self.active() if e.job_id]
        if not active:
            return []
        ids = [e.job_id for e in active if e.job_id]
        started = time.monotonic()
        try:
            self.queries += 1
            statuses = self.cluster.statuses(ids)
        except ZbatchError as exc:
            self.failures += 1
            log.warning("status poll %d failed (%d in a row): %s", self.queries, self.failures, exc)
            return []
        except Exception:  # a defect (say, in parsing odd scheduler output): back off, go on
            self.failures += 1
            log.exception("status poll %d failed (%d in a row)", self.queries, self.failures)
            return []
        finally:
            self.last_query_s = time.monotonic() - started
        self.failures = 0
        settled: list[tuple[LedgerEntry, Settled]] = []
        for entry in active:
            try:
                done = self._settle_one(entry, statuses)
            except Exception:
                log.exception("job %s: cannot settle it (skipped this poll)", entry.job_id)
                continue
            if done is not None:
                settled.append(done)
        return settled

    def _settle_one(
        self, entry: LedgerEntry, statuses: dict[str, SchedulerStatus]
    ) -> tuple[LedgerEntry, Settled] | None:
        if entry.job_id is None:  # only entries with a job id are polled (Ledger.active)
            return None
        status = statuses.get(entry.job_id)
        # COMPLETING counts as running: settling then would miss a TIMEOUT Slurm has yet to show.
        if status is not None and not status.state.final:
            if status.state is not entry.state:
                self.ledger.update(entry.key, state=status.state, reason=status.reason)
            return None
        try:
            record = self.cluster.exit_record(entry.paths)
            detail = None
            if record is None or record.exit_code != 0:
                # Accounting explains what a bare exit code cannot (time limit, OOM, kill).
                detail = self.cluster.detail(entry.job_id)
            settled = settle(status, record, detail)
            if settled is None:
                return None
            if record is not None:
                settled = explained(self.cluster, entry, settled)
        except ZbatchError as exc:
            log.warning("job %s: cannot read its outcome yet: %s", entry.job_id, exc)
            return None
        settled = as_requested(settled, bool(entry.cancel_requested), record is not None)
        try:
            owed = owed_at_end(self.cluster, entry, settled.state, settled.reason)
        except ZbatchError as exc:
            log.warning("job %s: cannot read what it left to send yet: %s", entry.job_id, exc)
            return None
        # The outcome and what the step owes are one write, made once: a replica or `zbatch
        # status` that settled it first has recorded both, and this poll leaves it alone.
        if not self.ledger.settle(
            entry.key, settled.state, settled.exit_code, settled.reason, owed
        ):
            return None
        log.info(
            "job %s (%s step %d): %s%s%s",
            entry.job_id,
            entry.recipe_id,
            entry.pointer,
            settled.state.value,
            f" {settled.reason}" if settled.reason else "",
            f"; owes {', '.join(owed.channels)}" if owed else "",
        )
        updated = self.ledger.get(entry.key)
        return (updated or entry), settled

    def wait(self, timeout_s: float | None = None) -> None:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self.has_active():
            if deadline is not None and time.monotonic() > deadline:
                raise ZbatchError(f"jobs still active after {timeout_s:g} s")
            self.poll_once()
            time.sleep(self.next_delay())
