"""`zbatch run` / `submit` / `render`: the checks made before anything is submitted.

Through the real CLI, with nothing submitted: every test here either fails a check or uses
--dry-run, so no scheduler is needed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ZbatchRun, one_line_error, wrapper_step, write_recipe
from zbatch.service.ledger import Ledger

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def chain(second: dict[str, Any]) -> dict[str, Any]:
    """Step 1 (fine) sends to step 2 on success: step 2 runs only later."""
    return {"1": wrapper_step(["true"], output={"success": 2}), "2": second, "start": [[1, {}]]}


def nothing_submitted(work_root: Path) -> None:
    assert list(work_root.iterdir()) == []
    assert list(Ledger().find()) == []


@pytest.mark.parametrize("command", ["run", "submit"])
def test_typo_in_a_later_step_is_refused_before_anything_is_submitted(
    command: str, tmp_path: Path, make_profile: Any, work_root: Path, zbatch: ZbatchRun
) -> None:
    late = wrapper_step(["true"])
    late["parameters"]["cluster"]["cpu_per_task"] = 2
    recipe = write_recipe(tmp_path / "r.json", chain(late))
    line = one_line_error(zbatch(command, str(recipe), "--profile", str(make_profile())))
    assert "step 2: unknown key parameters.cluster.cpu_per_task" in line
    assert zbatch(command, str(recipe), "-p", str(make_profile())).returncode == 2
    nothing_submitted(work_root)


@pytest.mark.parametrize("command", ["run", "submit"])
def test_later_step_over_the_profiles_limit_is_refused(
    command: str, tmp_path: Path, make_profile: Any, work_root: Path, zbatch: ZbatchRun
) -> None:
    late = wrapper_step(["true"])
    late["parameters"]["cluster"]["cpus_per_task"] = 64
    recipe = write_recipe(tmp_path / "r.json", chain(late))
    profile = make_profile(limits={"max_cpus": 4})
    line = one_line_error(zbatch(command, str(recipe), "--profile", str(profile)))
    assert line.startswith("zbatch: error: step 2: cpus") and "64" in line
    nothing_submitted(work_root)


@pytest.mark.parametrize("command", ["run", "submit"])
def test_unfilled_placeholder_is_refused_naming_step_key_and_placeholder(
    command: str, make_profile: Any, work_root: Path, zbatch: ZbatchRun
) -> None:
    recipe = str(EXAMPLES / "xia2-fast_ep.json")
    line = one_line_error(zbatch(command, recipe, "--profile", str(make_profile())))
    assert line == (
        "zbatch: error: step 1: job_parameters.xia2.images: placeholder {dataset} is not "
        "filled; give --param dataset=VALUE"
    )
    nothing_submitted(work_root)


def test_payload_placeholders_are_left_for_the_job(
    make_profile: Any, work_root: Path, zbatch: ZbatchRun
) -> None:
    """hello.json's step 2 takes `{payload[stdout]}` from step 1 when it runs."""
    done = zbatch(
        "run", str(EXAMPLES / "hello.json"), "-p", str(make_profile()), "-s", "who=x", "--dry-run"
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    nothing_submitted(work_root)


def test_unused_params_are_named_on_stderr(
    make_profile: Any, work_root: Path, zbatch: ZbatchRun
) -> None:
    done = zbatch(
        "run",
        str(EXAMPLES / "hello.json"),
        "-p",
        str(make_profile()),
        "--param",
        "who=x",
        "--param",
        "greeting=hi",
        "--set",
        "colour=red",
        "--dry-run",
    )
    assert done.returncode == 0, done.stderr
    assert (
        done.stderr
        == "zbatch: warning: no placeholder of the recipe uses --param greeting, colour\n"
    )
    nothing_submitted(work_root)


@pytest.mark.parametrize("flag", ["--param", "-s", "--set"])
def test_set_fills_placeholders_like_param(
    flag: str, tmp_path: Path, make_profile: Any, zbatch: ZbatchRun
) -> None:
    node = wrapper_step(["true"])
    node["parameters"]["cluster"]["job_name"] = "{name}"
    recipe = write_recipe(tmp_path / "r.json", {"1": node, "start": [[1, {}]]})
    done = zbatch(
        "run", str(recipe), "-p", str(make_profile()), flag, "name=filled-in", "--dry-run"
    )
    assert done.returncode == 0, done.stderr
    assert "# zbatch-local: name=filled-in" in done.stdout


@pytest.mark.parametrize("command", ["run", "submit"])
def test_dry_run_shows_every_wrapper_step_and_submits_nothing(
    command: str, make_profile: Any, work_root: Path, zbatch: ZbatchRun
) -> None:
    done = zbatch(
        command, str(EXAMPLES / "hello.json"), "-p", str(make_profile()), "-s", "who=x", "--dry-run"
    )
    assert done.returncode == 0, done.stderr
    headers = re.findall(r"^### step (\d+): .*zbatch-\w+-\d+\.sh \(workdir ", done.stdout, re.M)
    assert headers == ["1", "2"]
    commands = re.findall(r"^### command: .* wrap --wrap generic .*$", done.stdout, re.M)
    assert len(commands) == 2
    assert done.stdout.count("#!/bin/bash") == 2
    assert done.stdout.rstrip().endswith("dry run: 2 wrapper step(s) checked, nothing submitted")
    nothing_submitted(work_root)


def test_dry_run_of_an_invalid_recipe_fails_with_one_line(
    tmp_path: Path, make_profile: Any, zbatch: ZbatchRun
) -> None:
    late = wrapper_step(["true"])
    late["parameters"]["cluster"]["time_limit"] = "forever"
    recipe = write_recipe(tmp_path / "r.json", chain(late))
    line = one_line_error(zbatch("run", str(recipe), "-p", str(make_profile()), "--dry-run"))
    assert "step 2: time_limit" in line


def test_render_takes_the_recipe_as_run_and_submit_do(make_profile: Any, zbatch: ZbatchRun) -> None:
    recipe, profile = str(EXAMPLES / "hello.json"), str(make_profile())
    positional = zbatch("render", recipe, "-p", profile, "--step", "2")
    aliased = zbatch("render", "--recipe", recipe, "-p", profile, "--step", "2")
    assert positional.returncode == 0, positional.stderr
    assert positional.stdout == aliased.stdout and "name=hello-2" in positional.stdout
    assert "give the recipe" in one_line_error(zbatch("render", "-p", profile))


def test_run_help_example_names_a_placeholder_the_example_uses(zbatch: ZbatchRun) -> None:
    shown = zbatch("run", "--help").stdout
    example = re.search(r"zbatch run (examples/hello\.json .*--param (\w+)=\S+)\n", shown)
    assert example is not None, shown
    assert "{" + example.group(2) + "}" in (EXAMPLES / "hello.json").read_text()


def test_braces_that_are_not_placeholders_are_left_alone(
    tmp_path: Path, make_profile: Any, zbatch: ZbatchRun
) -> None:
    """awk programs and shell `${NAME}` are not recipe placeholders: nothing is refused."""
    shell = wrapper_step(["true"])
    del shell["parameters"]["wrapper"]
    shell["parameters"]["cluster"]["commands"] = ["echo ${HOME} | awk '{print $1}'"]
    recipe = {
        "1": wrapper_step(["awk", "{print $1}", "/dev/null"], output={"success": 2}),
        "2": shell,
        "start": [[1, {}]],
    }
    path = write_recipe(tmp_path / "r.json", recipe)
    done = zbatch("run", str(path), "-p", str(make_profile()), "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "echo ${HOME} | awk '{print $1}'" in done.stdout
