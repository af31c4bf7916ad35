"""How a job's final state is decided, one test per branch: `settle()`, `state_from_exit()`,
`as_requested()` (cancelled or killed) and the tracker around them (`Tracker._settle_one`).

The rule they enforce: the exit record the job wrote is the truth about its outcome, the
scheduler only explains it (a limit, a kill), and a job that left the scheduler without a
record is `lost`, never `succeeded`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import pytest

from tests.helpers import claim
from zbatch.clusters import Cluster
from zbatch.errors import ConnectionFailure
from zbatch.model.jobs import ExitRecord, JobPaths, JobState, PreparedJob, state_from_exit
from zbatch.schedulers.base import SchedulerStatus
from zbatch.service.ledger import Ledger
from zbatch.service.tracker import Settled, Tracker, as_requested, settle

ACTIVE = [state for state in JobState if not state.final]
FINAL = [state for state in JobState if state.final]
# Scheduler verdicts that explain a non-zero exit better than the code does.
EXPLAINING = [JobState.TIMEOUT, JobState.CANCELLED, JobState.OUT_OF_MEMORY, JobState.NODE_FAILURE]
NO_RECORD = "gone from the scheduler without an exit record"
COMPLETED_NO_RECORD = "scheduler reports completion but the job wrote no exit record"


def sched(
    state: JobState, exit_code: int | None = None, reason: str = "", raw: str = ""
) -> SchedulerStatus:
    return SchedulerStatus("7", state, exit_code, reason, raw or state.value.upper())


def rec(exit_code: int, signal: str = "") -> ExitRecord:
    return ExitRecord(exit_code, 1795934679.0, signal, "7")


# -- the scheduler says the job is still queued or running ---------------------------------------
@pytest.mark.parametrize("state", ACTIVE)
def test_an_active_job_without_a_record_is_not_settled(state: JobState) -> None:
    assert settle(sched(state), None) is None


@pytest.mark.parametrize("state", ACTIVE)
def test_a_live_queue_entry_outweighs_final_accounting(state: JobState) -> None:
    # Accounting may already hold a verdict (a requeue, a lagging listing): the queue decides.
    assert settle(sched(state), None, sched(JobState.TIMEOUT, 140)) is None


def test_a_record_settles_even_while_the_scheduler_lists_the_job() -> None:
    # settle() lets the record win whatever the status; the tracker never asks it while the
    # scheduler still lists the job (test_the_tracker_does_not_settle_an_active_job below).
    assert settle(sched(JobState.RUNNING), rec(0)) == Settled(JobState.SUCCEEDED, 0, "")


# -- no exit record: lost unless the scheduler knows why -----------------------------------------
def test_gone_without_record_or_accounting_is_lost() -> None:
    assert settle(None, None) == Settled(JobState.LOST, None, NO_RECORD)
    assert settle(None, None, None) == Settled(JobState.LOST, None, NO_RECORD)


@pytest.mark.parametrize(
    "state", [s for s in ACTIVE if s not in (JobState.PENDING, JobState.RUNNING)]
)
def test_gone_with_accounting_that_knows_nothing_is_lost(state: JobState) -> None:
    # Nothing is known: the queue has dropped the job, and accounting has no verdict.
    assert settle(None, None, sched(state)) == Settled(JobState.LOST, None, NO_RECORD)


def test_scheduler_success_without_record_is_lost_not_succeeded() -> None:
    assert settle(sched(JobState.SUCCEEDED, 0), None) == Settled(
        JobState.LOST, 0, COMPLETED_NO_RECORD
    )


def test_accounting_success_without_record_is_lost_not_succeeded() -> None:
    assert settle(None, None, sched(JobState.SUCCEEDED, 0)) == Settled(
        JobState.LOST, 0, COMPLETED_NO_RECORD
    )


def test_accounting_success_outweighs_a_queue_failure_and_is_still_lost() -> None:
    verdict = settle(sched(JobState.FAILED, 1), None, sched(JobState.SUCCEEDED, 0))
    assert verdict == Settled(JobState.LOST, 0, COMPLETED_NO_RECORD)


@pytest.mark.parametrize("state", [s for s in FINAL if s is not JobState.SUCCEEDED])
def test_a_final_scheduler_verdict_without_record_is_kept(state: JobState) -> None:
    verdict = settle(sched(state, 9, "why"), None)
    assert verdict == Settled(state, 9, "why")


def test_a_verdict_without_reason_gives_its_raw_state() -> None:
    verdict = settle(sched(JobState.FAILED, 2, "", "FAILED"), None)
    assert verdict == Settled(JobState.FAILED, 2, "FAILED")


def test_accounting_alone_gives_the_verdict() -> None:
    verdict = settle(None, None, sched(JobState.OUT_OF_MEMORY, 137, "h_vmem"))
    assert verdict == Settled(JobState.OUT_OF_MEMORY, 137, "h_vmem")


def test_final_accounting_is_preferred_over_the_queue() -> None:
    verdict = settle(
        sched(JobState.FAILED, 0, "NonZeroExitCode"), None, sched(JobState.TIMEOUT, 140, "h_rt")
    )
    assert verdict == Settled(JobState.TIMEOUT, 140, "h_rt")


def test_accounting_that_is_not_final_leaves_the_queue_verdict() -> None:
    verdict = settle(sched(JobState.TIMEOUT, 0, "TimeLimit"), None, sched(JobState.RUNNING))
    assert verdict == Settled(JobState.TIMEOUT, 0, "TimeLimit")


@pytest.mark.parametrize("state", [JobState.PENDING, JobState.RUNNING])
def test_gone_from_the_queue_but_active_in_accounting_is_polled_again(state: JobState) -> None:
    """squeue and scontrol raced: the job is not lost, and its outcome is still to come."""
    assert settle(None, None, sched(state)) is None


def test_no_record_never_settles_as_succeeded() -> None:
    """The invariant, over every status and accounting state (and their absence)."""
    choices: list[JobState | None] = [None, *JobState]
    for status_state, detail_state in itertools.product(choices, choices):
        status = sched(status_state, 0) if status_state else None
        detail = sched(detail_state, 0) if detail_state else None
        verdict = settle(status, None, detail)
        assert verdict is None or verdict.state is not JobState.SUCCEEDED, (status, detail)


# -- a malformed record counts as none ----------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"end_time": 1.0}',
        '{"exit_code": "0", "end_time": 1.0}',
        '{"exit_code": true, "end_time": 1.0}',
        '{"exit_code": 0.0, "end_time": 1.0}',
        '{"exit_code": 4294967296, "end_time": 1.0}',
        '{"exit_code": 0}',
        '{"exit_code": 0, "end_time": "soon"}',
    ],
)
def test_a_malformed_record_counts_as_no_record(text: str) -> None:
    record = ExitRecord.parse(text)
    assert record is None
    assert settle(None, record) == Settled(JobState.LOST, None, NO_RECORD)
    assert settle(sched(JobState.SUCCEEDED, 0), record) == Settled(
        JobState.LOST, 0, COMPLETED_NO_RECORD
    )
    assert settle(sched(JobState.FAILED, 3, "x"), record) == Settled(JobState.FAILED, 3, "x")


def test_odd_side_fields_of_a_record_are_dropped_not_the_record() -> None:
    record = ExitRecord.parse('{"exit_code": 0, "end_time": 1.0, "signal": "BOGUS", "job_id": 5}')
    assert record == ExitRecord(0, 1.0, "", "")
    assert settle(None, record) == Settled(JobState.SUCCEEDED, 0, "")


# -- an exit record: the truth, which the scheduler may explain --------------------------------
@pytest.mark.parametrize("status", [None, sched(JobState.SUCCEEDED, 0), sched(JobState.FAILED, 1)])
def test_exit_zero_is_succeeded_whatever_the_scheduler_says(status: SchedulerStatus | None) -> None:
    assert settle(status, rec(0)) == Settled(JobState.SUCCEEDED, 0, "")


@pytest.mark.parametrize("state", EXPLAINING)
def test_exit_zero_is_succeeded_even_beside_an_explaining_verdict(state: JobState) -> None:
    # The script finished (a limit hit during the epilogue, a cancel that came too late).
    assert settle(sched(state, 0, "why"), rec(0)) == Settled(JobState.SUCCEEDED, 0, "")


@pytest.mark.parametrize(
    "status", [None, sched(JobState.FAILED, 3, "NonZeroExitCode"), sched(JobState.SUCCEEDED, 0)]
)
def test_a_non_zero_exit_is_failed_with_the_records_code(status: SchedulerStatus | None) -> None:
    assert settle(status, rec(3)) == Settled(JobState.FAILED, 3, "exit code 3")


@pytest.mark.parametrize("state", EXPLAINING)
def test_an_explaining_verdict_names_a_non_zero_exit(state: JobState) -> None:
    assert settle(sched(state, 0, "why"), rec(143)) == Settled(state, 143, "why")


def test_an_explaining_verdict_without_reason_gives_its_raw_state() -> None:
    verdict = settle(sched(JobState.TIMEOUT, 0, "", "TIMEOUT"), rec(143))
    assert verdict == Settled(JobState.TIMEOUT, 143, "TIMEOUT")


def test_explaining_accounting_is_preferred_over_the_queue_for_a_record() -> None:
    verdict = settle(
        sched(JobState.FAILED, 137), rec(137), sched(JobState.OUT_OF_MEMORY, 137, "oom")
    )
    assert verdict == Settled(JobState.OUT_OF_MEMORY, 137, "oom")


def test_explaining_accounting_counts_while_the_queue_has_forgotten_the_job() -> None:
    verdict = settle(None, rec(140), sched(JobState.TIMEOUT, 140, "h_rt"))
    assert verdict == Settled(JobState.TIMEOUT, 140, "h_rt")


def test_a_term_record_is_cancelled() -> None:
    assert settle(None, rec(143, "TERM")) == Settled(JobState.CANCELLED, 143, "signal TERM")


def test_a_term_record_is_cancelled_even_with_exit_zero() -> None:
    assert settle(None, rec(0, "TERM")) == Settled(JobState.CANCELLED, 0, "signal TERM")


def test_an_explaining_verdict_outweighs_a_term_record() -> None:
    verdict = settle(sched(JobState.TIMEOUT, 0, "TimeLimit"), rec(143, "TERM"))
    assert verdict == Settled(JobState.TIMEOUT, 143, "TimeLimit")


def test_a_warning_signal_with_exit_zero_is_succeeded_and_named() -> None:
    assert settle(None, rec(0, "USR1")) == Settled(JobState.SUCCEEDED, 0, "signal USR1")


@pytest.mark.parametrize("signal", ["USR1", "USR2", "INT", "HUP", "KILL"])
def test_another_signal_with_a_non_zero_exit_is_failed_by_its_code(signal: str) -> None:
    assert settle(None, rec(130, signal)) == Settled(JobState.FAILED, 130, "exit code 130")


@pytest.mark.parametrize(
    ("record", "state"),
    [
        (rec(0), JobState.SUCCEEDED),
        (rec(1), JobState.FAILED),
        (rec(-1), JobState.FAILED),
        (rec(0, "TERM"), JobState.CANCELLED),
        (rec(143, "TERM"), JobState.CANCELLED),
        (rec(0, "USR2"), JobState.SUCCEEDED),
        (rec(2, "INT"), JobState.FAILED),
    ],
)
def test_state_from_exit(record: ExitRecord, state: JobState) -> None:
    assert state_from_exit(record) is state


# -- as_requested(): a cancellation only when zbatch was asked for one --------------------------
@pytest.mark.parametrize(
    ("settled", "expected"),
    [
        (Settled(JobState.CANCELLED, None, "qdel"), Settled(JobState.FAILED, 137, "killed (qdel)")),
        (Settled(JobState.CANCELLED, 143, "x"), Settled(JobState.FAILED, 143, "killed (x)")),
        (Settled(JobState.CANCELLED, None, ""), Settled(JobState.FAILED, 137, "killed (signal)")),
    ],
    ids=["no-code-is-137", "scheduler-code-kept", "no-reason-is-signal"],
)
def test_an_unrequested_cancel_without_record_is_a_kill(
    settled: Settled, expected: Settled
) -> None:
    assert as_requested(settled, cancel_requested=False, has_record=False) == expected


def test_an_unrequested_cancel_the_record_confirms_stays_cancelled() -> None:
    settled = Settled(JobState.CANCELLED, 143, "signal TERM")
    assert as_requested(settled, cancel_requested=False, has_record=True) is settled


@pytest.mark.parametrize("has_record", [False, True])
@pytest.mark.parametrize("state", [JobState.FAILED, JobState.LOST])
def test_a_requested_cancel_that_ended_badly_is_cancelled_on_request(
    state: JobState, has_record: bool
) -> None:
    settled = as_requested(Settled(state, 9, "why"), cancel_requested=True, has_record=has_record)
    assert settled == Settled(JobState.CANCELLED, 9, "cancelled on request")


@pytest.mark.parametrize("has_record", [False, True])
@pytest.mark.parametrize("state", [s for s in FINAL if s not in (JobState.FAILED, JobState.LOST)])
def test_a_requested_cancel_keeps_every_other_outcome(state: JobState, has_record: bool) -> None:
    settled = Settled(state, 9, "why")
    assert as_requested(settled, cancel_requested=True, has_record=has_record) is settled


@pytest.mark.parametrize("has_record", [False, True])
@pytest.mark.parametrize("state", [s for s in FINAL if s is not JobState.CANCELLED])
def test_without_a_cancel_anything_but_cancelled_is_kept(state: JobState, has_record: bool) -> None:
    settled = Settled(state, 9, "why")
    assert as_requested(settled, cancel_requested=False, has_record=has_record) is settled


# -- the tracker around settle() ----------------------------------------------------------------
class FakeCluster(Cluster):
    """Statuses, accounting and files given by the test; counts the accounting queries."""

    scheduler_name = "fake"

    def __init__(self) -> None:
        self.status: dict[str, SchedulerStatus] = {}
        self.accounting: dict[str, SchedulerStatus] = {}
        self.files: dict[str, str] = {}
        self.unreadable: set[str] = set()
        self.detail_asked: list[str] = []

    def submit(self, job: PreparedJob) -> str:
        raise NotImplementedError

    def statuses(self, job_ids: Sequence[str]) -> dict[str, SchedulerStatus]:
        return {i: self.status[i] for i in job_ids if i in self.status}

    def detail(self, job_id: str) -> SchedulerStatus | None:
        self.detail_asked.append(job_id)
        return self.accounting.get(job_id)

    def cancel(self, job_ids: Sequence[str]) -> None:
        raise NotImplementedError

    def read_text(self, path: PurePosixPath) -> str | None:
        if str(path) in self.unreadable:
            raise ConnectionFailure(f"cannot read {path}", transient=True)
        return self.files.get(str(path))


class World:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.cluster = FakeCluster()
        self.ledger = Ledger(tmp_path / "ledger.sqlite")
        self.tracker = Tracker(self.cluster, self.ledger, "p")

    def job(self, key: str = "k", job_id: str = "7", cancel_requested: bool = False) -> None:
        claim(
            self.ledger,
            key,
            scheduler="fake",
            workdir=str(self.tmp_path),
            tag=key,
            message_path=str(self.tmp_path / f"{key}.recipewrap.json"),
        )
        self.ledger.update(key, job_id=job_id, state="running")
        if cancel_requested:
            self.ledger.update(key, cancel_requested=1)

    def exit_path(self, key: str = "k") -> str:
        return str(JobPaths(self.tmp_path, key).exit_record)

    def record(self, text: str, key: str = "k") -> None:
        self.cluster.files[self.exit_path(key)] = text

    def poll(self) -> list[Settled]:
        return [settled for _, settled in self.tracker.poll_once()]

    def state(self, key: str = "k") -> tuple[str, int | None, str]:
        entry = self.ledger.get(key)
        assert entry is not None
        return entry.state, entry.exit_code, entry.reason


@pytest.fixture()
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def test_the_tracker_does_not_settle_an_active_job(world: World) -> None:
    world.job()
    world.record('{"exit_code": 0, "end_time": 1.0}')  # written, but the scheduler still lists it
    world.cluster.status["7"] = sched(JobState.RUNNING, reason="COMPLETING")
    assert world.poll() == []
    assert world.cluster.detail_asked == []
    assert world.state() == ("running", None, "")


@pytest.mark.parametrize("state", [JobState.PENDING, JobState.UNKNOWN])
def test_a_changed_active_state_is_recorded_and_polled_again(world: World, state: JobState) -> None:
    world.job()
    world.cluster.status["7"] = sched(state, reason="Priority")
    assert world.poll() == []
    assert world.state() == (state.value, None, "Priority")
    entry = world.ledger.get("k")
    assert entry is not None and entry.active


def test_a_clean_record_needs_no_accounting(world: World) -> None:
    world.job()
    world.record('{"exit_code": 0, "end_time": 1.0}')
    assert world.poll() == [Settled(JobState.SUCCEEDED, 0, "")]
    assert world.cluster.detail_asked == []
    assert world.state() == ("succeeded", 0, "")


def test_a_non_zero_record_asks_accounting(world: World) -> None:
    world.job()
    world.record('{"exit_code": 140, "end_time": 1.0}')
    world.cluster.accounting["7"] = sched(JobState.TIMEOUT, 140, "h_rt")
    assert world.poll() == [Settled(JobState.TIMEOUT, 140, "h_rt")]
    assert world.cluster.detail_asked == ["7"]


def test_no_record_and_no_trace_is_lost(world: World) -> None:
    world.job()
    assert world.poll() == [Settled(JobState.LOST, None, NO_RECORD)]
    assert world.cluster.detail_asked == ["7"]
    assert world.state() == ("lost", None, NO_RECORD)


def test_a_malformed_record_file_is_lost(world: World) -> None:
    world.job()
    world.record('{"exit_code": "0", "end_time": 1.0}')
    assert world.poll() == [Settled(JobState.LOST, None, NO_RECORD)]


def test_a_record_that_cannot_be_read_yet_waits_for_the_next_poll(world: World) -> None:
    world.job()
    world.cluster.unreadable.add(world.exit_path())
    assert world.poll() == []
    assert world.state() == ("running", None, "")
    world.cluster.unreadable.clear()
    world.record('{"exit_code": 0, "end_time": 1.0}')
    assert world.poll() == [Settled(JobState.SUCCEEDED, 0, "")]


def test_an_outbox_that_cannot_be_read_yet_waits_for_the_next_poll(world: World) -> None:
    world.job()
    world.record('{"exit_code": 0, "end_time": 1.0}')
    world.cluster.unreadable.add(str(world.tmp_path / "k.result.outbox.jsonl"))
    assert world.poll() == []
    assert world.state() == ("running", None, "")


@pytest.mark.parametrize(
    ("code", "expected"), [(None, 137), (143, 143)], ids=["no-code", "scheduler-code"]
)
def test_a_cancel_nobody_asked_for_is_a_kill(world: World, code: int | None, expected: int) -> None:
    world.job()
    world.cluster.status["7"] = sched(JobState.CANCELLED, code, "assumedly after job")
    assert world.poll() == [Settled(JobState.FAILED, expected, "killed (assumedly after job)")]


def test_a_kill_without_a_reason_says_signal(world: World) -> None:
    world.job()
    world.cluster.accounting["7"] = SchedulerStatus("7", JobState.CANCELLED, None, "", "")
    assert world.poll() == [Settled(JobState.FAILED, 137, "killed (signal)")]


def test_a_cancel_with_a_record_stays_cancelled(world: World) -> None:
    world.job()
    world.record('{"exit_code": 143, "end_time": 1.0, "signal": "TERM"}')
    assert world.poll() == [Settled(JobState.CANCELLED, 143, "signal TERM")]


@pytest.mark.parametrize(
    ("record", "status", "exit_code"),
    [
        (None, None, None),  # lost: deleted while pending leaves no accounting
        (None, sched(JobState.FAILED, 1, "x"), 1),
        ('{"exit_code": 137, "end_time": 1.0, "signal": "USR1"}', None, 137),  # -notify warning
    ],
    ids=["lost", "failed", "record-failed"],
)
def test_a_requested_cancel_that_ended_badly_is_cancelled(
    world: World, record: str | None, status: SchedulerStatus | None, exit_code: int | None
) -> None:
    world.job(cancel_requested=True)
    if record:
        world.record(record)
    if status:
        world.cluster.status["7"] = status
    assert world.poll() == [Settled(JobState.CANCELLED, exit_code, "cancelled on request")]


@pytest.mark.parametrize(
    ("record", "accounting", "expected"),
    [
        ('{"exit_code": 0, "end_time": 1.0}', None, Settled(JobState.SUCCEEDED, 0, "")),
        (
            '{"exit_code": 140, "end_time": 1.0}',
            sched(JobState.TIMEOUT, 140, "h_rt"),
            Settled(JobState.TIMEOUT, 140, "h_rt"),
        ),
        (None, sched(JobState.CANCELLED, 137, "qdel"), Settled(JobState.CANCELLED, 137, "qdel")),
    ],
    ids=["succeeded", "timeout", "cancelled"],
)
def test_a_requested_cancel_keeps_any_other_outcome(
    world: World, record: str | None, accounting: SchedulerStatus | None, expected: Settled
) -> None:
    world.job(cancel_requested=True)
    if record:
        world.record(record)
    if accounting:
        world.cluster.accounting["7"] = accounting
    assert world.poll() == [expected]


def test_a_job_settled_elsewhere_is_not_reported_again(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.job()
    entry = world.ledger.get("k")
    assert entry is not None
    world.record('{"exit_code": 0, "end_time": 1.0}')
    monkeypatch.setattr(world.tracker, "active", lambda: [entry])  # a stale listing
    assert world.poll() == [Settled(JobState.SUCCEEDED, 0, "")]
    assert world.poll() == []  # the ledger's conditional write refuses a second outcome


def test_one_job_that_cannot_be_settled_does_not_stop_the_others(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.job("a", "1")
    world.job("b", "2")
    world.record('{"exit_code": 0, "end_time": 1.0}', "b")

    original = world.cluster.detail

    def broken(job_id: str) -> SchedulerStatus | None:
        if job_id == "1":
            raise RuntimeError("a defect in parsing")
        return original(job_id)

    monkeypatch.setattr(world.cluster, "detail", broken)
    assert world.poll() == [Settled(JobState.SUCCEEDED, 0, "")]
    assert world.state("a") == ("running", None, "")
    assert world.state("b") == ("succeeded", 0, "")
