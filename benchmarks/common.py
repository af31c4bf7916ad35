"""Shared pieces of the benchmarks: timing, tables, step messages, waiting for queues."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zbatch.model.message import StepMessage, start_messages
from zbatch.model.profiles import Profile
from zbatch.model.recipe import Recipe

SGE_ENV = Path("/var/lib/zbatch-services/sge.env")


@dataclass
class Row:
    method: str
    jobs: int
    seconds: float
    note: str = ""
    baseline: float | None = None  # raw-loop jobs/s measured just before this method
    spread: tuple[float, float] | None = None  # lowest and highest ratio over the rounds
    rounds: int = 1

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds if self.seconds > 0 else 0.0


def timed(method: str, jobs: int, action: Callable[[], Any], note: str = "") -> Row:
    started = time.perf_counter()
    action()
    return Row(method, jobs, time.perf_counter() - started, note)


def table(rows: list[Row], baseline: Row) -> str:
    """Each ratio is against the raw loop run right before that method (the scheduler's speed
    drifts on a shared 2-core machine); the first row is the first raw loop."""
    lines = [
        "| method | jobs | jobs/s | raw loop jobs/s (just before) | ratio to raw loop | note |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        raw = row.baseline or baseline.rate
        ratio = row.rate / raw if raw else 0.0
        note = row.note
        if row.spread is not None:
            low, high = row.spread
            note = f"{note}; median of {row.rounds} rounds ({low:.2f}x-{high:.2f}x)".lstrip("; ")
        lines.append(
            f"| {row.method} | {row.jobs} | {row.rate:.1f} | {raw:.1f} | {ratio:.2f}x | {note} |"
        )
    return "\n".join(lines)


def paired(
    raw: Callable[[], Row],
    method: Callable[[], Row],
    drain: Callable[[], None],
    rounds: int = 1,
) -> Row:
    """Run the raw loop, then the method, so the method's ratio uses a baseline of its moment;
    with several rounds, the round with the median ratio is shown, with the range."""
    measured: list[tuple[float, Row]] = []
    for _ in range(rounds):
        baseline = raw()
        drain()
        row = method()
        drain()
        row.baseline = baseline.rate
        measured.append((row.rate / baseline.rate if baseline.rate else 0.0, row))
    measured.sort(key=lambda pair: pair[0])
    row = measured[len(measured) // 2][1]
    if rounds > 1:
        row.spread, row.rounds = (measured[0][0], measured[-1][0]), rounds
    return row


def step_messages(count: int, workdir: Path, command: list[str] | None = None) -> list[StepMessage]:
    """`count` independent one-step recipes running `command` (default: `true`)."""
    node = {
        "queue": "cluster.submission",
        "parameters": {
            "cluster": {"commands": [" ".join(command or ["true"])], "time_limit": "0:05:00"},
            "workingdir": str(workdir),
        },
    }
    recipe = Recipe.from_json({"1": node, "start": [[1, {}]]})
    return [start_messages(recipe)[0] for _ in range(count)]


def held(profile: Profile) -> Profile:
    """The profile with jobs submitted on hold: running jobs would compete for the CPU the
    submissions are measured on (2 cores here), so every method submits held jobs."""
    hold = "--hold" if profile.scheduler == "slurm" else "-h"
    return profile.model_copy(update={"extra_directives": [*profile.extra_directives, hold]})


def release_all(scheduler: str) -> None:
    """Remove the held jobs a method left, and wait until the queue is empty again."""
    if scheduler == "slurm":
        subprocess.run(["scancel", "-u", os.environ.get("USER", "root")], check=False)
        wait_for_empty(["squeue", "-h", "-o", "%i"])
    else:
        subprocess.run(
            ["qdel", "-u", os.environ.get("USER", "root")], capture_output=True, check=False
        )
        wait_for_empty(["qstat", "-u", "*"])


def wait_for_empty(argv: list[str], timeout: float = 600) -> None:
    """Let the previous method's jobs drain so each method meets the same empty queue."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
        if not out.strip():
            return
        time.sleep(0.5)


def ensure_sge_env() -> None:
    """DRMAA reads its settings when the library loads: re-exec with the SGE environment."""
    if os.environ.get("DRMAA_LIBRARY_PATH") or not SGE_ENV.exists():
        return
    env = dict(os.environ)
    for line in SGE_ENV.read_text().splitlines():
        line = line.removeprefix("export ").strip()
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value.strip("'\"")
    os.execve(sys.executable, [sys.executable, *sys.argv], env)  # noqa: S606 - re-exec ourselves
