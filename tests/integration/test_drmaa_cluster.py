"""DrmaaCluster against the real single-node SGE (scripts/services/up sge).

libdrmaa reads its environment when it loads and glibc reads GLIBC_TUNABLES when the process
starts, so these tests need that environment before pytest starts:

    set -a; . /var/lib/zbatch-services/sge.env; set +a
    .venv/bin/pytest -m drmaa tests/integration/test_drmaa_cluster.py

Add `-s` to see the measured submission rates.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from zbatch.clusters.drmaa import DrmaaCluster
from zbatch.model.jobs import ExitRecord, JobState, PreparedJob
from zbatch.model.message import StepMessage
from zbatch.model.profiles import Profile, parse_profile
from zbatch.prepare.job_files import JobContext, prepare_job
from zbatch.schedulers.base import SchedulerStatus
from zbatch.service.tracker import Settled, settle

pytestmark = [pytest.mark.drmaa, pytest.mark.sge]

SGE_ENV = "/var/lib/zbatch-services/sge.env"
THIS = "tests/integration/test_drmaa_cluster.py"
MakeJob = Callable[..., PreparedJob]


@pytest.fixture(autouse=True)
def drmaa_environment() -> None:
    """Fail, never skip: without the environment libdrmaa cannot load at all."""
    if not os.environ.get("DRMAA_LIBRARY_PATH"):
        pytest.fail(
            "DRMAA_LIBRARY_PATH is unset. libdrmaa needs SGE_ROOT, SGE_CELL, DRMAA_LIBRARY_PATH "
            "and GLIBC_TUNABLES before Python starts: run "
            f"`set -a; . {SGE_ENV}; set +a; .venv/bin/pytest -m drmaa {THIS}`",
            pytrace=False,
        )


def sge_profile(**fields: Any) -> Profile:
    data = {"name": "drmaa-test", "scheduler": "sge", "connection": {"type": "drmaa"}}
    return parse_profile({**data, "allow_commands": True, **fields}, "test")


@pytest.fixture()
def cluster() -> Iterator[DrmaaCluster]:
    made = DrmaaCluster(sge_profile())
    yield made
    made.close()


@pytest.fixture()
def make_job(tmp_path: Path) -> MakeJob:
    """A real rendered SGE job from a recipe step running `commands` in its own folder."""

    def make(commands: list[str], profile: Profile | None = None, **cluster: Any) -> PreparedJob:
        workdir = tmp_path / f"job-{uuid.uuid4().hex[:8]}"
        step = {
            "service": "drmaa test",
            "queue": "cluster.submission",
            "parameters": {
                "cluster": {"commands": commands, **cluster},
                "workingdir": str(workdir),
            },
        }
        body = {
            "recipe": {"1": step, "start": [[1, []]]},
            "recipe-pointer": 1,
            "environment": {"ID": str(uuid.uuid4())},
        }
        message = StepMessage.from_body(body)
        return prepare_job(message, profile or sge_profile(), JobContext())

    return make


@pytest.fixture()
def submitted(cluster: DrmaaCluster) -> Iterator[list[str]]:  # noqa: ARG001 - qdel runs before the session closes
    """Job ids to qdel after the test, whatever state it left them in."""
    ids: list[str] = []
    yield ids
    if ids:
        subprocess.run(["qdel", *ids], capture_output=True, check=False)


def wait_state(cluster: DrmaaCluster, job_id: str, state: JobState, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = cluster.statuses([job_id]).get(job_id)
        if status is not None and status.state is state:
            return
        time.sleep(0.2)
    pytest.fail(f"job {job_id} never reached {state}")


def wait_settled(
    cluster: DrmaaCluster, job_id: str, job: PreparedJob, timeout: float = 120
) -> Settled:
    """What the tracker does for one job: scheduler status, then exit record, then qacct."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = cluster.statuses([job_id]).get(job_id)
        if status is None or status.state.final:
            record = cluster.exit_record(job.paths)
            detail = cluster.detail(job_id) if record is None and status is None else None
            settled = settle(status, record, detail)
            if settled is not None:
                return settled
        time.sleep(0.3)
    pytest.fail(f"job {job_id} did not settle within {timeout:g} s")


def qstat_j(job_id: str) -> dict[str, str]:
    out = subprocess.run(["qstat", "-j", job_id], capture_output=True, text=True, check=True)
    fields = {}
    for line in out.stdout.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def record(job: PreparedJob) -> ExitRecord | None:
    path = job.paths.exit_record
    return ExitRecord.parse(path.read_bytes(), str(path)) if path.exists() else None


def test_success_settles_succeeded(cluster: DrmaaCluster, make_job: MakeJob) -> None:
    job = make_job(["echo hello from sge"])
    job_id = cluster.submit(job)
    settled = wait_settled(cluster, job_id, job)
    assert (settled.state, settled.exit_code) == (JobState.SUCCEEDED, 0)
    done = record(job)
    assert done is not None and (done.exit_code, done.signal) == (0, "")
    assert "hello from sge" in (cluster.read_text(PurePosixPath(job.paths.stdout)) or "")
    assert os.stat(job.paths.script).st_mode & 0o777 == 0o700  # the job's user's only


