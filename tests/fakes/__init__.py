"""Fake Slurm and Grid Engine clusters for fast tests of the real submit -> poll path.

As psij-python does, the unit tier drives zbatch's real clusters, tracker and dispatcher
through fake scheduler executables (fakesched.py, linked as sbatch, squeue, ... in bin/),
so a change to the argv zbatch builds or to how it reads the output fails here in seconds;
the real-service tests (tests/integration) stay the proof against real schedulers.

`install()` makes a cluster in a test's folder: its commands and the JSON state beside
them, first on PATH (zbatch passes scheduler commands only allow-listed variables, but PATH
is one of them, so no variable is needed to find the state). A test moves jobs on with the
methods of `FakeScheduler` (start, finish, kill, time_out, vanish, purge, fail_next); the
commands record every call, so a test can count them (`calls`).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import fakesched
from tests.helpers import wrapper_step
from zbatch.clusters import Cluster
from zbatch.model.message import StepMessage, start_messages
from zbatch.model.profiles import Profile, parse_profile
from zbatch.model.recipe import Recipe

FAKES = Path(__file__).resolve().parent
SHIMS = FAKES / "bin"
TOOLS = {"slurm": fakesched.SLURM_TOOLS, "sge": fakesched.SGE_TOOLS}
CAPTURED = FAKES.parent / "data" / "scheduler-output"
# Queues of the recipes built by step_message().
SUBMITTED, FAILED, DONE = "submitted", "failed", "done"


class FakeScheduler:
    """One fake cluster: its commands in `bin`, its state beside them."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin = bin_dir

    @property
    def scheduler(self) -> str:
        return str(self.state()["scheduler"])

    def state(self) -> dict[str, Any]:
        with fakesched.locked(self.bin, write=False) as state:
            return state

    def jobs(self) -> dict[str, dict[str, Any]]:
        jobs: dict[str, dict[str, Any]] = self.state()["jobs"]
        return jobs

    def job(self, job_id: str) -> dict[str, Any]:
        return self.jobs()[job_id]

    def ids(self) -> list[str]:
        """Every job id ever given out, oldest first."""
        return sorted(self.jobs(), key=int)

    def calls(self, tool: str | None = None) -> list[list[str]]:
        """The argv of every call of `tool` (of any tool when None), in order."""
        return [c["argv"] for c in self.state()["calls"] if tool in (None, c["tool"])]

    def _change(self, action: Any, *args: Any) -> None:
        try:
            with fakesched.locked(self.bin) as state:
                action(state, *args)
        except fakesched.Refused as exc:
            raise AssertionError(f"fake {self.scheduler}: {exc}") from None

    def start(self, job_id: str) -> None:
        """The scheduler starts the pending job (SGE: Eqw if its working folder is missing)."""
        self._change(fakesched.start_job, job_id)

    def finish(self, job_id: str, exit_code: int | None = None) -> int:
        """The running job's script runs to its end, with bash, as the node would run it:
        the scheduler's copy of the script, its folder, output files and environment
        (SLURM_JOB_ID / JOB_ID), so its EXIT trap writes the real exit record. Returns the
        script's exit status (negative: killed by that signal); `exit_code`, when given, is
        what the test expects the script to return, checked here."""
        try:
            with fakesched.locked(self.bin) as state:
                how = fakesched.launch(state, self.bin, job_id)
        except fakesched.Refused as exc:
            raise AssertionError(f"fake {self.scheduler}: {exc}") from None
        with open(how["stdout"], "w") as out:
            if how["note"]:
                out.write(how["note"])
                out.flush()
            err = out if how["stderr"] == how["stdout"] else open(how["stderr"], "w")  # noqa: SIM115
            try:
                done = subprocess.run(
                    how["argv"],
                    cwd=how["cwd"],
                    env=how["env"],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    timeout=60,
                    check=False,
                )
            finally:
                if err is not out:
                    err.close()
        self._change(fakesched.record_exit, job_id, done.returncode)
        if exit_code is not None:
            assert done.returncode == exit_code, (
                f"job {job_id}'s script exited {done.returncode}, the test expected {exit_code}"
            )
        return done.returncode

    def run(self, job_id: str, exit_code: int | None = None) -> int:
        """start() then finish()."""
        self.start(job_id)
        return self.finish(job_id, exit_code)

    def kill(self, job_id: str, signal: int = 9) -> None:
        """The running job's script is killed by `signal` before its trap can run."""
        self._change(fakesched.kill_job, job_id, signal)

    def time_out(self, job_id: str) -> None:
        """The running job reaches its time limit and the scheduler kills it."""
        self._change(fakesched.time_out_job, job_id)

    def vanish(self, job_id: str) -> None:
        """The scheduler forgets the job: no queue entry, no accounting, no exit record."""
        self._change(fakesched.vanish_job, job_id)

    def purge(self, job_id: str) -> None:
        """Slurm forgets an ended job (MinJobAge); Grid Engine keeps its accounting."""
        self._change(fakesched.purge_job, job_id)

    def fail_next(
        self, tool: str, stderr: str = "", rc: int = 1, stdout: str = "", after: bool = False
    ) -> None:
        """The next call of `tool` prints this and exits `rc`, as a failing scheduler would;
        `after`: the call is carried out first (the job is queued, say) and only its answer
        is lost, as when the controller times out after accepting a submission."""
        canned = {"stderr": stderr, "rc": rc, "stdout": stdout, "after": after}
        self._change(lambda state: state["fail_next"].setdefault(tool, []).append(canned))


