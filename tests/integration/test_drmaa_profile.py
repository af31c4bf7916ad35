"""A DRMAA profile carries SGE's settings: zbatch exports them before it loads libdrmaa.

Only GLIBC_TUNABLES, which glibc reads when a process starts, still comes from outside.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import write_recipe

REPO = Path(__file__).resolve().parents[2]
SGE_ENV = Path("/var/lib/zbatch-services/sge.env")
SET_BY_THE_PROFILE = ("SGE_ROOT", "SGE_CELL", "DRMAA_LIBRARY_PATH")


def tunables() -> dict[str, str]:
    """GLIBC_TUNABLES as the services' sge.env sets it (empty when this glibc needs none)."""
    found = re.search(r"^export GLIBC_TUNABLES=(\S+)$", SGE_ENV.read_text(), re.M)
    return {"GLIBC_TUNABLES": found.group(1)} if found else {}


@pytest.mark.drmaa
def test_a_drmaa_profile_runs_without_the_sge_variables(tmp_path: Path, work_root: Path) -> None:
    settings = yaml.safe_load((REPO / "site-configs" / "sge-drmaa.yaml").read_text())
    settings.update(workdir_root=str(work_root))
    profile = tmp_path / "drmaa.yaml"
    profile.write_text(yaml.safe_dump(settings))
    step = {"cluster": {"commands": ["echo drmaa-ran"]}, "workingdir": str(work_root / "s")}
    recipe = write_recipe(
        tmp_path / "r.json",
        {"1": {"queue": "cluster.submission", "parameters": step}, "start": [[1, {}]]},
    )
    env = {k: v for k, v in os.environ.items() if k not in SET_BY_THE_PROFILE}
    done = subprocess.run(
        [sys.executable, "-m", "zbatch", "run", str(recipe), "-p", str(profile)],
        env={**env, **tunables()},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 step(s) succeeded, 0 failed" in done.stdout, done.stdout
    (out,) = (work_root / "s").glob("zbatch-*.out")
    assert "drmaa-ran" in out.read_text()
