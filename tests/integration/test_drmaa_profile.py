"""A DRMAA profile carries SGE's settings: zbatch exports them before it loads libdrmaa, and
the `zbatch` command starts itself again with the GLIBC_TUNABLES this glibc needs for it (glibc
reads that only when a process starts). Nothing is set by hand.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import write_recipe

REPO = Path(__file__).resolve().parents[2]
# Everything libdrmaa needs from outside, none of which the user sets any more.
SET_BY_ZBATCH = ("SGE_ROOT", "SGE_CELL", "DRMAA_LIBRARY_PATH", "GLIBC_TUNABLES")
ZBATCH = Path(sys.executable).parent / "zbatch"  # the installed console script


def drmaa_profile(tmp_path: Path, work_root: Path) -> Path:
    settings = yaml.safe_load((REPO / "site-configs" / "sge-drmaa.yaml").read_text())
    settings.update(workdir_root=str(work_root))
    profile = tmp_path / "drmaa.yaml"
    profile.write_text(yaml.safe_dump(settings))
    return profile


def bare_environment(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k not in SET_BY_ZBATCH}, **extra}


@pytest.mark.drmaa
@pytest.mark.parametrize("how", ["script", "module"])
def test_a_drmaa_profile_runs_with_nothing_set_by_hand(
    tmp_path: Path, work_root: Path, how: str
) -> None:
    profile = drmaa_profile(tmp_path, work_root)
    step = {"cluster": {"commands": ["echo drmaa-ran"]}, "workingdir": str(work_root / "s")}
    recipe = write_recipe(
        tmp_path / "r.json",
        {"1": {"queue": "cluster.submission", "parameters": step}, "start": [[1, {}]]},
    )
    command = [str(ZBATCH)] if how == "script" else [sys.executable, "-m", "zbatch"]
    done = subprocess.run(
        [*command, "run", str(recipe), "-p", str(profile)],
        env=bare_environment(),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 step(s) succeeded, 0 failed" in done.stdout, done.stdout
    (out,) = (work_root / "s").glob("zbatch-*.out")
    assert "drmaa-ran" in out.read_text()


@pytest.mark.drmaa
def test_this_glibc_needs_the_tunable_and_a_second_start_does_not_loop(
    tmp_path: Path, work_root: Path
) -> None:
    """Without the restart this glibc cannot load libdrmaa (so the test above tests it); a
    process already started again fails with the one-line reason instead of starting again."""
    profile = drmaa_profile(tmp_path, work_root)
    plain = subprocess.run(
        [sys.executable, "-c", "import drmaa"],
        env=bare_environment(
            SGE_ROOT="/var/lib/gridengine",
            DRMAA_LIBRARY_PATH="/usr/lib/gridengine-drmaa/lib/libdrmaa.so.1.0",
        ),
        capture_output=True,
        text=True,
        check=False,
    )
    assert "cannot allocate memory in static TLS block" in plain.stderr, plain.stderr
    recipe = write_recipe(
        tmp_path / "r.json",
        {
            "1": {"queue": "cluster.submission", "parameters": {"cluster": {"commands": ["true"]}}},
            "start": [[1, {}]],
        },
    )
    again = subprocess.run(
        [str(ZBATCH), "run", str(recipe), "-p", str(profile)],
        env=bare_environment(ZBATCH_RESTARTED="1"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert again.returncode == 2, again.stdout + again.stderr
    (line,) = again.stderr.splitlines()
    assert line.startswith("zbatch: error: DRMAA: cannot load libdrmaa (")
    assert "GLIBC_TUNABLES=glibc.rtld.optional_static_tls=16384" in line
