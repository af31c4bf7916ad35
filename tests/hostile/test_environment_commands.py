"""Commands stay commands: `generic` runs any program, so only where a profile allows commands.

The gate is at submission (the job cannot know its profile): `zbatch run`, `zbatch render` and
the dispatcher refuse the step, and nothing runs. A profile may also list the wrappers it
permits.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ZbatchRun, one_line_error, write_recipe
from zbatch.model.message import start_messages
from zbatch.model.recipe import Recipe
from zbatch.transport.base import REASON_HEADER
from zbatch.transport.embedded import EmbeddedTransport

REFUSAL = "does not allow recipe commands"


def generic_recipe(workdir: Path, command: list[str]) -> dict[str, Any]:
    return {
        "1": {
            "queue": "cluster.submission",
            "parameters": {
                "wrapper": "generic",
                "workingdir": str(workdir),
                "cluster": {"time_limit": "0:05:00"},
            },
            "job_parameters": {"command": command},
        },
        "start": [[1, {}]],
    }


def test_shipped_local_profile_refuses_generic_and_nothing_runs(
    tmp_path: Path, zbatch: ZbatchRun
) -> None:
    workdir = tmp_path / "w"
    canary = workdir / "CANARY"
    path = write_recipe(tmp_path / "r.json", generic_recipe(workdir, ["sh", "-c", "touch CANARY"]))
    home = {"HOME": str(tmp_path / "home")}  # `zbatch run` keeps its queue under ~/zbatch-runs
    result = zbatch("run", str(path), "--profile", "local", env=home)
    assert result.returncode == 2 and result.stdout == "", result.stdout  # checked, none sent
    assert REFUSAL in one_line_error(result)
    line = one_line_error(zbatch("render", "--profile", "local", "--recipe", str(path)))
    assert REFUSAL in line and "'generic'" in line
    time.sleep(1)
    assert not canary.exists() and not workdir.exists()


def test_shipped_synchrotron_profile_refuses_generic(tmp_path: Path, zbatch: ZbatchRun) -> None:
    recipe = generic_recipe(Path("/dls/mx/data/x"), ["sh", "-c", "touch /tmp/zbatch-CANARY"])
    path = write_recipe(tmp_path / "r.json", recipe)
    line = one_line_error(zbatch("render", "-p", "synchrotron-example", "--recipe", str(path)))
    assert REFUSAL in line and "synchrotron-example" in line


def test_dispatcher_dead_letters_generic_on_a_profile_without_commands(
    tmp_path: Path, make_profile: Any
) -> None:
    workdir = tmp_path / "work" / "d"
    canary = workdir / "CANARY"
    profile = make_profile(name="no-commands", allow_commands=False)
    db = tmp_path / "queue.sqlite"
    recipe = Recipe.from_json(generic_recipe(workdir, ["sh", "-c", "touch CANARY"]))
    EmbeddedTransport(db).send_step(start_messages(recipe)[0])
    argv = [sys.executable, "-m", "zbatch", "dispatcher", "--profile", str(profile)]
    done = subprocess.run(
        [*argv, "--transport", "embedded", "--embedded-db", str(db), "--max-messages", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    transport = EmbeddedTransport(db)
    dead = transport.receive("dlq.cluster.submission", 0)
    assert dead is not None and REFUSAL in dead.headers[REASON_HEADER], done.stderr
    assert transport.depth("cluster.submission") == 0
    time.sleep(1)
    assert not canary.exists()


def test_profile_with_commands_runs_generic(
    tmp_path: Path, make_profile: Any, work_root: Path, zbatch: ZbatchRun
) -> None:
    path = write_recipe(tmp_path / "r.json", generic_recipe(work_root / "ok", ["true"]))
    result = zbatch("render", "--profile", str(make_profile()), "--recipe", str(path))
    assert result.returncode == 0, result.stderr
    assert "wrap --wrap generic" in result.stdout


@pytest.mark.parametrize(
    ("wrappers", "wrapper", "expected"),
    [
        (["xia2", "fast_ep"], "generic", "wrapper 'generic' is not permitted by profile"),
        (["xia2"], "fast_ep", "permitted: xia2"),
        ([], "xia2", "permitted: none"),
    ],
)
def test_a_profile_lists_the_wrappers_it_permits(
    wrappers: list[str],
    wrapper: str,
    expected: str,
    tmp_path: Path,
    make_profile: Any,
    work_root: Path,
    zbatch: ZbatchRun,
) -> None:
    recipe = generic_recipe(work_root / "x", ["true"])
    recipe["1"]["parameters"]["wrapper"] = wrapper
    path = write_recipe(tmp_path / "r.json", recipe)
    profile = make_profile(wrappers=wrappers)
    assert expected in one_line_error(
        zbatch("render", "--profile", str(profile), "--recipe", str(path))
    )


def test_a_listed_wrapper_is_accepted(
    tmp_path: Path, make_profile: Any, work_root: Path, zbatch: ZbatchRun
) -> None:
    recipe = generic_recipe(work_root / "x", ["true"])
    recipe["1"]["parameters"]["wrapper"] = "xia2"
    recipe["1"]["job_parameters"] = {"xia2": {"images": "/data/x_0001.cbf:1:10"}}
    path = write_recipe(tmp_path / "r.json", recipe)
    profile = make_profile(wrappers=["xia2"], allow_commands=False)
    result = zbatch("render", "--profile", str(profile), "--recipe", str(path))
    assert result.returncode == 0, result.stderr
    assert "wrap --wrap xia2" in result.stdout