@dataclass(frozen=True)
class Running:
    """A job on a fake cluster and the zbatch cluster that submitted it: what tables of
    "what happens to it next" (Outcome) act on."""

    fake: FakeScheduler
    cluster: Cluster
    job_id: str


Outcome = Callable[[Running], object]


@functools.lru_cache(maxsize=1)
def _python3() -> str | None:
    """The interpreter `#!/usr/bin/env python3` runs here, found once."""
    found = shutil.which("python3")
    if found is None:
        return None
    done = subprocess.run(
        [found, "-c", "import sys; print(sys.executable)"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    path = done.stdout.strip()
    return path if done.returncode == 0 and path and " " not in path else None


def install(
    root: Path,
    scheduler: str,
    monkeypatch: pytest.MonkeyPatch,
    first_id: int = 100,
    shims: bool = False,
) -> FakeScheduler:
    """A fresh fake `scheduler` ("slurm" or "sge") cluster in `root`, first on PATH.

    Its commands are links to bin/ (`shims`), or by default small scripts that run the
    same program with the interpreter those links' `#!/usr/bin/env python3` finds, given
    -S: a version manager's shim and site-packages (.pth files) cost a scheduler call
    more than the fake's own work, in every poll of every test.
    """
    bin_dir = root / "bin"
    bin_dir.mkdir(parents=True)
    python = None if shims else _python3()
    for tool in TOOLS[scheduler]:
        command = bin_dir / tool
        if python is None:
            command.symlink_to(SHIMS / tool)
        else:
            command.write_text(
                f"#!{python} -S\nimport sys\nsys.path.insert(0, {str(FAKES)!r})\n"
                "import fakesched\nsys.exit(fakesched.main(sys.argv))\n"
            )
            command.chmod(0o755)
    fakesched.create(bin_dir, scheduler, first_id)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    return FakeScheduler(bin_dir)


def captured(scheduler: str, name: str) -> str:
    """A captured real output (tests/data/scheduler-output/<scheduler>/<name>)."""
    return (CAPTURED / scheduler / name).read_text()


def fake_profile(scheduler: str, workdir_root: Path, **fields: Any) -> Profile:
    """A profile for the fake cluster: local commands, recipe commands allowed, fast polls."""
    workdir_root.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {
        "name": f"fake-{scheduler}",
        "scheduler": scheduler,
        "connection": {"type": "local", "command_timeout_s": 30},
        "defaults": {
            "partition": "debug" if scheduler == "slurm" else "all.q",
            "memory": 256,
            "time_limit": "0:30:00",
        },
        "workdir_root": str(workdir_root),
        "allow_commands": True,
        "poll_interval_s": 0.05,
    }
    data.update(fields)
    return parse_profile(data, f"{data['name']}.yaml")


def step_message(
    workdir: Path,
    commands: list[str] | None = None,
    wrapper_command: list[str] | None = None,
    **cluster: Any,
) -> StepMessage:
    """The first message of a recipe whose one step runs shell `commands` (no wrapper) or
    the generic wrapper on `wrapper_command`; its outputs go to SUBMITTED, FAILED, DONE."""
    step = wrapper_step(
        wrapper_command or ["true"], output={"job_submitted": 2, "failure": 3, "success": 4}
    )
    if commands is not None:
        del step["parameters"]["wrapper"]
        step["parameters"]["cluster"]["commands"] = commands
    step["parameters"]["cluster"].update(cluster)
    step["parameters"]["workingdir"] = str(workdir)
    recipe = Recipe.from_json(
        {
            "1": step,
            "2": {"queue": SUBMITTED},
            "3": {"queue": FAILED},
            "4": {"queue": DONE},
            "start": [[1, {"workdir": str(workdir)}]],
        }
    )
    return start_messages(recipe)[0]
