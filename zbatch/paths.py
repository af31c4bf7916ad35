"""Create files and folders without following symbolic links planted where they will go.

A job's folder may be writable by others (a shared `workdir_root`, /tmp), so anything zbatch
writes there must not be steered by a link someone left at a predictable name:
- a file is written to a new temporary name that no one can guess (random suffix), opened
  with O_CREAT|O_EXCL|O_NOFOLLOW (a link at that name makes the open fail, never followed),
  given its mode on the open descriptor (fchmod: never chmod on a path), then renamed over
  the final name: rename(2) replaces a link at the final name, it does not write through it;
- folders are created one level at a time with mode 0700 (the umask can only clear bits);
  folders that exist already are kept as they are.
"""

from __future__ import annotations

import errno
import os
import secrets
from contextlib import suppress
from pathlib import Path

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
# Room for ".", ".", the random suffix and ".tmp" within NAME_MAX (255 bytes).
_NAME_KEEP = 200


def temporary_name(path: str) -> str:
    """A hidden name beside `path` that no one can predict."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name[:_NAME_KEEP]}.{secrets.token_hex(8)}.tmp")


def atomic_write(path: str | os.PathLike[str], data: str | bytes, mode: int = PRIVATE_FILE) -> None:
    """Write `data` to `path` so a reader sees the old file or the whole new one, never half,
    and no link at the final or at a temporary name is followed (see the module's doc)."""
    target = os.fspath(path)
    payload = data.encode() if isinstance(data, str) else data
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for attempt in range(100):
        tmp = temporary_name(target)
        try:
            fd = os.open(tmp, flags, PRIVATE_FILE)
            break
        except FileExistsError:  # 64 random bits taken already: someone is guessing; again
            if attempt == 99:
                raise
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(payload)
        os.replace(tmp, target)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise


def make_dirs(path: str | os.PathLike[str], mode: int = PRIVATE_DIR) -> None:
    """`mkdir -p` where every folder created gets `mode` (0700 by default; the umask may clear
    bits of it); folders that exist are left alone. A link where a folder should be is used only
    if it leads to a folder: callers confine the path (resolved) before creating it."""
    folder = os.path.abspath(os.fspath(path))
    missing: list[str] = []
    while not os.path.isdir(folder):
        missing.append(folder)
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    for item in reversed(missing):
        try:
            os.mkdir(item, mode)
        except FileExistsError:
            if not os.path.isdir(item):  # a file, or a link leading nowhere: never follow it
                raise NotADirectoryError(
                    errno.ENOTDIR,
                    f"{item} exists and is not a folder (a file or a dangling symbolic link)",
                    item,
                ) from None


def create_private(path: str | os.PathLike[str]) -> None:
    """Create an empty file with mode 0600 unless something is at `path` already; for files
    that a library then opens by name (SQLite copies the main file's mode to its -wal/-shm)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    with suppress(FileExistsError):
        os.close(os.open(os.fspath(path), flags, PRIVATE_FILE))


def open_append(path: str | os.PathLike[str], mode: int = PRIVATE_FILE) -> int:
    """A descriptor appending to `path` (created with `mode` if missing); a symbolic link at
    `path` is refused (ELOOP), never followed. `/dev/null` and other real files are fine."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.open(os.fspath(path), flags, mode)


def default_state_dir() -> Path:
    return Path(os.environ.get("ZBATCH_STATE_DIR") or Path.home() / ".local/state/zbatch")
