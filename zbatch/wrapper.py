"""The wrapper API for authors: turn job parameters into a command, then read its outputs.

A wrapper is a class registered in the `zbatch.wrappers` entry-point group. zbatch runs the
command it builds (an argument list, never a shell line), then asks it what the outputs mean.
"""

from __future__ import annotations

import logging
import math
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any, ClassVar

from zbatch.errors import WrapperError, ZbatchError
from zbatch.model import safety
from zbatch.model.message import StepMessage
from zbatch.paths import make_dirs

MAX_ARGUMENT = 128 * 1024
MAX_TIMEOUT_S = 30 * 24 * 3600  # a month: beyond any queue's time limit


@dataclass(frozen=True)
class ResultFile:
    """One file a tool produced, as sent on `result-individual-file` (dlstbx's convention:
    `file_path` is the folder, `file_name` the name)."""

    file_path: str
    file_name: str
    file_type: str
    importance_rank: int | None = None

    @property
    def full_path(self) -> str:
        return f"{self.file_path.rstrip('/')}/{self.file_name}"

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "file_path": self.file_path,
            "file_name": self.file_name,
            "file_type": self.file_type,
        }
        if self.importance_rank is not None:
            data["importance_rank"] = self.importance_rank
        return data


@dataclass
class Outcome:
    """What a wrapper concluded from the tool's exit code and files."""

    success: bool
    reason: str = ""
    files: list[ResultFile] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    # Extra named outputs, e.g. {"ispyb": {...}, "topaz": {...}}, sent before success/failure.
    extra_outputs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunContext:
    """What a wrapper may know about the job it runs in."""

    message: StepMessage
    cpus: int
    log: logging.LoggerAdapter[logging.Logger]
    # The profile's workdir_root, given by the job script (`zbatch wrap --workdir-root`, which
    # the dispatcher writes from the profile, never from the message): the tool's folders and
    # the result files it reports must lie inside it once resolved. None: no confinement.
    workdir_root: str | None = None

    @property
    def job_parameters(self) -> dict[str, Any]:
        params = self.message.step.get("job_parameters", {})
        if not isinstance(params, dict):
            raise WrapperError(f"step {self.message.pointer}: job_parameters must be an object")
        return params


class Wrapper(ABC):
    name: ClassVar[str]
    # One line for `zbatch wrappers list`; empty: the first line of the class docstring.
    description: ClassVar[str] = ""

    def __init__(self, context: RunContext) -> None:
        self.context = context
        self.params = context.job_parameters

    def working_directory(self) -> Path:
        """Where the tool runs: `job_parameters.working_directory` (a relative one is below the
        job's folder) or the job's folder. Subclasses may add a folder below it; zbatch runs
        the tool in `confined_working_directory()`, this path checked."""
        given = self.params.get("working_directory")
        if given is None or given == "":
            return Path.cwd()
        what = "job_parameters.working_directory"
        if not isinstance(given, str):
            raise WrapperError(f"{what} must be a path, not {type(given).__name__}")
        return Path(os.path.abspath(safety.check_text(given, what, limit=4096)))

    def confine(self, path: Path, what: str) -> Path:
        """`path` made absolute (`..` removed as written), after checking that its real path
        (symbolic links followed, on this host) lies inside the profile's workdir_root."""
        absolute = Path(os.path.abspath(path))
        root = self.context.workdir_root
        if root is None:
            return absolute
        real, real_root = os.path.realpath(absolute), os.path.realpath(root)
        if not safety.is_within(real, real_root):
            how = "is" if real == str(absolute) else f"resolves to {real!r},"
            raise WrapperError(
                f"{what} {str(path)!r} {how} outside the profile's workdir_root {root!r}"
            )
        return absolute

    def confined_working_directory(self) -> Path:
        """`working_directory()`, refused (WrapperError) unless inside the profile's root."""
        return self.confine(self.working_directory(), "working directory")

    def create_directory(self, path: Path, what: str = "working directory") -> Path:
        """Create `path` (missing folders 0700) and check again that it lies inside the root:
        a link swapped in meanwhile is caught before the tool writes anything there."""
        make_dirs(path)
        return self.confine(path, what)

    def prepare(self, workdir: Path) -> None:  # noqa: B027 - optional hook
        """Write input files the tool needs before it starts."""

    @abstractmethod
    def command(self, workdir: Path) -> list[str]:
        """The tool's argument list. Raise WrapperError for parameters the tool cannot take."""

    @abstractmethod
    def collect(self, workdir: Path, exit_code: int) -> Outcome:
        """Read the tool's outputs and decide whether it succeeded."""

    def timeout_s(self) -> float | None:
        """`job_parameters.timeout`: the seconds the tool may run; no limit when it is absent.
        Anything else than a positive number is an error, never a silent "no limit"."""
        value = self.params.get("timeout")
        if value is None:
            return None
        what = "job_parameters.timeout"
        if isinstance(value, float) and math.isfinite(value) and 0 < value <= MAX_TIMEOUT_S:
            return value
        try:
            return float(safety.parse_int(value, what, minimum=1, maximum=MAX_TIMEOUT_S))
        except ZbatchError as exc:
            raise WrapperError(f"{exc} (seconds; leave it out for no limit)") from None


