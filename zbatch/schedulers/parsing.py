"""Parsing helpers shared by the scheduler modules: ids, script paths, arrays, submit output."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from zbatch.errors import SchedulerError
from zbatch.model.jobs import JobState
from zbatch.schedulers.base import SchedulerStatus

_SHOWN = 200


def shorten(text: str, limit: int = _SHOWN) -> str:
    """Scheduler output quoted in an error message, cut so one bad reply stays one line."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def check_ids(job_ids: Sequence[str], pattern: re.Pattern[str], scheduler: str) -> list[str]:
    if isinstance(job_ids, str):  # a bare str is a Sequence too; "123" must not become 1,2,3
        raise SchedulerError(f"{scheduler}: job ids must be a list, not the string {job_ids!r}")
    if not job_ids:
        raise SchedulerError(f"{scheduler}: no job ids given")
    for job_id in job_ids:
        if not isinstance(job_id, str) or not pattern.fullmatch(job_id):
            raise SchedulerError(f"{scheduler}: {shorten(repr(job_id), 60)} is not a job id")
    return list(job_ids)


def check_script(script_path: str, scheduler: str) -> str:
    # A path starting with '-' would be read as an option; newline/NUL cannot be passed on.
    if not script_path or script_path.startswith("-") or any(c in script_path for c in "\n\r\0"):
        raise SchedulerError(f"{scheduler}: refusing to submit script path {script_path!r}")
    return script_path


def base_id(job_id: str) -> str:
    """The job an array task or het component belongs to: 123_4 -> 123, 123+1 -> 123."""
    return re.split(r"[_+.]", job_id, maxsplit=1)[0]


# Pending-before-final order: while anything still runs the whole array is running.
_ACTIVE_ORDER = (JobState.RUNNING, JobState.PENDING, JobState.UNKNOWN)


def combine(job_id: str, parts: Sequence[SchedulerStatus]) -> SchedulerStatus:
    """One status for an array (or het) job from the statuses of its tasks."""
    if len(parts) == 1:
        return SchedulerStatus(
            job_id, parts[0].state, parts[0].exit_code, parts[0].reason, parts[0].raw_state
        )
    for state in _ACTIVE_ORDER:
        chosen = [p for p in parts if p.state is state]
        if chosen:
            return SchedulerStatus(job_id, state, None, chosen[0].reason, chosen[0].raw_state)
    bad = [p for p in parts if p.state is not JobState.SUCCEEDED]
    pick = bad[0] if bad else parts[0]
    return SchedulerStatus(job_id, pick.state, pick.exit_code, pick.reason, pick.raw_state)


def select(
    found: Mapping[str, list[SchedulerStatus]], job_ids: Sequence[str]
) -> dict[str, SchedulerStatus]:
    """Statuses for exactly the ids asked for; a base id collects all of its tasks."""
    result: dict[str, SchedulerStatus] = {}
    for job_id in job_ids:
        if found.get(job_id):
            result[job_id] = combine(job_id, found[job_id])
    return result


def find_submitted_id(
    stdout: str, line: re.Pattern[str], sentence: re.Pattern[str], tool: str
) -> str:
    """The job id in a submit command's output.

    Site wrappers may print notices before or after it: take the last line that is nothing
    but an id (group 1 of `line`), else the tool's classic sentence (`sentence`).
    """
    for text in reversed(stdout.splitlines()):
        match = line.match(text)
        if match:
            return match.group(1)
    found = sentence.search(stdout)
    if found:
        return found.group(1)
    raise SchedulerError(f"{tool} printed no job id: {shorten(stdout) or '(nothing)'}")
