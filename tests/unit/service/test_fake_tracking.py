"""The real Submitter, Tracker and Dispatcher over the fake Slurm and Grid Engine.

A step goes the whole way: message in the embedded queue -> job script -> sbatch/qsub ->
polls -> the script run to its end -> exit record -> settled -> results sent; and the
crash and outage paths in between. No scheduler or broker runs; the same paths against
real ones are in tests/integration (test_dispatcher_embedded.py, test_clusters.py).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import (
    DONE,
    FAILED,
    SUBMITTED,
    FakeScheduler,
    captured,
    fake_profile,
    install,
    step_message,
)
from zbatch.clusters import cluster_for
from zbatch.model.jobs import JobPaths, JobState, PreparedJob
from zbatch.model.message import StepMessage, step_key
from zbatch.model.profiles import Profile
from zbatch.prepare.job_files import JobContext
from zbatch.service import outage
from zbatch.service import submitter as submitter_module
from zbatch.service.dispatcher import Dispatcher, DispatcherConfig
from zbatch.service.ledger import Ledger, LedgerEntry
from zbatch.service.tracker import cancel_jobs
from zbatch.transport.embedded import EmbeddedTransport
from zbatch.transport.factory import TransportConfig

SUBMIT = {"slurm": "sbatch", "sge": "qsub"}
STATUS = {"slurm": "squeue", "sge": "qstat"}
DETAIL = {"slurm": "scontrol", "sge": "qacct"}
FIND = {"slurm": ["squeue", "-h", "-t", "all", "-o", "%i|%k"], "sge": ["qstat", "-j", "*"]}
OUTAGE = {"slurm": "sbatch-controller-down.stderr", "sge": "qsub-qmaster-down.stderr"}


class Killed(BaseException):
    """The dispatcher process dying at this point: nothing in zbatch catches it."""


@dataclass
class Site:
    """One fake cluster and the queue its dispatchers serve, as a deployment runs them."""

    scheduler: str
    fake: FakeScheduler
    profile: Profile
    work: Path
    queue_db: Path

    def dispatcher(self, lease_s: float = 60.0) -> Dispatcher:
        """A dispatcher process: its own cluster, ledger and queue connections. Tracking is
        driven by the test (tracker.poll_once, track) so every scheduler call is counted."""
        config = TransportConfig("embedded", str(self.queue_db))
        return Dispatcher(
            self.profile,
            cluster_for(self.profile),
            Ledger(),
            EmbeddedTransport(config.db_path(), lease_s=lease_s),
            JobContext(config.job_args()),
            DispatcherConfig(backoff_s=0.01, track=False),
        )

    def message(self, name: str, **step: Any) -> StepMessage:
        return step_message(self.work / name, **step)

    def drain(self, queue: str) -> list[dict[str, Any]]:
        """The messages waiting on `queue`, taken off it."""
        transport = EmbeddedTransport(self.queue_db)
        bodies = []
        while (delivery := transport.receive(queue, 0)) is not None:
            bodies.append(json.loads(delivery.body))
            transport.ack(delivery)
        return bodies


def make_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scheduler: str) -> Site:
    fake = install(tmp_path / "cluster", scheduler, monkeypatch)
    profile = fake_profile(scheduler, tmp_path / "work")
    return Site(scheduler, fake, profile, tmp_path / "work", tmp_path / "queue.sqlite")


@pytest.fixture(params=["slurm", "sge"])
def site(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Site:
    return make_site(tmp_path, monkeypatch, request.param)


def entry(dispatcher: Dispatcher, message: StepMessage) -> LedgerEntry:
    found = dispatcher.ledger.get(step_key(message))
    assert found is not None
    return found


def submitted(site: Site, dispatcher: Dispatcher, message: StepMessage) -> str:
    """Send the step and let the dispatcher take it; returns the fake's job id."""
    dispatcher.transport.send_step(message)
    dispatcher.serve(threading.Event(), max_messages=1)
    assert dispatcher.outcomes == {"submitted": 1}
    (job_id,) = site.fake.ids()
    return job_id


