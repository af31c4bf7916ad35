"""Issue 10's confinement cases over the real loopback sshd (scripts/services/up sshd).

The "remote" host is this machine, so the remote file system is checked with os.stat and
os.path.realpath here. Paths are resolved where the job runs: by SFTP REALPATH through the
profile's connection, never by this process.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from tests.helpers import ZbatchRun, one_line_error, wrapper_step, write_recipe
from tests.integration.test_ssh_connection import config
from zbatch.connections.ssh import SshConnection
from zbatch.model.jobs import FileToPut

pytestmark = pytest.mark.ssh

SHIPPED = Path(__file__).resolve().parents[2] / "site-configs"
VICTIM_TEXT = "the victim's own content\n"


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture()
def conn() -> Iterator[SshConnection]:
    connection = SshConnection(config())
    yield connection
    connection.close()


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    return work


@pytest.fixture()
def outside(tmp_path: Path) -> Path:
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "victim").write_text(VICTIM_TEXT)
    (folder / "victim").chmod(0o640)
    return folder


def untouched(outside: Path) -> None:
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]
    assert (outside / "victim").read_text() == VICTIM_TEXT
    assert mode(outside / "victim") == 0o640


def ssh_profile(tmp_path: Path, root: Path, shipped: str = "slurm-over-ssh") -> Path:
    """A shipped SSH profile (127.0.0.1:2222) confined to `root`."""
    data = yaml.safe_load((SHIPPED / f"{shipped}.yaml").read_text())
    data["workdir_root"] = str(root)
    path = tmp_path / f"{shipped}-confined.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_remote_resolution_agrees_with_realpath_in_one_round_trip(
    conn: SshConnection, root: Path, outside: Path
) -> None:
    (root / "link").symlink_to(outside)
    (root / "dangling").symlink_to(outside / "not-yet")
    (root / "relative").symlink_to("../outside")
    (root / "a").symlink_to(root / "b")
    (root / "b").symlink_to(root / "link")  # a -> b -> link -> outside
    (root / "real").mkdir()
    paths = [
        str(root),
        str(root / "real" / "new" / "deeper" / "file"),
        str(root / "link"),
        str(root / "link" / "x" / "y"),
        str(root / "dangling"),
        str(root / "dangling" / "z"),
        str(root / "relative" / "victim"),
        str(root / "a" / "q"),
        str(root / "missing" / "link"),
        "/",
    ]
    conn.warm_up()
    before, _ = conn.packets()
    resolved = conn.resolve_paths(paths)
    sent, _ = conn.packets()
    assert resolved == [os.path.realpath(p) for p in paths]
    assert sent - before == 1  # every ancestor of every path asked for in one write


@pytest.mark.parametrize("planted", ["final", "old temporary", "both"])
def test_sftp_staging_replaces_planted_links_without_following_them(
    planted: str, conn: SshConnection, root: Path, outside: Path
) -> None:
    job = root / "job"
    job.mkdir()
    message, script = job / "zbatch-abc-1.recipewrap.json", job / "zbatch-abc-1.sh"
    for path in (message, script):
        if planted in ("final", "both"):
            path.symlink_to(outside / "victim")
        if planted in ("old temporary", "both"):
            (job / f".{path.name}.{os.getpid()}.tmp").symlink_to(outside / "victim")
    conn.put_files(
        [
            FileToPut(PurePosixPath(message), '{"new": 1}'),
            FileToPut(PurePosixPath(script), "#!/bin/bash\n", 0o700),
        ]
    )
    untouched(outside)
    assert not message.is_symlink() and message.read_text() == '{"new": 1}'
    assert not script.is_symlink() and script.read_text() == "#!/bin/bash\n"
    assert (mode(message), mode(script)) == (0o600, 0o700)


def test_sftp_creates_private_folders_and_exact_modes(conn: SshConnection, root: Path) -> None:
    deep = root / "new" / "deeper"
    conn.put_files([FileToPut(PurePosixPath(deep / "m.json"), "{}")])
    conn.put_file(PurePosixPath(deep / "open.txt"), "x", 0o644)  # a mode given is kept exactly
    assert (mode(root / "new"), mode(deep)) == (0o700, 0o700)
    assert (mode(deep / "m.json"), mode(deep / "open.txt")) == (0o600, 0o644)
    assert sorted(p.name for p in deep.iterdir()) == ["m.json", "open.txt"]  # no temp left


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("workingdir", "link/job"),
        ("workingdir", "link"),
        ("recipewrapper", "link/m.json"),
        ("recipefile", "link/r.json"),
        ("recipeenvironment", "dangling"),
        ("recipewrapper", "job/m.json"),  # a link planted at the file's own name
    ],
)
@pytest.mark.parametrize("shipped", ["slurm-over-ssh", "sge-over-ssh"])
def test_ssh_submit_refuses_links_that_lead_out_of_the_root(
    key: str,
    value: str,
    shipped: str,
    tmp_path: Path,
    root: Path,
    outside: Path,
    zbatch: ZbatchRun,
) -> None:
    """Resolved on the job's host through the connection; nothing is staged or submitted."""
    (root / "link").symlink_to(outside)
    (root / "dangling").symlink_to(outside / "not-yet")
    (root / "job").mkdir()
    (root / "job" / "m.json").symlink_to(outside / "victim")
    node = wrapper_step(["true"])
    node["parameters"].update({"workingdir": str(root / "job"), key: str(root / value)})
    recipe = write_recipe(tmp_path / "r.json", {"1": node, "start": [[1, {}]]})
    result = zbatch("submit", str(recipe), "--profile", str(ssh_profile(tmp_path, root, shipped)))
    line = one_line_error(result)
    assert f"parameters.{key}" in line and f"resolves to '{outside}" in line, line
    untouched(outside)
    assert sorted(p.name for p in (root / "job").iterdir()) == ["m.json"]


@pytest.mark.parametrize("key", ["recipewrapper", "recipefile", "recipeenvironment"])
def test_ssh_submit_refuses_envelope_files_outside_the_root(
    key: str, tmp_path: Path, root: Path, outside: Path, zbatch: ZbatchRun
) -> None:
    node = wrapper_step(["true"])
    node["parameters"].update({"workingdir": str(root / "job"), key: str(outside / "victim")})
    recipe = write_recipe(tmp_path / "r.json", {"1": node, "start": [[1, {}]]})
    line = one_line_error(
        zbatch("submit", str(recipe), "--profile", str(ssh_profile(tmp_path, root)))
    )
    assert f"parameters.{key}" in line and "outside the profile's workdir_root" in line
    untouched(outside)
    assert not (root / "job").exists()


@pytest.mark.slurm
def test_ssh_submit_stages_the_message_and_script_for_the_jobs_user_only(
    tmp_path: Path, root: Path, zbatch: ZbatchRun
) -> None:
    node = wrapper_step(["true"])
    node["parameters"]["workingdir"] = str(root / "job")
    recipe = write_recipe(tmp_path / "r.json", {"1": node, "start": [[1, {}]]})
    profile = ssh_profile(tmp_path, root)
    result = zbatch("submit", str(recipe), "--profile", str(profile), "--wait", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    (entry,) = json.loads(result.stdout)["jobs"]
    assert entry["state"] == "succeeded", entry
    job = root / "job"
    (message,) = job.glob("*.recipewrap.json")
    (script,) = job.glob("zbatch-*.sh")
    assert (mode(job), mode(message), mode(script)) == (0o700, 0o600, 0o700)
    assert f"--workdir-root {root}" in script.read_text()
    record: dict[str, Any] = json.loads(next(job.glob("*.result.json")).read_text())
    assert record["success"], record
