"""Why a step failed reaches the user: the tool's exit code, the wrapper's reason, the job's
stderr, and `zbatch logs`, on the local scheduler and on real Slurm, through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ZbatchRun, one_line_error, wrapper_step, write_recipe

ROOT = Path(__file__).resolve().parents[2]
STANDINS = ROOT / "tests" / "standins"
LATTICE = "No suitable lattice could be found"


def standin_env() -> dict[str, str]:
    return {"PATH": f"{STANDINS}:{os.environ['PATH']}"}


def failing_xia2_recipe(tmp_path: Path, workdir: Path) -> Path:
    """examples/xia2-fast_ep.json with its xia2 failing as the real one does, exiting 3."""
    recipe = json.loads((ROOT / "examples" / "xia2-fast_ep.json").read_text())
    step = recipe["1"]["parameters"]
    step["cluster"]["environment"] = {"STANDIN_FAIL": "1", "STANDIN_FAIL_EXIT": "3"}
    step["cluster"]["cpus_per_task"] = 1
    step["workingdir"] = str(workdir)
    return write_recipe(tmp_path / "r.json", recipe)


def dataset(directory: Path) -> str:
    subprocess.run(
        ["python3", str(STANDINS / "make_dataset.py"), str(directory)],
        check=True,
        capture_output=True,
    )
    return f"{sorted(directory.glob('*.cbf'))[0]}:1:5"


def only_job(zbatch: ZbatchRun) -> dict[str, Any]:
    shown = zbatch("status", "--json")
    assert shown.returncode == 0, shown.stderr
    (job,) = json.loads(shown.stdout)["jobs"]
    return dict(job)


def assert_failure_explained(zbatch: ZbatchRun, run: subprocess.CompletedProcess[str]) -> None:
    assert run.returncode == 1, run.stdout + run.stderr
    assert LATTICE in run.stdout  # the run's own account of step 1
    job = only_job(zbatch)
    assert (job["state"], job["exit_code"]) == ("failed", 3), job
    assert LATTICE in job["reason"]
    text = zbatch("status", job["id"]).stdout
    assert f"{job['id']}" in text and "failed exit 3: xia2 failed" in text, text
    # The job's stderr, read through the cluster: the wrapper's log lines and its reason.
    assert "Wrapper xia2 finished (exit code 3)" in text, text
    assert "| zbatch: wrapper xia2 failed (exit code 3): xia2 failed" in text, text
    logs = zbatch("logs", job["id"], "--stderr")
    assert logs.returncode == 0, logs.stderr
    assert "Starting wrapper xia2" in logs.stdout and "Setup complete" in logs.stdout
    assert LATTICE in logs.stdout


def test_tool_exit_code_and_reason_on_the_local_scheduler(
    tmp_path: Path, make_profile: Any, work_root: Path, zbatch: ZbatchRun
) -> None:
    recipe = failing_xia2_recipe(tmp_path, work_root / "step-1")
    images = dataset(work_root / "data")
    run = zbatch(
        "run",
        str(recipe),
        "--profile",
        str(make_profile()),
        "--param",
        f"dataset={images}",
        env=standin_env(),
    )
    assert_failure_explained(zbatch, run)


@pytest.mark.slurm
def test_tool_exit_code_and_reason_on_slurm(tmp_path: Path, zbatch: ZbatchRun) -> None:
    workdir = Path("/tmp/zbatch-cluster-tests") / tmp_path.name
    recipe = failing_xia2_recipe(tmp_path, workdir / "step-1")
    images = dataset(workdir / "data")
    run = zbatch(
        "run",
        str(recipe),
        "--profile",
        "slurm-local",
        "--param",
        f"dataset={images}",
        env=standin_env(),
        timeout=180,
    )
    assert_failure_explained(zbatch, run)


@pytest.mark.slurm
@pytest.mark.ssh
def test_reason_stderr_and_logs_read_over_ssh(tmp_path: Path, zbatch: ZbatchRun) -> None:
    step = wrapper_step(["sh", "-c", "echo over-ssh; echo went-wrong >&2; exit 4"])
    step["parameters"]["workingdir"] = str(Path("/tmp/zbatch-cluster-tests") / tmp_path.name)
    recipe = write_recipe(tmp_path / "r.json", {"1": step, "start": [[1, {}]]})
    done = zbatch("submit", str(recipe), "--profile", "slurm-over-ssh", "--wait", "--json")
    (job,) = json.loads(done.stdout)["jobs"]
    assert (job["state"], job["exit_code"], job["reason"]) == ("failed", 4, "sh exited with code 4")
    shown = zbatch("status", job["id"]).stdout
    assert "failed exit 4: sh exited with code 4" in shown and "    | went-wrong" in shown
    assert zbatch("logs", job["id"], "--stdout").stdout == "over-ssh\n"


def test_missing_tool_is_named_and_wrap_exits_with_the_tools_code(
    tmp_path: Path, make_profile: Any, work_root: Path, zbatch: ZbatchRun
) -> None:
    recipe: dict[str, Any] = {
        "1": wrapper_step(["no-such-tool-zbatch-test"]),
        "2": wrapper_step(["sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 7"]),
        "start": [[1, {}], [2, {}]],
    }
    for node in ("1", "2"):
        recipe[node]["parameters"]["workingdir"] = str(work_root / f"step-{node}")
    run = zbatch(
        "run", str(write_recipe(tmp_path / "r.json", recipe)), "--profile", str(make_profile())
    )
    assert run.returncode == 1
    assert "    stderr: to-stderr" in run.stdout  # the failed job's last words, in run's account
    jobs = {j["step"]: j for j in json.loads(zbatch("status", "--json").stdout)["jobs"]}
    assert jobs[1]["exit_code"] == 1  # the tool never ran: no exit code of its own
    assert "no-such-tool-zbatch-test: command not found" in jobs[1]["reason"]
    assert (jobs[2]["exit_code"], jobs[2]["reason"]) == (7, "sh exited with code 7")
    assert "failed exit 7: sh exited with code 7" in zbatch("status").stdout
    both = zbatch("logs", jobs[2]["id"])
    assert "to-stdout" in both.stdout and "to-stderr" not in both.stdout
    assert "to-stderr" in both.stderr
    assert zbatch("logs", jobs[2]["id"], "--stdout").stdout.strip() == "to-stdout"


def test_logs_follow_prints_until_the_job_ends(
    tmp_path: Path, make_profile: Any, work_root: Path, zbatch: ZbatchRun
) -> None:
    step = wrapper_step(["sh", "-c", "echo first; sleep 2; echo second"])
    step["parameters"]["workingdir"] = str(work_root / "step")
    recipe = write_recipe(tmp_path / "r.json", {"1": step, "start": [[1, {}]]})
    submitted = zbatch("submit", str(recipe), "--profile", str(make_profile()), "--json")
    assert submitted.returncode == 0, submitted.stderr
    (job,) = json.loads(submitted.stdout)["jobs"]
    followed = zbatch("logs", job["id"], "--follow", "--stdout")
    assert followed.returncode == 0, followed.stderr
    assert followed.stdout.splitlines() == ["first", "second"]
    assert only_job(zbatch)["state"] == "succeeded"


def test_wrap_dry_run_prints_text_unless_json_is_asked(
    tmp_path: Path, make_profile: Any, work_root: Path, zbatch: ZbatchRun
) -> None:
    step = wrapper_step(["printf", "%s", "a b"])
    step["parameters"]["workingdir"] = str(work_root / "step")
    recipe = write_recipe(tmp_path / "r.json", {"1": step, "start": [[1, {}]]})
    assert zbatch("run", str(recipe), "--profile", str(make_profile())).returncode == 0
    (message,) = (work_root / "step").glob("*.recipewrap.json")
    args = ("wrap", "--wrap", "generic", "--recipewrapper", str(message), "--dry-run")
    text = zbatch(*args)
    assert text.returncode == 0, text.stderr
    workdir_line, command_line = text.stdout.splitlines()
    assert workdir_line.startswith("working directory: /")
    assert command_line == "command: printf %s 'a b'"
    assert zbatch("wrap", "-v", *args[1:]).stdout == text.stdout  # zocalo.wrap's -v is taken
    assert "--json goes with --dry-run" in one_line_error(zbatch(*args[:-1], "--json"))
    data = json.loads(zbatch(*args, "--json").stdout)
    assert data == {
        "schema": "zbatch.wrap-dry-run/1",
        "cwd": workdir_line.removeprefix("working directory: "),
        "argv": ["printf", "%s", "a b"],
    }
