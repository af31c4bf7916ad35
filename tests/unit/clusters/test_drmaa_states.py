"""DrmaaCluster.statuses and its reaping against a fake DRMAA session (no libdrmaa needed).

The fake `drmaa` mirrors drmaa-python where it matters: errors are classes under
`drmaa.errors`, and DRMAA_ERRNO_NO_RUSAGE (code 24) comes as the bare `Exception`, the one
error drmaa-python raises without a class of its own. The real-SGE behaviour is in
tests/integration/test_drmaa_cluster.py.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.helpers import claim
from zbatch.clusters import drmaa as drmaa_cluster
from zbatch.clusters.drmaa import DrmaaCluster
from zbatch.errors import ClusterUnavailable, SchedulerError
from zbatch.model.jobs import JobPaths, JobSpec, JobState, PreparedJob
from zbatch.model.profiles import parse_profile
from zbatch.prepare.render import render_script
from zbatch.schedulers.base import SchedulerStatus
from zbatch.service.ledger import Ledger
from zbatch.service.tracker import Tracker

PROFILE = parse_profile(
    {"name": "drmaa-unit", "scheduler": "sge", "connection": {"type": "drmaa"}}, "test"
)


class DrmaaException(Exception):
    pass


class InvalidJobException(DrmaaException):
    pass


class DrmCommunicationException(DrmaaException):
    pass


class TryLaterException(DrmaaException):
    pass


class ExitTimeoutException(DrmaaException):
    pass


ERRORS = SimpleNamespace(
    DrmaaException=DrmaaException,
    InvalidJobException=InvalidJobException,
    DrmCommunicationException=DrmCommunicationException,
    TryLaterException=TryLaterException,
    ExitTimeoutException=ExitTimeoutException,
)
FAKE_DRMAA = SimpleNamespace(
    errors=ERRORS,
    Session=SimpleNamespace(TIMEOUT_NO_WAIT=0),
    JobControlAction=SimpleNamespace(TERMINATE="terminate"),
)


class FakeSession:
    """jobStatus answers from `states` (or raises the exception stored there); wait from
    `ends`; control records what it was asked."""

    def __init__(self) -> None:
        self.states: dict[str, str | BaseException] = {}
        self.ends: dict[str, Any] = {}
        self.controlled: list[tuple[str, str]] = []
        self.waited: list[str] = []
        self.run_error: Exception | None = None
        self.templates = 0

    def createJobTemplate(self) -> SimpleNamespace:
        self.templates += 1
        return SimpleNamespace()

    def deleteJobTemplate(self, _template: SimpleNamespace) -> None:
        self.templates -= 1

    def runJob(self, _template: SimpleNamespace) -> str:
        if self.run_error is not None:
            raise self.run_error
        return "7"

    def jobStatus(self, job_id: str) -> str:
        state = self.states[job_id]
        if isinstance(state, BaseException):
            raise state
        return state

    def wait(self, job_id: str, _timeout: int) -> Any:
        self.waited.append(job_id)
        end = self.ends[job_id]
        if isinstance(end, BaseException):
            raise end
        return end

    def control(self, job_id: str, action: str) -> None:
        state = self.states.get(job_id)
        if isinstance(state, BaseException):
            raise state
        self.controlled.append((job_id, action))

    def exit(self) -> None:
        pass


@pytest.fixture()
def session(monkeypatch: pytest.MonkeyPatch) -> FakeSession:
    fake = FakeSession()
    shared = drmaa_cluster._SharedSession()
    shared.drmaa, shared.session = FAKE_DRMAA, fake  # acquire() then loads nothing
    monkeypatch.setattr(drmaa_cluster, "_SHARED", shared)
    return fake


@pytest.fixture()
def cluster(session: FakeSession, monkeypatch: pytest.MonkeyPatch) -> Iterator[DrmaaCluster]:
    made = DrmaaCluster(PROFILE)
    assert made.session is session
    monkeypatch.setattr(made, "detail", lambda _job_id: None)  # no qacct here
    yield made
    made.close()


def exited(code: int = 0) -> SimpleNamespace:
    return SimpleNamespace(
        hasExited=True,
        exitStatus=code,
        hasSignal=False,
        terminatedSignal="",
        wasAborted=False,
        resourceUsage={"start_time": "1795934679.0000", "exit_status": f"{code}.0000"},
    )


# -- states DRMAA reports -----------------------------------------------------------------------
@pytest.mark.parametrize("raw", ["undetermined", "some_future_state"])
def test_an_unrecognised_state_is_unknown_and_warned(
    raw: str, session: FakeSession, cluster: DrmaaCluster, caplog: pytest.LogCaptureFixture
) -> None:
    session.states["7"] = raw
    with caplog.at_level(logging.WARNING, logger="zbatch.clusters.drmaa"):
        found = cluster.statuses(["7"])
    assert found == {"7": SchedulerStatus("7", JobState.UNKNOWN, None, "", raw)}
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "7" in warning.getMessage() and raw in warning.getMessage()


def test_an_undetermined_job_is_polled_again_not_lost(
    tmp_path: Path, session: FakeSession, cluster: DrmaaCluster
) -> None:
    """The tracker end to end: UNKNOWN keeps the job active; it settles once DRMAA knows."""
    ledger = Ledger(tmp_path / "ledger.sqlite")
    claim(ledger, "k", scheduler="sge", workdir=str(tmp_path), tag="t")
    ledger.update("k", job_id="7", state="running")
    tracker = Tracker(cluster, ledger, "p")
    session.states["7"] = "undetermined"
    assert tracker.poll_once() == []
    entry = ledger.get("k")
    assert entry is not None and entry.active and entry.state == "unknown"
    session.states["7"] = "running"
    assert tracker.poll_once() == []
    (tmp_path / "zbatch-t.exit").write_text('{"exit_code": 0, "end_time": 1.0}')
    session.states["7"], session.ends["7"] = "done", exited(0)
    ((_, settled),) = tracker.poll_once()
    assert settled.state is JobState.SUCCEEDED


def test_a_job_drmaa_no_longer_knows_is_absent(session: FakeSession, cluster: DrmaaCluster) -> None:
    # The exit record and qacct decide (lost, if the job left neither).
    session.states["7"] = InvalidJobException(
        "code 18: the job specified by 'jobid' does not exist"
    )
    assert cluster.statuses(["7"]) == {}


@pytest.mark.parametrize("raw", ["undetermined", InvalidJobException("code 18: gone")])
def test_a_job_this_session_deleted_is_cancelled(
    raw: str | BaseException, session: FakeSession, cluster: DrmaaCluster
) -> None:
    session.states["7"] = "running"
    cluster.cancel(["7"])
    session.states["7"] = raw
    (status,) = cluster.statuses(["7"]).values()
    assert status.state is JobState.CANCELLED


@pytest.mark.parametrize(
    ("raw", "state", "reason"),
    [
        ("queued_active", JobState.PENDING, ""),
        ("user_on_hold", JobState.PENDING, "held"),
        ("running", JobState.RUNNING, ""),
        ("user_suspended", JobState.RUNNING, "suspended"),
    ],
)
def test_active_states_map(
    raw: str, state: JobState, reason: str, session: FakeSession, cluster: DrmaaCluster
) -> None:
    session.states["7"] = raw
    assert cluster.statuses(["7"]) == {"7": SchedulerStatus("7", state, None, reason, raw)}


def test_a_status_error_is_matched_by_type_and_transient(
    session: FakeSession, cluster: DrmaaCluster
) -> None:
    session.states["7"] = DrmCommunicationException("code 2: qmaster unreachable")
    with pytest.raises(SchedulerError) as caught:
        cluster.statuses(["7"])
    assert caught.value.transient


# -- reaping an ended job -----------------------------------------------------------------------
def test_an_ended_job_is_reaped_once_and_remembered(
    session: FakeSession, cluster: DrmaaCluster
) -> None:
    session.states["7"], session.ends["7"] = "done", exited(0)
    first = cluster.statuses(["7"])
    session.ends["7"] = InvalidJobException("code 18: already reaped")
    assert cluster.statuses(["7"]) == first
    assert first["7"].state is JobState.SUCCEEDED and session.waited == ["7"]


@pytest.mark.parametrize(
    "no_rusage",
    [
        Exception("code 24: no usage information was returned for the completed job"),
        # The code, not the wording, decides: a message libdrmaa words differently still counts.
        Exception("keine Nutzungsdaten"),
    ],
)
def test_no_rusage_is_recognised_by_its_class_not_its_message(
    no_rusage: Exception, session: FakeSession, cluster: DrmaaCluster
) -> None:
    session.states["7"], session.ends["7"] = "failed", no_rusage
    (status,) = cluster.statuses(["7"]).values()
    assert (status.state, status.reason) == (JobState.CANCELLED, "deleted before start")


def test_no_rusage_asks_accounting_first(
    session: FakeSession, cluster: DrmaaCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran = SchedulerStatus("7", JobState.TIMEOUT, 137, "h_rt", "failed=37")
    monkeypatch.setattr(cluster, "detail", lambda _job_id: ran)
    session.states["7"], session.ends["7"] = "failed", Exception("code 24: no usage")
    assert cluster.statuses(["7"]) == {"7": ran}


@pytest.mark.parametrize(
    "defect",
    [ValueError("code 24: looks like NO_RUSAGE but is not"), RuntimeError("code 24: nor this")],
)
def test_another_error_that_reads_like_no_rusage_is_not_taken_for_it(
    defect: Exception, session: FakeSession, cluster: DrmaaCluster
) -> None:
    session.states["7"], session.ends["7"] = "done", defect
    with pytest.raises(type(defect)):
        cluster.statuses(["7"])
    assert "7" not in cluster.ended


def test_a_drmaa_wait_error_keeps_the_reported_state(
    session: FakeSession, cluster: DrmaaCluster
) -> None:
    session.states["7"], session.ends["7"] = "failed", ExitTimeoutException("code 23: timeout")
    assert cluster.statuses(["7"]) == {
        "7": SchedulerStatus("7", JobState.FAILED, None, "", "failed")
    }


# -- cancelling ---------------------------------------------------------------------------------
def test_cancelling_an_ended_job_is_not_an_error(
    session: FakeSession, cluster: DrmaaCluster
) -> None:
    session.states["7"] = InvalidJobException("code 18: gone")
    cluster.cancel(["7"])
    assert "7" not in cluster.terminated


def test_a_cancel_error_names_the_job(session: FakeSession, cluster: DrmaaCluster) -> None:
    session.states["7"] = DrmCommunicationException("code 2: qmaster unreachable")
    with pytest.raises(SchedulerError, match="7: code 2"):
        cluster.cancel(["7"])


@pytest.mark.parametrize(
    ("error", "kind", "transient"),
    [
        (DrmCommunicationException("code 2: qmaster unreachable"), ClusterUnavailable, True),
        (TryLaterException("code 16: try later"), SchedulerError, True),
        (DrmaaException("code 17: denied"), SchedulerError, False),
    ],
)
def test_submission_errors_are_matched_by_type(
    error: Exception,
    kind: type[SchedulerError],
    transient: bool,
    tmp_path: Path,
    session: FakeSession,
    cluster: DrmaaCluster,
) -> None:
    session.run_error = error
    spec = JobSpec(name="unit-job", workdir=str(tmp_path), command="true")
    paths = JobPaths(tmp_path, "t")
    job = PreparedJob(spec, paths, render_script(PROFILE, spec, paths))
    with pytest.raises(kind) as caught:
        cluster.submit(job)
    assert type(caught.value) is kind and caught.value.transient is transient
    assert session.templates == 0  # the template was deleted
