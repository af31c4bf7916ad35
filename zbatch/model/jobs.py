"""Job nouns shared by every scheduler: resources, states and the files a job leaves behind."""

from __future__ import annotations

import enum
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from zbatch import paths as securefiles
from zbatch.errors import ZbatchError
from zbatch.model import safejson

log = logging.getLogger(__name__)
# A job writes its records itself, so they are as untrusted as a message: small, and typed.
MAX_RECORD_BYTES = 1024 * 1024
_RECORD_JOB_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_RECORD_SIGNALS = frozenset({"", "TERM", "INT", "USR1", "USR2", "KILL", "HUP"})


class JobState(enum.StrEnum):
    """A step's state; the values are what the ledger stores (never change one)."""

    # Claimed in the ledger, not yet accepted by the scheduler (no job id): zbatch's own state,
    # never a scheduler's.
    SUBMITTING = "submitting"
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
        """Ended: the state will not change any more."""
        return self not in (
            JobState.SUBMITTING,
            JobState.PENDING,
            JobState.RUNNING,
            JobState.UNKNOWN,
        )


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
    def recipewrapper(self) -> Path:
        return self._file(".recipewrap.json")


@dataclass(frozen=True)
class FileToPut:
    """A file to stage; readable by its owner only unless a mode says otherwise."""

    path: PurePosixPath
    data: str
    mode: int = 0o600


@dataclass(frozen=True)
class PreparedJob:
    """Everything needed to submit one step: its spec, its files and their contents."""

    spec: JobSpec
    paths: JobPaths
    script: str
    files: dict[Path, str] = field(default_factory=dict)
    # The step message among `files` (`$RECIPEWRAP`): the step's `recipewrapper` parameter
    # can move it from its default place, `paths.recipewrapper`.
    message_file: Path | None = None

    @property
    def message_path(self) -> Path:
        return self.message_file or self.paths.recipewrapper

    def staged_files(self) -> list[FileToPut]:
        """What to write before submitting: the step's files (0600), then the script (0700):
        both readable by the job's user only, as the message holds the whole recipe."""
        return [FileToPut(PurePosixPath(path), text) for path, text in self.files.items()] + [
            FileToPut(PurePosixPath(self.paths.script), self.script, mode=0o700)
        ]


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
    def parse(cls, text: str | bytes, source: str = "exit record") -> ExitRecord | None:
        """The record, or None (logged) when it is not one: a job may have written anything.

        `exit_code` must be a whole number (not a float, bool or string) that fits in 32 bits
        and `end_time` a finite number; a `signal` or `job_id` of any other form is dropped.
        """
        try:
            return cls._checked(safejson.loads(text, source, max_bytes=MAX_RECORD_BYTES))
        except ZbatchError as exc:
            log.warning("%s: no valid exit record: %s", source, exc)
        except Exception:  # a defect here must not stop the tracker: the record is void
            log.exception("%s: no valid exit record", source)
        return None

    @classmethod
    def _checked(cls, data: object) -> ExitRecord:
        if not isinstance(data, dict):
            raise ZbatchError(f"a JSON object is expected, not {type(data).__name__}")
        code, end = data.get("exit_code"), data.get("end_time")
        if isinstance(code, bool) or not isinstance(code, int) or not -(2**31) <= code < 2**31:
            raise ZbatchError(f"exit_code {str(code)[:40]!r} is not a 32-bit whole number")
        if isinstance(end, bool) or not isinstance(end, int | float):
            raise ZbatchError(f"end_time {str(end)[:40]!r} is not a number")
        if not math.isfinite(end) or abs(end) > 2**53:
            raise ZbatchError(f"end_time {str(end)[:40]!r} is out of range")
        # The exit code is the record's point; odd side fields are dropped, not trusted.
        signal, job_id = data.get("signal", ""), data.get("job_id", "")
        if not isinstance(signal, str) or signal not in _RECORD_SIGNALS:
            log.warning("exit record: ignoring signal %s", str(signal)[:40])
            signal = ""
        if job_id != "" and not (isinstance(job_id, str) and _RECORD_JOB_ID.fullmatch(job_id)):
            log.warning("exit record: ignoring job_id %s", str(job_id)[:40])
            job_id = ""
        return cls(code, float(end), str(signal), str(job_id))


def state_from_exit(record: ExitRecord) -> JobState:
    if record.signal == "TERM":
        return JobState.CANCELLED
    return JobState.SUCCEEDED if record.exit_code == 0 else JobState.FAILED


def atomic_write(path: Path, data: str | bytes, mode: int = securefiles.PRIVATE_FILE) -> None:
    """Write then rename, so a reader never sees half a file; no symbolic link planted at the
    final or a temporary name is followed (`securefiles.atomic_write`). Private by default."""
    securefiles.atomic_write(path, data, mode)
