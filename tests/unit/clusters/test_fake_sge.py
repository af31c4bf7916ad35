"""The real CommandCluster (Grid Engine syntax, local connection) against the fake SGE.

The fakes print what Son of Grid Engine 8.1.9 prints (tests/data/scheduler-output/sge), so
these check zbatch's argv and parsing end to end in milliseconds;
tests/integration/test_clusters.py runs the same cases against the real sge_qmaster.
"""

from __future__ import annotations

import itertools
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fakes import (
    FakeScheduler,
    Outcome,
    Running,
    captured,
    fake_profile,
    install,
    step_message,
)
from zbatch.clusters import Cluster, cluster_for
from zbatch.connections.local import LocalConnection
from zbatch.errors import ClusterUnavailable, SchedulerError
from zbatch.model.jobs import JobState, PreparedJob
from zbatch.model.profiles import Profile
from zbatch.prepare.job_files import JobContext, prepare_job

STATUS_ARGV = ["qstat", "-xml", "-g", "d"]
_names = itertools.count()


@pytest.fixture()
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeScheduler:
    return install(tmp_path / "cluster", "sge", monkeypatch)


@pytest.fixture()
def profile(fake: FakeScheduler, tmp_path: Path) -> Profile:
    return fake_profile(fake.scheduler, tmp_path / "work")


@pytest.fixture()
def cluster(profile: Profile) -> Cluster:
    return cluster_for(profile)


def prepared(profile: Profile, *commands: str) -> PreparedJob:
    workdir = Path(str(profile.workdir_root)) / f"job{next(_names)}"
    message = step_message(workdir, commands=list(commands or ["true"]))
    return prepare_job(message, profile, JobContext())


def submit(cluster: Cluster, profile: Profile, *commands: str) -> str:
    return cluster.submit(prepared(profile, *commands))


def test_submit_returns_the_id_and_queues_the_staged_script(
    fake: FakeScheduler, cluster: Cluster, profile: Profile
) -> None:
    job = prepared(profile)
    job_id = cluster.submit(job)
    assert job_id == "100" and fake.ids() == ["100"]
    assert fake.calls() == [["qsub", "-terse", str(job.paths.script)]]
    queued = fake.job(job_id)
    assert queued["state"] == "qw"
    assert queued["script_text"] == job.script
    assert queued["context"] == {"zbatch": job.spec.marker}
    assert (queued["queue"], queued["workdir"], queued["shell"]) == (
        "all.q", job.spec.workdir, "/bin/bash"
    )  # fmt: skip
    assert queued["resources"] == {"h_rt": "0:05:00", "h_vmem": "256M"}
    assert (queued["stdout"], queued["stderr"]) == (str(job.paths.stdout), str(job.paths.stderr))
    assert queued["notify"] is True


def test_one_qstat_reports_on_many_jobs(
    fake: FakeScheduler, cluster: Cluster, profile: Profile
) -> None:
    ids = [submit(cluster, profile) for _ in range(3)]
    broken = prepared(profile)
    ids.append(cluster.submit(broken))
    fake.start(ids[1])
    fake.run(ids[2], exit_code=0)
    shutil.rmtree(broken.spec.workdir)  # its working folder is gone: Eqw
    fake.start(ids[3])
    before = len(fake.calls("qstat"))
    statuses = cluster.statuses([*ids, "99999"])
    assert fake.calls("qstat")[before:] == [STATUS_ARGV]
    assert {i: s.state for i, s in statuses.items()} == {
        ids[0]: JobState.PENDING,
        ids[1]: JobState.RUNNING,
        ids[3]: JobState.FAILED,  # never leaves the queue on its own: the tracker qdels it
    }
    assert statuses[ids[3]].raw_state == "Eqw"
    assert cluster.statuses([ids[2]]) == {}  # ended: out of qstat, into qacct


KILLED = "assumedly after job: SIGKILL (qdel, or any kill -9)"
# How a running job ends: (id, its command, what ends it, detail's state, code, reason).
OUTCOMES: list[tuple[str, str, Outcome, JobState, int, str]] = [
    ("success", "true", lambda j: j.fake.finish(j.job_id, 0), JobState.SUCCEEDED, 0, ""),
    ("exit 3", "exit 3", lambda j: j.fake.finish(j.job_id, 3), JobState.FAILED, 3, ""),
    (
        "h_rt",
        "true",
        lambda j: j.fake.time_out(j.job_id),
        JobState.TIMEOUT,
        137,
        "qmaster enforced h_rt, h_cpu, or h_vmem limit",
    ),
    ("kill -9", "true", lambda j: j.fake.kill(j.job_id, 9), JobState.CANCELLED, 137, KILLED),
    ("qdel", "true", lambda j: j.cluster.cancel([j.job_id]), JobState.CANCELLED, 137, KILLED),
]


