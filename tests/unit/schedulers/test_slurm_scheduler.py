"""SlurmScheduler against output captured from the real Slurm 22.05 (scheduler-output/slurm)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from zbatch.errors import SchedulerError
from zbatch.model.jobs import JobState
from zbatch.model.profiles import Profile
from zbatch.schedulers.slurm import SlurmScheduler

DATA = Path(__file__).resolve().parents[2] / "data" / "scheduler-output" / "slurm"
HOSTILE_IDS = ["--uid=0", "-j", "12 13", "12;id", "", "12_", "12_[0-5]", "12,13", "12\n13", "1e3"]


def read(name: str) -> str:
    return (DATA / name).read_text()


@pytest.fixture()
def sched() -> SlurmScheduler:
    return SlurmScheduler(Profile(name="slurm-test", scheduler="slurm"))


def assert_argv(argv: list[str] | None) -> list[str]:
    assert isinstance(argv, list) and argv
    assert all(isinstance(arg, str) for arg in argv)
    return argv


# ---------------------------------------------------------------- submit


def test_submit_argv(sched: SlurmScheduler) -> None:
    assert assert_argv(sched.submit_argv("/w/job.sh")) == ["sbatch", "--parsable", "/w/job.sh"]


@pytest.mark.parametrize("path", ["--wrap=id", "-", "", "/w/a\0b.sh"])
def test_submit_argv_refuses_option_like_paths(sched: SlurmScheduler, path: str) -> None:
    with pytest.raises(SchedulerError):
        sched.submit_argv(path)


@pytest.mark.parametrize(
    ("out", "expected"),
    [
        (read("sbatch-parsable.txt"), "15"),
        (read("sbatch-plain.txt"), "23"),
        ("4711;cluster-a\n", "4711"),
        ("sbatch: site policy: partition set to 'short'\n15\n", "15"),
        ("15\nsbatch: note: your project has 12% of its quota left\n", "15"),
    ],
)
def test_parse_submit(sched: SlurmScheduler, out: str, expected: str) -> None:
    assert sched.parse_submit(out) == expected


@pytest.mark.parametrize(
    "out",
    ["", "sbatch: error: Batch job submission failed: Invalid partition name specified\n", "x;y\n"],
)
def test_parse_submit_without_id_raises(sched: SlurmScheduler, out: str) -> None:
    with pytest.raises(SchedulerError, match="sbatch printed no job id"):
        sched.parse_submit(out)


def test_parse_submit_error_is_truncated(sched: SlurmScheduler) -> None:
    with pytest.raises(SchedulerError) as info:
        sched.parse_submit("sbatch: error: " * 500)
    assert len(str(info.value)) < 300 and str(info.value).endswith("...")


# ---------------------------------------------------------------- status


def test_status_argv(sched: SlurmScheduler) -> None:
    argv = assert_argv(sched.status_argv(["15", "21_3", "30+1"]))
    assert argv == ["squeue", "-h", "-r", "-t", "all", "-j", "15,21_3,30+1", "-o", "%i|%T|%r"]


@pytest.mark.parametrize("bad", HOSTILE_IDS)
def test_ids_are_validated_everywhere(sched: SlurmScheduler, bad: str) -> None:
    for build in (sched.status_argv, sched.cancel_argv):
        with pytest.raises(SchedulerError):
            build(["15", bad])
    with pytest.raises(SchedulerError):
        sched.detail_argv(bad)


def test_ids_must_be_a_list(sched: SlurmScheduler) -> None:
    with pytest.raises(SchedulerError):
        sched.cancel_argv("123")
    with pytest.raises(SchedulerError):
        sched.status_argv([])


def test_parse_status_real_mix(sched: SlurmScheduler) -> None:
    # After scancel of 19 and kill -9 of 20's batch script; 21 and 22 are arrays.
    asked = ["15", "16", "18", "19", "20", "21", "21_2", "22", "22_5", "99"]
    found = sched.parse_status(read("squeue-after-cancel-kill.txt"), asked)
    assert set(found) == set(asked) - {"99"}  # 17 and 23 are in the output but not asked for
    expect = {
        "15": (JobState.SUCCEEDED, "COMPLETED", ""),
        "16": (JobState.FAILED, "FAILED", "NonZeroExitCode"),
        "18": (JobState.PENDING, "PENDING", "JobHeldUser"),
        "19": (JobState.CANCELLED, "CANCELLED", ""),
        "20": (JobState.FAILED, "FAILED", "JobLaunchFailure"),
        "21": (JobState.RUNNING, "RUNNING", ""),
        "21_2": (JobState.RUNNING, "RUNNING", ""),
        "22": (JobState.PENDING, "PENDING", "JobHeldUser"),
        "22_5": (JobState.PENDING, "PENDING", "JobHeldUser"),
    }
    for job_id, (state, raw, reason) in expect.items():
        status = found[job_id]
        assert (status.job_id, status.state, status.raw_state, status.reason) == (
            job_id,
            state,
            raw,
            reason,
        )
        assert status.exit_code is None


def test_parse_status_timeout(sched: SlurmScheduler) -> None:
    found = sched.parse_status(read("squeue-with-timeout.txt"), ["17"])
    assert (found["17"].state, found["17"].reason) == (JobState.TIMEOUT, "TimeLimit")


def test_parse_status_completing_is_not_final(sched: SlurmScheduler) -> None:
    found = sched.parse_status(read("squeue-completing.txt"), ["19"])
    assert found["19"].state is JobState.RUNNING and found["19"].raw_state == "COMPLETING"


def test_parse_status_array_aggregate(sched: SlurmScheduler) -> None:
    out = "21_0|COMPLETED|None\n21_1|FAILED|NonZeroExitCode\n21_2|PENDING|Resources\n"
    assert sched.parse_status(out, ["21"])["21"].state is JobState.PENDING
    out = "21_0|COMPLETED|None\n21_1|FAILED|NonZeroExitCode\n"
    assert sched.parse_status(out, ["21"])["21"].state is JobState.FAILED
    out = "21_0|COMPLETED|None\n21_1|COMPLETED|None\n"
    assert sched.parse_status(out, ["21"])["21"].state is JobState.SUCCEEDED


def test_parse_status_folded_array_line_is_ignored(
    sched: SlurmScheduler, caplog: pytest.LogCaptureFixture
) -> None:
    # Without -r squeue folds pending tasks into "22_[0-5]": never a crash, only a warning.
    with caplog.at_level(logging.WARNING):
        found = sched.parse_status(read("squeue-without-r.txt"), ["15", "22"])
    assert set(found) == {"15"}
    assert "22_[0-5]" in caplog.text


@pytest.mark.parametrize(
    ("raw", "state"),
    [
        ("CANCELLED by 0", JobState.CANCELLED),
        ("CANCELLED+", JobState.CANCELLED),
        ("TIMEOUT", JobState.TIMEOUT),
        ("OUT_OF_MEMORY", JobState.OUT_OF_MEMORY),
        ("NODE_FAIL", JobState.NODE_FAILURE),
        ("BOOT_FAIL", JobState.NODE_FAILURE),
        ("DEADLINE", JobState.TIMEOUT),
        ("PREEMPTED", JobState.FAILED),
        ("REQUEUED", JobState.PENDING),
        ("CONFIGURING", JobState.PENDING),
        ("SUSPENDED", JobState.RUNNING),
    ],
)
def test_state_words(sched: SlurmScheduler, raw: str, state: JobState) -> None:
    assert sched.map_state(raw, "1") is state


def test_unknown_state_is_unknown_with_warning(
    sched: SlurmScheduler, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        found = sched.parse_status(
            "15|LAUNCHING_ROCKETS|None\n16|FAILED|NonZeroExitCode\n", ["15", "16"]
        )
    assert found["15"].state is JobState.UNKNOWN and found["15"].raw_state == "LAUNCHING_ROCKETS"
    assert found["16"].state is JobState.FAILED  # one odd line never spoils the poll
    assert "unknown slurm state 'LAUNCHING_ROCKETS'" in caplog.text and "job 15" in caplog.text


def test_parse_status_garbage_is_skipped(
    sched: SlurmScheduler, caplog: pytest.LogCaptureFixture
) -> None:
    out = "slurm_load_jobs error: Socket timed out\n\x00\x01|||\n--uid=0|RUNNING|x\n15|COMPLETED\n"
    with caplog.at_level(logging.WARNING):
        assert sched.parse_status(out, ["15"]) == {}
    assert sched.parse_status("", ["15"]) == {}


def test_reason_may_contain_the_delimiter(sched: SlurmScheduler) -> None:
    found = sched.parse_status("18|PENDING|held by admin | see ticket 12\n", ["18"])
    assert found["18"].reason == "held by admin | see ticket 12"


def test_status_error_is_empty(sched: SlurmScheduler) -> None:
    assert sched.status_error_is_empty(read("squeue-invalid-id.stderr"))
    assert not sched.status_error_is_empty("slurm_load_jobs error: Socket timed out on send/recv")
    assert not sched.status_error_is_empty("")


# ---------------------------------------------------------------- cancel and detail


def test_cancel_and_detail_argv(sched: SlurmScheduler) -> None:
    assert assert_argv(sched.cancel_argv(["19", "21_2"])) == ["scancel", "19", "21_2"]
    assert assert_argv(sched.detail_argv("20")) == ["scontrol", "show", "job", "-o", "20"]


@pytest.mark.parametrize(
    ("name", "job_id", "state", "exit_code", "reason"),
    [
        ("scontrol-completed.txt", "15", JobState.SUCCEEDED, 0, ""),
        ("scontrol-exit3.txt", "16", JobState.FAILED, 3, "NonZeroExitCode"),
        ("scontrol-timeout.txt", "17", JobState.TIMEOUT, 128 + 15, "TimeLimit"),
        ("scontrol-held.txt", "18", JobState.PENDING, None, "JobHeldUser"),
        ("scontrol-cancelled.txt", "19", JobState.CANCELLED, 128 + 15, ""),
        ("scontrol-kill9.txt", "20", JobState.FAILED, 128 + 9, "JobLaunchFailure"),
        ("scontrol-array-running.txt", "21", JobState.RUNNING, None, ""),
        ("scontrol-array-running.txt", "21_3", JobState.RUNNING, None, ""),
        ("scontrol-array-task.txt", "21_1", JobState.RUNNING, None, ""),
        ("scontrol-array-held.txt", "22", JobState.PENDING, None, "JobHeldUser"),
        ("scontrol-array-held.txt", "22_3", JobState.PENDING, None, "JobHeldUser"),
    ],
)
def test_parse_detail_real(
    sched: SlurmScheduler,
    name: str,
    job_id: str,
    state: JobState,
    exit_code: int | None,
    reason: str,
) -> None:
    status = sched.parse_detail(read(name), job_id)
    assert status is not None
    assert (status.job_id, status.state, status.exit_code) == (job_id, state, exit_code)
    assert status.reason == reason


@pytest.mark.parametrize(
    "out", [read("scontrol-invalid-id.stderr"), "", "garbage\n", "JobId=5 JobName=x\n"]
)
def test_parse_detail_unknown_or_garbage(sched: SlurmScheduler, out: str) -> None:
    assert sched.parse_detail(out, "99999") is None


def test_parse_detail_unknown_state(
    sched: SlurmScheduler, caplog: pytest.LogCaptureFixture
) -> None:
    out = read("scontrol-completed.txt").replace("JobState=COMPLETED", "JobState=WIBBLE")
    with caplog.at_level(logging.WARNING):
        status = sched.parse_detail(out, "15")
    assert status is not None and status.state is JobState.UNKNOWN
    assert "WIBBLE" in caplog.text
