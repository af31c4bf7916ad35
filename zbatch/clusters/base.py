"""What the dispatcher, tracker and CLI need from any cluster backend."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import PurePosixPath

from zbatch.model.jobs import ExitRecord, JobPaths, PreparedJob
from zbatch.schedulers.base import SchedulerStatus


class Cluster(ABC):
    """What the dispatcher, tracker and CLI need from any backend."""

    scheduler_name: str

    @abstractmethod
    def submit(self, job: PreparedJob) -> str:
        """Stage the job's files, submit its script and return the scheduler's job id."""

    @abstractmethod
    def statuses(self, job_ids: Sequence[str]) -> dict[str, SchedulerStatus]:
        """One query for all `job_ids`; jobs the scheduler no longer knows are absent."""

    @abstractmethod
    def detail(self, job_id: str) -> SchedulerStatus | None:
        """Accounting for a job gone from the queue, where the scheduler keeps any."""

    @abstractmethod
    def cancel(self, job_ids: Sequence[str]) -> None: ...

    def find(self, marker: str) -> str | None:  # noqa: ARG002 - optional hook
        """The id of a job submitted with `marker`, for recovery after a crash mid-submit."""
        return None

    @abstractmethod
    def read_text(self, path: PurePosixPath) -> str | None: ...

    def resolve_paths(self, paths: Sequence[str]) -> list[str]:
        """Real paths (symbolic links resolved, missing components kept) on the host where the
        jobs run and their files are staged: this machine unless a connection says otherwise."""
        return [os.path.realpath(path) for path in paths]

    def exit_record(self, paths: JobPaths) -> ExitRecord | None:
        text = self.read_text(PurePosixPath(paths.exit_record))
        return ExitRecord.parse(text) if text else None

    def warm_up(self) -> None:  # noqa: B027 - optional hook
        """Open connections before the first job needs them; raises ZbatchError if unreachable."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
