"""The xia2 command line, exactly as python-dlstbx builds it, and the values it refuses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.wrappers.support import context, run
from zbatch.errors import WrapperError
from zbatch_wrappers.xia2 import Xia2Wrapper

pytestmark = pytest.mark.wrappers

SWEEP = "/data/x_00001.cbf:1:20"

# (case, job_parameters, allocated cpus, expected argv)
COMMANDS: list[tuple[str, dict[str, Any], int, list[str]]] = [
    (
        "pipeline, images, nproc from the allocation",
        {"xia2": {"pipeline": "dials", "images": SWEEP}},
        4,
        ["xia2", "pipeline=dials", f"image={SWEEP}", "nproc=4"],
    ),
    (
        "two sweeps in one images string",
        {"xia2": {"images": f"{SWEEP},/data/y_00001.cbf:1:900", "pipeline": "3dii"}},
        2,
        ["xia2", f"image={SWEEP}", "image=/data/y_00001.cbf:1:900", "pipeline=3dii", "nproc=2"],
    ),
    (
        "empty images skipped, nproc given, list repeats its key",
        {"xia2": {"images": "", "nproc": 8, "image": ["/d/a_1.cbf:1:5", "/d/b_1.cbf:1:5"]}},
        4,
        ["xia2", "nproc=8", "image=/d/a_1.cbf:1:5", "image=/d/b_1.cbf:1:5"],
    ),
    (
        "JSON numbers and booleans become phil values",
        {
            "xia2": {
                "read_all_image_headers": False,
                "d_min": 2,
                "xia2.settings.small_molecule": True,
            }
        },
        1,
        [
            "xia2",
            "read_all_image_headers=False",
            "d_min=2",
            "xia2.settings.small_molecule=True",
            "nproc=1",
        ],
    ),
    (
        "ispyb_parameters translated; spaces in ISPyB's symbols and cells removed",
        {
            "xia2": {"pipeline": "dials", "images": SWEEP},
            "ispyb_parameters": {
                "d_min": "1.7",
                "spacegroup": "P 41 21 2",
                "unit_cell": "57.8 57.8 150 90 90 90",
                "xia2.settings.anomalous": "true",
            },
        },
        4,
        [
            "xia2",
            "pipeline=dials",
            f"image={SWEEP}",
            "nproc=4",
            "xia2.settings.resolution.d_min=1.7",
            "xia2.settings.space_group=P41212",
            "xia2.settings.unit_cell=57.8,57.8,150,90,90,90",
            "xia2.settings.anomalous=true",
        ],
    ),
    (
        "nproc given in ispyb_parameters is not doubled",
        {"xia2": {"images": SWEEP}, "ispyb_parameters": {"xia2.settings.multiprocessing.nproc": 3}},
        4,
        ["xia2", f"image={SWEEP}", "xia2.settings.multiprocessing.nproc=3"],
    ),
]


@pytest.mark.parametrize(
    ("job_parameters", "cpus", "argv"),
    [case[1:] for case in COMMANDS],
    ids=[case[0] for case in COMMANDS],
)
def test_command_line(job_parameters: dict[str, Any], cpus: int, argv: list[str]) -> None:
    wrapper = Xia2Wrapper(context(job_parameters, cpus=cpus))
    assert wrapper.command(wrapper.working_directory()) == argv


def test_runs_in_a_directory_named_after_the_pipeline(tmp_path: Path) -> None:
    with_pipeline = {"working_directory": str(tmp_path), "xia2": {"pipeline": "dials"}}
    assert Xia2Wrapper(context(with_pipeline)).working_directory() == tmp_path / "xia2-dials"
    without = {"working_directory": str(tmp_path), "xia2": {"images": SWEEP}}
    assert Xia2Wrapper(context(without)).working_directory() == tmp_path / "xia2"


CANARY = "/tmp/zbatch-canary-xia2"
# (case, job_parameters, words the error must contain)
HOSTILE: list[tuple[str, dict[str, Any], str]] = [
    ("command substitution", {"xia2": {"project": f"$(touch {CANARY})"}}, "xia2.project"),
    ("space splits the value", {"xia2": {"project": "a nproc=64"}}, "' '"),
    ("newline", {"xia2": {"project": "a\nnproc=64"}}, "'\\n'"),
    ("semicolon ends the assignment", {"xia2": {"project": "a;nproc=64"}}, "';'"),
    ("phil scope", {"xia2": {"project": "a}b{"}}, "'}'"),
    ("phil substitution", {"xia2": {"project": "$nproc"}}, "'$'"),
    ("second assignment", {"xia2": {"project": "a=b"}}, "'='"),
    ("leading dash", {"xia2": {"project": "--help"}}, "starts with '-'"),
    ("NUL byte", {"xia2": {"project": "a\0b"}}, "NUL"),
    ("tab", {"xia2": {"project": "a\tb"}}, "'\\t'"),
    ("non-printing character", {"xia2": {"project": "a\x1bb"}}, "'\\x1b'"),
    ("option as key", {"xia2": {"--foo": "1"}}, "parameter name '--foo'"),
    ("assignment in key", {"xia2": {"nproc=1 x": "1"}}, "not a phil name"),
    ("path as key", {"xia2": {"../x": "1"}}, "not a phil name"),
    ("hostile image entry", {"xia2": {"images": f"{SWEEP},-x"}}, "xia2.image"),
    ("space in image path", {"xia2": {"images": "/d/my data_1.cbf:1:2"}}, "xia2.image"),
    ("empty images entry", {"xia2": {"images": f"{SWEEP},,{SWEEP}"}}, "entry 2 is empty"),
    ("images not a string", {"xia2": {"images": ["a"]}}, "comma-separated string"),
    ("object value", {"xia2": {"project": {"a": 1}}}, "must be text or a number"),
    ("null value", {"xia2": {"project": None}}, "must be text or a number"),
    ("empty value", {"xia2": {"project": ""}}, "is empty"),
    ("xia2 not an object", {"xia2": ["pipeline=dials"]}, "job_parameters.xia2 must be"),
    ("ispyb key option", {"ispyb_parameters": {"-d_min": "1"}}, "ispyb_parameters"),
    ("ispyb value option", {"ispyb_parameters": {"d_min": "-1"}}, "starts with '-'"),
    ("ispyb value smuggles", {"ispyb_parameters": {"d_min": "1;nproc=9"}}, "';'"),
    ("pipeline escapes the directory", {"xia2": {"pipeline": "../../etc"}}, "pipeline"),
]


@pytest.mark.parametrize(
    ("job_parameters", "words"), [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE]
)
def test_hostile_parameters_are_refused(job_parameters: dict[str, Any], words: str) -> None:
    wrapper = Xia2Wrapper(context(job_parameters))
    with pytest.raises(WrapperError) as refused:
        wrapper.command(wrapper.working_directory())
    assert words in str(refused.value)
    assert not Path(CANARY).exists()


def test_shell_syntax_reaches_xia2_as_one_literal_argument(tmp_path: Path) -> None:
    """No shell is involved: metacharacters are just characters of one argument."""
    hostile = "Se|touch>canary&&`reboot`(x)"
    images = tmp_path / "images"
    images.mkdir()
    (images / "x_00001.cbf").write_text("placeholder")
    params = {
        "working_directory": str(tmp_path),
        "xia2": {"images": f"{images}/x_00001.cbf:1:1", "atom": hostile},
    }
    workdir, outcome = run(Xia2Wrapper(context(params)))
    assert outcome.success, outcome.reason
    assert f"atom={hostile}\n" in (workdir / "xia2-working.phil").read_text()
    assert not list(tmp_path.rglob("canary"))
