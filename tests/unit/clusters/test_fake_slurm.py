"""The real CommandCluster (Slurm syntax, local connection) against the fake Slurm commands.

The fakes print what Slurm 22.05 prints (tests/data/scheduler-output/slurm), so these check
zbatch's argv and parsing end to end in milliseconds; tests/integration/test_clusters.py
runs the same cases against the real slurmctld.
"""

from __future__ import annotations

import itertools
import re
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

STATUS_ARGV = ["squeue", "-h", "-r", "-t", "all", "-j"]
_names = itertools.count()


@pytest.fixture()
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeScheduler:
    return install(tmp_path / "cluster", "slurm", monkeypatch)


@pytest.fixture()
def profile(fake: FakeScheduler, tmp_path: Path) -> Profile:
    return fake_profile(fake.scheduler, tmp_path / "work")


@pytest.fixture()
def cluster(profile: Profile) -> Cluster:
    return cluster_for(profile)


def prepared(profile: Profile, name: str, *commands: str) -> PreparedJob:
    workdir = Path(str(profile.workdir_root)) / name
    message = step_message(workdir, commands=list(commands or ["true"]))
    return prepare_job(message, profile, JobContext())


def submit(cluster: Cluster, profile: Profile, *commands: str) -> str:
    return cluster.submit(prepared(profile, f"job{next(_names)}", *commands))


def test_submit_returns_the_id_and_queues_the_staged_script(
    fake: FakeScheduler, cluster: Cluster, profile: Profile
) -> None:
    job = prepared(profile, "a")
    job_id = cluster.submit(job)
    assert job_id == "100" and fake.ids() == ["100"]
    assert fake.calls() == [["sbatch", "--parsable", str(job.paths.script)]]
    queued = fake.job(job_id)
    assert queued["state"] == "PENDING"
    assert queued["script_text"] == job.script  # staged before sbatch read it
    assert queued["comment"] == f"zbatch:{job.spec.marker}"
    assert (queued["partition"], queued["workdir"]) == ("debug", job.spec.workdir)
    assert (queued["stdout"], queued["stderr"]) == (str(job.paths.stdout), str(job.paths.stderr))


def test_one_squeue_reports_on_many_jobs(
    fake: FakeScheduler, cluster: Cluster, profile: Profile
) -> None:
    ids = [submit(cluster, profile, "exit 3" if i == 3 else "true") for i in range(5)]
    fake.start(ids[1])
    fake.run(ids[2], exit_code=0)
    fake.run(ids[3], exit_code=3)
    cluster.cancel([ids[4]])
    before = len(fake.calls("squeue"))
    statuses = cluster.statuses([*ids, "99999"])
    assert fake.calls("squeue")[before:] == [
        [*STATUS_ARGV, ",".join([*ids, "99999"]), "-o", "%i|%T|%r"]
    ]
    assert {i: s.state for i, s in statuses.items()} == {
        ids[0]: JobState.PENDING,
        ids[1]: JobState.RUNNING,
        ids[2]: JobState.SUCCEEDED,
        ids[3]: JobState.FAILED,
        ids[4]: JobState.CANCELLED,
    }
    assert statuses[ids[3]].reason == "NonZeroExitCode"


def test_jobs_slurm_has_forgotten_have_no_status(
    fake: FakeScheduler, cluster: Cluster, profile: Profile
) -> None:
    # squeue exits 1 ("Invalid job id specified") once every id asked for is purged.
    job_id = submit(cluster, profile)
    fake.run(job_id, exit_code=0)
    fake.purge(job_id)
    assert cluster.statuses([job_id]) == {}
    assert fake.state()["calls"][-1]["rc"] == 1


# How a running job ends: (id, its command, what ends it, detail's state, code, reason).
OUTCOMES: list[tuple[str, str, Outcome, JobState, int, str]] = [
    ("success", "true", lambda j: j.fake.finish(j.job_id, 0), JobState.SUCCEEDED, 0, ""),
    (
        "exit 3",
        "exit 3",
        lambda j: j.fake.finish(j.job_id, 3),
        JobState.FAILED,
        3,
        "NonZeroExitCode",
    ),
    ("time limit", "true", lambda j: j.fake.time_out(j.job_id), JobState.TIMEOUT, 143, "TimeLimit"),
    (
        "kill -9",
        "true",
        lambda j: j.fake.kill(j.job_id, 9),
        JobState.FAILED,
        137,
        "JobLaunchFailure",
    ),
    ("scancel", "true", lambda j: j.cluster.cancel([j.job_id]), JobState.CANCELLED, 143, ""),
]


