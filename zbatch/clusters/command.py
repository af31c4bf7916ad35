"""A cluster = a scheduler's syntax composed with a connection to the host that runs it."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import PurePosixPath

from zbatch.clusters.base import Cluster
from zbatch.connections.base import CommandResult, Connection
from zbatch.errors import ClusterUnavailable, SchedulerError
from zbatch.model.jobs import PreparedJob
from zbatch.schedulers.base import Scheduler, SchedulerStatus

log = logging.getLogger(__name__)


class CommandCluster(Cluster):
    """Runs the scheduler's commands through a connection (local subprocess or SSH)."""

    def __init__(self, scheduler: Scheduler, connection: Connection) -> None:
        self.scheduler = scheduler
        self.scheduler_name = scheduler.name
        self.connection = connection

    def submit(self, job: PreparedJob) -> str:
        self.connection.put_files(job.staged_files())
        result = self.connection.run(self.scheduler.submit_argv(str(job.paths.script)))
        if result.returncode != 0:
            raise self._failure(result, f"{self.scheduler.name} refused job {job.spec.name}")
        return self.scheduler.parse_submit(result.stdout)

    def _failure(self, result: CommandResult, what: str, transient: bool = False) -> SchedulerError:
        """A failed command: the scheduler saying no, or its controller not answering."""
        if self.scheduler.unavailable(result.stdout + "\n" + result.stderr):
            return ClusterUnavailable(
                f"{self.scheduler.name} controller unavailable: {result.describe()}"
            )
        return SchedulerError(f"{what}: {result.describe()}", transient=transient)

    def statuses(self, job_ids: Sequence[str]) -> dict[str, SchedulerStatus]:
        if not job_ids:
            return {}
        result = self.connection.run(self.scheduler.status_argv(job_ids))
        if result.returncode != 0:
            if self.scheduler.status_error_is_empty(result.stderr):
                return {}
            raise self._failure(result, "status query failed", transient=True)
        return self.scheduler.parse_status(result.stdout, job_ids)

    def detail(self, job_id: str) -> SchedulerStatus | None:
        argv = self.scheduler.detail_argv(job_id)
        if argv is None:
            return None
        result = self.connection.run(argv)
        return (
            self.scheduler.parse_detail(result.stdout, job_id) if result.returncode == 0 else None
        )

    def find(self, marker: str) -> str | None:
        argv = self.scheduler.find_argv()
        if argv is None:
            return None
        result = self.connection.run(argv)
        if result.returncode != 0:
            if self.scheduler.find_error_is_empty(result.stderr):
                return None
            raise self._failure(result, "job lookup failed", transient=True)
        return self.scheduler.parse_find(result.stdout, marker)

    def cancel(self, job_ids: Sequence[str]) -> None:
        result = self.connection.run(self.scheduler.cancel_argv(job_ids))
        if result.returncode != 0:
            raise self._failure(result, "cancel failed")

    def read_text(self, path: PurePosixPath) -> str | None:
        return self.connection.read_file(path)

    def resolve_paths(self, paths: Sequence[str]) -> list[str]:
        return self.connection.resolve_paths(paths)

    def warm_up(self) -> None:
        self.connection.warm_up()

    def close(self) -> None:
        self.connection.close()
