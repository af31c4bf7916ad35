"""A site template that extends the shipped one, rendered and run by real Slurm.

Its own directive and set-up lines reach the job, and so does everything zbatch relies on:
the marker Slurm keeps with the job (duplicate protection) and the exit record.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helpers import ZbatchRun, write_recipe

REPO = Path(__file__).resolve().parents[2]
SITE_TEMPLATE = """{% extends "slurm.sh.j2" %}
{% block directives %}
#SBATCH --no-requeue
{% endblock %}
{% block setup %}
{{ super() -}}
echo site-setup-ran > site-setup.txt
{% endblock %}
"""


def site_profile(tmp_path: Path, work_root: Path) -> Path:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "slurm.sh.j2").write_text(SITE_TEMPLATE)
    settings = yaml.safe_load((REPO / "site-configs" / "slurm-local.yaml").read_text())
    settings.update(name="site-slurm", workdir_root=str(work_root), template_dir=str(templates))
    path = tmp_path / "site-slurm.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


@pytest.mark.slurm
def test_an_extending_site_template_keeps_marker_and_exit_record(
    tmp_path: Path, work_root: Path, zbatch: ZbatchRun
) -> None:
    profile = site_profile(tmp_path, work_root)
    checked = zbatch("profiles", "check", str(profile))
    assert checked.returncode == 0, checked.stderr
    workdir = work_root / "step"
    step = {"parameters": {"cluster": {"commands": ["echo hi"]}, "workingdir": str(workdir)}}
    recipe = write_recipe(
        tmp_path / "r.json", {"1": {"queue": "cluster.submission", **step}, "start": [[1, {}]]}
    )
    done = zbatch("run", str(recipe), "-p", str(profile))
    assert done.returncode == 0, done.stdout + done.stderr
    job = re.search(r"step 1 submitted as slurm job (\d+)", done.stdout)
    assert job is not None, done.stdout
    (script,) = workdir.glob("zbatch-*.sh")
    lines = script.read_text().splitlines()
    assert "#SBATCH --no-requeue" in lines and "umask 0022" in lines
    (marker,) = (line.split("zbatch:", 1)[1] for line in lines if "--comment=zbatch:" in line)
    shown = subprocess.run(
        ["scontrol", "show", "job", job.group(1)], capture_output=True, text=True, check=True
    )
    assert f"Comment=zbatch:{marker}" in shown.stdout, shown.stdout
    (record,) = workdir.glob("zbatch-*.exit")
    assert json.loads(record.read_text())["exit_code"] == 0
    assert (workdir / "site-setup.txt").read_text() == "site-setup-ran\n"