def check_argument(value: object, what: str) -> str:
    """A value that becomes one argument: text, no NUL, bounded; never split or interpreted."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise WrapperError(f"{what} must be text or a number, not {type(value).__name__}")
    text = str(value)
    if "\0" in text:
        raise WrapperError(f"{what} contains a NUL byte")
    if any("\ud800" <= char <= "\udfff" for char in text):
        # It could not be encoded for exec(): the tool would fail to start, not refuse it.
        raise WrapperError(f"{what} contains a lone surrogate (not valid Unicode text)")
    if len(text) > MAX_ARGUMENT:
        raise WrapperError(f"{what} is {len(text)} characters long; the limit is {MAX_ARGUMENT}")
    return text


def installed() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group="zbatch.wrappers")}


@dataclass(frozen=True)
class InstalledWrapper:
    """One `zbatch.wrappers` entry point as `zbatch wrappers list` shows it."""

    name: str
    target: str  # "module:Class"
    description: str = ""
    error: str | None = None  # why it cannot be loaded; None when it loads

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "target": self.target,
            "loads": self.error is None,
            "description": self.description,
            "error": self.error,
        }


def describe_installed() -> list[InstalledWrapper]:
    """Every registered wrapper, loaded, by name: a broken one carries its error instead."""
    found: list[InstalledWrapper] = []
    for ep in sorted(entry_points(group="zbatch.wrappers"), key=lambda ep: ep.name):
        try:
            cls = _load(ep)
        except WrapperError as exc:
            found.append(InstalledWrapper(ep.name, ep.value, error=str(exc)))
        else:
            found.append(InstalledWrapper(ep.name, ep.value, description_of(cls)))
    return found


def description_of(cls: type[Wrapper]) -> str:
    """The class's `description`, else the first line of its own docstring (not inherited)."""
    text = cls.description or (cls.__doc__ or "").strip()
    return text.splitlines()[0].strip() if text else ""


def load_wrapper(name: str) -> type[Wrapper]:
    found = {ep.name: ep for ep in entry_points(group="zbatch.wrappers")}
    if name not in found:
        raise WrapperError(f"unknown wrapper {name!r}; installed: {', '.join(sorted(found))}")
    return _load(found[name])


def _load(ep: EntryPoint) -> type[Wrapper]:
    try:
        cls = ep.load()
    except Exception as exc:  # noqa: BLE001 - a broken site package: one clear error
        # One line: a SyntaxError or an ImportError may span several.
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise WrapperError(f"wrapper {ep.name!r} cannot be loaded: {detail}") from None
    if not (isinstance(cls, type) and issubclass(cls, Wrapper)):
        raise WrapperError(f"wrapper {ep.name!r} ({ep.value}) is not a zbatch Wrapper")
    return cls
