"""Job nouns shared by every scheduler: resources, states and the files a job leaves behind."""

from __future__ import annotations

import enum
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class JobState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    OUT_OF_MEMORY = "out-of-memory"
    NODE_FAILURE = "node-failure"
    LOST = "lost"
    UNKNOWN = "unknown"

    @property
    def final(self) -> bool:
        return self not in (JobState.PENDING, JobState.RUNNING, JobState.UNKNOWN)


@dataclass(frozen=True)
class JobSpec:
    """Resources and identity of one job, after profile defaults and limits were applied."""

    name: str
    workdir: str
    command: str
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    cpus: int = 1
    tasks: int | None = None
    nodes: int | None = None
    memory_mb: int | None = None
    memory_per_cpu_mb: int | None = None
    time_limit_s: int | None = None
    gpus: int | None = None
    gpus_per_node: int | None = None
    exclusive: bool = False
    constraints: str | None = None
    prefer: str | None = None
    array: str | None = None
    environment: dict[str, str] = field(default_factory=dict)
    extra_directives: list[str] = field(default_factory=list)
    # The step's ledger key, written into the job's scheduler record (Slurm comment, SGE context)
    # so a submission whose job id was never recorded (a crash mid-submit) can be found again.
    marker: str = ""


@dataclass(frozen=True)
class JobPaths:
    """Every file a job leaves in its working directory, named in one place."""

    workdir: Path
    tag: str

    def _file(self, suffix: str) -> Path:
        return self.workdir / f"zbatch-{self.tag}{suffix}"

    @property
    def script(self) -> Path:
        return self._file(".sh")

    @property
    def stdout(self) -> Path:
        return self._file(".out")

    @property
    def stderr(self) -> Path:
        return self._file(".err")

    @property
    def exit_record(self) -> Path:
        return self._file(".exit")

    @property
    def result_record(self) -> Path:
        return Path(result_record_path(str(self.recipewrapper)))

    @property
    def recipewrapper(self) -> Path:
        return self._file(".recipewrap.json")


def result_record_path(recipewrapper: str) -> str:
    """Where `zbatch wrap` writes its result record, beside the message file it was given."""
    suffix = ".recipewrap.json"
    if recipewrapper.endswith(suffix):
        return recipewrapper[: -len(suffix)] + ".result.json"
    return recipewrapper + ".result.json"


def outbox_path(recipewrapper: str) -> str:
    """Where `zbatch wrap` keeps messages the transport has not taken yet."""
    return result_record_path(recipewrapper)[: -len(".json")] + ".outbox.jsonl"


@dataclass(frozen=True)
class ExitRecord:
    """What the job script itself wrote when it ended: the truth about its outcome."""

    exit_code: int
    end_time: float
    signal: str = ""
    job_id: str = ""

    @classmethod
    def parse(cls, text: str) -> ExitRecord | None:
        try:
            data: Any = json.loads(text)
            return cls(
                int(data["exit_code"]),
                float(data["end_time"]),
                str(data.get("signal", "")),
                str(data.get("job_id", "")),
            )
        except (ValueError, KeyError, TypeError):
            return None

    @classmethod
    def read(cls, path: Path) -> ExitRecord | None:
        try:
            return cls.parse(path.read_text())
        except OSError:
            return None


def state_from_exit(record: ExitRecord) -> JobState:
    if record.signal == "TERM":
        return JobState.CANCELLED
    return JobState.SUCCEEDED if record.exit_code == 0 else JobState.FAILED


def atomic_write(path: Path, data: str | bytes, mode: int = 0o644) -> None:
    """Write then rename, so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data.encode() if isinstance(data, str) else data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
