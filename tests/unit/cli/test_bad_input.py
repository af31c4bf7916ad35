"""Malformed and hostile input: one clear line, a non-zero exit, nothing run that was not asked.

Every case goes through the real `zbatch` command line. Hostile values try to create a canary
file; the canary must never appear.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ZbatchRun, one_line_error, wrapper_step, write_recipe

CANARY = "/tmp/zbatch-canary-bad-input"
TOUCH = f"$(touch {CANARY})"

Mutation = Callable[[dict[str, Any]], None]


def cluster(**values: Any) -> Mutation:
    return lambda node: node["parameters"]["cluster"].update(values)


def params(**values: Any) -> Mutation:
    return lambda node: node["parameters"].update(values)


# (case id, change to a valid wrapper step, words the error must contain)
STEP_CASES: list[tuple[str, Mutation, str]] = [
    ("cpus beyond limit", cluster(cpus_per_task=64), "beyond profile 'test-local'"),
    ("time beyond limit", cluster(time_limit="99:00:00"), "time limit (s) 356400 is beyond"),
    ("memory beyond limit", cluster(memory_per_node="1T"), "memory (MB) 1048576 is beyond"),
    ("workingdir dotdot", params(workingdir="/tmp/../etc"), "must not contain '..'"),
    ("workingdir relative", params(workingdir="data/run"), "must be an absolute path"),
    ("workingdir substitution", params(workingdir=f"/tmp/{TOUCH}"), "parameters.workingdir"),
    ("workingdir outside root", params(workingdir="/var/tmp/elsewhere"), "outside the profile"),
    ("workingdir with colon", params(workingdir="/tmp/host:path"), "parameters.workingdir"),
    ("job name semicolon", cluster(job_name=f"x;touch {CANARY}"), "parameters.cluster.job_name"),
    ("partition newline", cluster(partition="debug\n#SBATCH --uid=0"), "partition"),
    ("env key injection", cluster(environment={TOUCH: "1"}), "environment variable name"),
    ("env value NUL", cluster(environment={"A": "x\u0000y"}), "contains a NUL byte"),
    ("env value 10 MB", cluster(environment={"A": "x" * 10_000_000}), "the limit is 1048576"),
    ("recipewrapper backticks", params(recipewrapper=f"/tmp/`touch {CANARY}`"), "recipewrapper"),
    ("wrapper name injection", params(wrapper=f"generic; touch {CANARY}"), "parameters.wrapper"),
    ("unknown wrapper", params(wrapper="nosuchtool"), "unknown wrapper 'nosuchtool'"),
    ("unknown cluster key", cluster(cpus=4), "unknown key parameters.cluster.cpus"),
    ("malformed time", cluster(time_limit="6 hours"), "is not a duration"),
    ("constraint quote", cluster(constraints="a' b"), "parameters.cluster.constraints"),
    ("array injection", cluster(array="1-4;id"), "parameters.cluster.array"),
    ("qos backtick", cluster(qos="`id`"), "parameters.cluster.qos"),
    ("cpus not a number", cluster(cpus_per_task="four"), "must be a whole number"),
    ("unmapped legacy queue", params(cluster_queue="bogus"), "cluster_queue 'bogus' is not mapped"),
    (
        "raw qsub args refused",
        params(cluster_submission_parameters="-V -l h_rt=1:00:00"),
        "option '-V' has no zbatch equivalent",
    ),
    (
        "raw qsub args unbalanced",
        params(cluster_submission_parameters="-N 'x"),
        "No closing quotation",
    ),
    ("exclusive not bool", cluster(exclusive="maybe"), "must be true or false"),
]


def valid_recipe(workdir: Path) -> dict[str, Any]:
    step = wrapper_step(["echo", "hi"])
    step["parameters"]["workingdir"] = str(workdir / "step")
    return {"1": step, "start": [[1, []]]}


@pytest.fixture(autouse=True)
def no_canary() -> Any:
    Path(CANARY).unlink(missing_ok=True)
    yield
    assert not Path(CANARY).exists(), "a hostile value was executed"


@pytest.mark.parametrize(("_case", "mutate", "words"), STEP_CASES, ids=[c[0] for c in STEP_CASES])
def test_bad_step_is_refused_by_render(
    _case: str, mutate: Mutation, words: str, tmp_path: Path, make_profile: Any, zbatch: ZbatchRun
) -> None:
    profile = make_profile(
        limits={"max_cpus": 4, "max_memory": "8G", "max_time_limit": "24:00:00"},
        allow_commands=False,
    )
    recipe = valid_recipe(tmp_path / "work")
    mutate(recipe["1"])
    path = write_recipe(tmp_path / "recipe.json", recipe)
    line = one_line_error(zbatch("render", "--profile", str(profile), "--recipe", str(path)))
    assert words in line
    assert "step 1" in line or "wrapper" in line


def test_the_valid_recipe_renders(tmp_path: Path, make_profile: Any, zbatch: ZbatchRun) -> None:
    """The baseline of the cases above is itself fine, so each refusal is the mutation's."""
    path = write_recipe(tmp_path / "recipe.json", valid_recipe(tmp_path / "work"))
    result = zbatch("render", "--profile", str(make_profile()), "--recipe", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("#!/bin/bash")


def test_commands_refused_when_profile_only_runs_wrappers(
    tmp_path: Path, make_profile: Any, zbatch: ZbatchRun
) -> None:
    recipe = valid_recipe(tmp_path / "work")
    del recipe["1"]["parameters"]["wrapper"]
    recipe["1"]["parameters"]["cluster"]["commands"] = [f"touch {CANARY}"]
    path = write_recipe(tmp_path / "recipe.json", recipe)
    line = one_line_error(
        zbatch(
            "render", "--profile", str(make_profile(allow_commands=False)), "--recipe", str(path)
        )
    )
    assert "only runs named wrappers" in line


def test_wrapper_and_commands_together_are_ambiguous(
    tmp_path: Path, make_profile: Any, zbatch: ZbatchRun
) -> None:
    recipe = valid_recipe(tmp_path / "work")
    recipe["1"]["parameters"]["cluster"]["commands"] = ["echo hi"]
    path = write_recipe(tmp_path / "recipe.json", recipe)
    line = one_line_error(zbatch("render", "--profile", str(make_profile()), "--recipe", str(path)))
    assert "names both a wrapper and commands" in line


FILE_CASES: list[tuple[str, bytes, str]] = [
    ("invalid JSON", b'{"1": {', "not valid JSON"),
    (
        "missing node",
        json.dumps({"1": {"output": 5}, "start": [[1, []]]}).encode(),
        "refers to node 5, which is missing",
    ),
    ("non-UTF-8", b'{"1": {"queue": "\xff\xfe"}, "start": [[1, []]]}', "not valid JSON"),
    ("not an object", b"[1, 2]", "non-empty JSON object"),
]


@pytest.mark.parametrize(("_case", "data", "words"), FILE_CASES, ids=[c[0] for c in FILE_CASES])
@pytest.mark.parametrize("command", ["run", "render"])
def test_bad_recipe_files(
    _case: str,
    data: bytes,
    words: str,
    command: str,
    tmp_path: Path,
    make_profile: Any,
    zbatch: ZbatchRun,
) -> None:
    path = tmp_path / "recipe.json"
    path.write_bytes(data)
    args = ["run", str(path)] if command == "run" else ["render", "--recipe", str(path)]
    line = one_line_error(zbatch(*args, "--profile", str(make_profile())))
    assert str(path) in line and words in line


def test_missing_recipe_file(make_profile: Any, zbatch: ZbatchRun) -> None:
    line = one_line_error(
        zbatch("run", "/nonexistent/recipe.json", "--profile", str(make_profile()))
    )
    assert "cannot read recipe" in line


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"defaults": {"cpus": "many"}}, "defaults.cpus"),
        ({"colour": "blue"}, "colour: unknown key"),
        ({"scheduler": "lsf"}, "scheduler"),
    ],
)
def test_broken_profile_file(
    change: dict[str, Any], words: str, tmp_path: Path, make_profile: Any, zbatch: ZbatchRun
) -> None:
    profile = make_profile(**change)
    path = write_recipe(tmp_path / "recipe.json", valid_recipe(tmp_path / "work"))
    line = one_line_error(zbatch("render", "--profile", str(profile), "--recipe", str(path)))
    assert str(profile) in line and words in line