@pytest.mark.parametrize(
    ("command", "outcome", "state", "code", "reason"),
    [pytest.param(*case[1:], id=case[0]) for case in OUTCOMES],
)
def test_qacct_explains_a_job_that_left_the_queue(
    fake: FakeScheduler,
    cluster: Cluster,
    profile: Profile,
    command: str,
    outcome: Outcome,
    state: JobState,
    code: int,
    reason: str,
) -> None:
    job_id = submit(cluster, profile, command)
    fake.start(job_id)
    outcome(Running(fake, cluster, job_id))
    assert cluster.statuses([job_id]) == {}
    detail = cluster.detail(job_id)
    assert fake.calls("qacct") == [["qacct", "-j", job_id]]
    assert detail is not None
    assert (detail.state, detail.exit_code, detail.reason) == (state, code, reason)


def test_a_job_deleted_while_pending_is_never_accounted(cluster: Cluster, profile: Profile) -> None:
    job_id = submit(cluster, profile)
    cluster.cancel([job_id])
    assert cluster.statuses([job_id]) == {}
    assert cluster.detail(job_id) is None  # qacct: "error: job id N not found", exit 1


def test_one_qdel_cancels_pending_and_running_jobs(
    fake: FakeScheduler, cluster: Cluster, profile: Profile
) -> None:
    waiting, running = submit(cluster, profile), submit(cluster, profile, "echo never")
    fake.start(running)
    cluster.cancel([waiting, running])
    assert fake.calls("qdel") == [["qdel", waiting, running]]
    assert cluster.statuses([waiting, running]) == {}
    assert fake.job(waiting)["accounting"] is None
    assert fake.job(running)["accounting"] == {"failed": 100, "exit_status": 137}


def test_find_recovers_a_queued_job_id_by_its_marker(
    fake: FakeScheduler, cluster: Cluster, profile: Profile
) -> None:
    jobs = [prepared(profile) for _ in range(3)]
    ids = [cluster.submit(job) for job in jobs]
    fake.start(ids[2])
    assert [cluster.find(job.spec.marker) for job in jobs] == ids
    assert cluster.find("0" * 32) is None
    assert fake.calls("qstat")[0] == ["qstat", "-j", "*"]
    fake.finish(ids[2], exit_code=0)
    # An ended job has left qstat: recovery reads its exit record instead (submitter.py).
    assert cluster.find(jobs[2].spec.marker) is None


def test_find_on_an_idle_cluster_finds_nothing(
    fake: FakeScheduler, cluster: Cluster, profile: Profile
) -> None:
    # `qstat -j '*'` exits 1 when no job at all is queued (qstat-j-no-jobs.stderr): that is
    # "not found", not a failed lookup (which would dead-letter a step being recovered).
    job = prepared(profile)
    job_id = cluster.submit(job)
    fake.run(job_id, exit_code=0)  # the only job has ended: nothing is queued
    assert cluster.find(job.spec.marker) is None
    assert fake.state()["calls"][-1]["rc"] == 1


CAPTURED_FAILURES = [
    ("qsub", "qsub-qmaster-down.stderr", "", "submit", ClusterUnavailable),
    ("qsub", "qsub-unknown-queue.stderr", "", "submit", SchedulerError),
    ("qstat", "qstat-qmaster-down.stderr", "", "statuses", ClusterUnavailable),
    ("qstat", "qstat-qmaster-down.stderr", "", "find", ClusterUnavailable),
    ("qdel", "qdel-qmaster-down.stderr", "qdel-qmaster-down.txt", "cancel", ClusterUnavailable),
]


@pytest.mark.parametrize(("tool", "stderr", "stdout", "call", "error"), CAPTURED_FAILURES)
def test_scheduler_errors_become_the_right_zbatch_error(
    fake: FakeScheduler,
    cluster: Cluster,
    profile: Profile,
    tool: str,
    stderr: str,
    stdout: str,
    call: str,
    error: type[SchedulerError],
) -> None:
    job = prepared(profile)
    job_id = cluster.submit(job) if call != "submit" else "100"
    text = captured("sge", stderr)
    fake.fail_next(tool, stderr=text, stdout=captured("sge", stdout) if stdout else "")
    actions: dict[str, Callable[[], object]] = {
        "submit": lambda: cluster.submit(job),
        "statuses": lambda: cluster.statuses([job_id]),
        "find": lambda: cluster.find(job.spec.marker),
        "cancel": lambda: cluster.cancel([job_id]),
    }
    with pytest.raises(SchedulerError) as caught:
        actions[call]()
    assert type(caught.value) is error
    assert caught.value.transient is (error is ClusterUnavailable or call in ("statuses", "find"))
    assert len(fake.ids()) == (0 if call == "submit" else 1)


def test_a_queue_sge_does_not_know_is_a_refusal(fake: FakeScheduler, tmp_path: Path) -> None:
    profile = fake_profile("sge", tmp_path / "work", defaults={"partition": "bogus.q"})
    with pytest.raises(SchedulerError) as caught:
        cluster_for(profile).submit(prepared(profile))
    assert type(caught.value) is SchedulerError and not caught.value.transient
    assert fake.state()["calls"][-1]["rc"] == 1 and fake.ids() == []