def test_a_step_runs_to_success_and_its_wrapper_reports_it(site: Site) -> None:
    dispatcher = site.dispatcher()
    message = site.message("ok", wrapper_command=["true"])
    job_id = submitted(site, dispatcher, message)
    (notice,) = site.drain(SUBMITTED)
    # dlstbx's jobid is a number; zbatch's is too where the scheduler's id is all digits
    jobid = int(job_id) if job_id.isdigit() else job_id
    assert notice["payload"] == {"jobid": jobid, "scheduler": site.scheduler}
    seen = []
    for move in (lambda: None, lambda: site.fake.start(job_id), lambda: site.fake.finish(job_id)):
        move()
        dispatcher.tracker.poll_once()
        seen.append(entry(dispatcher, message).state)
    assert seen == ["pending", "running", "succeeded"]
    done = entry(dispatcher, message)
    assert (done.job_id, done.exit_code, done.owed) == (job_id, 0, "")
    dispatcher.track()  # nothing is owed: the wrapper in the job sent its own result
    (success,) = site.drain(DONE)
    assert success["recipe-pointer"] == 4
    assert site.drain(FAILED) == []


def test_exit_3_fails_the_step_and_reports_the_failure_once(site: Site) -> None:
    dispatcher = site.dispatcher()
    message = site.message("e3", commands=["exit 3"])
    job_id = submitted(site, dispatcher, message)
    site.fake.run(job_id, exit_code=3)
    ((_, settled),) = dispatcher.tracker.poll_once()
    assert (settled.state, settled.exit_code) == (JobState.FAILED, 3)
    assert site.fake.calls(DETAIL[site.scheduler]) != []  # accounting asked about exit 3
    dispatcher.track()
    (failure,) = site.drain(FAILED)
    assert failure["recipe-pointer"] == 3
    assert failure["payload"] == f"job {job_id} failed (exit code 3)"
    dispatcher.track()
    assert site.drain(FAILED) == [] and site.drain(DONE) == []
    assert entry(dispatcher, message).state == "failed"


@pytest.mark.parametrize("how", ["vanishes", "completes without a record"])
def test_a_job_gone_without_an_exit_record_is_lost_never_succeeded(site: Site, how: str) -> None:
    dispatcher = site.dispatcher()
    message = site.message("gone", commands=["true"])
    job_id = submitted(site, dispatcher, message)
    site.fake.start(job_id)
    dispatcher.tracker.poll_once()
    assert entry(dispatcher, message).state == "running"
    if how == "vanishes":
        site.fake.vanish(job_id)
    else:  # the scheduler says it ended well, but the job's own record never appeared
        site.fake.finish(job_id, exit_code=0)
        record = JobPaths(Path(entry(dispatcher, message).workdir), entry(dispatcher, message).tag)
        record.exit_record.unlink()
    ((_, settled),) = dispatcher.tracker.poll_once()
    assert settled.state is JobState.LOST
    for _ in range(2):
        dispatcher.tracker.poll_once()
        assert entry(dispatcher, message).state == "lost"
    dispatcher.track()
    (failure,) = site.drain(FAILED)
    assert failure["payload"].startswith(f"job {job_id} lost (")
    assert site.drain(DONE) == []


N_JOBS = 12


