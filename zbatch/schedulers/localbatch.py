"""A tiny batch system for one machine: the `local` scheduler's submit/status/cancel commands.

`python -m zbatch.schedulers.localbatch submit --state-dir D --slots N SCRIPT` starts a
detached runner that waits for one of N slot locks, runs the script in its own process group,
enforces the `# zbatch-local: time-limit=` directive and records the outcome in
D/jobs/<id>.json. Because it
is driven by commands like sbatch, the local scheduler goes through the same connection and
tracking code as Slurm and SGE (and works over SSH too).

The state folder and everything in it are private (folders 0700, files 0600), and no file is
opened through a symbolic link planted at its name (`securefiles`).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from zbatch.errors import ZbatchError
from zbatch.model import safejson
from zbatch.model.jobenv import scrubbed_environment
from zbatch.paths import PRIVATE_FILE, atomic_write, make_dirs, open_append

DIRECTIVE = "# zbatch-local: "
KILL_GRACE_S = 5.0
# Job records are small: anything bigger (or not an object) is not one, and reads as missing.
MAX_RECORD_BYTES = 1024 * 1024
STATES = frozenset({"PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "LOST"})


def read_directives(script: Path) -> dict[str, str]:
    directives: dict[str, str] = {}
    with open(script, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if line.startswith(DIRECTIVE):
                key, _, value = line[len(DIRECTIVE) :].strip().partition("=")
                directives[key] = value
            elif line.strip() and not line.startswith("#"):
                break
    return directives


def _open_private(path: Path, mode: str) -> Any:
    """open(path, mode) for "a"/"a+": created 0600, never through a symbolic link."""
    flags = os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
    flags |= os.O_RDWR if "+" in mode else os.O_WRONLY
    return os.fdopen(os.open(path, flags, PRIVATE_FILE), mode)


def _job_file(state_dir: Path, job_id: str) -> Path:
    return state_dir / "jobs" / f"{job_id}.json"


def write_state(state_dir: Path, job_id: str, **fields: Any) -> None:
    path = _job_file(state_dir, job_id)
    data = read_state(state_dir, job_id) or {"id": job_id}
    data.update(fields, updated=time.time())
    atomic_write(path, json.dumps(data))


def read_state(state_dir: Path, job_id: str) -> dict[str, Any] | None:
    """A job's record, or None when it is missing or not a record (size, depth, type)."""
    try:
        data = safejson.load_file(
            _job_file(state_dir, job_id), f"localbatch job {job_id}", max_bytes=MAX_RECORD_BYTES
        )
    except ZbatchError:
        return None
    return data if isinstance(data, dict) else None


def _small_int(value: object) -> int | None:
    """A whole number a record may hold (pid, exit code); None for anything else."""
    if isinstance(value, int) and not isinstance(value, bool) and -(2**31) <= value < 2**31:
        return value
    return None


def _pid(value: object) -> int | None:
    """A process id from a record: positive (kill(-1) would signal every process we own)."""
    pid = _small_int(value)
    return pid if pid is not None and pid > 1 else None


def next_id(state_dir: Path) -> str:
    make_dirs(state_dir / "jobs")
    with _open_private(state_dir / "seq", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        current = int(handle.read().strip() or "0") + 1
        handle.seek(0)
        handle.truncate()
        handle.write(str(current))
    return str(current)


def submit(state_dir: Path, slots: int, script: Path) -> str:
    if not script.is_file():
        raise SystemExit(f"localbatch: script {script} does not exist")
    job_id = next_id(state_dir)
    directives = read_directives(script)
    write_state(
        state_dir,
        job_id,
        state="PENDING",
        script=str(script),
        submitted=time.time(),
        marker=directives.get("marker", ""),
    )
    out = directives.get("output", os.devnull)
    err = directives.get("error", os.devnull)
    # The job's folder may be shared: a link planted at the output's name is refused.
    try:
        out_fd, err_fd = open_append(out), open_append(err)
    except OSError as exc:
        raise SystemExit(f"localbatch: cannot open {exc.filename}: {exc.strerror}") from None
    with os.fdopen(out_fd, "ab") as stdout, os.fdopen(err_fd, "ab") as stderr:
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "zbatch.schedulers.localbatch",
                "run",
                "--state-dir",
                str(state_dir),
                "--slots",
                str(slots),
                job_id,
            ],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
            close_fds=True,
            env=scrubbed_environment(),
        )
    return job_id