def test_a_refusal_names_its_cause(fake: FakeScheduler, tmp_path: Path) -> None:
    profile = fake_profile(fake.scheduler, tmp_path / "work", defaults={"partition": "bogus.q"})
    with pytest.raises(SchedulerError) as caught:
        cluster_for(profile).submit(prepared(profile))
    assert 'unknown queue "bogus.q"' in str(caught.value)


# ---------------------------------------------------------------- the fakes themselves


def run(*argv: str) -> tuple[int, str, str]:
    """A fake command run as zbatch runs scheduler commands (allow-listed environment)."""
    result = LocalConnection().run(list(argv))
    return result.returncode, result.stdout, result.stderr


@pytest.mark.usefixtures("fake")
@pytest.mark.parametrize("tool", ["qsub", "qstat", "qdel", "qacct"])
def test_the_fakes_refuse_unknown_options(tool: str) -> None:
    rc, _, stderr = run(tool, "-no_such_option", "1")
    assert rc != 0
    assert 'invalid option argument "-no_such_option"' in stderr


def test_the_fakes_refuse_as_sge_does(cluster: Cluster, profile: Profile) -> None:
    job = prepared(profile)
    cluster.submit(job)
    assert run("qsub", "-q", "bogus.q", str(job.paths.script)) == (
        1, "", captured("sge", "qsub-unknown-queue.stderr")
    )  # fmt: skip
    rc, _, stderr = run("qacct", "-j", "10")
    assert (rc, stderr) == (1, captured("sge", "qacct-not-found.stderr"))
    rc, _, stderr = run("qsub", "-t", "1-3", str(job.paths.script))
    assert rc != 0 and "not emulated" in stderr


@pytest.mark.usefixtures("fake")
def test_an_empty_queue_reads_as_sge_printed_it() -> None:
    assert run(*STATUS_ARGV) == (0, captured("sge", "qstat-no-jobs.xml"), "")
    assert run("qstat", "-j", "*") == (1, "", captured("sge", "qstat-j-no-jobs.stderr"))


def _tags(xml: str) -> list[list[str]]:
    """The element names of each job_list entry, in order."""
    entries = re.findall(r"<job_list [^>]*>(.*?)</job_list>", xml, re.DOTALL)
    return [re.findall(r"<(\w+)>", entry) for entry in entries]


def test_qstat_entries_read_as_sge_printed_them(
    fake: FakeScheduler, cluster: Cluster, profile: Profile
) -> None:
    running, waiting = submit(cluster, profile), submit(cluster, profile)
    fake.start(running)
    _, out, _ = run(*STATUS_ARGV)
    real = captured("sge", "qstat-error-state.xml")  # one running entry, one pending
    assert out.splitlines()[:3] == real.splitlines()[:3]
    plain = [tags for tags in _tags(real) if "tasks" not in tags]  # arrays are not emulated
    first_running = next(t for t in plain if "JAT_start_time" in t)
    first_pending = next(t for t in plain if "JB_submission_time" in t)
    assert _tags(out) == [first_running, first_pending]
    assert f'<job_list state="running">\n      <JB_job_number>{running}<' in out
    assert f'<job_list state="pending">\n      <JB_job_number>{waiting}<' in out


# Jobs taken through a captured qacct record's life: (capture, command, what ends it).
CAPTURED_RECORDS: list[tuple[str, str, Outcome]] = [
    ("qacct-success.txt", "true", lambda j: j.fake.finish(j.job_id, 0)),
    ("qacct-exit3.txt", "exit 3", lambda j: j.fake.finish(j.job_id, 3)),
    ("qacct-kill9.txt", "true", lambda j: j.fake.kill(j.job_id, 9)),
    ("qacct-qdel-running.txt", "true", lambda j: j.cluster.cancel([j.job_id])),
    ("qacct-h_rt-limit.txt", "true", lambda j: j.fake.time_out(j.job_id)),
]


def test_qacct_records_read_as_sge_printed_them(
    fake: FakeScheduler, cluster: Cluster, profile: Profile
) -> None:
    """Same keys in the same order, the same padding, the same failed/exit_status lines."""
    for capture, command, life in CAPTURED_RECORDS:
        job_id = submit(cluster, profile, command)
        fake.start(job_id)
        life(Running(fake, cluster, job_id))
        _, out, _ = run("qacct", "-j", job_id)
        real = captured("sge", capture)
        mine, theirs = out.splitlines(), real.splitlines()
        assert [line.split(" ")[0] for line in mine] == [line.split(" ")[0] for line in theirs]
        for line, want in zip(mine, theirs, strict=True):
            assert line.endswith(" ") == want.endswith(" "), (capture, line, want)
            if line.startswith(("failed", "exit_status", "taskid", "granted_pe")):
                assert line == want, capture
