"""Run a tool as a child process: streamed output, bounded memory, forwarded signals."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)
TAIL_BYTES = 64 * 1024
CHUNK = 64 * 1024


@dataclass
class ToolRun:
    exit_code: int
    stdout_tail: str
    stopped_by: str = ""  # the name of a terminating signal zbatch forwarded, or "timeout"


def _pump(source: IO[bytes], sink: IO[bytes], tail: deque[bytes]) -> None:
    """Copy the tool's output to the job log chunk by chunk, keeping only a short tail."""
    size = 0
    while chunk := source.read1(CHUNK) if hasattr(source, "read1") else source.read(CHUNK):
        sink.write(chunk)
        sink.flush()
        tail.append(chunk)
        size += len(chunk)
        while size - len(tail[0]) >= TAIL_BYTES and len(tail) > 1:
            size -= len(tail.popleft())


def run_tool(
    argv: list[str],
    workdir: Path,
    timeout_s: float | None = None,
    env: dict[str, str] | None = None,
) -> ToolRun:
    """Run `argv` in `workdir`; SIGTERM/INT/USR1/USR2 sent to us reach the tool's process group."""
    child = subprocess.Popen(
        argv,
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        start_new_session=True,
        env=env,
    )
    stopped = {"by": ""}

    def forward(signum: int, _frame: FrameType | None) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopped["by"] = signal.Signals(signum).name
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    tail: deque[bytes] = deque()
    stdout = child.stdout
    if stdout is None:  # Popen was given stdout=PIPE above; this cannot be None
        raise RuntimeError("the tool's output pipe was not opened")
    pump = threading.Thread(target=_pump, args=(stdout, sys.stdout.buffer, tail), daemon=True)
    pump.start()
    try:
        code = child.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        stopped["by"] = "timeout"
        os.killpg(child.pid, signal.SIGTERM)
        try:
            code = child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    pump.join(timeout=30)
    text = b"".join(tail)[-TAIL_BYTES:].decode("utf-8", errors="replace")
    return ToolRun(code, text, stopped["by"])
