"""cryoem-services' dialect: `parameters.wrapper` holding the recipe-wrapper file's path.

A wrapper's name never contains "/", so a `wrapper` value with one is the file's location,
read and confined exactly as `parameters.recipewrapper` is. The upstream recipe is kept
verbatim in tests/data/upstream/cryoem-services/.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from zbatch.errors import ParameterError, WrapperError
from zbatch.model.message import start_messages
from zbatch.model.profiles import Profile, load_profile
from zbatch.model.recipe import Recipe
from zbatch.prepare.job_files import JobContext, prepare_job
from zbatch.prepare.parameters import names_recipewrapper, wrapper_name

UPSTREAM = Path(__file__).resolve().parents[2] / "data" / "upstream" / "cryoem-services"
CLASS2D = UPSTREAM / "em-spa-class2d-wrapper.json"


def class2d_values(class2d_dir: Path) -> dict[str, str]:
    """The {placeholders} of the upstream recipe, as cryoem-services fills them."""
    return {
        "class2d_dir": str(class2d_dir),
        "config_file": "/dls_sw/apps/EM/config.yaml",
        "user": "gda2",
        "partition": "cs05r",
        "partition_preference": "gpu_a100",
        "batch_is_complete": "True",
        "batch_size": "50000",
        "class2d_grp_uuid": "7",
        "nr_classes": "50",
        "nr_iter": "25",
        "class_uuids": "{}",
        "do_icebreaker_jobs": "True",
        "mask_diameter": "190",
        "particle_diameter": "180",
        "particles_file": f"{class2d_dir}/particles.star",
    }


def profile_for(root: Path, scheduler: str = "slurm", **update: Any) -> Profile:
    """The shipped local profile turned into a site like DLS's: commands allowed, and PATH
    (which the upstream recipe sets) allowed by name."""
    base = load_profile("local-commands")
    fields = {
        "scheduler": scheduler,
        "workdir_root": str(root),
        "allowed_environment": ["PATH"],
        **update,
    }
    return base.model_copy(update=fields)


def class2d_job(tmp_path: Path, scheduler: str = "slurm", **values: str) -> Any:
    root = tmp_path / "work"
    (root / "class2d").mkdir(parents=True, exist_ok=True)
    filled = {**class2d_values(root / "class2d"), **values}
    recipe = Recipe.load(str(CLASS2D)).apply_parameters(filled)
    message = start_messages(recipe)[0]
    return prepare_job(message, profile_for(root, scheduler), JobContext(transport_args=[]))


def test_the_upstream_recipe_is_kept_verbatim() -> None:
    recipe = json.loads(CLASS2D.read_text())
    params = recipe["1"]["parameters"]
    assert params["wrapper"] == "{class2d_dir}/.recipewrap"
    assert params["cluster"]["memory_per_node"] == 96000
    assert {"nodes", "gpus", "prefer"} <= set(params["cluster"])
    readme = (UPSTREAM / "README.md").read_text()
    assert "recipes/ispyb/em-spa-class2d-wrapper.json" in readme
    assert "ef3878ed12e62bde7e324941d75407996c800de9" in readme


def test_class2d_step_writes_the_recipewrapper_where_the_recipe_says(tmp_path: Path) -> None:
    job = class2d_job(tmp_path)
    wrap = tmp_path / "work" / "class2d" / ".recipewrap"
    assert job.message_path == wrap
    assert set(job.files) == {wrap}
    body = json.loads(job.files[wrap])
    assert set(body) == {"environment", "payload", "recipe", "recipe-path", "recipe-pointer"}
    assert body["recipe-pointer"] == 1
    # $RECIPEWRAP replaced by that path in the recipe's commands; no zbatch wrap.
    assert (
        f'cryoemservices.wrap -w Class2D -r "{wrap}" -c /dls_sw/apps/EM/config.yaml' in job.script
    )
    assert "$RECIPEWRAP" not in job.script
    assert " wrap --wrap " not in job.script


def test_class2d_cluster_keys_all_reach_the_slurm_script(tmp_path: Path) -> None:
    script = class2d_job(tmp_path).script
    for directive in (
        "#SBATCH --job-name=Class2D-EM",
        "#SBATCH --partition=cs05r",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --ntasks=1",
        "#SBATCH --nodes=1",
        "#SBATCH --mem=96000M",  # an integer memory_per_node is megabytes
        "#SBATCH --time=3:00:00",
        "#SBATCH --gpus=1",
        "#SBATCH --prefer=gpu_a100",
    ):
        assert directive in script.splitlines(), directive
    assert "export PATH=/bin/:/usr/bin/:/usr/local/bin/" in script
    assert "export USER=gda2" in script


def test_class2d_on_sge_has_no_prefer_directive(tmp_path: Path) -> None:
    """SGE has no soft preference: `prefer` (like nodes, constraints) is Slurm-only."""
    script = class2d_job(tmp_path, scheduler="sge").script
    assert "prefer" not in script and "gpu_a100" not in script
    assert "#$ -l gpu=1" in script.splitlines()


@pytest.mark.parametrize("preference", ["a b", "x\n#SBATCH --uid=0", "$(id)", "a'b", "", "x" * 600])
def test_a_hostile_preference_is_refused(tmp_path: Path, preference: str) -> None:
    with pytest.raises(ParameterError, match=r"parameters\.cluster\.prefer"):
        class2d_job(tmp_path, partition_preference=preference)


def step(tmp_path: Path, **params: Any) -> Any:
    root = tmp_path / "work"
    (root / "step").mkdir(parents=True, exist_ok=True)
    node = {
        "parameters": {
            "workingdir": str(root / "step"),
            "cluster": {"commands": ['cat "$RECIPEWRAP"']},
            **params,
        }
    }
    message = start_messages(Recipe.from_json({"1": node, "start": [[1, []]]}))[0]
    return prepare_job(message, profile_for(root), JobContext(transport_args=[]))


def test_wrapper_path_and_the_same_recipewrapper_agree(tmp_path: Path) -> None:
    wrap = tmp_path / "work" / "step" / ".recipewrap"
    job = step(tmp_path, wrapper=str(wrap), recipewrapper=f"{tmp_path}/work/step/./.recipewrap")
    assert job.message_path == wrap
    assert f'cat "{wrap}"' in job.script


def test_wrapper_path_and_a_different_recipewrapper_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match="name different recipe-wrapper files"):
        step(
            tmp_path,
            wrapper=f"{tmp_path}/work/step/.recipewrap",
            recipewrapper=f"{tmp_path}/work/step/other",
        )


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("{class2d_dir}/.recipewrap", "'{class2d_dir}/.recipewrap' is a relative path"),
        ("step/.recipewrap", "'step/.recipewrap' is a relative path"),
        ("../xia2", "'../xia2' is a relative path"),
        ("@/../../etc/passwd-new", "must not contain '..'"),
        ("/etc/zbatch.recipewrap", "outside the profile's workdir_root"),
        ("@/step/x\n#SBATCH --uid=0", "contains a line break"),
        ("@/step/x\u2028y", "contains a line break"),
        ("rel/x\ny", "contains a line break"),
        ("@/step/$(id)", "is not allowed"),
        ("@/step/a b", "is not allowed"),
    ],
)
def test_hostile_wrapper_paths_are_refused(tmp_path: Path, value: str, words: str) -> None:
    value = value.replace("@", str(tmp_path / "work"), 1) if value.startswith("@") else value
    with pytest.raises(ParameterError) as caught:
        step(tmp_path, wrapper=value)
    message = str(caught.value)
    assert words in message
    assert "parameters.wrapper" in message and "\n" not in message


def test_a_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "work" / "step").mkdir(parents=True)
    (tmp_path / "work" / "step" / "escape").symlink_to(outside)
    with pytest.raises(ParameterError, match="a symbolic link leads out of it"):
        step(tmp_path, wrapper=f"{tmp_path}/work/step/escape/.recipewrap")


def test_a_wrapper_path_without_commands_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "work"
    node = {"parameters": {"workingdir": str(root), "wrapper": f"{root}/.recipewrap"}}
    message = start_messages(Recipe.from_json({"1": node, "start": [[1, []]]}))[0]
    with pytest.raises(ParameterError, match=r"names a recipe-wrapper file .* no commands"):
        prepare_job(message, profile_for(root), JobContext(transport_args=[]))


def test_wrapper_names_are_unchanged(tmp_path: Path) -> None:
    """No "/": still a wrapper's name, run by `zbatch wrap --wrap NAME`."""
    assert not names_recipewrapper("xia2") and names_recipewrapper("/a/.recipewrap")
    assert wrapper_name({"wrapper": "xia2"}) == "xia2"
    assert wrapper_name({"wrapper": "/a/.recipewrap"}) is None
    root = tmp_path / "work"
    node: dict[str, Any] = {
        "parameters": {"workingdir": str(root), "wrapper": "generic"},
        "job_parameters": {"command": ["true"]},
    }
    message = start_messages(Recipe.from_json({"1": node, "start": [[1, []]]}))[0]
    job = prepare_job(message, profile_for(root), JobContext(transport_args=[]))
    assert " wrap --wrap generic " in job.script
    with pytest.raises(WrapperError, match="unknown wrapper"):
        node["parameters"] = {**node["parameters"], "wrapper": "nosuchwrapper"}
        message = start_messages(Recipe.from_json({"1": node, "start": [[1, []]]}))[0]
        prepare_job(message, profile_for(root), JobContext(transport_args=[]))
