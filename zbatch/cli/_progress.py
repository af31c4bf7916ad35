"""How `zbatch run` and `zbatch submit --wait` show progress: a line per state change, or, on
a terminal, one line per step rewritten in place (plain ANSI, no dependency)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from zbatch.service.progress import Change, ProgressBoard, StepProgress

_UP = "\x1b[{}A"  # cursor up N lines
_CLEAR = "\r\x1b[2K"  # to the start of the line, erase it


def _step_line(step: StepProgress) -> str:
    at = time.strftime("%H:%M:%S", time.localtime(step.since))
    job = f"job {step.job_id}" if step.job_id else "no job yet"
    return f"  step {step.pointer:<3} {job:<16} {step.word:<12} since {at}"


class ProgressView:
    """Prints the runner's messages and its board's changes to `out`."""

    def __init__(self, out: TextIO | None = None, live: bool | None = None) -> None:
        self.out = out or sys.stdout
        self.live = self.out.isatty() if live is None else live
        self.drawn = 0  # lines of the live block now on screen
        self.board: ProgressBoard | None = None

    def echo(self, text: str) -> None:
        self._erase()
        self.out.write(text + "\n")
        self._draw_last()

    def changed(self, board: ProgressBoard, change: Change) -> None:
        if not self.live:
            self.out.write(change.line() + "\n")
            self.out.flush()
            return
        self.board = board
        self._erase()
        self._draw_last()

    def close(self) -> None:
        """Leave the last state of every step on screen, below which the summary follows."""
        self.drawn = 0
        self.out.flush()

    def _erase(self) -> None:
        if self.drawn:
            cleared = "".join(_CLEAR + "\n" for _ in range(self.drawn))
            self.out.write(_UP.format(self.drawn) + cleared + _UP.format(self.drawn))
        self.drawn = 0

    def _draw_last(self) -> None:
        if self.live and self.board is not None:
            lines = [_step_line(step) for step in self.board.ordered()]
            self.out.write("".join(_CLEAR + line + "\n" for line in lines))
            self.drawn = len(lines)
        self.out.flush()
