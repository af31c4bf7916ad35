"""The `local` scheduler: drives `localbatch` (this folder) as if it were sbatch/squeue/scancel."""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar

from zbatch.errors import SchedulerError
from zbatch.model.jobs import JobState
from zbatch.paths import default_state_dir
from zbatch.schedulers.base import Scheduler, SchedulerStatus

_ID = re.compile(r"[0-9]{1,12}")


def localbatch_dir() -> Path:
    return default_state_dir() / "localbatch"


class LocalScheduler(Scheduler):
    name = "local"
    state_map: ClassVar[Mapping[str, JobState]] = {
        "PENDING": JobState.PENDING,
        "RUNNING": JobState.RUNNING,
        "COMPLETED": JobState.SUCCEEDED,
        "FAILED": JobState.FAILED,
        "TIMEOUT": JobState.TIMEOUT,
        "CANCELLED": JobState.CANCELLED,
        "LOST": JobState.LOST,
    }

    def _base(self, action: str) -> list[str]:
        state_dir = self.profile.local.state_dir or str(localbatch_dir())
        return [
            sys.executable,
            "-m",
            "zbatch.schedulers.localbatch",
            action,
            "--state-dir",
            state_dir,
            "--slots",
            str(self.profile.local.slots),
        ]

    @staticmethod
    def _checked(job_ids: Sequence[str]) -> list[str]:
        for job_id in job_ids:
            if not _ID.fullmatch(job_id):
                raise SchedulerError(f"{job_id!r} is not a local job id")
        return list(job_ids)

    def submit_argv(self, script_path: str) -> list[str]:
        return [*self._base("submit"), script_path]

    def parse_submit(self, stdout: str) -> str:
        for line in reversed(stdout.split()):
            if _ID.fullmatch(line):
                return line
        raise SchedulerError(f"local submit printed no job id: {stdout[:200]!r}")

    def status_argv(self, job_ids: Sequence[str]) -> list[str]:
        return [*self._base("status"), *self._checked(job_ids)]

    def parse_status(self, stdout: str, job_ids: Sequence[str]) -> dict[str, SchedulerStatus]:
        wanted = set(job_ids)
        found: dict[str, SchedulerStatus] = {}
        for line in stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) != 3 or parts[0] not in wanted:
                continue
            job_id, raw, code = parts
            found[job_id] = SchedulerStatus(
                job_id,
                self.map_state(raw, job_id),
                int(code) if code.lstrip("-").isdigit() else None,
                raw_state=raw,
            )
        return found

    def find_argv(self) -> list[str] | None:
        return self._base("find")

    def parse_find(self, stdout: str, marker: str) -> str | None:
        for line in stdout.splitlines():
            job_id, _, found = line.strip().partition("|")
            if found == marker and _ID.fullmatch(job_id):
                return job_id
        return None

    def cancel_argv(self, job_ids: Sequence[str]) -> list[str]:
        return [*self._base("cancel"), *self._checked(job_ids)]
