"""The connection interface. A connection knows no scheduler words."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath


@dataclass(frozen=True)
class CommandResult:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    def describe(self) -> str:
        detail = (self.stderr.strip() or self.stdout.strip()).splitlines()
        tail = detail[-1][:300] if detail else "no output"
        return f"{self.argv[0]} exited {self.returncode}: {tail}"


@dataclass(frozen=True)
class FileToPut:
    path: PurePosixPath
    data: str
    mode: int = 0o644


class Connection(ABC):
    """Runs commands and moves files on one host. Thread-safety: one caller at a time."""

    @abstractmethod
    def run(self, argv: Sequence[str], timeout: float | None = None) -> CommandResult:
        """Run an argument list (never through a shell); raise ConnectionFailure if unreachable."""

    @abstractmethod
    def put_file(self, path: PurePosixPath, data: str, mode: int = 0o644) -> None:
        """Write `data` to `path` atomically (write, then rename), creating parent folders."""

    def put_files(self, files: Sequence[FileToPut]) -> None:
        """put_file for each; connections with round trips to save send them together."""
        for item in files:
            self.put_file(item.path, item.data, item.mode)

    @abstractmethod
    def read_file(self, path: PurePosixPath) -> str | None:
        """The file's text, or None when it does not exist."""

    def warm_up(self) -> None:  # noqa: B027 - optional hook, most connections hold nothing
        """Open what the first commands would open (remote logins are slow), now."""

    def close(self) -> None:  # noqa: B027 - optional hook, most connections hold nothing
        """Release what the connection holds."""
