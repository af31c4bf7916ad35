"""docs/wrapper-tutorial.md works as written: its package installs, registers and passes its test.

The package is installed into a scratch directory on PYTHONPATH, never into the shared venv,
so no other test sees the tutorial's `count_spots` wrapper.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.wrappers.support import REPO

pytestmark = pytest.mark.wrappers

TUTORIAL = REPO / "docs" / "wrapper-tutorial.md"
# A file of the tutorial: a line naming it in backticks and ending in ':', then a fenced block.
FILE_BLOCK = re.compile(r"^`(count-spots-wrapper/[^`]+)`[^\n]*:\n\n```\w*\n(.*?)^```", re.M | re.S)


def tutorial_files() -> dict[str, str]:
    return dict(FILE_BLOCK.findall(TUTORIAL.read_text()))


def test_tutorial_names_its_files() -> None:
    assert sorted(tutorial_files()) == [
        "count-spots-wrapper/count_spots_wrapper.py",
        "count-spots-wrapper/pyproject.toml",
        "count-spots-wrapper/tests/conftest.py",
        "count-spots-wrapper/tests/standins/dials.count_spots",
        "count-spots-wrapper/tests/test_count_spots.py",
    ]


def test_tutorial_package_passes_its_own_test(tmp_path: Path) -> None:
    for name, text in tutorial_files().items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (tmp_path / "count-spots-wrapper/tests/standins/dials.count_spots").chmod(0o755)
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps"]
    subprocess.run(
        [*pip, "--target", str(site), str(tmp_path / "count-spots-wrapper")],
        check=True,
        capture_output=True,
        timeout=120,
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    listed = subprocess.run(
        [sys.executable, "-m", "zbatch", "wrappers", "list"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "count_spots      count_spots_wrapper:CountSpotsWrapper" in listed.stdout
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=tmp_path / "count-spots-wrapper",
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "1 passed" in tests.stdout
