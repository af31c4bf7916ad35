"""The stand-in tools refuse what the real ones refuse, and follow their output conventions."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.standins.make_dataset import make_dataset
from tests.wrappers.support import STANDINS, standin_env

pytestmark = pytest.mark.wrappers


def tool(name: str, args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [name, *args],
        cwd=cwd,
        env=standin_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_standins_are_executable_and_not_installed() -> None:
    import zbatch_wrappers

    package = Path(zbatch_wrappers.__file__).parent
    for name in ("xia2", "fast_ep", "make_dataset.py"):
        assert (STANDINS / name).stat().st_mode & 0o111
        assert not (package / name).exists()


def test_make_dataset_prints_the_sweep(tmp_path: Path) -> None:
    result = subprocess.run(
        ["python3", str(STANDINS / "make_dataset.py"), str(tmp_path / "d"), "--images", "3"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout == f"dataset={tmp_path}/d/demo_00001.cbf:1:3\n"
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [
        "demo_00001.cbf",
        "demo_00002.cbf",
        "demo_00003.cbf",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--foo"], "Unrecognised argument: '--foo'"),
        (["/data/images"], "Unrecognised argument: '/data/images'"),
        (["nproc=4"], "No image directory found"),
        (["{sweep}", "bogus.key=1"], "Unknown command line parameter definition: bogus.key = 1"),
        (["{sweep}", "pipeline=magic"], "pipeline=magic is not one of"),
        (["{sweep}", "nproc=two"], "nproc=two: a whole number >= 1 is required"),
        (["{sweep}", "unit_cell=1,2,3"], "6 numbers are required"),
        (["image={dir}/demo_00001.cbf:1:4"], "demo_00004.cbf of sweep"),
        (["image={dir}/none_00001.cbf:1:2"], "none_00001.cbf does not exist"),
    ],
)
def test_xia2_refuses_bad_arguments(tmp_path: Path, args: list[str], message: str) -> None:
    sweep = make_dataset(tmp_path / "d", images=3)
    filled = [a.format(sweep=f"image={sweep}", dir=tmp_path / "d") for a in args]
    result = tool("xia2", filled, tmp_path)
    assert result.returncode == 1
    assert message in (tmp_path / "xia2-error.txt").read_text()
    assert not (tmp_path / "xia2.json").exists()


def test_fast_ep_refuses_unknown_parameters_before_starting(tmp_path: Path) -> None:
    result = tool("fast_ep", ["data=/x.mtz", "bogus=1"], tmp_path)
    assert result.returncode == 1
    assert result.stderr == "Sorry: Unknown command line parameter definition: bogus = 1\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ([], "no input reflection file"),
        (["data={image}"], "is not an MTZ file"),
    ],
)
def test_fast_ep_needs_mtz_data(tmp_path: Path, args: list[str], error: str) -> None:
    image = tmp_path / "image.cbf"
    image.write_text("###CBF")
    result = tool("fast_ep", [a.format(image=image) for a in args], tmp_path)
    assert result.returncode == 1
    assert error in (tmp_path / "fast_ep.error").read_text()
