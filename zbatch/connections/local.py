"""Run scheduler commands on this machine as plain subprocesses."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from zbatch.connections.base import CommandResult, Connection
from zbatch.errors import ConnectionFailure
from zbatch.model.jobenv import scrubbed_environment
from zbatch.paths import atomic_write, make_dirs


class LocalConnection(Connection):
    def __init__(self, command_timeout: float = 60.0) -> None:
        self.command_timeout = command_timeout

    def run(self, argv: Sequence[str], timeout: float | None = None) -> CommandResult:
        limit = timeout or self.command_timeout
        try:
            done = subprocess.run(
                list(argv),
                capture_output=True,
                text=True,
                timeout=limit,
                check=False,
                stdin=subprocess.DEVNULL,
                # Scheduler commands pass their environment into jobs (sbatch exports it all):
                # only the allow-listed variables go, never the broker's credentials.
                env=scrubbed_environment(),
            )
        except FileNotFoundError:
            raise ConnectionFailure(
                f"command {argv[0]!r} not found on this machine", transient=False
            ) from None
        except subprocess.TimeoutExpired:
            raise ConnectionFailure(f"{argv[0]} did not answer within {limit:g} s") from None
        return CommandResult(list(argv), done.returncode, done.stdout, done.stderr)

    def put_file(self, path: PurePosixPath, data: str, mode: int = 0o600) -> None:
        target = Path(path)
        try:
            make_dirs(target.parent)
            atomic_write(target, data, mode)
        except OSError as exc:
            raise ConnectionFailure(
                f"cannot write {path}: {exc.strerror}", transient=False
            ) from None

    def read_file(self, path: PurePosixPath) -> str | None:
        try:
            return Path(path).read_text(errors="replace")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConnectionFailure(f"cannot read {path}: {os.strerror(exc.errno or 0)}") from None
