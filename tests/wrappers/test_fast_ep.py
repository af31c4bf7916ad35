"""fast_ep: its input from the xia2 step, command line, success criteria and topaz output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.standins import _standin
from tests.wrappers.support import context, file_types, run
from zbatch.errors import WrapperError
from zbatch_wrappers.fast_ep import FastEpWrapper

pytestmark = pytest.mark.wrappers

MTZ = "/data/xia2-dials/DataFiles/AUTOMATIC_DEFAULT_free.mtz"
FROM_XIA2 = {"status": "Finished processing", "scaled_mtz": MTZ, "files": []}

# (case, job_parameters, payload from the previous step, expected argv)
COMMANDS: list[tuple[str, dict[str, Any], Any, list[str]]] = [
    (
        "data from xia2's result, cpu from the allocation",
        {"fast_ep": {"machines": 1, "ntry": 200, "rlims": [3.0, 2.5], "xml": "fast_ep.xml"}},
        FROM_XIA2,
        [
            "fast_ep",
            "machines=1",
            "ntry=200",
            "rlims=3.0,2.5",
            "xml=fast_ep.xml",
            f"data={MTZ}",
            "cpu=4",
        ],
    ),
    (
        "a given data keeps its place but xia2's result wins; falsy items skipped",
        {"fast_ep": {"data": "/old.mtz", "trunc": 0, "native": "", "cpu": 16}},
        FROM_XIA2,
        ["fast_ep", f"data={MTZ}", "cpu=16"],
    ),
    (
        "ispyb_parameters.data without a previous step",
        {"fast_ep": {"data": "/old.mtz"}, "ispyb_parameters": {"data": "/ispyb.mtz"}},
        [],
        ["fast_ep", "data=/ispyb.mtz", "cpu=4"],
    ),
    (
        "fast_ep.data as the last resort",
        {"fast_ep": {"data": "/given.mtz", "rlims": "3.5"}},
        {"status": "Finished processing"},
        ["fast_ep", "data=/given.mtz", "rlims=3.5", "cpu=4"],
    ),
]


@pytest.mark.parametrize(
    ("job_parameters", "payload", "argv"),
    [case[1:] for case in COMMANDS],
    ids=[case[0] for case in COMMANDS],
)
def test_command_line(job_parameters: dict[str, Any], payload: Any, argv: list[str]) -> None:
    wrapper = FastEpWrapper(context(job_parameters, payload))
    assert wrapper.command(wrapper.working_directory()) == argv


def test_runs_in_create_symlink_directory(tmp_path: Path) -> None:
    params: dict[str, Any] = {"working_directory": str(tmp_path), "fast_ep": {}}
    assert FastEpWrapper(context(params)).working_directory() == tmp_path / "fast_ep"
    params["create_symlink"] = "fast_ep-run2"
    assert FastEpWrapper(context(params)).working_directory() == tmp_path / "fast_ep-run2"


# (case, job_parameters, payload, words the error must contain)
HOSTILE: list[tuple[str, dict[str, Any], Any, str]] = [
    ("no input at all", {"fast_ep": {"ntry": 5}}, None, "fast_ep has no input"),
    ("payload smuggles an argument", {}, {"scaled_mtz": "/a.mtz cpu=999"}, "' '"),
    ("payload is an option", {}, {"scaled_mtz": "--help"}, "starts with '-'"),
    ("payload substitution", {}, {"scaled_mtz": "$(touch /tmp/zbatch-canary-ep)"}, "'$'"),
    ("payload not text", {}, {"scaled_mtz": ["/a.mtz"]}, "must be text or a number"),
    ("rlims entry smuggles", {"fast_ep": {"rlims": ["3", "2;cpu=9"]}}, FROM_XIA2, "rlims[1]"),
    ("option as key", {"fast_ep": {"--cpu": 2}}, FROM_XIA2, "parameter name '--cpu'"),
    ("newline value", {"fast_ep": {"xml": "a\nb"}}, FROM_XIA2, "'\\n'"),
    ("directory escape", {"create_symlink": "../up"}, FROM_XIA2, "create_symlink"),
]


@pytest.mark.parametrize(
    ("job_parameters", "payload", "words"), [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE]
)
def test_hostile_input_is_refused(job_parameters: dict[str, Any], payload: Any, words: str) -> None:
    with pytest.raises(WrapperError) as refused:
        wrapper = FastEpWrapper(context(job_parameters, payload))
        wrapper.command(wrapper.working_directory())
    assert words in str(refused.value)
    assert not Path("/tmp/zbatch-canary-ep").exists()


@pytest.fixture()
def scaled_mtz(tmp_path: Path) -> str:
    path = tmp_path / "DataFiles" / "AUTOMATIC_DEFAULT_free.mtz"
    path.parent.mkdir()
    path.write_bytes(_standin.fake_mtz("t", [78.1, 78.1, 37.2, 90, 90, 90], "P 41 21 2", 1.9))
    return str(path)


def fast_ep(tmp_path: Path, mtz: str, **extra: Any) -> FastEpWrapper:
    params = {
        "working_directory": str(tmp_path / "work"),
        "fast_ep": {"machines": 1, "ntry": 50, "rlims": [3.0], "xml": "fast_ep.xml"},
        **extra,
    }
    return FastEpWrapper(context(params, {**FROM_XIA2, "scaled_mtz": mtz}, cpus=2))


def test_success_sends_topaz_and_summary(tmp_path: Path, scaled_mtz: str) -> None:
    workdir, outcome = run(fast_ep(tmp_path, scaled_mtz))
    assert outcome.success, outcome.reason
    best = workdir / "0.45"
    assert outcome.extra_outputs == {
        "topaz": {
            "original_phase_file": str(best / "sad.phs"),
            "inverse_phase_file": str(best / "sad_i.phs"),
            "hkl_file": str(best / "sad.hkl"),
            "fa_file": str(best / "sad_fa.hkl"),
            "res_file": str(best / "sad_fa.res"),
            "space_group": "P41212",
            "cell_info": [78.1, 78.1, 37.2, 90.0, 90.0, 90.0],
            "best_solvent": "0.45",
        }
    }
    for name in ("sad.phs", "sad_i.phs", "sad.hkl", "sad_fa.hkl", "sad_fa.res"):
        assert (best / name).is_file()
    assert outcome.summary == {
        "space_group": "P41212",
        "best_solvent": "0.45",
        "unit_cell": [78.1, 78.1, 37.2, 90.0, 90.0, 90.0],
        "phasing_directory": str(best),
    }


EXPECTED_FILES = {
    "fast_ep.html": ("log", None),
    "fast_ep.log": ("log", None),
    "fast_ep_data.json": ("result", None),
    "sad.hkl": ("result", None),
    "sad.mtz": ("result", None),
    "sad_fa.hkl": ("result", None),
    "sad_fa.ins": ("result", None),
    "sad_fa.lst": ("log", None),
    "sad_fa.pdb": ("result", None),
    "shelxc.log": ("log", None),
}


def test_result_files_by_suffix(tmp_path: Path, scaled_mtz: str) -> None:
    workdir, outcome = run(fast_ep(tmp_path, scaled_mtz))
    # Not reported, as in dlstbx: .png (skipped), .xml (copied only), .phs and .res (unlisted).
    assert file_types(outcome) == EXPECTED_FILES
    assert {f.file_path for f in outcome.files} == {str(workdir)}


def test_results_directory_gets_copies(tmp_path: Path, scaled_mtz: str) -> None:
    wrapper = fast_ep(tmp_path, scaled_mtz, results_directory=str(tmp_path / "processed"))
    _, outcome = run(wrapper)
    target = tmp_path / "processed" / "fast_ep"
    copied = {p.name for p in target.iterdir()}
    assert copied == {*EXPECTED_FILES, "fast_ep.xml"}
    assert {f.file_path for f in outcome.files} == {str(target)}


def test_error_file_fails_even_with_exit_code_zero(tmp_path: Path, scaled_mtz: str) -> None:
    _, outcome = run(fast_ep(tmp_path, scaled_mtz), STANDIN_FAIL="1", STANDIN_FAIL_EXIT="0")
    assert not outcome.success
    assert outcome.reason == "fast_ep failed (exit code 0): RuntimeError: All shelxd jobs failed"
    assert outcome.extra_outputs == {}
    assert file_types(outcome) == {"fast_ep.error": ("log", None)}


def test_missing_input_file_is_fast_eps_error(tmp_path: Path) -> None:
    _, outcome = run(fast_ep(tmp_path, str(tmp_path / "missing.mtz")))
    assert not outcome.success
    assert "No such file or directory" in outcome.reason


def test_non_zero_exit_fails(tmp_path: Path, scaled_mtz: str) -> None:
    wrapper = fast_ep(tmp_path, scaled_mtz)
    workdir, _ = run(wrapper)
    assert wrapper.collect(workdir, 2).reason == "fast_ep exited with code 2"


@pytest.mark.parametrize(
    ("file", "content", "reason"),
    [
        ("fast_ep_data.json", None, "left no fast_ep_data.json"),
        ("fast_ep_data.json", '{"solv": 0.5}', "fast_ep_data.json is unreadable (KeyError"),
        ("fast_ep.log", "Best solvent: 0.45\n", "fast_ep.log has no 'Unit cell:' line"),
        ("fast_ep.log", "Unit cell: 1 2 x\n", "fast_ep.log has a malformed line"),
    ],
)
def test_unreadable_results_fail(
    tmp_path: Path, scaled_mtz: str, file: str, content: str | None, reason: str
) -> None:
    wrapper = fast_ep(tmp_path, scaled_mtz)
    workdir, _ = run(wrapper)
    if content is None:
        (workdir / file).unlink()
    else:
        (workdir / file).write_text(content)
    outcome = wrapper.collect(workdir, 0)
    assert not outcome.success
    assert outcome.reason.startswith(f"fast_ep exited 0 but {reason}")
