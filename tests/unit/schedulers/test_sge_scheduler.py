"""SgeScheduler against output captured from the real SGE 8.1.9 (scheduler-output/sge)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from zbatch.errors import SchedulerError
from zbatch.model.jobs import JobState
from zbatch.model.profiles import Profile
from zbatch.schedulers import sge
from zbatch.schedulers.sge import SgeScheduler

DATA = Path(__file__).resolve().parents[2] / "data" / "scheduler-output" / "sge"
HOSTILE_IDS = ["--help", "-u", "12 13", "12;rm -rf /", "", "12.x", "0x1f", "12\n13", "12.1-5:1"]


def read(name: str) -> str:
    return (DATA / name).read_text()


@pytest.fixture()
def sched() -> SgeScheduler:
    return SgeScheduler(Profile(name="sge-test", scheduler="sge"))


def assert_argv(argv: list[str] | None) -> list[str]:
    assert isinstance(argv, list) and argv
    assert all(isinstance(arg, str) for arg in argv)
    return argv


# ---------------------------------------------------------------- submit


def test_submit_argv(sched: SgeScheduler) -> None:
    assert assert_argv(sched.submit_argv("/w/job.sh")) == ["qsub", "-terse", "/w/job.sh"]


@pytest.mark.parametrize("path", ["-b y", "--help", "", "/w/a\nb.sh"])
def test_submit_argv_refuses_option_like_paths(sched: SgeScheduler, path: str) -> None:
    with pytest.raises(SchedulerError):
        sched.submit_argv(path)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("qsub-terse.txt", "6"), ("qsub-terse-array.txt", "13"), ("qsub-plain.txt", "7")],
)
def test_parse_submit_real(sched: SgeScheduler, name: str, expected: str) -> None:
    assert sched.parse_submit(read(name)) == expected


def test_parse_submit_tolerates_wrapper_lines(sched: SgeScheduler) -> None:
    out = "JSV: project set to default\n" + read("qsub-terse.txt") + "note: quota at 91%\n"
    assert sched.parse_submit(out) == "6"
    assert (
        sched.parse_submit('banner\nYour job-array 13.1-5:1 ("arr") has been submitted\n') == "13"
    )


@pytest.mark.parametrize("out", ["", "\n", "Unable to run job: denied: host is no submit host.\n"])
def test_parse_submit_without_id_raises(sched: SgeScheduler, out: str) -> None:
    with pytest.raises(SchedulerError, match="qsub printed no job id"):
        sched.parse_submit(out)


def test_parse_submit_error_is_truncated(sched: SgeScheduler) -> None:
    with pytest.raises(SchedulerError) as info:
        sched.parse_submit("error " * 1000)
    assert len(str(info.value)) < 300


# ---------------------------------------------------------------- status


def test_status_argv(sched: SgeScheduler) -> None:
    assert assert_argv(sched.status_argv(["9", "13.2"])) == ["qstat", "-xml", "-g", "d"]


@pytest.mark.parametrize("bad", HOSTILE_IDS)
def test_ids_are_validated_everywhere(sched: SgeScheduler, bad: str) -> None:
    for build in (sched.status_argv, sched.cancel_argv):
        with pytest.raises(SchedulerError):
            build(["9", bad])
    with pytest.raises(SchedulerError):
        sched.detail_argv(bad)


def test_ids_must_be_a_list(sched: SgeScheduler) -> None:
    with pytest.raises(SchedulerError):
        sched.cancel_argv("123")
    with pytest.raises(SchedulerError):
        sched.status_argv([])


def test_parse_status_running_held_and_arrays(sched: SgeScheduler) -> None:
    out = read("qstat-running-held-arrays.xml")
    found = sched.parse_status(out, ["9", "10", "13", "13.4", "14", "14.2", "99"])
    assert set(found) == {"9", "10", "13", "13.4", "14", "14.2"}  # 11 and 12 were not asked for
    assert found["9"].state is JobState.RUNNING and found["9"].raw_state == "r"
    assert found["10"].state is JobState.PENDING and found["10"].reason == "held"
    assert found["13"].state is JobState.RUNNING and found["13.4"].state is JobState.RUNNING
    assert found["14"].state is JobState.PENDING and found["14.2"].raw_state == "hqw"
    assert all(s.exit_code is None for s in found.values())


def test_parse_status_grouped_pending_tasks(sched: SgeScheduler) -> None:
    # Without -g d, qstat folds pending tasks: <tasks>3,4</tasks>.
    found = sched.parse_status(read("qstat-grouped-tasks.xml"), ["14.1", "14.3", "14.4"])
    assert set(found) == {"14.3", "14.4"}
    assert found["14.3"].state is JobState.PENDING


def test_parse_status_error_state_is_failed(sched: SgeScheduler) -> None:
    found = sched.parse_status(read("qstat-error-state.xml"), ["16"])
    assert found["16"].state is JobState.FAILED
    assert found["16"].raw_state == "Eqw" and "error" in found["16"].reason


@pytest.mark.parametrize(
    ("name", "raw", "reason"),
    [
        ("qstat-held-running.xml", "hr", "held"),
        ("qstat-held-suspended.xml", "hs", "held, suspended"),
        ("qstat-deleting.xml", "dhs", "being deleted, held, suspended"),
    ],
)
def test_parse_status_qhold_and_qdel_of_running_job(
    sched: SgeScheduler, name: str, raw: str, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        found = sched.parse_status(read(name), ["42"])
    assert found["42"].state is JobState.RUNNING
    assert (found["42"].raw_state, found["42"].reason) == (raw, reason)
    assert not caplog.records  # known letters: no warning


@pytest.mark.parametrize(
    ("raw", "state"),
    [("hRr", JobState.RUNNING), ("Rq", JobState.PENDING), ("Ehr", JobState.FAILED)],
)
def test_unlisted_mix_of_known_letters(
    sched: SgeScheduler, raw: str, state: JobState, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        assert sched.map_state(raw, "1") is state
    assert not caplog.records


def test_unknown_state_is_unknown_with_warning(
    sched: SgeScheduler, caplog: pytest.LogCaptureFixture
) -> None:
    out = read("qstat-error-state.xml").replace("<state>Eqw</state>", "<state>Zx</state>")
    with caplog.at_level(logging.WARNING):
        found = sched.parse_status(out, ["16"])
    assert found["16"].state is JobState.UNKNOWN and found["16"].raw_state == "Zx"
    assert "unknown sge state 'Zx'" in caplog.text and "job 16" in caplog.text


def test_every_documented_state_is_mapped(sched: SgeScheduler) -> None:
    for raw, state in SgeScheduler.state_map.items():
        assert sched.map_state(raw, "1") is state


def test_parse_status_qdel_in_progress(sched: SgeScheduler) -> None:
    found = sched.parse_status(read("qstat-deleting-running.xml"), ["15"])
    assert (found["15"].state, found["15"].raw_state) == (JobState.RUNNING, "dr")
    assert found["15"].reason == "being deleted"


def test_parse_status_empty_and_banner(sched: SgeScheduler) -> None:
    assert sched.parse_status("", ["1"]) == {}
    assert sched.parse_status(read("qstat-no-jobs.xml"), ["1"]) == {}
    out = "Welcome to the cluster\n" + read("qstat-error-state.xml")
    assert sched.parse_status(out, ["16"])["16"].state is JobState.FAILED


@pytest.mark.parametrize(
    "out",
    [
        "error: commlib error: got select error (Connection refused)\n",
        "<job_info><queue_info>",  # cut off mid-answer
        '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><job_info>&a;</job_info>',
    ],
)
def test_parse_status_garbage_raises(sched: SgeScheduler, out: str) -> None:
    with pytest.raises(SchedulerError):
        sched.parse_status(out, ["1"])


def test_parse_status_refuses_huge_output(
    sched: SgeScheduler, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sge, "MAX_XML", 100)
    with pytest.raises(SchedulerError, match="refusing"):
        sched.parse_status(read("qstat-error-state.xml"), ["16"])


# ---------------------------------------------------------------- cancel and accounting


def test_cancel_and_detail_argv(sched: SgeScheduler) -> None:
    assert assert_argv(sched.cancel_argv(["9", "13.2"])) == ["qdel", "9", "13.2"]
    assert assert_argv(sched.detail_argv("9")) == ["qacct", "-j", "9"]
    assert assert_argv(sched.detail_argv("13.2")) == ["qacct", "-j", "13", "-t", "2"]


@pytest.mark.parametrize(
    ("name", "job_id", "state", "exit_code", "reason"),
    [
        ("qacct-success.txt", "6", JobState.SUCCEEDED, 0, ""),
        ("qacct-exit3.txt", "8", JobState.FAILED, 3, ""),
        ("qacct-h_rt-limit.txt", "9", JobState.TIMEOUT, 137, "qmaster enforced"),
        ("qacct-qdel-running.txt", "11", JobState.CANCELLED, 137, "assumedly after job"),
        # kill -9 of the job script is recorded exactly like qdel (failed 100, exit 137).
        ("qacct-kill9.txt", "12", JobState.CANCELLED, 137, "assumedly after job"),
        ("qacct-workdir-error.txt", "16", JobState.FAILED, 0, "changing into working directory"),
        # h_vmem is an rlimit: the program's allocation fails, SGE itself sees a plain exit 1.
        ("qacct-h_vmem-exit1.txt", "36", JobState.FAILED, 1, ""),
        ("qacct-array-tasks.txt", "14", JobState.SUCCEEDED, 0, ""),
        ("qacct-array-task-qdel.txt", "13.2", JobState.CANCELLED, 137, "assumedly after job"),
    ],
)
def test_parse_detail_real(
    sched: SgeScheduler, name: str, job_id: str, state: JobState, exit_code: int, reason: str
) -> None:
    status = sched.parse_detail(read(name), job_id)
    assert status is not None
    assert (status.job_id, status.state, status.exit_code) == (job_id, state, exit_code)
    assert reason in status.reason


def test_parse_detail_memory_limit(sched: SgeScheduler) -> None:
    # The real h_rt record with an h_vmem request that maxvmem reached: same failed code 37.
    out = read("qacct-h_rt-limit.txt").replace("-l h_rt=20", "-l h_rt=600,h_vmem=5M")
    status = sched.parse_detail(out, "9")
    assert status is not None and status.state is JobState.OUT_OF_MEMORY


def test_parse_detail_reused_id_uses_last_record(sched: SgeScheduler) -> None:
    # Two runs under one id (the job counter wrapped); qacct lists the older first.
    older = read("qacct-exit3.txt").replace("jobnumber    8 ", "jobnumber    6 ")
    status = sched.parse_detail(older + read("qacct-success.txt"), "6")
    assert status is not None and status.state is JobState.SUCCEEDED
    status = sched.parse_detail(read("qacct-success.txt") + older, "6")
    assert status is not None and status.state is JobState.FAILED


@pytest.mark.parametrize("out", ["", read("qacct-not-found.stderr"), "garbage\nmore garbage\n"])
def test_parse_detail_not_found(sched: SgeScheduler, out: str) -> None:
    assert sched.parse_detail(out, "10") is None


def test_parse_detail_limit_with_both_requests_uses_wallclock(sched: SgeScheduler) -> None:
    # Both limits requested and maxvmem near h_vmem, but ru_wallclock (21s) reached h_rt (20).
    out = read("qacct-h_rt-limit.txt").replace("-l h_rt=20", "-l h_rt=20,h_vmem=5M")
    status = sched.parse_detail(out, "9")
    assert status is not None and status.state is JobState.TIMEOUT


def test_find_with_no_job_queued_at_all_is_nothing_found_not_an_error(sched: SgeScheduler) -> None:
    """Real SGE: `qstat -j '*'` exits 1 when no job is queued (captured output)."""
    assert sched.find_error_is_empty((DATA / "qstat-j-no-jobs.stderr").read_text())


@pytest.mark.parametrize(
    "stderr",
    [
        "Following jobs do not exist: \n123\n",  # a real id: not the "no jobs" answer
        (DATA / "qstat-qmaster-down.stderr").read_text(),
        "",
    ],
)
def test_other_find_failures_stay_failures(sched: SgeScheduler, stderr: str) -> None:
    assert not sched.find_error_is_empty(stderr)