class _Runner:
    def __init__(self, state_dir: Path, slots: int, job_id: str) -> None:
        self.state_dir, self.slots, self.job_id = state_dir, slots, job_id
        self.child: subprocess.Popen[bytes] | None = None
        self.cancelled = False

    def on_term(self, _signum: int, _frame: object) -> None:
        self.cancelled = True
        if self.child is not None:
            os.killpg(self.child.pid, signal.SIGTERM)

    def acquire_slot(self) -> Any:
        slot_dir = self.state_dir / "slots"
        make_dirs(slot_dir)
        while not self.cancelled:
            for index in range(self.slots):
                handle = _open_private(slot_dir / f"slot-{index}.lock", "a")  # held for the job
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return handle
                except BlockingIOError:
                    handle.close()
            time.sleep(0.05)
        return None

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.on_term)
        state = read_state(self.state_dir, self.job_id) or {}
        script_path = state.get("script")
        script = Path(script_path if isinstance(script_path, str) else "")
        slot = self.acquire_slot()
        if slot is None or self.cancelled:
            write_state(self.state_dir, self.job_id, state="CANCELLED", exit_code=None)
            return 0
        directives = read_directives(script)
        limit = float(directives["time-limit"]) if "time-limit" in directives else None
        self.child = subprocess.Popen(
            ["/bin/bash", str(script)],
            cwd=directives.get("workdir") or None,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            # Whoever ran `localbatch submit`, the job gets the allow-listed variables only.
            env=scrubbed_environment(ZBATCH_JOB_ID=self.job_id),
        )
        write_state(
            self.state_dir, self.job_id, state="RUNNING", pid=self.child.pid, started=time.time()
        )
        timed_out = False
        try:
            code = self.child.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            timed_out = True
            code = self._stop()
        final = (
            "TIMEOUT"
            if timed_out
            else "CANCELLED"
            if self.cancelled
            else ("COMPLETED" if code == 0 else "FAILED")
        )
        write_state(self.state_dir, self.job_id, state=final, exit_code=code, ended=time.time())
        return 0

    def _stop(self) -> int:
        if self.child is None:  # stopped before the script started: nothing to kill
            return 143
        os.killpg(self.child.pid, signal.SIGTERM)
        try:
            return self.child.wait(timeout=KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.child.pid, signal.SIGKILL)
            return self.child.wait()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def status(state_dir: Path, job_ids: list[str]) -> list[str]:
    lines = []
    for job_id in job_ids:
        data = read_state(state_dir, job_id)
        if data is None:
            continue
        state = data.get("state")
        state = state if isinstance(state, str) and state in STATES else "UNKNOWN"
        runner_pid = _pid(data.get("runner"))
        if state in ("PENDING", "RUNNING") and runner_pid and not _alive(runner_pid):
            state = "LOST"  # the runner died without recording an outcome
        code = _small_int(data.get("exit_code"))
        lines.append(f"{job_id}|{state}|{'' if code is None else code}")
    return lines


def find(state_dir: Path) -> list[str]:
    """`id|marker` for every job that carries a marker."""
    lines = []
    for path in sorted((state_dir / "jobs").glob("*.json")):
        data = read_state(state_dir, path.stem)
        marker = data.get("marker") if data else None
        if isinstance(marker, str) and marker and "\n" not in marker and "|" not in marker:
            lines.append(f"{path.stem}|{marker}")
    return lines


def cancel(state_dir: Path, job_ids: list[str]) -> int:
    failures = 0
    for job_id in job_ids:
        data = read_state(state_dir, job_id)
        if data is None:
            print(f"localbatch: unknown job {job_id}", file=sys.stderr)
            failures += 1
            continue
        pid = _pid(data.get("runner"))
        if data.get("state") in ("PENDING", "RUNNING") and pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="localbatch")
    parser.add_argument("action", choices=["submit", "run", "status", "cancel", "find"])
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("args", nargs="*")
    opts = parser.parse_intermixed_args(argv)
    state_dir: Path = opts.state_dir
    make_dirs(state_dir)
    if opts.action == "submit":
        print(submit(state_dir, opts.slots, Path(opts.args[0]).resolve()))
        return 0
    if opts.action == "run":
        write_state(state_dir, opts.args[0], runner=os.getpid())
        return _Runner(state_dir, opts.slots, opts.args[0]).run()
    if opts.action in ("status", "find"):
        lines = status(state_dir, opts.args) if opts.action == "status" else find(state_dir)
        print("\n".join(lines))
        return 0
    return cancel(state_dir, opts.args)


if __name__ == "__main__":
    sys.exit(main())
