"""A cluster = a scheduler's syntax composed with a connection to the host that runs it."""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import PurePosixPath

from zbatch.connections.base import CommandResult, Connection
from zbatch.connections.local import LocalConnection
from zbatch.errors import ClusterUnavailable, ProfileError, SchedulerError
from zbatch.jobs import ExitRecord, JobPaths
from zbatch.profiles import Profile
from zbatch.schedulers import scheduler_for
from zbatch.schedulers.base import Scheduler, SchedulerStatus
from zbatch.steps import PreparedJob

log = logging.getLogger(__name__)


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

    def find(self, marker: str) -> str | None:
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


def cluster_for(profile: Profile) -> Cluster:
    """Compose the backend a profile describes."""
    kind = profile.connection.type
    if kind == "local":
        return CommandCluster(
            scheduler_for(profile), LocalConnection(profile.connection.command_timeout_s)
        )
    if kind == "ssh":
        from zbatch.connections.pool import ConnectionPool
        from zbatch.connections.ssh import SshConnection

        pool = ConnectionPool(
            lambda: SshConnection(profile.connection), profile.connection.pool_size
        )
        return CommandCluster(scheduler_for(profile), pool)
    if kind == "drmaa":
        from zbatch.connections.drmaa_cluster import DrmaaCluster

        return DrmaaCluster(profile)
    raise ProfileError(f"{profile.source}: connection type {kind!r} is not supported")
