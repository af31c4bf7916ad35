"""Unknown `parameters.cluster` keys through the real CLI: refused by default (exit 2, one line
naming the key); with `unknown_cluster_keys: warn` the step renders and submits, the key is
logged once per process and never reaches the job script."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ZbatchRun, one_line_error, wrapper_step, write_recipe

# An older DLS key (HTCondor era) that dlstbx's parameter model ignores.
OLD_KEY = "transfer_input_files"


def recipe_with(tmp_path: Path, **cluster: Any) -> Path:
    step = wrapper_step(["true"])
    step["parameters"]["workingdir"] = str(tmp_path / "work" / "step")
    step["parameters"]["cluster"].update(cluster)
    return write_recipe(tmp_path / "recipe.json", {"1": step, "start": [[1, []]]})


@pytest.mark.parametrize("command", ["render", "submit"])
def test_an_unknown_key_is_refused_by_default(
    command: str, tmp_path: Path, make_profile: Any, zbatch: ZbatchRun
) -> None:
    recipe = recipe_with(tmp_path, **{OLD_KEY: "a.txt"})
    result = zbatch(command, str(recipe), "--profile", str(make_profile()))
    line = one_line_error(result)
    assert result.returncode == 2
    assert f"step 1: unknown key parameters.cluster.{OLD_KEY};" in line
    assert "unknown_cluster_keys: warn" in line  # the way out is named
    assert not list((tmp_path / "work").rglob("*.sh")), "nothing was staged"


def test_a_hostile_key_is_shown_escaped_on_one_line(
    tmp_path: Path, make_profile: Any, zbatch: ZbatchRun
) -> None:
    key = "x\n#SBATCH --uid=0\u2028\x1b[2J" + "y" * 5000
    result = zbatch(
        "render", str(recipe_with(tmp_path, **{key: 1})), "--profile", str(make_profile())
    )
    line = one_line_error(result)
    assert result.returncode == 2
    assert "parameters.cluster.'x\\n#SBATCH --uid=0\\u2028\\x1b[2J" in line
    assert len(line) < 1000 and "\x1b" not in line


def test_warn_renders_without_the_key(tmp_path: Path, make_profile: Any, zbatch: ZbatchRun) -> None:
    recipe = recipe_with(tmp_path, **{OLD_KEY: "/etc/passwd", "cpus_per_task": 2})
    profile = make_profile(unknown_cluster_keys="warn")
    result = zbatch("render", str(recipe), "--profile", str(profile))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("#!/bin/bash")
    assert OLD_KEY not in result.stdout and "/etc/passwd" not in result.stdout
    warnings = [line for line in result.stderr.splitlines() if OLD_KEY in line]
    assert len(warnings) == 1, result.stderr
    assert warnings[0].startswith("WARNING ")
    assert (
        f"step 1 of recipe preview: ignoring unknown key parameters.cluster.{OLD_KEY}"
        in (warnings[0])
    )


def test_warn_submits_and_logs_each_key_once(
    tmp_path: Path, make_profile: Any, zbatch: ZbatchRun
) -> None:
    """`submit` prepares the step twice (checked, then submitted): one warning per key."""
    recipe = recipe_with(tmp_path, **{OLD_KEY: "a", "requirements": "b"})
    profile = make_profile(unknown_cluster_keys="warn")
    result = zbatch("submit", str(recipe), "--profile", str(profile), "--json")
    assert result.returncode == 0, result.stderr
    for key in (OLD_KEY, "requirements"):
        found = [
            line for line in result.stderr.splitlines() if f"parameters.cluster.{key} " in line
        ]
        assert len(found) == 1, result.stderr
    (script,) = (tmp_path / "work" / "step").glob("zbatch-*.sh")
    assert OLD_KEY not in script.read_text() and "requirements" not in script.read_text()


def test_profiles_check_refuses_an_unknown_setting(make_profile: Any, zbatch: ZbatchRun) -> None:
    profile = make_profile(unknown_cluster_keys="ignore")
    line = one_line_error(zbatch("profiles", "check", str(profile)))
    assert "unknown_cluster_keys" in line and "'refuse' or 'warn'" in line
    good = zbatch("profiles", "check", str(make_profile("warn-ok", unknown_cluster_keys="warn")))
    assert good.returncode == 0, good.stderr
