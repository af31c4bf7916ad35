"""The scheduler interface: argv builders and output parsers, no process execution."""

from __future__ import annotations

import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from zbatch.model.jobs import JobState
from zbatch.model.profiles import Profile

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SchedulerStatus:
    """What the scheduler says about one job."""

    job_id: str
    state: JobState
    exit_code: int | None = None
    reason: str = ""
    raw_state: str = ""


class Scheduler(ABC):
    name: ClassVar[str]
    # Scheduler state words mapped onto JobState; unknown words become UNKNOWN with a warning.
    state_map: ClassVar[Mapping[str, JobState]] = {}

    def __init__(self, profile: Profile) -> None:
        self.profile = profile

    def map_state(self, raw: str, job_id: str) -> JobState:
        state = self.state_map.get(raw)
        if state is None:
            log.warning("job %s: unknown %s state %r, treated as unknown", job_id, self.name, raw)
            return JobState.UNKNOWN
        return state

    @abstractmethod
    def submit_argv(self, script_path: str) -> list[str]:
        """Command that submits the job script at `script_path` (already on the host)."""

    @abstractmethod
    def parse_submit(self, stdout: str) -> str:
        """The job id from the submit command's output; raises SchedulerError if absent."""

    @abstractmethod
    def status_argv(self, job_ids: Sequence[str]) -> list[str]:
        """One command that reports on all of `job_ids` (and ideally nothing else)."""

    @abstractmethod
    def parse_status(self, stdout: str, job_ids: Sequence[str]) -> dict[str, SchedulerStatus]:
        """Statuses of the jobs the scheduler still knows; absent ids are simply missing."""

    @abstractmethod
    def cancel_argv(self, job_ids: Sequence[str]) -> list[str]:
        """Command that cancels all of `job_ids`."""

    def find_argv(self) -> list[str] | None:
        """Command listing jobs with their zbatch markers, to recover a lost job id."""
        return None

    def parse_find(self, stdout: str, marker: str) -> str | None:  # noqa: ARG002 - optional hook
        """The id of the job carrying `marker` in `find_argv`'s output, if any."""
        return None

    def find_error_is_empty(self, stderr: str) -> bool:  # noqa: ARG002 - optional hook
        """True when a failed `find_argv` only means "no jobs at all" (nothing to find)."""
        return False

    # What the scheduler's commands print when its controller cannot be reached (as opposed
    # to refusing a request): captured outputs are in tests/data/scheduler-output/.
    unavailable_patterns: ClassVar[tuple[re.Pattern[str], ...]] = ()

    def unavailable(self, output: str) -> bool:
        """True when a failed command's output says the scheduler is down, not that it said no."""
        return any(pattern.search(output) for pattern in self.unavailable_patterns)

    def status_error_is_empty(self, stderr: str) -> bool:  # noqa: ARG002 - optional hook
        """True when a failed status command only means "none of these jobs exist any more"."""
        return False

    def detail_argv(self, job_id: str) -> list[str] | None:  # noqa: ARG002 - optional hook
        """Command explaining a job gone from the queue (accounting), where there is one."""
        return None

    def parse_detail(self, stdout: str, job_id: str) -> SchedulerStatus | None:  # noqa: ARG002
        return None  # optional hook, as detail_argv
