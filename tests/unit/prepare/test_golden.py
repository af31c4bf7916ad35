"""Rendered job scripts, compared line by line with reviewed golden files.

A missing golden file fails. Refresh with `pytest --update-golden tests/unit/prepare/test_golden.py`
and review the diff before committing it.
"""

from __future__ import annotations

import difflib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from zbatch.model.message import start_messages
from zbatch.model.profiles import Profile, load_profile
from zbatch.model.recipe import Recipe
from zbatch.prepare.job_files import JobContext, prepare_job

HERE = Path(__file__).resolve().parents[2]
GOLDEN = HERE / "golden"
RECIPES = HERE / "data" / "recipes"
CONTEXT = JobContext(
    ["--transport", "embedded", "--embedded-db", "/var/lib/zbatch/queue.sqlite"], ["zbatch"]
)
PARAMS: dict[str, Any] = {
    "ispyb_working_directory": "/dls/mx/data/mx1234-5/dc1",
    "zocalo_env": "live",
    "ispyb_dcid": 1234,
    "visit": "mx1234-5",
}
CASES = [
    ("slurm-local", "dlstbx-slurm"),
    ("sge-local", "legacy-sge"),
    ("sge-over-ssh", "dlstbx-slurm"),
    ("synchrotron-example", "wrapper-gpu"),
    ("local", "wrapper-gpu"),
]


def golden_profile(name: str) -> Profile:
    """A shipped profile; the recipes name Diamond's /dls paths, so a profile confining jobs
    elsewhere (the test services' /tmp) is given workdir_root /dls, as synchrotron-example."""
    profile = load_profile(name)
    if profile.workdir_root not in (None, "/dls"):
        profile = profile.model_copy(update={"workdir_root": "/dls"})
    return profile


def render(profile_name: str, recipe_name: str) -> str:
    recipe = Recipe.load(str(RECIPES / f"{recipe_name}.json")).apply_parameters(PARAMS)
    profile = golden_profile(profile_name)
    if not profile.allow_commands:  # shipped local and synchrotron-example: no generic there
        profile = profile.model_copy(update={"allow_commands": True})
    message = start_messages(recipe, {"ID": "golden-0001"})[0]
    return prepare_job(message, profile, CONTEXT).script


@pytest.mark.parametrize(("profile", "recipe"), CASES, ids=[f"{p}-{r}" for p, r in CASES])
def test_rendered_script_matches_golden(
    profile: str, recipe: str, request: pytest.FixtureRequest
) -> None:
    script = render(profile, recipe)
    golden = GOLDEN / f"{profile}__{recipe}.sh"
    if request.config.getoption("--update-golden"):
        golden.write_text(script)
    assert golden.exists(), f"missing {golden}: run pytest --update-golden and review the diff"
    expected = golden.read_text()
    diff = "\n".join(
        difflib.unified_diff(
            expected.splitlines(), script.splitlines(), "golden", "rendered", lineterm=""
        )
    )
    assert script == expected, f"rendered script differs from {golden.name}:\n{diff}"


@pytest.mark.parametrize(("profile", "recipe"), CASES, ids=[f"{p}-{r}" for p, r in CASES])
def test_rendered_script_passes_bash_and_shellcheck(
    profile: str, recipe: str, tmp_path: Path
) -> None:
    path = tmp_path / "job.sh"
    path.write_text(render(profile, recipe))
    syntax = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, check=False)
    assert syntax.returncode == 0, syntax.stderr
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is not installed: scripts/test installs Debian's shellcheck"
    # SC2016: single-quoted `$` is the point (message values stay literal);
    # SC1091: site set-up files such as /etc/profile.d/modules.sh do not exist on this machine.
    lint = subprocess.run(
        [shellcheck, "-s", "bash", "-e", "SC2016,SC1091", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert lint.returncode == 0, lint.stdout


def test_hostile_values_stay_quoted() -> None:
    script = render("slurm-local", "dlstbx-slurm")
    assert "export GREETING='it'\"'\"'s a $HOME `test`'" in script


def test_step_files_carry_the_envelope() -> None:
    recipe = Recipe.load(str(RECIPES / "dlstbx-slurm.json")).apply_parameters(PARAMS)
    message = start_messages(recipe, {"ID": "golden-0001"})[0]
    job = prepare_job(message, golden_profile("slurm-local"), CONTEXT)
    path = Path("/dls/mx/data/mx1234-5/dc1/xia2-dials/.recipewrap")
    assert json.loads(job.files[path]) == message.to_body()
    assert f"--recipewrapper {path}" in job.script
