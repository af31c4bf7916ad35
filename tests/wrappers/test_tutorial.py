"""docs/wrapper-tutorial.md works as written: its package installs, registers, shows the
command line the tutorial prints under `--dry-run`, and passes its test.

The package is installed into a scratch directory on PYTHONPATH, never into the shared venv,
so no other test sees the tutorial's `count_spots` wrapper. The tutorial's commands name
zbatch's environment `$ZBATCH` (the checkout's .venv/bin); here that is this interpreter's.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import one_line_error
from tests.wrappers.support import REPO

pytestmark = pytest.mark.wrappers

TUTORIAL = REPO / "docs" / "wrapper-tutorial.md"
VENV_BIN = Path(sys.executable).parent
# A file of the tutorial: a line naming it in backticks and ending in ':', then a fenced block.
FILE_BLOCK = re.compile(r"^`(count-spots-wrapper/[^`]+)`[^\n]*:\n\n```\w*\n(.*?)^```", re.M | re.S)
# A command of the tutorial: an indented line (a Markdown code block), not a fenced file.
COMMAND = re.compile(r"^    (\S.*)$", re.M)
# Variables the wrapper must not inherit from a test run inside a batch job.
CPU_VARIABLES = ("SLURM_CPUS_PER_TASK", "NSLOTS", "ZBATCH_CPUS")


def tutorial_files() -> dict[str, str]:
    return dict(FILE_BLOCK.findall(TUTORIAL.read_text()))


def commands() -> list[str]:
    return COMMAND.findall(FILE_BLOCK.sub("", TUTORIAL.read_text()))


def the_command(words: str) -> str:
    (found,) = [line for line in commands() if words in line]
    return found


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """The tutorial's package, written out and installed: (its folder, the environment)."""
    home = tmp_path_factory.mktemp("home")
    for name, text in tutorial_files().items():
        path = home / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (home / "count-spots-wrapper/tests/standins/dials.count_spots").chmod(0o755)
    site = home / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps"]
    subprocess.run(
        [*pip, "--target", str(site), str(home / "count-spots-wrapper")],
        check=True,
        capture_output=True,
        timeout=120,
    )
    env = {k: v for k, v in os.environ.items() if k not in CPU_VARIABLES}
    return home / "count-spots-wrapper", {**env, "PYTHONPATH": str(site)}


def run_documented(line: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A tutorial command as a user types it: leading VAR=value words, then $ZBATCH/tool."""
    words = shlex.split(line.replace("$ZBATCH/", f"{VENV_BIN}/"))
    assignments = {}
    while "=" in words[0] and not words[0].startswith("/"):
        key, _, value = words.pop(0).partition("=")
        assignments[key] = value
    return subprocess.run(
        words,
        cwd=cwd,
        env={**env, **assignments},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_tutorial_names_its_files() -> None:
    assert sorted(tutorial_files()) == [
        "count-spots-wrapper/count_spots_wrapper.py",
        "count-spots-wrapper/pyproject.toml",
        "count-spots-wrapper/tests/conftest.py",
        "count-spots-wrapper/tests/standins/dials.count_spots",
        "count-spots-wrapper/tests/step.recipewrap.json",
        "count-spots-wrapper/tests/test_count_spots.py",
    ]


def test_tutorial_commands_work_on_a_fresh_debian() -> None:
    """Debian has no `python`; the package lives outside the checkout; pytest is installed."""
    found = commands()
    assert found, "no commands found"
    assert not [c for c in found if re.match(r"python\s", c)], found  # a bare `python`
    assert "$ZBATCH/pip install -e ~/count-spots-wrapper" in found
    assert "$ZBATCH/pip install pytest" in found
    assert not [c for c in found if "./count-spots-wrapper" in c], found


def test_the_recipewrapper_example_has_the_five_keys() -> None:
    message = json.loads(tutorial_files()["count-spots-wrapper/tests/step.recipewrap.json"])
    assert list(message) == ["environment", "payload", "recipe", "recipe-path", "recipe-pointer"]
    text = TUTORIAL.read_text()
    assert all(f"| `{key}` |" in text for key in message), "each key is explained"


def test_tutorial_wrapper_is_listed_as_shown(package: tuple[Path, dict[str, str]]) -> None:
    folder, env = package
    listed = run_documented("$ZBATCH/zbatch wrappers list", folder, env)
    assert listed.returncode == 0, listed.stderr
    shown = the_command("[count_spots_wrapper:CountSpotsWrapper]")
    assert shown in listed.stdout.splitlines()


def test_dry_run_prints_the_command_the_tutorial_shows(
    package: tuple[Path, dict[str, str]],
) -> None:
    folder, env = package
    done = run_documented(the_command("--dry-run"), folder, env)
    assert done.returncode == 0, done.stderr
    assert the_command("command: dials.count_spots") in done.stdout.splitlines()
    assert f"working directory: {folder}" in done.stdout.splitlines()


def test_tutorial_package_passes_its_own_test(package: tuple[Path, dict[str, str]]) -> None:
    folder, env = package
    tests = run_documented(the_command("-m pytest"), folder, env)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "1 passed" in tests.stdout


def test_dry_run_refuses_a_bad_parameter_in_one_line(
    package: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    folder, env = package
    message = json.loads(tutorial_files()["count-spots-wrapper/tests/step.recipewrap.json"])
    message["recipe"]["1"]["job_parameters"]["count_spots"]["min_spot_size"] = "2; rm -rf ~"
    bad = tmp_path / "bad.recipewrap.json"
    bad.write_text(json.dumps(message))
    line = the_command("--dry-run").replace("tests/step.recipewrap.json", str(bad))
    done = run_documented(line, folder, env)
    assert done.returncode == 2
    assert "would not reach the tool as one value" in one_line_error(done)