@pytest.mark.parametrize(
    ("command", "outcome", "state", "code", "reason"),
    [pytest.param(*case[1:], id=case[0]) for case in OUTCOMES],
)
def test_detail_explains_an_ended_job_until_slurm_forgets_it(
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
    detail = cluster.detail(job_id)
    assert fake.calls("scontrol") == [["scontrol", "show", "job", "-o", job_id]]
    assert detail is not None
    assert (detail.state, detail.exit_code, detail.reason) == (state, code, reason)
    fake.purge(job_id)
    assert cluster.detail(job_id) is None


def test_one_scancel_cancels_pending_and_running_jobs(
    fake: FakeScheduler, cluster: Cluster, profile: Profile
) -> None:
    waiting, running = submit(cluster, profile), submit(cluster, profile, "echo never")
    fake.start(running)
    cluster.cancel([waiting, running])
    assert fake.calls("scancel") == [["scancel", waiting, running]]
    statuses = cluster.statuses([waiting, running])
    assert {s.state for s in statuses.values()} == {JobState.CANCELLED}
    assert (fake.job(waiting)["exit"], fake.job(running)["exit"]) == ([0, 0], [0, 15])


def test_find_recovers_a_job_id_by_its_marker(
    fake: FakeScheduler, cluster: Cluster, profile: Profile
) -> None:
    jobs = [prepared(profile, f"m{i}") for i in range(3)]
    ids = [cluster.submit(job) for job in jobs]
    assert [cluster.find(job.spec.marker) for job in jobs] == ids
    assert cluster.find("0" * 32) is None
    assert fake.calls("squeue")[0] == ["squeue", "-h", "-t", "all", "-o", "%i|%k"]
    fake.run(ids[1], exit_code=0)
    assert cluster.find(jobs[1].spec.marker) == ids[1]  # ended, still in slurmctld's memory
    fake.purge(ids[1])
    assert cluster.find(jobs[1].spec.marker) is None


CAPTURED_FAILURES = [
    ("sbatch", "sbatch-controller-down.stderr", 1, "submit", ClusterUnavailable),
    ("sbatch", "sbatch-bad-partition.stderr", 1, "submit", SchedulerError),
    ("sbatch", "sbatch-too-much-memory.stderr", 1, "submit", SchedulerError),
    ("squeue", "squeue-controller-down.stderr", 1, "statuses", ClusterUnavailable),
    ("squeue", "squeue-controller-down.stderr", 1, "find", ClusterUnavailable),
    ("scancel", "scancel-controller-down.stderr", 8, "cancel", ClusterUnavailable),
]


@pytest.mark.parametrize(("tool", "output", "rc", "call", "error"), CAPTURED_FAILURES)
def test_scheduler_errors_become_the_right_zbatch_error(
    fake: FakeScheduler,
    cluster: Cluster,
    profile: Profile,
    tool: str,
    output: str,
    rc: int,
    call: str,
    error: type[SchedulerError],
) -> None:
    job = prepared(profile, "e")
    job_id = cluster.submit(job) if call != "submit" else "100"
    text = captured("slurm", output)
    fake.fail_next(tool, stderr=text, rc=rc)
    actions: dict[str, Callable[[], object]] = {
        "submit": lambda: cluster.submit(job),
        "statuses": lambda: cluster.statuses([job_id]),
        "find": lambda: cluster.find(job.spec.marker),
        "cancel": lambda: cluster.cancel([job_id]),
    }
    with pytest.raises(SchedulerError) as caught:
        actions[call]()
    assert type(caught.value) is error
    # An outage is waited out; a refusal is final (the step is dead-lettered at once).
    assert caught.value.transient is (error is ClusterUnavailable or call in ("statuses", "find"))
    assert text.strip().splitlines()[-1] in str(caught.value)
    assert len(fake.ids()) == (0 if call == "submit" else 1)


def test_an_unreadable_detail_is_no_detail(
    fake: FakeScheduler, cluster: Cluster, profile: Profile
) -> None:
    job_id = submit(cluster, profile)
    fake.fail_next("scontrol", stderr=captured("slurm", "scontrol-invalid-id.stderr"))
    assert cluster.detail(job_id) is None


# ---------------------------------------------------------------- the fakes themselves


def run(*argv: str) -> tuple[int, str, str]:
    """A fake command run as zbatch runs scheduler commands (allow-listed environment)."""
    result = LocalConnection().run(list(argv))
    return result.returncode, result.stdout, result.stderr


def test_the_shims_run_under_plain_python3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """tests/fakes/bin/* themselves (`#!/usr/bin/env python3`, no venv) make a cluster of the
    folder they are linked into; the other tests use a faster launcher of the same code."""
    install(tmp_path / "linked", "slurm", monkeypatch, shims=True)
    install(tmp_path / "linked-sge", "sge", monkeypatch, shims=True)
    assert (tmp_path / "linked" / "bin" / "squeue").resolve().parent.name == "fakes"
    assert run("squeue", "-h", "-t", "all", "-o", "%i|%k") == (0, "", "")
    assert run("qstat", "-xml", "-g", "d") == (0, captured("sge", "qstat-no-jobs.xml"), "")


@pytest.mark.usefixtures("fake")
@pytest.mark.parametrize("tool", ["sbatch", "squeue", "scontrol", "scancel"])
def test_the_fakes_refuse_unknown_options(tool: str) -> None:
    rc, _, stderr = run(tool, "--no-such-option", "1")
    assert rc != 0
    assert stderr.startswith(f"{tool}: unrecognized option '--no-such-option'")


def test_the_fakes_refuse_what_they_do_not_emulate(cluster: Cluster, profile: Profile) -> None:
    job = prepared(profile, "arr")
    cluster.submit(job)
    rc, _, stderr = run("sbatch", "--array=1-3", str(job.paths.script))
    assert rc != 0 and "not emulated" in stderr
    rc, _, stderr = run("squeue", "-o", "%Z")
    assert rc != 0 and "not emulated" in stderr


def test_the_fakes_refuse_as_slurm_does(cluster: Cluster, profile: Profile) -> None:
    job = prepared(profile, "r")
    cluster.submit(job)
    script = str(job.paths.script)
    assert run("sbatch", "-p", "bogus", script) == (
        1, "", captured("slurm", "sbatch-bad-partition.stderr")
    )  # fmt: skip
    assert run("sbatch", "--mem=99999999", script) == (
        1, "", captured("slurm", "sbatch-too-much-memory.stderr")
    )  # fmt: skip
    assert run("squeue", "-h", "-t", "all", "-j", "99999", "-o", "%i|%T|%r") == (
        1, "", captured("slurm", "squeue-invalid-id.stderr")
    )  # fmt: skip
    assert run("scontrol", "show", "job", "-o", "99999") == (
        1, "", captured("slurm", "scontrol-invalid-id.stderr")
    )  # fmt: skip


def _keys(line: str) -> list[str]:
    return re.findall(r"(?:^|\s)([A-Za-z_:/]+)=", line)


def _started(then: Outcome) -> Outcome:
    def life(job: Running) -> object:
        job.fake.start(job.job_id)
        return then(job)

    return life


def _held(job: Running) -> None:
    """Nothing happens to a held job: it waits for a release."""
    assert job.fake.job(job.job_id)["hold"]


# The captured jobs (tests/data/scheduler-output/README.md): id, capture, command, held?, life.
CAPTURED_JOBS: list[tuple[str, str, str, bool, Outcome]] = [
    ("15", "scontrol-completed.txt", "true", False, lambda j: j.fake.run(j.job_id, 0)),
    ("16", "scontrol-exit3.txt", "exit 3", False, lambda j: j.fake.run(j.job_id, 3)),
    ("17", "scontrol-timeout.txt", "true", False, _started(lambda j: j.fake.time_out(j.job_id))),
    ("18", "scontrol-held.txt", "true", True, _held),
    (
        "19",
        "scontrol-cancelled.txt",
        "true",
        False,
        _started(lambda j: j.cluster.cancel([j.job_id])),
    ),
    ("20", "scontrol-kill9.txt", "true", False, _started(lambda j: j.fake.kill(j.job_id))),
]


def test_the_fakes_print_what_slurm_printed(fake: FakeScheduler, tmp_path: Path) -> None:
    """Jobs taken through the captured jobs' lives read as the captures do: the same squeue
    line (id aside), the same scontrol keys in the same order, the same state words."""
    squeue_lines = {
        line.split("|", 1)[0]: line.split("|", 1)[1]
        for line in captured("slurm", "squeue-with-timeout.txt").splitlines()
    }
    for real_id, capture, command, held, life in CAPTURED_JOBS:
        hold = ["--hold"] if held else []
        # As the captured jobs: no --mem (slurm.conf's DefMemPerCPU applies).
        defaults = {"partition": "debug"}
        profile = fake_profile("slurm", tmp_path / "work", defaults=defaults, extra_directives=hold)
        cluster = cluster_for(profile)
        job_id = cluster.submit(prepared(profile, f"c{real_id}", command))
        life(Running(fake, cluster, job_id))
        _, out, _ = run("squeue", "-h", "-r", "-t", "all", "-j", job_id, "-o", "%i|%T|%r")
        assert out == f"{job_id}|{squeue_lines[real_id]}\n", capture
        _, line, _ = run("scontrol", "show", "job", "-o", job_id)
        real = captured("slurm", capture)
        assert [k for k in _keys(line) if k != "Comment"] == _keys(real), capture
        assert line.endswith(" Power= \n") and real.endswith(" Power= \n")
        for key in ("JobState", "Reason", "ExitCode", "BatchFlag", "Requeue"):
            want = re.search(rf"\b{key}=(\S*)", real)
            assert want is not None
            assert f" {key}={want.group(1)} " in line, (capture, key)
