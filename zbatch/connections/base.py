"""The connection interface. A connection knows no scheduler words."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from zbatch.model.jobs import FileToPut


@dataclass(frozen=True)
class CommandResult:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    def describe(self) -> str:
        """One line: how the command failed, in its own last words. A short closing line
        (qsub's "Exiting.") keeps the line before it, which says why."""
        detail = [line.strip() for line in (self.stderr.strip() or self.stdout).splitlines()]
        detail = [line for line in detail if line]
        tail = detail[-1] if detail else "no output"
        if len(detail) > 1 and len(tail.split()) < 3:
            tail = f"{detail[-2]} {tail}"
        return f"{self.argv[0]} exited {self.returncode}: {tail[:300]}"


class Connection(ABC):
    """Runs commands and moves files on one host. Thread-safety: one caller at a time."""

    @abstractmethod
    def run(self, argv: Sequence[str], timeout: float | None = None) -> CommandResult:
        """Run an argument list (never through a shell); raise ConnectionFailure if unreachable."""

    @abstractmethod
    def put_file(self, path: PurePosixPath, data: str, mode: int = 0o600) -> None:
        """Write `data` to `path` atomically (write, then rename), creating missing parent
        folders with mode 0700; no symbolic link at `path` or a temporary name is followed."""

    def put_files(self, files: Sequence[FileToPut]) -> None:
        """put_file for each; connections with round trips to save send them together."""
        for item in files:
            self.put_file(item.path, item.data, item.mode)

    @abstractmethod
    def read_file(self, path: PurePosixPath) -> str | None:
        """The file's text, or None when it does not exist."""

    def resolve_paths(self, paths: Sequence[str]) -> list[str]:
        """Each absolute path with every symbolic link resolved on this connection's host, as
        `realpath -m` does: components that do not exist yet are kept as written."""
        return [os.path.realpath(path) for path in paths]

    def warm_up(self) -> None:  # noqa: B027 - optional hook, most connections hold nothing
        """Open what the first commands would open (remote logins are slow), now."""

    def close(self) -> None:  # noqa: B027 - optional hook, most connections hold nothing
        """Release what the connection holds."""
