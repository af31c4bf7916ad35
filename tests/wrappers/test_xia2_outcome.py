"""xia2's success criteria, result files and summary, on the stand-in's real output layout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.standins.make_dataset import make_dataset
from tests.wrappers.support import context, file_types, run
from zbatch_wrappers.xia2 import Xia2Wrapper

pytestmark = pytest.mark.wrappers


@pytest.fixture()
def sweep(tmp_path: Path) -> str:
    return make_dataset(tmp_path / "images", images=20)


def xia2(tmp_path: Path, sweep: str, **extra: Any) -> Xia2Wrapper:
    params = {
        "working_directory": str(tmp_path / "work"),
        "xia2": {"pipeline": "dials", "images": sweep},
        **extra,
    }
    return Xia2Wrapper(context(params, cpus=2))


def test_success_reads_the_summary_from_xia2_json(tmp_path: Path, sweep: str) -> None:
    ispyb = {"d_min": "1.6", "spacegroup": "P 21 21 21", "unit_cell": "40,50,60,90,90,90"}
    workdir, outcome = run(xia2(tmp_path, sweep, ispyb_parameters=ispyb))
    assert outcome.success, outcome.reason
    assert workdir == tmp_path / "work" / "xia2-dials"
    summary = outcome.summary
    assert summary["space_group"] == "P212121"
    assert summary["unit_cell"] == [40.0, 50.0, 60.0, 90.0, 90.0, 90.0]
    assert summary["d_min"] == 1.6
    assert summary["overall"] == {
        "d_min": 1.6,
        "d_max": 20.0,
        "completeness": 99.8,
        "multiplicity": 6.5,
        "i_over_sigma": 12.3,
        "cc_half": 0.998,
    }
    assert summary["outer_shell"] == {
        "d_min": 1.6,
        "d_max": 1.63,
        "completeness": 97.8,
        "multiplicity": 6.0,
        "i_over_sigma": 1.4,
        "cc_half": 0.621,
    }
    assert summary["scaled_mtz"] == str(workdir / "DataFiles" / "AUTOMATIC_DEFAULT_free.mtz")
    assert Path(summary["scaled_mtz"]).read_bytes().startswith(b"MTZ ")


def test_result_files_have_dlstbx_types_and_ranks(tmp_path: Path, sweep: str) -> None:
    workdir, outcome = run(xia2(tmp_path, sweep))
    assert file_types(outcome) == {
        "xia2.html": ("log", 1),
        "xia2.txt": ("log", 2),
        "AUTOMATIC_DEFAULT_free.mtz": ("result", 1),
        "AUTOMATIC_DEFAULT_scaled.sca": ("result", 2),
        "AUTOMATIC_DEFAULT_scaled_unmerged.mtz": ("result", 2),
        "AUTOMATIC_DEFAULT_SCALE.json": ("graph", 2),
        "AUTOMATIC_DEFAULT_SCALE.log": ("log", 2),
        "AUTOMATIC_DEFAULT_SWEEP1_INDEX.log": ("log", 2),
        "AUTOMATIC_DEFAULT_SWEEP1_INTEGRATE.log": ("log", 2),
    }
    # As dlstbx sends them: file_path is the directory, file_name the name within it.
    for result in outcome.files:
        assert (Path(result.file_path) / result.file_name).is_file()
    assert {f.file_path for f in outcome.files} == {
        str(workdir),
        str(workdir / "DataFiles"),
        str(workdir / "LogFiles"),
    }


def test_results_are_copied_to_the_results_directory(tmp_path: Path, sweep: str) -> None:
    wrapper = xia2(tmp_path, sweep, results_directory=str(tmp_path / "processed"))
    workdir = wrapper.working_directory()
    workdir.mkdir(parents=True)
    (workdir / ".hidden").write_text("not copied")
    (workdir / "image.sif").write_text("not copied")
    workdir, outcome = run(wrapper)
    assert outcome.success, outcome.reason
    target = tmp_path / "processed" / "xia2-dials"
    copied = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert copied == [
        "DataFiles/AUTOMATIC_DEFAULT_free.mtz",
        "DataFiles/AUTOMATIC_DEFAULT_scaled.sca",
        "DataFiles/AUTOMATIC_DEFAULT_scaled_unmerged.mtz",
        "LogFiles/AUTOMATIC_DEFAULT_SCALE.json",
        "LogFiles/AUTOMATIC_DEFAULT_SCALE.log",
        "LogFiles/AUTOMATIC_DEFAULT_SWEEP1_INDEX.log",
        "LogFiles/AUTOMATIC_DEFAULT_SWEEP1_INTEGRATE.log",
        "xia2-working.phil",
        "xia2.html",
        "xia2.json",
        "xia2.txt",
    ]
    assert all(f.file_path.startswith(str(target)) for f in outcome.files)
    assert outcome.summary["scaled_mtz"] == str(target / "DataFiles/AUTOMATIC_DEFAULT_free.mtz")


def test_reported_error_fails_with_its_text(tmp_path: Path, sweep: str) -> None:
    _, outcome = run(xia2(tmp_path, sweep), STANDIN_FAIL="1")
    assert not outcome.success
    assert outcome.reason.startswith(
        "xia2 failed (exit code 1), xia2-error.txt: Error: No suitable"
    )
    assert file_types(outcome) == {"xia2.txt": ("log", 2), "xia2-error.txt": ("log", 2)}


def test_error_file_fails_even_with_exit_code_zero(tmp_path: Path, sweep: str) -> None:
    _, outcome = run(xia2(tmp_path, sweep), STANDIN_FAIL="1", STANDIN_FAIL_EXIT="0")
    assert not outcome.success
    assert "(exit code 0), xia2-error.txt" in outcome.reason


def test_missing_image_is_xia2s_error(tmp_path: Path) -> None:
    missing = f"{tmp_path}/nowhere_00001.cbf:1:10"
    _, outcome = run(xia2(tmp_path, missing))
    assert not outcome.success
    assert f"image file {tmp_path}/nowhere_00001.cbf does not exist" in outcome.reason


def test_non_zero_exit_fails(tmp_path: Path, sweep: str) -> None:
    wrapper = xia2(tmp_path, sweep)
    workdir, _ = run(wrapper)
    outcome = wrapper.collect(workdir, 137)
    assert not outcome.success and outcome.reason == "xia2 exited with code 137"


@pytest.mark.parametrize(
    ("remove", "reason"),
    [
        (["xia2.json"], "xia2 exited 0 but left no xia2.json"),
        (["DataFiles"], "xia2 exited 0 but left no DataFiles/"),
        (["LogFiles", "xia2.json"], "xia2 exited 0 but left no xia2.json, LogFiles/"),
    ],
)
def test_missing_outputs_fail(tmp_path: Path, sweep: str, remove: list[str], reason: str) -> None:
    wrapper = xia2(tmp_path, sweep)
    workdir, _ = run(wrapper)
    for name in remove:
        path = workdir / name
        if path.is_dir():
            for child in path.iterdir():
                child.unlink()
            path.rmdir()
        else:
            path.unlink()
    outcome = wrapper.collect(workdir, 0)
    assert not outcome.success and outcome.reason == reason


@pytest.mark.parametrize("content", ["{not json", json.dumps({"_crystals": {}}), "[]"])
def test_unreadable_xia2_json_fails(tmp_path: Path, sweep: str, content: str) -> None:
    wrapper = xia2(tmp_path, sweep)
    workdir, _ = run(wrapper)
    (workdir / "xia2.json").write_text(content)
    outcome = wrapper.collect(workdir, 0)
    assert not outcome.success
    assert outcome.reason.startswith("xia2 exited 0 but xia2.json is unreadable")


def test_results_directory_equal_to_working_directory(tmp_path: Path, sweep: str) -> None:
    workdir, outcome = run(xia2(tmp_path, sweep, results_directory=str(tmp_path / "work")))
    assert outcome.success, outcome.reason
    assert outcome.summary["output_directory"] == str(workdir)
