"""`zbatch run` / `submit` / `status` / `cancel` end to end on the local scheduler."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tests.helpers import ZbatchRun, queue_bodies, result_records, wrapper_step, write_recipe

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_hello_example_chains_two_steps(
    make_profile: Any, work_root: Path, zbatch: ZbatchRun
) -> None:
    result = zbatch(
        "run",
        str(EXAMPLES / "hello.json"),
        "--profile",
        str(make_profile()),
        "--param",
        "who=the test-suite",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 step(s) succeeded, 0 failed" in result.stdout
    assert "step 1 succeeded" in result.stdout and "step 2 succeeded" in result.stdout
    step2 = next(r for r in result_records(work_root) if r["command"][0] == "printf")
    assert step2["command"][2] == "Hello from the test-suite\n"
    assert step2["summary"]["stdout"] == "step 2 received: Hello from the test-suite\n"


def test_failure_follows_the_failure_output(
    tmp_path: Path, make_profile: Any, work_root: Path, zbatch: ZbatchRun
) -> None:
    recipe = {
        "1": wrapper_step(["sh", "-c", "exit 3"], output={"success": 2, "failure": 3}),
        "2": {"queue": "never"},
        "3": {"queue": "failures"},
        "start": [[1, {}]],
    }
    result = zbatch(
        "run", str(write_recipe(tmp_path / "r.json", recipe)), "--profile", str(make_profile())
    )
    assert result.returncode == 1
    assert "step 1 failed (sh exited with code 3)" in result.stdout
    assert "0 step(s) succeeded, 1 failed" in result.stdout
    (failure,) = queue_bodies(work_root, "failures")
    assert failure["payload"] == "sh exited with code 3"
    assert failure["recipe-path"] == [1] and failure["recipe-pointer"] == 3
    assert queue_bodies(work_root, "never") == []


def test_hostile_argument_reaches_the_tool_literally(
    tmp_path: Path, make_profile: Any, work_root: Path, zbatch: ZbatchRun
) -> None:
    canary = tmp_path / "canary"
    hostile = f"$(touch {canary}); `touch {canary}` && touch {canary}\nrm -rf /"
    recipe = {
        "1": wrapper_step(["printf", "%s", "{payload[text]}"]),
        "start": [[1, {"text": hostile}]],
    }
    result = zbatch(
        "run", str(write_recipe(tmp_path / "r.json", recipe)), "--profile", str(make_profile())
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (record,) = result_records(work_root)
    assert record["summary"]["stdout"] == hostile
    assert not canary.exists()


def test_time_limit_is_enforced(
    tmp_path: Path, make_profile: Any, work_root: Path, zbatch: ZbatchRun
) -> None:
    step = wrapper_step(["sleep", "60"], output={"failure": 2})
    step["parameters"]["cluster"]["time_limit"] = 2
    recipe = {"1": step, "2": {"queue": "failures"}, "start": [[1, {}]]}
    started = time.monotonic()
    result = zbatch(
        "run", str(write_recipe(tmp_path / "r.json", recipe)), "--profile", str(make_profile())
    )
    assert time.monotonic() - started < 30
    assert result.returncode == 1
    assert "step 1 timeout" in result.stdout
    (failure,) = queue_bodies(work_root, "failures")
    assert failure["payload"] == "stopped by SIGTERM"


def test_slots_limit_concurrency(
    tmp_path: Path, make_profile: Any, work_root: Path, zbatch: ZbatchRun
) -> None:
    recipe = {
        "1": wrapper_step(["sleep", "1"]),
        "2": wrapper_step(["sleep", "1"]),
        "start": [[1, {}], [2, {}]],
    }
    profile = make_profile(local={"slots": 1, "state_dir": str(tmp_path / "lb")})
    result = zbatch(
        "run", str(write_recipe(tmp_path / "r.json", recipe)), "--profile", str(profile)
    )
    assert result.returncode == 0, result.stdout
    first, second = sorted(result_records(work_root), key=lambda r: r["started"])
    assert second["started"] >= first["ended"]


def test_submit_status_cancel(tmp_path: Path, make_profile: Any, zbatch: ZbatchRun) -> None:
    profile = str(make_profile())
    recipe = write_recipe(
        tmp_path / "r.json", {"1": wrapper_step(["sleep", "120"]), "start": [[1, {}]]}
    )
    submitted = zbatch("submit", str(recipe), "--profile", profile, "--json")
    assert submitted.returncode == 0, submitted.stderr
    (entry,) = json.loads(submitted.stdout)["jobs"]
    job_id = entry["job_id"]
    deadline = time.monotonic() + 20
    while True:
        (state,) = json.loads(zbatch("status", "--json", job_id).stdout)["jobs"]
        if state["state"] == "running" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert state["state"] == "running"
    cancelled = zbatch("cancel", job_id)
    assert cancelled.returncode == 0 and f"{job_id}: cancel requested" in cancelled.stdout
    deadline = time.monotonic() + 20
    while state["state"] not in ("cancelled", "failed") and time.monotonic() < deadline:
        time.sleep(0.2)
        (state,) = json.loads(zbatch("status", "--json", job_id).stdout)["jobs"]
    assert state["state"] == "cancelled"


def test_submit_wait_reports_success(tmp_path: Path, make_profile: Any, zbatch: ZbatchRun) -> None:
    recipe = write_recipe(tmp_path / "r.json", {"1": wrapper_step(["true"]), "start": [[1, {}]]})
    result = zbatch("submit", str(recipe), "--profile", str(make_profile()), "--wait")
    assert result.returncode == 0, result.stdout + result.stderr
    assert " succeeded exit 0" in result.stdout


def test_status_of_unknown_job(zbatch: ZbatchRun) -> None:
    result = zbatch("status", "424242")
    assert result.returncode == 2 and "no tracked job matches 424242" in result.stderr
