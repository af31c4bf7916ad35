"""What goes wrong between zbatch and a cluster: a restarted sshd, unknown hosts, stuck tools."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import ZbatchRun, one_line_error, wrapper_step, write_recipe
from tests.integration.test_clusters import FINAL, Backend
from zbatch.model.profiles import load_profile
from zbatch.service.ledger import Ledger

SERVICES = Path(__file__).resolve().parents[2] / "scripts" / "services"


@pytest.mark.slurm
@pytest.mark.ssh
def test_tracking_survives_an_sshd_restart(tmp_path: Path) -> None:
    workdir = Path("/tmp/zbatch-cluster-tests") / tmp_path.name
    backend = Backend(load_profile("slurm-over-ssh"), workdir, Ledger(tmp_path / "l.sqlite"))
    entries = [backend.submit(["sleep 4", "echo done"]) for _ in range(3)]
    backend.tracker.poll_once()
    restarted = subprocess.run(
        [str(SERVICES / "restart"), "sshd"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert restarted.returncode == 0, restarted.stderr
    finished = [backend.wait_for(e, FINAL, timeout=120) for e in entries]
    assert [(e.state, e.exit_code) for e in finished] == [("succeeded", 0)] * 3
    backend.cluster.close()


def ssh_profile(tmp_path: Path, **connection: Any) -> Path:
    data = yaml.safe_load(
        (Path(__file__).resolve().parents[2] / "site-configs" / "slurm-over-ssh.yaml").read_text()
    )
    data["connection"].update(connection)
    path = tmp_path / "ssh-profile.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def one_step(tmp_path: Path) -> Path:
    step = wrapper_step(["unused"])
    del step["parameters"]["wrapper"]
    step["parameters"]["cluster"]["commands"] = ["true"]
    step["parameters"]["workingdir"] = str(tmp_path / "job")
    return write_recipe(tmp_path / "r.json", {"1": step, "start": [[1, {}]]})


@pytest.mark.ssh
def test_unknown_host_key_is_refused(tmp_path: Path, zbatch: ZbatchRun) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    profile = ssh_profile(tmp_path, known_hosts=str(empty))
    line = one_line_error(zbatch("submit", str(one_step(tmp_path)), "--profile", str(profile)))
    assert "127.0.0.1" in line and str(empty) in line


@pytest.mark.ssh
def test_changed_host_key_is_refused(tmp_path: Path, zbatch: ZbatchRun) -> None:
    profile = ssh_profile(tmp_path, known_hosts="/var/lib/zbatch-services/ssh/known_hosts.wrong")
    line = one_line_error(zbatch("submit", str(one_step(tmp_path)), "--profile", str(profile)))
    assert "127.0.0.1" in line and "known_hosts.wrong" in line


def test_unreachable_host_fails_within_the_timeout(tmp_path: Path, zbatch: ZbatchRun) -> None:
    profile = ssh_profile(tmp_path, port=1, connect_timeout_s=3)
    started = time.monotonic()
    line = one_line_error(zbatch("submit", str(one_step(tmp_path)), "--profile", str(profile)))
    assert time.monotonic() - started < 30
    assert "127.0.0.1:1" in line


def fake_tool(directory: Path, name: str, body: str) -> None:
    directory.mkdir(exist_ok=True)
    path = directory / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ("sleep 60", "sbatch did not answer within 2 s"),
        (
            "echo 'sbatch: error: Batch job submission failed: "
            "Invalid partition name specified' >&2; exit 1",
            "Invalid partition name specified",
        ),
        ("echo 'this is not a job id'", "sbatch printed no job id"),
    ],
)
def test_broken_scheduler_commands_give_a_clear_error(
    tmp_path: Path, zbatch: ZbatchRun, body: str, words: str
) -> None:
    bin_dir = tmp_path / "bin"
    fake_tool(bin_dir, "sbatch", body)
    data = yaml.safe_load(
        (Path(__file__).resolve().parents[2] / "site-configs" / "slurm-local.yaml").read_text()
    )
    data["connection"]["command_timeout_s"] = 2
    profile = tmp_path / "p.yaml"
    profile.write_text(yaml.safe_dump(data))
    started = time.monotonic()
    result = zbatch(
        "submit",
        str(one_step(tmp_path)),
        "--profile",
        str(profile),
        env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
    )
    assert time.monotonic() - started < 30
    assert words in one_line_error(result)


@pytest.mark.slurm
@pytest.mark.ssh
def test_status_and_cancel_commands_over_ssh(tmp_path: Path, zbatch: ZbatchRun) -> None:
    step = wrapper_step(["unused"])
    del step["parameters"]["wrapper"]
    step["parameters"]["cluster"]["commands"] = ["sleep 120"]
    step["parameters"]["workingdir"] = str(Path("/tmp/zbatch-cluster-tests") / tmp_path.name)
    recipe = write_recipe(tmp_path / "r.json", {"1": step, "start": [[1, {}]]})
    submitted = zbatch("submit", str(recipe), "--profile", "slurm-over-ssh", "--json")
    assert submitted.returncode == 0, submitted.stderr
    (entry,) = json.loads(submitted.stdout)["jobs"]
    job_id = entry["job_id"]
    cancelled = zbatch("cancel", job_id)
    assert cancelled.returncode == 0, cancelled.stderr
    deadline = time.monotonic() + 60
    while True:
        (state,) = json.loads(zbatch("status", "--json", job_id).stdout)["jobs"]
        if state["state"] == "cancelled" or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert state["state"] == "cancelled"
