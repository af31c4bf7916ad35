"""Slurm: sbatch / squeue / scancel / scontrol argv and their output (Slurm 22.05)."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import ClassVar

from zbatch.model.jobs import JobState
from zbatch.schedulers.base import Scheduler, SchedulerStatus
from zbatch.schedulers.parsing import (
    base_id,
    check_ids,
    check_script,
    combine,
    find_submitted_id,
    select,
    shorten,
)

log = logging.getLogger(__name__)

# Plain job, array task (123_4) or het-job component (123+0). Ids end up in argv, so nothing
# else is accepted: a hostile "--uid=0" must never reach squeue or scancel as an option.
JOB_ID = re.compile(r"^[0-9]{1,12}(?:[_+][0-9]{1,9})?$")
# `--parsable` prints "ID" or "ID;cluster"; without it sbatch says "Submitted batch job ID".
_SUBMIT_LINE = re.compile(r"^\s*([0-9]{1,12})(?:;[A-Za-z0-9_.-]+)?\s*$")
_SUBMIT_TEXT = re.compile(r"\bSubmitted batch job ([0-9]{1,12})\b")
# squeue -o fields; '|' cannot occur in a job id or a state word, and the reason comes last
# so that a '|' in an admin-written reason cannot shift the columns.
_SQUEUE_FORMAT = "%i|%T|%r"


class SlurmScheduler(Scheduler):
    name: ClassVar[str] = "slurm"
    unavailable_patterns: ClassVar[tuple[re.Pattern[str], ...]] = (
        re.compile(r"Unable to contact slurm controller"),
        re.compile(r"Socket timed out on send/recv"),
        re.compile(r"Zero Bytes were transmitted or received"),
        re.compile(r"backup controller in standby mode"),
        re.compile(r"Communication connection failure"),
    )
    # Job states from squeue(1) "JOB STATE CODES" (22.05). Jobs that have not started their
    # script yet are PENDING; anything that may still be running (or tearing down) is RUNNING,
    # because only a final state may be acted upon.
    state_map: ClassVar[Mapping[str, JobState]] = {
        "PENDING": JobState.PENDING,
        "CONFIGURING": JobState.PENDING,  # nodes allocated but booting; the script has not run
        "REQUEUED": JobState.PENDING,
        "REQUEUE_FED": JobState.PENDING,
        "REQUEUE_HOLD": JobState.PENDING,
        "RESV_DEL_HOLD": JobState.PENDING,
        "RUNNING": JobState.RUNNING,
        "COMPLETING": JobState.RUNNING,  # epilog still running; the outcome is not final yet
        "SUSPENDED": JobState.RUNNING,
        "STOPPED": JobState.RUNNING,
        "SIGNALING": JobState.RUNNING,
        "STAGE_OUT": JobState.RUNNING,
        "RESIZING": JobState.RUNNING,
        "COMPLETED": JobState.SUCCEEDED,
        "FAILED": JobState.FAILED,
        "SPECIAL_EXIT": JobState.FAILED,
        "PREEMPTED": JobState.FAILED,  # killed without requeue; raw_state keeps the cause
        "TIMEOUT": JobState.TIMEOUT,
        "DEADLINE": JobState.TIMEOUT,  # could not finish before its --deadline
        "CANCELLED": JobState.CANCELLED,
        "REVOKED": JobState.CANCELLED,  # federation: a sibling cluster ran it instead
        "OUT_OF_MEMORY": JobState.OUT_OF_MEMORY,
        "NODE_FAIL": JobState.NODE_FAILURE,
        "BOOT_FAIL": JobState.NODE_FAILURE,
    }

    def map_state(self, raw: str, job_id: str) -> JobState:
        # "CANCELLED by 0" and "CANCELLED+" (sacct) carry the state word first.
        return super().map_state(raw.split(" ", 1)[0].rstrip("+"), job_id)

    def submit_argv(self, script_path: str) -> list[str]:
        return ["sbatch", "--parsable", check_script(script_path, self.name)]

    def parse_submit(self, stdout: str) -> str:
        return find_submitted_id(stdout, _SUBMIT_LINE, _SUBMIT_TEXT, "sbatch")

    def status_argv(self, job_ids: Sequence[str]) -> list[str]:
        ids = check_ids(job_ids, JOB_ID, self.name)
        # -r: one line per array task, so pending tasks are not folded into "123_[4-9]".
        return ["squeue", "-h", "-r", "-t", "all", "-j", ",".join(ids), "-o", _SQUEUE_FORMAT]

    def parse_status(self, stdout: str, job_ids: Sequence[str]) -> dict[str, SchedulerStatus]:
        wanted = set(job_ids)
        found: dict[str, list[SchedulerStatus]] = {}
        for line in stdout.splitlines():
            fields = line.strip().split("|", 2)
            if len(fields) != 3 or not JOB_ID.fullmatch(fields[0]):
                if line.strip():
                    log.warning("squeue line not understood, ignored: %s", shorten(line))
                continue
            job_id, raw, reason = fields
            # A task is filed under its own id and under its array job, whichever was asked for.
            for key in dict.fromkeys((job_id, base_id(job_id))):
                if key in wanted:
                    status = SchedulerStatus(
                        key,
                        self.map_state(raw, job_id),
                        None,
                        "" if reason == "None" else reason,
                        raw,
                    )
                    found.setdefault(key, []).append(status)
        return select(found, job_ids)

    def status_error_is_empty(self, stderr: str) -> bool:
        # squeue exits 1 with "slurm_load_jobs error: Invalid job id specified" once every id
        # given has been purged (MinJobAge); with at least one live id it simply omits the rest.
        return "Invalid job id specified" in stderr

    def cancel_argv(self, job_ids: Sequence[str]) -> list[str]:
        return ["scancel", *check_ids(job_ids, JOB_ID, self.name)]

    def find_argv(self) -> list[str] | None:
        # The template puts "zbatch:<marker>" in the job's comment (%k); -t all keeps finished
        # jobs for MinJobAge, longer than any recovery waits.
        return ["squeue", "-h", "-t", "all", "-o", "%i|%k"]

    def parse_find(self, stdout: str, marker: str) -> str | None:
        for line in stdout.splitlines():
            job_id, _, comment = line.strip().partition("|")
            if comment == f"zbatch:{marker}" and JOB_ID.fullmatch(job_id):
                return job_id
        return None

    def detail_argv(self, job_id: str) -> list[str] | None:
        return ["scontrol", "show", "job", "-o", *check_ids([job_id], JOB_ID, self.name)]

    def parse_detail(self, stdout: str, job_id: str) -> SchedulerStatus | None:
        if "Invalid job id" in stdout:
            return None
        # -o prints one line per job (per task for arrays): prefer the line that is this job.
        records = [_fields(line) for line in stdout.splitlines() if "JobState=" in line]
        records = [r for r in records if "JobState" in r]
        if not records:
            return None
        mine = [r for r in records if job_id in _names(r)]
        parts = [self._detail(r, job_id) for r in (mine or records)]
        return combine(job_id, parts)

    def _detail(self, fields: Mapping[str, str], job_id: str) -> SchedulerStatus:
        raw = fields["JobState"]
        reason = fields.get("Reason", "")
        state = self.map_state(raw, job_id)
        # A pending or running job shows ExitCode=0:0, which means "no exit yet", not success.
        exit_code = _exit_code(fields.get("ExitCode", "")) if state.final else None
        return SchedulerStatus(job_id, state, exit_code, "" if reason == "None" else reason, raw)


# Keys of `scontrol show job -o`. Values such as Command= or WorkDir= may hold spaces, so
# each value runs until the next " Key=" rather than to the next space.
_FIELD = re.compile(r"(?:^|\s)([A-Za-z_:/]+)=(.*?)(?=\s+[A-Za-z_:/]+=|\s*$)")


def _fields(line: str) -> dict[str, str]:
    return {key: value for key, value in _FIELD.findall(line)}


_GROUPS = (("ArrayJobId", "ArrayTaskId", "_"), ("HetJobId", "HetJobOffset", "+"))


def _names(fields: Mapping[str, str]) -> set[str]:
    """Ids a line answers to. The last task of an array keeps the array's JobId (JobId=21 is
    task 21_3, its siblings get fresh JobIds), so array lines are named by ArrayJobId only."""
    for group, member, sep in _GROUPS:
        if fields.get(group):
            return {fields[group], f"{fields[group]}{sep}{fields.get(member, '')}"}
    return {fields.get("JobId", "")}


def _exit_code(text: str) -> int | None:
    """ExitCode=N:S -> N, or 128+S when a signal S ended the job (the shell's convention)."""
    match = re.fullmatch(r"([0-9]+):([0-9]+)", text)
    if not match:
        return None
    code, signal = int(match.group(1)), int(match.group(2))
    return 128 + signal if signal else code
