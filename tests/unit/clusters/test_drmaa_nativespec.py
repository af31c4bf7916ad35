"""DrmaaCluster's pure parts: directives to job template, DRMAA states and ends to verdicts.

None of these load libdrmaa; the real-SGE behaviour is in tests/integration/test_drmaa_cluster.py.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from zbatch.clusters import drmaa as drmaa_cluster
from zbatch.clusters.drmaa import BINARY, STATES, ended_status, split_directives
from zbatch.errors import ConnectionFailure, SchedulerError
from zbatch.model.jobs import JobPaths, JobSpec, JobState
from zbatch.model.profiles import parse_profile
from zbatch.prepare.render import render_script
from zbatch.schedulers.base import SchedulerStatus

PROFILE = parse_profile(
    {"name": "drmaa-unit", "scheduler": "sge", "connection": {"type": "drmaa"}}, "test"
)


def rendered(command: str = "echo hi", **spec: Any) -> str:
    job = JobSpec(name="unit-job", workdir="/data/run", command=command, **spec)
    return render_script(PROFILE, job, JobPaths(Path("/data/run"), "tag-1"))


def test_rendered_header_splits_into_attributes_and_native_options() -> None:
    script = rendered(
        partition="all.q",
        cpus=4,
        time_limit_s=3600,
        memory_mb=8000,
        extra_directives=["-h", "-l gpu_type=a100"],
    )
    attributes, native = split_directives(script)
    assert attributes == {
        "jobName": "unit-job",
        "outputPath": "/data/run/zbatch-tag-1.out",
        "errorPath": "/data/run/zbatch-tag-1.err",
        "workingDirectory": "/data/run",
    }
    assert native == [
        *["-S", "/bin/bash", "-notify", "-q", "all.q", "-pe", "smp", "4"],
        *["-l", "h_rt=1:00:00", "-l", "h_vmem=2000M", "-h", "-l", "gpu_type=a100"],
    ]


def test_every_directive_line_of_the_template_is_used() -> None:
    script = rendered(partition="all.q", cpus=2, time_limit_s=60, account="proj", array="1-3")
    directive_lines = [line for line in script.splitlines() if line.startswith("#$")]
    attributes, native = split_directives(script)
    tokens = [token for line in directive_lines for token in line[2:].split()]
    assert len(tokens) == len(native) + 2 * len(attributes)


def test_a_directive_in_the_commands_is_not_a_directive() -> None:
    # qsub reads `#$` lines anywhere in a script; the DRMAA path only reads the header.
    script = rendered(command="echo start\n#$ -l h_rt=999:00:00\necho end")
    assert "#$ -l h_rt=999:00:00" in script
    _, native = split_directives(script)
    assert "h_rt=999:00:00" not in native


def test_header_stops_at_first_command_but_skips_plain_comments() -> None:
    script = "#!/bin/bash\n# note\n\n#$ -q a.q\n#$-l h_rt=10\nset -e\n#$ -q late.q\n"
    assert split_directives(script) == ({}, ["-q", "a.q", "-l", "h_rt=10"])


@pytest.mark.parametrize("line", ['#$ -N "two words"', "#$ -ac k='a b'", '#$ -N "open'])
def test_values_nativespecification_cannot_carry_are_refused(line: str) -> None:
    with pytest.raises(SchedulerError, match="directive"):
        split_directives(f"#!/bin/bash\n{line}\necho\n")


def test_binary_mode_is_explicit() -> None:
    assert BINARY == ["-b", "y", "-shell", "no"]


def test_state_table_covers_drmaa_1_0() -> None:
    names = {
        "queued_active",
        "system_on_hold",
        "user_on_hold",
        "user_system_on_hold",
        "running",
        "system_suspended",
        "user_suspended",
        "user_system_suspended",
        "done",
        "failed",
    }
    assert set(STATES) == names  # "undetermined" is left out on purpose
    assert STATES["user_on_hold"] is JobState.PENDING
    assert STATES["user_suspended"] is JobState.RUNNING


def info(**fields: Any) -> SimpleNamespace:
    base: dict[str, Any] = {
        "hasExited": False,
        "exitStatus": 0,
        "hasSignal": False,
        "terminatedSignal": "",
        "wasAborted": False,
        "resourceUsage": {"start_time": "1795934679.0000", "exit_status": "0.0000"},
    }
    return SimpleNamespace(**{**base, **fields})


def no_detail() -> SchedulerStatus | None:
    return None


def test_clean_exit_needs_no_accounting() -> None:
    def detail() -> SchedulerStatus | None:
        raise AssertionError("qacct must not run for a clean exit")

    status = ended_status("7", "done", info(hasExited=True), detail)
    assert (status.state, status.exit_code) == (JobState.SUCCEEDED, 0)


def test_non_zero_exit_is_failed_even_when_drmaa_says_done() -> None:
    status = ended_status("7", "done", info(hasExited=True, exitStatus=3), no_detail)
    assert (status.state, status.exit_code, status.raw_state) == (JobState.FAILED, 3, "done")


def test_accounting_explains_a_limit() -> None:
    limit = SchedulerStatus("7", JobState.TIMEOUT, 140, "h_rt", "failed=37 exit_status=140")
    status = ended_status("7", "done", info(hasExited=True, exitStatus=140), lambda: limit)
    assert status is limit


def test_deleted_while_running_is_cancelled() -> None:
    usage = {"start_time": "1795934679.0000", "exit_status": "140.0000"}
    status = ended_status("7", "failed", info(wasAborted=True, resourceUsage=usage), no_detail)
    assert (status.state, status.exit_code) == (JobState.CANCELLED, 140)


def test_failed_to_start_takes_the_accounting_reason() -> None:
    usage = {"start_time": None, "exit_status": None}
    why = SchedulerStatus("7", JobState.FAILED, 0, "changing into working directory", "x")
    status = ended_status("7", "failed", info(wasAborted=True, resourceUsage=usage), lambda: why)
    assert (status.state, status.reason) == (JobState.FAILED, "changing into working directory")


def test_killed_from_outside_is_failed_not_cancelled() -> None:
    usage = {"start_time": "1795934679.0000", "exit_status": "137.0000"}
    # qacct says "failed 100 : assumedly after job", which reads like a qdel; DRMAA knows better.
    qacct = SchedulerStatus("7", JobState.CANCELLED, 137, "assumedly after job", "x")
    killed = info(hasSignal=True, terminatedSignal="SIGKILL", resourceUsage=usage)
    status = ended_status("7", "done", killed, lambda: qacct)
    assert (status.state, status.exit_code, status.reason) == (
        JobState.FAILED,
        137,
        "killed by SIGKILL",
    )


def test_missing_environment_names_the_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DRMAA_LIBRARY_PATH", raising=False)
    with pytest.raises(ConnectionFailure) as caught:
        drmaa_cluster.load_drmaa()
    assert not caught.value.transient
    for name in ("SGE_ROOT", "SGE_CELL", "DRMAA_LIBRARY_PATH", "GLIBC_TUNABLES"):
        assert name in str(caught.value)
