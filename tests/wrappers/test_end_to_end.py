"""examples/xia2-fast_ep.json through `zbatch run` on the local scheduler, stand-ins on PATH."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ZbatchRun, queue_bodies, result_records, write_recipe
from tests.standins.make_dataset import make_dataset
from tests.wrappers.support import EXAMPLE, standin_env

pytestmark = pytest.mark.wrappers


def by_wrapper(root: Path) -> dict[str, dict[str, Any]]:
    return {record["wrapper"]: record for record in result_records(root)}


def test_example_chains_xia2_into_fast_ep(
    tmp_path: Path, make_profile: Any, work_root: Path, zbatch: ZbatchRun
) -> None:
    sweep = make_dataset(tmp_path / "images", images=20)
    result = zbatch(
        "run",
        str(EXAMPLE),
        "--profile",
        str(make_profile()),
        "--param",
        f"dataset={sweep}",
        env=standin_env(),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "step 1 succeeded" in result.stdout and "step 2 succeeded" in result.stdout
    assert "2 step(s) succeeded, 0 failed" in result.stdout
    records = by_wrapper(work_root)
    xia2, fast_ep = records["xia2"], records["fast_ep"]
    assert xia2["command"] == [
        "xia2",
        "pipeline=dials",
        f"image={sweep}",
        "read_all_image_headers=False",
        "nproc=2",
    ]
    scaled = xia2["summary"]["scaled_mtz"]
    assert scaled.endswith("/step-1/xia2-dials/DataFiles/AUTOMATIC_DEFAULT_free.mtz")
    assert Path(scaled).is_file()
    # fast_ep received xia2's scaled file through the success message.
    assert f"data={scaled}" in fast_ep["command"] and "cpu=2" in fast_ep["command"]
    assert fast_ep["summary"]["space_group"] == "P41212"
    (topaz,) = queue_bodies(work_root, "xia2-fast_ep.topaz")
    assert topaz["recipe-path"] == [1, 2]
    assert topaz["payload"]["space_group"] == "P41212"
    assert topaz["payload"]["cell_info"] == [57.8, 57.8, 150.0, 90.0, 90.0, 90.0]
    assert Path(topaz["payload"]["original_phase_file"]).is_file()
    assert queue_bodies(work_root, "xia2-fast_ep.failures") == []


def test_xia2_failure_reaches_the_failure_queue(
    tmp_path: Path, make_profile: Any, work_root: Path, zbatch: ZbatchRun
) -> None:
    sweep = make_dataset(tmp_path / "images", images=5)
    # Jobs never inherit the dispatcher's environment: the switch travels in the step.
    recipe = json.loads(EXAMPLE.read_text())
    recipe["1"]["parameters"]["cluster"]["environment"] = {"STANDIN_FAIL": "1"}
    result = zbatch(
        "run",
        str(write_recipe(tmp_path / "r.json", recipe)),
        "--profile",
        str(make_profile()),
        "--param",
        f"dataset={sweep}",
        env=standin_env(),
    )
    assert result.returncode == 1
    assert "step 1 failed" in result.stdout and "step 2" not in result.stdout
    (failure,) = queue_bodies(work_root, "xia2-fast_ep.failures")
    assert failure["recipe-path"] == [1]
    assert failure["payload"].startswith("xia2 failed (exit code 1), xia2-error.txt: Error: No")
    assert set(by_wrapper(work_root)) == {"xia2"}


def test_time_limit_stops_a_running_xia2(
    tmp_path: Path, make_profile: Any, work_root: Path, zbatch: ZbatchRun
) -> None:
    recipe = json.loads(EXAMPLE.read_text())
    recipe["1"]["parameters"]["cluster"]["time_limit"] = 2
    recipe["1"]["parameters"]["cluster"]["environment"] = {"STANDIN_SLEEP": "60"}
    sweep = make_dataset(tmp_path / "images", images=5)
    started = time.monotonic()
    result = zbatch(
        "run",
        str(write_recipe(tmp_path / "r.json", recipe)),
        "--profile",
        str(make_profile()),
        "--param",
        f"dataset={sweep}",
        env=standin_env(),
    )
    assert time.monotonic() - started < 30
    assert result.returncode == 1
    assert "step 1 timeout" in result.stdout
    (failure,) = queue_bodies(work_root, "xia2-fast_ep.failures")
    assert failure["payload"] == "stopped by SIGTERM"


def test_the_documented_demo_command(tmp_path: Path, zbatch: ZbatchRun) -> None:
    """docs/wrapper-tutorial.md's command, as a newcomer runs it (default profile)."""
    sweep = make_dataset(tmp_path / "zbatch-demo-data")
    result = zbatch(
        "run", str(EXAMPLE), "--param", f"dataset={sweep}", env=standin_env(HOME=str(tmp_path))
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 step(s) succeeded, 0 failed" in result.stdout
    assert "1 message(s) left on queue 'xia2-fast_ep.topaz'" in result.stdout
    assert set(by_wrapper(tmp_path / "zbatch-runs")) == {"xia2", "fast_ep"}