def test_n_jobs_are_tracked_with_one_status_query_per_poll(site: Site) -> None:
    dispatcher = site.dispatcher()
    messages = [site.message(f"n{i}", commands=["true"]) for i in range(N_JOBS)]
    for message in messages:
        dispatcher.transport.send_step(message)
    dispatcher.serve(threading.Event(), max_messages=N_JOBS)  # 8 workers: sbatch in parallel
    assert dispatcher.outcomes == {"submitted": N_JOBS}
    ids = site.fake.ids()
    assert len(ids) == N_JOBS == len(site.fake.calls(SUBMIT[site.scheduler]))
    status = STATUS[site.scheduler]
    before = len(site.fake.calls(status))
    for _ in range(3):
        dispatcher.tracker.poll_once()
    polls = site.fake.calls(status)[before:]
    assert len(polls) == 3
    if site.scheduler == "slurm":
        assert all(set(argv[argv.index("-j") + 1].split(",")) == set(ids) for argv in polls)
    for job_id in ids:
        site.fake.run(job_id, exit_code=0)
    settled = dispatcher.tracker.poll_once()
    assert sorted(e.job_id or "" for e, _ in settled) == ids
    assert {s.state for _, s in settled} == {JobState.SUCCEEDED}
    assert len(site.fake.calls(status)) == before + 4
    assert site.fake.calls(DETAIL[site.scheduler]) == []  # exit records said 0: no accounting
    assert FIND[site.scheduler] not in site.fake.calls()


def die_after_the_scheduler_took_it(
    site: Site, monkeypatch: pytest.MonkeyPatch, message: StepMessage
) -> str:
    """A dispatcher is killed between sbatch/qsub and the ledger update: the scheduler has
    the job, the ledger a claim without its id, the queue the unacknowledged step."""
    doomed = site.dispatcher(lease_s=0.2)
    record = doomed.ledger.update

    def update(key: str, **fields: Any) -> None:
        if "job_id" in fields:
            raise Killed("dispatcher killed before it recorded the job id")
        record(key, **fields)

    monkeypatch.setattr(doomed.ledger, "update", update)
    doomed.transport.send_step(message)
    with pytest.raises(Killed):
        doomed.serve(threading.Event(), max_messages=1)
    (job_id,) = site.fake.ids()
    claimed = entry(doomed, message)
    assert (claimed.job_id, claimed.state) == (None, "submitting")
    return job_id


def restart(site: Site, monkeypatch: pytest.MonkeyPatch) -> Dispatcher:
    """A new dispatcher process: it gets the step once the dead one's lease lapses, and
    looks the claim up at once (RECOVERY_GRACE_S, shortened)."""
    monkeypatch.setattr(submitter_module, "RECOVERY_GRACE_S", 0.0)
    dispatcher = site.dispatcher()
    dispatcher.serve(threading.Event(), max_messages=1)
    return dispatcher


def test_a_dispatcher_killed_after_submitting_recovers_the_job_by_its_marker(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    message = site.message("crash", commands=["true"])
    job_id = die_after_the_scheduler_took_it(site, monkeypatch, message)
    dispatcher = restart(site, monkeypatch)
    assert dispatcher.outcomes == {"duplicate": 1}
    assert len(site.fake.calls(SUBMIT[site.scheduler])) == 1 and site.fake.ids() == [job_id]
    assert site.fake.calls().count(FIND[site.scheduler]) == 1
    recovered = entry(dispatcher, message)
    assert (recovered.job_id, recovered.state) == (job_id, "pending")
    (notice,) = site.drain(SUBMITTED)
    assert str(notice["payload"]["jobid"]) == job_id
    site.fake.run(job_id, exit_code=0)
    dispatcher.tracker.poll_once()
    assert entry(dispatcher, message).state == "succeeded"


@pytest.mark.parametrize(
    ("scheduler", "purged"),
    [
        pytest.param("slurm", False, id="slurm-still-listed"),
        pytest.param("slurm", True, id="slurm-purged"),
        # No job queued at all: `qstat -j '*'` exits 1, which must read as "not found".
        pytest.param("sge", False, id="sge-idle"),
    ],
)
def test_a_job_that_ended_while_no_dispatcher_ran_is_recovered_not_resubmitted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scheduler: str, purged: bool
) -> None:
    site = make_site(tmp_path, monkeypatch, scheduler)
    message = site.message("ended", commands=["true"])
    job_id = die_after_the_scheduler_took_it(site, monkeypatch, message)
    site.fake.run(job_id, exit_code=0)
    if purged:
        site.fake.purge(job_id)  # only the exit record still knows the job id
    dispatcher = restart(site, monkeypatch)
    assert dispatcher.outcomes == {"duplicate": 1}
    assert len(site.fake.calls(SUBMIT[scheduler])) == 1
    assert entry(dispatcher, message).job_id == job_id
    dispatcher.tracker.poll_once()
    assert entry(dispatcher, message).state == "succeeded"


