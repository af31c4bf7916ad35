"""Several connections to one host used as one, so commands from many threads overlap.

Each SSH connection runs one command at a time (one remote shell); a pool of them lets the
dispatcher's submission threads reach the host at once. Connections are opened on demand, up
to the pool's size, and a broken one heals itself on its next use.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import PurePosixPath

from zbatch.connections.base import CommandResult, Connection
from zbatch.model.jobs import FileToPut


class ConnectionPool(Connection):
    def __init__(self, make: Callable[[], Connection], size: int) -> None:
        self._make = make
        self._size = size
        self._idle: queue.LifoQueue[Connection] = queue.LifoQueue()
        self._all: list[Connection] = []
        self._lock = threading.Lock()

    @property
    def opened(self) -> int:
        return len(self._all)

    @contextmanager
    def _borrow(self) -> Iterator[Connection]:
        try:
            connection = self._idle.get_nowait()
        except queue.Empty:
            with self._lock:
                grow = len(self._all) < self._size
                if grow:
                    connection = self._make()
                    self._all.append(connection)
            if not grow:
                connection = self._idle.get()
        try:
            yield connection
        finally:
            self._idle.put(connection)

    def run(self, argv: Sequence[str], timeout: float | None = None) -> CommandResult:
        with self._borrow() as connection:
            return connection.run(argv, timeout)

    def put_file(self, path: PurePosixPath, data: str, mode: int = 0o600) -> None:
        with self._borrow() as connection:
            connection.put_file(path, data, mode)

    def put_files(self, files: Sequence[FileToPut]) -> None:
        with self._borrow() as connection:
            connection.put_files(files)

    def read_file(self, path: PurePosixPath) -> str | None:
        with self._borrow() as connection:
            return connection.read_file(path)

    def resolve_paths(self, paths: Sequence[str]) -> list[str]:
        with self._borrow() as connection:
            return connection.resolve_paths(paths)

    def warm_up(self) -> None:
        """Open every connection of the pool at once (each logs in: ~0.2 s on a busy host)."""
        with self._lock:
            while len(self._all) < self._size:
                connection = self._make()
                self._all.append(connection)
                self._idle.put(connection)
            connections = list(self._all)
        with ThreadPoolExecutor(len(connections), thread_name_prefix="zbatch-warm") as pool:
            for future in [pool.submit(c.warm_up) for c in connections]:
                future.result()

    def close(self) -> None:
        with self._lock:
            for connection in self._all:
                connection.close()
            self._all.clear()
            self._idle = queue.LifoQueue()
