"""The person at the terminal: `zbatch run` / `submit --wait` show progress and leave no jobs
behind them, on the local scheduler and on real Slurm; `--help`'s example is true."""

from __future__ import annotations

import os
import re
import select
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import ZbatchRun, result_records, wrapper_step, write_recipe
from zbatch.service.ledger import Ledger

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
LOCAL_JOB = re.compile(r"interrupted: cancelled step 1 \((\w+) job (\S+)\)")


class Terminal:
    """`zbatch` run in a pseudo-terminal, as a user at a terminal runs it."""

    def __init__(self, *args: str) -> None:
        pid, fd = os.forkpty()
        if pid == 0:  # the child: becomes zbatch, with the pty as its terminal
            os.execv(sys.executable, [sys.executable, "-m", "zbatch", *args])  # noqa: S606
        self.pid, self.fd = pid, fd
        self.output = b""

    def read_until(self, found: Callable[[str], bool], timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while not found(self.text) and time.monotonic() < deadline:
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if ready and not self._read():
                break
        assert found(self.text), self.text
        return self.text

    def _read(self) -> bool:
        try:
            chunk = os.read(self.fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            return False
        self.output += chunk
        return bool(chunk)

    @property
    def text(self) -> str:
        return self.output.decode(errors="replace")

    def ctrl_c(self) -> None:
        os.write(self.fd, b"\x03")  # the terminal sends SIGINT to its foreground group

    def wait(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                while self._read():
                    pass
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
            select.select([self.fd], [], [], 0.2)
            self._read()
        os.kill(self.pid, signal.SIGKILL)
        raise AssertionError(f"zbatch did not end: {self.text}")


def sleeper(seconds: int) -> dict[str, Any]:
    return {"1": wrapper_step(["sleep", str(seconds)]), "start": [[1, {}]]}


def job_state(job_id: str) -> str:
    """As the ledger recorded it (no status query settles it here)."""
    (entry,) = Ledger().find(ids=[job_id])
    return entry.state.value


def test_help_example_does_what_it_says(tmp_path: Path, zbatch: ZbatchRun) -> None:
    shown = zbatch("run", "--help").stdout
    example = re.search(r"^\s+zbatch run (examples/hello\.json .*--param who=(\S+))$", shown, re.M)
    assert example is not None, shown
    done = subprocess.run(
        [sys.executable, "-m", "zbatch", "run", *shlex.split(example.group(1))],
        cwd=REPO,
        env={**os.environ, "HOME": str(tmp_path)},  # local-commands runs under ~/zbatch-runs
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == ""
    workdir = re.search(r"step 2 submitted as \w+ job \S+ \(workdir (\S+)\)", done.stdout)
    assert workdir is not None, done.stdout
    (record,) = result_records(Path(workdir.group(1)))
    assert record["summary"]["stdout"] == f"step 2 received: Hello from {example.group(2)}\n"


def test_progress_lines_with_timestamps_when_not_a_terminal(
    tmp_path: Path, make_profile: Any, zbatch: ZbatchRun
) -> None:
    recipe = write_recipe(tmp_path / "r.json", sleeper(3))
    done = zbatch("run", str(recipe), "-p", str(make_profile()))
    assert done.returncode == 0, done.stdout + done.stderr
    stamp = r"^\d\d:\d\d:\d\d step 1 \(job \S+\): "
    assert re.search(stamp + r"queued$", done.stdout, re.M), done.stdout
    assert re.search(stamp + r"queued -> running$", done.stdout, re.M), done.stdout
    assert re.search(stamp + r"running -> succeeded$", done.stdout, re.M), done.stdout
    assert "\x1b[" not in done.stdout


def test_live_view_in_a_terminal(tmp_path: Path, make_profile: Any) -> None:
    recipe = write_recipe(tmp_path / "r.json", sleeper(3))
    term = Terminal("run", str(recipe), "-p", str(make_profile()))
    shown = term.read_until(lambda text: "step(s) succeeded" in text)
    assert term.wait() == 0, shown
    # One line per step, rewritten in place: cursor up, erase, redraw.
    assert re.search(r"\x1b\[1A", shown) and "\x1b[2K" in shown, shown
    assert re.search(r"step 1 +job \S+ +running +since \d\d:\d\d:\d\d", shown), shown
    assert re.search(r"step 1 +job \S+ +succeeded +since", shown), shown
    assert "queued -> running" not in shown  # the plain lines are for pipes and files


def test_ctrl_c_cancels_the_runs_local_job(tmp_path: Path, make_profile: Any) -> None:
    recipe = write_recipe(tmp_path / "r.json", sleeper(60))
    term = Terminal("run", str(recipe), "-p", str(make_profile()))
    term.read_until(lambda text: re.search(r"step 1 +job \S+ +running", text) is not None)
    term.ctrl_c()
    assert term.wait() == 130, term.text
    found = LOCAL_JOB.search(term.text)
    assert found is not None, term.text
    assert "Aborted!" not in term.text
    assert job_state(found.group(2)) == "cancelled"


def test_timeout_cancels_and_says_which(
    tmp_path: Path, make_profile: Any, zbatch: ZbatchRun
) -> None:
    recipe = write_recipe(tmp_path / "r.json", sleeper(60))
    done = zbatch("run", str(recipe), "-p", str(make_profile()), "--timeout", "3")
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.startswith("zbatch: error: recipe run ") and "within 3 s" in done.stderr
    found = re.search(r"timed out: cancelled step 1 \(local job (\S+)\)", done.stdout)
    assert found is not None, done.stdout
    assert job_state(found.group(1)) == "cancelled"


def test_keep_running_leaves_the_job_and_says_so(
    tmp_path: Path, make_profile: Any, zbatch: ZbatchRun
) -> None:
    recipe = write_recipe(tmp_path / "r.json", sleeper(60))
    done = zbatch("run", str(recipe), "-p", str(make_profile()), "--timeout", "3", "--keep-running")
    assert done.returncode == 1, done.stdout + done.stderr
    found = re.search(r"timed out: left running step 1 \(local job (\S+)\)", done.stdout)
    assert found is not None, done.stdout
    try:
        assert job_state(found.group(1)) == "running"
    finally:
        zbatch("cancel", found.group(1))


@pytest.mark.slurm
def test_ctrl_c_leaves_nothing_in_squeue(tmp_path: Path, work_root: Path) -> None:
    profile = tmp_path / "slurm.yaml"
    settings = yaml.safe_load((REPO / "site-configs" / "slurm-local.yaml").read_text())
    profile.write_text(yaml.safe_dump({**settings, "workdir_root": str(work_root)}))
    recipe = write_recipe(tmp_path / "r.json", sleeper(60))
    term = Terminal("run", str(recipe), "-p", str(profile))
    term.read_until(lambda text: re.search(r"step 1 +job \S+ +running", text) is not None, 120)
    term.ctrl_c()
    assert term.wait(90) == 130, term.text
    found = LOCAL_JOB.search(term.text)
    assert found is not None and found.group(1) == "slurm", term.text
    job_id = found.group(2)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        listed = subprocess.run(
            ["squeue", "-h", "-j", job_id], capture_output=True, text=True, check=False
        )
        if not listed.stdout.strip():
            break
        time.sleep(1)
    assert listed.stdout.strip() == "", listed.stdout


def test_submit_wait_drives_the_whole_recipe(make_profile: Any, zbatch: ZbatchRun) -> None:
    done = zbatch(
        "submit", str(EXAMPLES / "hello.json"), "-p", str(make_profile()), "-s", "who=me", "--wait"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"^  step 1 succeeded: result ", done.stdout, re.M), done.stdout
    assert re.search(r"^  step 2 succeeded: result ", done.stdout, re.M), done.stdout
    assert "running -> succeeded" in done.stdout


def test_submit_says_which_steps_wait_for_a_dispatcher(
    make_profile: Any, zbatch: ZbatchRun
) -> None:
    done = zbatch("submit", str(EXAMPLES / "hello.json"), "-p", str(make_profile()), "-s", "who=x")
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(
        r"^step 2 waits for a dispatcher on queue 'cluster.submission' of \S+queue.sqlite",
        done.stderr,
        re.M,
    ), done.stderr


def test_ctrl_c_on_submit_wait_leaves_the_jobs_and_says_so(
    tmp_path: Path, make_profile: Any, zbatch: ZbatchRun
) -> None:
    """Submitted jobs are meant to outlive the command: only the waiting stops."""
    recipe = write_recipe(tmp_path / "r.json", sleeper(60))
    term = Terminal("submit", str(recipe), "-p", str(make_profile()), "--wait")
    term.read_until(lambda text: re.search(r"step 1 +job \S+ +running", text) is not None)
    term.ctrl_c()
    assert term.wait() == 130, term.text
    found = re.search(r"interrupted: left running step 1 \(local job (\S+)\)", term.text)
    assert found is not None, term.text
    try:
        assert job_state(found.group(1)) == "running"
    finally:
        zbatch("cancel", found.group(1))