@pytest.mark.parametrize("scheduler", ["slurm", "sge"])
def test_a_dispatcher_killed_before_submitting_leaves_the_step_to_be_submitted_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scheduler: str
) -> None:
    site = make_site(tmp_path, monkeypatch, scheduler)
    message = site.message("early", commands=["true"])
    doomed = site.dispatcher(lease_s=0.2)

    def never(job: PreparedJob) -> str:
        raise Killed(f"dispatcher killed before the scheduler saw job {job.spec.name}")

    monkeypatch.setattr(doomed.submitter.cluster, "submit", never)
    doomed.transport.send_step(message)
    with pytest.raises(Killed):
        doomed.serve(threading.Event(), max_messages=1)
    assert site.fake.ids() == [] and entry(doomed, message).state == "submitting"
    dispatcher = restart(site, monkeypatch)
    assert dispatcher.outcomes == {"submitted": 1}
    assert len(site.fake.calls(SUBMIT[scheduler])) == 1
    assert entry(dispatcher, message).job_id == site.fake.ids()[0]


def test_a_submission_lost_in_an_outage_is_found_not_repeated(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The controller queued the job, then its answer was lost: zbatch sees an outage.
    monkeypatch.setattr(outage, "FIRST_PROBE_S", 0.01)
    dispatcher = site.dispatcher()
    text = captured(site.scheduler, OUTAGE[site.scheduler])
    site.fake.fail_next(SUBMIT[site.scheduler], stderr=text, rc=1, after=True)
    message = site.message("outage", commands=["true"])
    dispatcher.transport.send_step(message)
    dispatcher.serve(threading.Event(), max_messages=1)
    assert len(site.fake.calls(SUBMIT[site.scheduler])) == 1
    (job_id,) = site.fake.ids()
    assert entry(dispatcher, message).job_id == job_id
    assert site.fake.calls().count(FIND[site.scheduler]) == 1
    (notice,) = site.drain(SUBMITTED)
    assert str(notice["payload"]["jobid"]) == job_id
    assert site.drain("dlq.cluster.submission") == []


def test_a_submission_lost_in_an_outage_counts_as_submitted(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outage, "FIRST_PROBE_S", 0.01)
    dispatcher = site.dispatcher()
    text = captured(site.scheduler, OUTAGE[site.scheduler])
    site.fake.fail_next(SUBMIT[site.scheduler], stderr=text, rc=1, after=True)
    dispatcher.transport.send_step(site.message("outage", commands=["true"]))
    dispatcher.serve(threading.Event(), max_messages=1)
    assert dispatcher.outcomes == {"submitted": 1}


def test_a_cancelled_job_settles_as_cancelled(site: Site) -> None:
    dispatcher = site.dispatcher()
    message = site.message("cancel", commands=["sleep 60"])
    job_id = submitted(site, dispatcher, message)
    site.fake.start(job_id)
    dispatcher.tracker.poll_once()
    cancel_jobs(dispatcher.cluster, dispatcher.ledger, [entry(dispatcher, message)])
    assert site.fake.calls()[-1] == ["scancel" if site.scheduler == "slurm" else "qdel", job_id]
    ((_, settled),) = dispatcher.tracker.poll_once()
    assert settled.state is JobState.CANCELLED
    assert entry(dispatcher, message).state == "cancelled"