def test_exit_code_settles_failed(cluster: DrmaaCluster, make_job: MakeJob) -> None:
    job = make_job(["exit 3"])
    job_id = cluster.submit(job)
    settled = wait_settled(cluster, job_id, job)
    assert (settled.state, settled.exit_code) == (JobState.FAILED, 3)


def test_template_directives_reach_sge(
    cluster: DrmaaCluster, make_job: MakeJob, submitted: list[str]
) -> None:
    """Held (-h from the profile's extra_directives) so qstat -j can show what SGE got."""
    profile = sge_profile(extra_directives=["-h"])
    job = make_job(
        ["sleep 1"],
        profile,
        cpus_per_task=2,
        time_limit="0:10:00",
        partition="all.q",
        memory_per_node="1G",
    )
    job_id = cluster.submit(job)
    submitted.append(job_id)
    fields = qstat_j(job_id)
    assert fields["job_name"] == job.spec.name
    assert fields["cwd"] == job.spec.workdir
    assert fields["stdout_path_list"].endswith(f":{job.paths.stdout}")
    assert fields["stderr_path_list"].endswith(f":{job.paths.stderr}")
    assert set(fields["hard resource_list"].split(",")) == {"h_rt=600", "h_vmem=512M"}
    assert fields["parallel environment"].split() == ["smp", "range:", "2"]
    assert fields["hard_queue_list"] == "all.q"
    assert fields["notify"] == "TRUE"
    assert fields["job_type"] == "binary,noshell"
    status = cluster.statuses([job_id])[job_id]
    assert (status.state, status.reason, status.raw_state) == (
        JobState.PENDING,
        "held",
        "user_on_hold",
    )


def test_cancel_held_job(cluster: DrmaaCluster, make_job: MakeJob) -> None:
    job = make_job(["echo never"], sge_profile(extra_directives=["-h"]))
    job_id = cluster.submit(job)
    wait_state(cluster, job_id, JobState.PENDING)
    cluster.cancel([job_id])
    settled = wait_settled(cluster, job_id, job)
    assert settled.state is JobState.CANCELLED
    assert record(job) is None  # it never ran
    cluster.cancel([job_id])  # already gone: not an error


def test_cancel_running_job(cluster: DrmaaCluster, make_job: MakeJob) -> None:
    job = make_job(["sleep 120"])
    job_id = cluster.submit(job)
    wait_state(cluster, job_id, JobState.RUNNING)
    started = time.monotonic()
    cluster.cancel([job_id])
    settled = wait_settled(cluster, job_id, job)
    assert settled.state is JobState.CANCELLED, settled
    # -notify: SGE sends SIGUSR2 first; the script forwards it and records how it ended.
    done = record(job)
    assert done is not None and (done.exit_code, done.signal) == (140, "USR2")
    assert time.monotonic() - started < 30
    cluster.cancel([job_id])


def test_time_limit_settles_timeout(cluster: DrmaaCluster, make_job: MakeJob) -> None:
    job = make_job(["sleep 60"], time_limit="0:00:10")
    job_id = cluster.submit(job)
    settled = wait_settled(cluster, job_id, job, timeout=90)
    assert settled.state is JobState.TIMEOUT, settled
    detail = cluster.detail(job_id)
    assert detail is not None and detail.state is JobState.TIMEOUT