def test_unknown_profile_name(tmp_path: Path, zbatch: ZbatchRun) -> None:
    path = write_recipe(tmp_path / "recipe.json", valid_recipe(tmp_path / "work"))
    assert "unknown profile 'atlantis'" in one_line_error(
        zbatch("render", "--profile", "atlantis", "--recipe", str(path))
    )


def test_param_without_equals(tmp_path: Path, make_profile: Any, zbatch: ZbatchRun) -> None:
    path = write_recipe(tmp_path / "recipe.json", valid_recipe(tmp_path / "work"))
    line = one_line_error(
        zbatch(
            "render", "--profile", str(make_profile()), "--recipe", str(path), "--param", "novalue"
        )
    )
    assert "KEY=VALUE" in line


def test_missing_step(tmp_path: Path, make_profile: Any, zbatch: ZbatchRun) -> None:
    path = write_recipe(tmp_path / "recipe.json", valid_recipe(tmp_path / "work"))
    line = one_line_error(
        zbatch("render", "--profile", str(make_profile()), "--recipe", str(path), "--step", "99")
    )
    assert "no node 99" in line


def test_hostile_step_in_run_is_refused_before_anything_runs(
    tmp_path: Path, make_profile: Any, zbatch: ZbatchRun
) -> None:
    recipe = valid_recipe(tmp_path / "work")
    bad = copy.deepcopy(recipe["1"])
    bad["parameters"]["workingdir"] = f"/tmp/{TOUCH}"
    recipe = {"1": bad, "start": [[1, []]]}
    path = write_recipe(tmp_path / "recipe.json", recipe)
    result = zbatch("run", str(path), "--profile", str(make_profile()))
    assert result.returncode == 2 and result.stdout == ""
    assert "step 1: parameters.workingdir" in one_line_error(result)