def _job_shell_pid(job: PreparedJob, job_id: str, timeout: float = 30) -> int:
    """The job script's own bash: the process the sge_shepherd started for this job."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in Path("/proc").iterdir():
            try:
                cmdline = (proc / "cmdline").read_bytes().split(b"\0")
                environ = (proc / "environ").read_bytes().split(b"\0")
                parent = (proc / "stat").read_text().rsplit(")", 1)[1].split()[1]
                parent_name = Path(f"/proc/{parent}/comm").read_text().strip()
            except (OSError, IndexError):
                continue
            if (
                str(job.paths.script).encode() in cmdline
                and f"JOB_ID={job_id}".encode() in environ
                and parent_name == "sge_shepherd"
            ):
                return int(proc.name)
        time.sleep(0.2)
    pytest.fail(f"no process for job {job_id}")


def test_killed_by_signal_is_failed(cluster: DrmaaCluster, make_job: MakeJob) -> None:
    job = make_job(["sleep 120"])
    job_id = cluster.submit(job)
    wait_state(cluster, job_id, JobState.RUNNING)
    os.kill(_job_shell_pid(job, job_id), 9)
    settled = wait_settled(cluster, job_id, job)
    assert (settled.state, settled.exit_code) == (JobState.FAILED, 137), settled
    assert "SIGKILL" in settled.reason
    assert record(job) is None  # SIGKILL leaves no chance to write one


def test_fifty_jobs_in_one_session(cluster: DrmaaCluster, make_job: MakeJob) -> None:
    jobs = [make_job(["true"]) for _ in range(50)]
    started = time.perf_counter()
    ids = [cluster.submit(job) for job in jobs]
    submit_s = time.perf_counter() - started
    started = time.perf_counter()
    first = cluster.statuses(ids)
    status_s = time.perf_counter() - started
    assert len(set(ids)) == 50
    assert all(isinstance(s, SchedulerStatus) for s in first.values())
    outcomes = [wait_settled(cluster, job_id, job) for job_id, job in zip(ids, jobs, strict=True)]
    assert {o.state for o in outcomes} == {JobState.SUCCEEDED}
    print(
        f"\nDRMAA: 50 submits in {submit_s:.2f} s = {50 / submit_s:.0f} jobs/s; "
        f"statuses() of 50 ids in {status_s * 1000:.0f} ms",
        file=sys.stderr,
    )


def test_submission_rate_drmaa_vs_qsub(
    cluster: DrmaaCluster, make_job: MakeJob, submitted: list[str]
) -> None:
    """The same held script 50 times each way; printed, never asserted (machines differ)."""
    job = make_job(["true"], sge_profile(extra_directives=["-h"]))
    count = 50
    started = time.perf_counter()
    for _ in range(count):
        submitted.append(cluster.submit(job))
    drmaa_rate = count / (time.perf_counter() - started)
    started = time.perf_counter()
    for _ in range(count):
        out = subprocess.run(
            ["qsub", "-terse", str(job.paths.script)], capture_output=True, text=True, check=True
        )
        submitted.append(out.stdout.strip())
    qsub_rate = count / (time.perf_counter() - started)
    assert len(set(submitted)) == 2 * count
    print(
        f"\nsubmission rate, same script: DRMAA {drmaa_rate:.0f} jobs/s (incl. writing files), "
        f"qsub -terse loop {qsub_rate:.0f} jobs/s, ratio {drmaa_rate / qsub_rate:.1f}x",
        file=sys.stderr,
    )


def test_session_is_shared_and_reopened(make_job: MakeJob, submitted: list[str]) -> None:
    """One session per process: closing one cluster leaves the other working; after the last
    close a new cluster opens a new session, which still sees jobs that are queued."""
    first, second = DrmaaCluster(sge_profile()), DrmaaCluster(sge_profile())
    job = make_job(["echo held"], sge_profile(extra_directives=["-h"]))
    job_id = first.submit(job)
    submitted.append(job_id)
    first.close()
    assert second.statuses([job_id])[job_id].state is JobState.PENDING
    second.close()
    third = DrmaaCluster(sge_profile())
    try:
        assert third.statuses([job_id])[job_id].state is JobState.PENDING
        assert third.statuses(["999999999"]) == {}  # unknown to qmaster: absent
    finally:
        third.close()


def test_a_job_of_another_session_is_followed_then_absent_never_unknown(
    cluster: DrmaaCluster, make_job: MakeJob, submitted: list[str]
) -> None:
    """After a restart the session tracks jobs it did not submit: DRMAA reports them while
    they run and not at all once they end (never "undetermined", which would stay UNKNOWN)."""
    job = make_job(["sleep 2"])
    cluster.local.put_files(job.staged_files())
    out = subprocess.run(
        ["qsub", "-terse", str(job.paths.script)], capture_output=True, text=True, check=True
    )
    job_id = out.stdout.strip()
    submitted.append(job_id)
    seen: list[JobState] = []
    deadline = time.monotonic() + 90
    while (status := cluster.statuses([job_id]).get(job_id)) is not None:
        seen.append(status.state)
        assert time.monotonic() < deadline, f"job {job_id} still reported: {seen[-5:]}"
        time.sleep(0.3)
    assert seen and set(seen) <= {JobState.PENDING, JobState.RUNNING}, seen
    assert settle(None, record(job)) == Settled(JobState.SUCCEEDED, 0, "")


def test_missing_tunable_fails_with_the_variables_to_set() -> None:
    """Without GLIBC_TUNABLES libdrmaa cannot load; the error says what to set."""
    code = (
        "from zbatch.clusters.drmaa import DrmaaCluster\n"
        "from zbatch.errors import ConnectionFailure\n"
        "from zbatch.model.profiles import parse_profile\n"
        "try:\n"
        "    DrmaaCluster(parse_profile({'name': 'p', 'scheduler': 'sge'}, 'test'))\n"
        "except ConnectionFailure as exc:\n"
        "    print('transient' if exc.transient else 'permanent', exc)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    if out.stdout.startswith("permanent"):
        assert "GLIBC_TUNABLES=glibc.rtld.optional_static_tls=16384" in out.stdout
    else:  # some glibc builds load it anyway: then the session simply opens
        assert out.returncode == 0 and out.stdout == "", out.stdout + out.stderr
