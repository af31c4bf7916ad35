"""Issue 10's confinement cases, each one that got through before: paths out of workdir_root,
links planted in the root or at the names zbatch writes, files and folders others could read.

Everything runs through the real CLI (`zbatch render`, `zbatch run`, `zbatch wrap`) or the
real file-writing code; the SSH cases are in test_confinement_ssh.py.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from tests.helpers import ZbatchRun, one_line_error, result_records, wrapper_step, write_recipe
from zbatch.connections.local import LocalConnection
from zbatch.model.jobs import atomic_write, result_record_path
from zbatch.model.message import start_messages
from zbatch.model.recipe import Recipe
from zbatch.service.ledger import Ledger
from zbatch.transport.embedded import EmbeddedTransport

VICTIM_TEXT = "the victim's own content\n"


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture()
def outside(tmp_path: Path) -> Path:
    """A folder beside the root, holding a victim file (mode 0640) nothing may touch."""
    folder = tmp_path / "outside"
    folder.mkdir()
    victim = folder / "victim"
    victim.write_text(VICTIM_TEXT)
    victim.chmod(0o640)
    return folder


def untouched(outside: Path) -> None:
    """The victim is as it was and nothing new appeared beside it."""
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]
    assert (outside / "victim").read_text() == VICTIM_TEXT
    assert mode(outside / "victim") == 0o640


def step(root: Path, wrapper: str = "generic", **parameters: Any) -> dict[str, Any]:
    node = wrapper_step(["true"])
    node["parameters"].update({"wrapper": wrapper, "workingdir": str(root / "job"), **parameters})
    return {"1": node, "start": [[1, {}]]}


def run(zbatch: ZbatchRun, tmp_path: Path, profile: Path, recipe: dict[str, Any]) -> Any:
    path = write_recipe(tmp_path / "recipe.json", recipe)
    return zbatch("run", str(path), "--profile", str(profile), "--timeout", "60")


def refused(result: Any, *words: str) -> None:
    """`zbatch run` checks every step before submitting any: one line, exit 2, no job."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert "submitted" not in result.stdout, result.stdout
    line = one_line_error(result)
    for word in words:
        assert word in line, line


# -- zbatch render with the shipped synchrotron-example (root /dls, host unreachable) ----------
@pytest.mark.parametrize("key", ["recipewrapper", "recipefile", "recipeenvironment"])
@pytest.mark.parametrize("target", ["/etc/passwd", "/home/someone-else/.bashrc"])
def test_synchrotron_example_refuses_envelope_files_outside_dls(
    key: str, target: str, tmp_path: Path, zbatch: ZbatchRun
) -> None:
    recipe = step(Path("/dls/mx/data/mx1-1"), "xia2", **{key: target})
    path = write_recipe(tmp_path / "recipe.json", recipe)
    result = zbatch("render", "--profile", "synchrotron-example", "--recipe", str(path))
    line = one_line_error(result)
    assert f"parameters.{key} {target!r} is outside the profile's workdir_root '/dls'" in line


def test_synchrotron_example_renders_paths_inside_dls_without_reaching_its_host(
    tmp_path: Path, zbatch: ZbatchRun
) -> None:
    """Its login node is unreachable from here: render checks the text of paths only."""
    recipe = step(Path("/dls/mx/data/mx1-1"), "xia2", recipewrapper="/dls/mx/data/mx1-1/job/.w")
    path = write_recipe(tmp_path / "recipe.json", recipe)
    result = zbatch("render", "--profile", "synchrotron-example", "--recipe", str(path))
    assert result.returncode == 0, result.stderr
    assert "--recipewrapper /dls/mx/data/mx1-1/job/.w" in result.stdout
    assert "--workdir-root /dls" in result.stdout  # the wrapper is told the root too


# -- zbatch run on a local profile with a workdir_root -----------------------------------------
@pytest.mark.parametrize("key", ["recipewrapper", "recipefile", "recipeenvironment"])
def test_run_refuses_envelope_files_outside_the_root(
    key: str, tmp_path: Path, make_profile: Any, work_root: Path, outside: Path, zbatch: ZbatchRun
) -> None:
    """Before: `zbatch run` overwrote the file outside the root with the step message."""
    result = run(
        zbatch, tmp_path, make_profile(), step(work_root, **{key: str(outside / "victim")})
    )
    refused(result, f"parameters.{key}", "outside the profile's workdir_root")
    untouched(outside)
    assert not (work_root / "job").exists()


@pytest.mark.parametrize(
    ("key", "below_link"),
    [
        ("workingdir", "job"),
        ("workingdir", ""),
        ("recipewrapper", "m.json"),
        ("recipefile", "r.json"),
        ("recipeenvironment", "e.json"),
    ],
)
def test_run_refuses_a_link_in_the_root_that_leads_out(
    key: str,
    below_link: str,
    tmp_path: Path,
    make_profile: Any,
    work_root: Path,
    outside: Path,
    zbatch: ZbatchRun,
) -> None:
    """Before: the check was on the text only, and files were created outside the root."""
    (work_root / "link").symlink_to(outside)
    target = str(work_root / "link" / below_link).rstrip("/")
    result = run(zbatch, tmp_path, make_profile(), step(work_root, **{key: target}))
    refused(result, f"parameters.{key}", f"resolves to '{outside}", "symbolic link")
    untouched(outside)


def test_run_refuses_a_link_at_the_envelope_file_name(
    tmp_path: Path, make_profile: Any, work_root: Path, outside: Path, zbatch: ZbatchRun
) -> None:
    (work_root / "job").mkdir()
    (work_root / "job" / "m.json").symlink_to(outside / "victim")
    recipe = step(work_root, recipewrapper=str(work_root / "job" / "m.json"))
    refused(run(zbatch, tmp_path, make_profile(), recipe), "resolves to", "victim")
    untouched(outside)


@pytest.mark.parametrize("key", ["working_directory", "results_directory"])
@pytest.mark.parametrize("wrapper", ["xia2", "fast_ep"])
@pytest.mark.parametrize("where", ["outside", "link", "dotdot"])
def test_run_refuses_wrapper_folders_outside_the_root(
    key: str,
    wrapper: str,
    where: str,
    tmp_path: Path,
    make_profile: Any,
    work_root: Path,
    outside: Path,
    zbatch: ZbatchRun,
) -> None:
    """job_parameters.working_directory was not checked at all."""
    (work_root / "link").symlink_to(outside)
    value = {"outside": str(outside), "link": str(work_root / "link"), "dotdot": "../../x"}[where]
    recipe = step(work_root, wrapper)
    recipe["1"]["job_parameters"] = {key: value, "fast_ep": {"data": "/x.mtz"}}
    result = run(zbatch, tmp_path, make_profile(), recipe)
    refused(result, f"job_parameters.{key}")
    untouched(outside)
    assert not (tmp_path / "x").exists()


def test_a_run_leaves_private_files_and_folders(
    tmp_path: Path, make_profile: Any, work_root: Path, state_dir: Path, zbatch: ZbatchRun
) -> None:
    """Before: the message (the whole recipe) was 0644, folders followed the umask."""
    old = os.umask(0o022)  # what the services run with; the subprocess inherits it
    try:
        result = run(zbatch, tmp_path, make_profile(), step(work_root))
    finally:
        os.umask(old)
    assert result.returncode == 0, result.stdout + result.stderr
    job = work_root / "job"
    (message,) = job.glob("*.recipewrap.json")
    (script,) = job.glob("zbatch-*.sh")
    (record,) = job.glob("*.result.json")
    assert (mode(message), mode(script), mode(record), mode(job)) == (0o600, 0o700, 0o600, 0o700)
    (queue,) = work_root.rglob("queue.sqlite")
    assert (mode(queue), mode(queue.parent)) == (0o600, 0o700)
    assert (mode(state_dir), mode(state_dir / "ledger.sqlite")) == (0o700, 0o600)
    localbatch = tmp_path / "localbatch"  # make_profile's local.state_dir
    records = list((localbatch / "jobs").glob("*.json"))
    assert records and {mode(p) for p in records} == {0o600}
    assert {mode(localbatch), mode(localbatch / "jobs"), mode(localbatch / "slots")} == {0o700}
    assert mode(localbatch / "seq") == 0o600


# -- files are written without following planted links ---------------------------------------
@pytest.mark.parametrize("planted", ["final", "old temporary", "both"])
def test_put_file_replaces_planted_links_without_following_them(
    planted: str, work_root: Path, outside: Path
) -> None:
    """Before: `.NAME.PID.tmp` was opened and chmod-ed through a planted link (mode 755)."""
    folder = work_root / "job"
    folder.mkdir()
    script = folder / "zbatch-abc-1.sh"
    if planted in ("final", "both"):
        script.symlink_to(outside / "victim")
    if planted in ("old temporary", "both"):
        (folder / f".{script.name}.{os.getpid()}.tmp").symlink_to(outside / "victim")
    LocalConnection().put_file(PurePosixPath(script), "#!/bin/bash\necho new\n", 0o700)
    untouched(outside)
    assert not script.is_symlink() and script.read_text() == "#!/bin/bash\necho new\n"
    assert mode(script) == 0o700


def test_atomic_write_replaces_planted_links_without_following_them(
    work_root: Path, outside: Path
) -> None:
    """What `zbatch wrap` writes its result record and outbox with."""
    record = work_root / "zbatch-abc-1.result.json"
    record.symlink_to(outside / "victim")
    (work_root / f".{record.name}.{os.getpid()}.tmp").symlink_to(outside / "victim")
    atomic_write(record, "{}")
    untouched(outside)
    assert not record.is_symlink() and record.read_text() == "{}" and mode(record) == 0o600


def test_put_file_will_not_create_folders_through_a_dangling_link(
    work_root: Path, outside: Path
) -> None:
    (work_root / "job").symlink_to(outside / "not-yet")
    with pytest.raises(Exception, match="not a folder"):
        LocalConnection().put_file(PurePosixPath(work_root / "job" / "m.json"), "{}")
    untouched(outside)


def test_ledger_and_embedded_queue_are_created_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        ledger = Ledger(tmp_path / "new-state" / "ledger.sqlite")
        ledger.close()
        queue = EmbeddedTransport(tmp_path / "new-queue" / "queue.sqlite")
        queue.publish("q", b"{}", {})
        wal = tmp_path / "new-queue" / "queue.sqlite-wal"
        assert wal.exists() and mode(wal) == 0o600  # SQLite copies the main file's mode
        queue.disconnect()
    finally:
        os.umask(old)
    assert mode(tmp_path / "new-state") == 0o700
    assert mode(tmp_path / "new-state" / "ledger.sqlite") == 0o600
    assert mode(tmp_path / "new-queue") == 0o700
    assert mode(tmp_path / "new-queue" / "queue.sqlite") == 0o600


# -- inside the job: zbatch wrap --workdir-root --------------------------------------------------
CHANNELS = {"success": 2, "failure": 3, "completed": 4, "result-individual-file": 5}


def wrap_in_job(
    tmp_path: Path, root: Path | None, wrapper: str, job_parameters: dict[str, Any]
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any], list[tuple[str, Any]]]:
    """Run the real `zbatch wrap` in a job folder below the root, as the job script does."""
    job = tmp_path / "work" / "job"
    job.mkdir(parents=True, exist_ok=True)
    node = wrapper_step(["true"], output=CHANNELS)
    node["parameters"]["wrapper"] = wrapper
    node["job_parameters"] = job_parameters
    nodes = {str(n): {"queue": name} for name, n in CHANNELS.items()}
    recipe = Recipe.from_json({"1": node, **nodes, "start": [[1, {}]]})
    message = job / "zbatch-t-1.recipewrap.json"
    message.write_text(json.dumps(start_messages(recipe)[0].to_body()))
    db = tmp_path / "q.sqlite"
    argv = [sys.executable, "-m", "zbatch", "wrap", "--wrap", wrapper]
    argv += ["--recipewrapper", str(message), "--transport", "embedded", "--embedded-db", str(db)]
    if root is not None:
        argv += ["--workdir-root", str(root)]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=job, timeout=120, check=False)
    assert "Traceback" not in done.stderr, done.stderr
    record = json.loads(Path(result_record_path(str(message))).read_text())
    rows = EmbeddedTransport(db).db.execute("SELECT queue, body FROM messages ORDER BY id")
    sent = [(queue, json.loads(body)["payload"]) for queue, body in rows.fetchall()]
    return done, record, sent


@pytest.mark.parametrize(
    ("patterns", "words"),
    [
        (["/etc/*"], "must be relative to the working directory"),
        ([""], "is empty"),
        (["../*"], "without '..'"),
        (["*.txt", "sub/../../*"], "without '..'"),
        (["a**b/x"], "result_files[0]"),
    ],
)
@pytest.mark.parametrize("confined", [True, False])
def test_generic_result_globs_out_of_the_folder_end_in_failure_and_completed(
    patterns: list[str], words: str, confined: bool, tmp_path: Path
) -> None:
    """Before: an exception after the tool ran, so neither failure nor completed was sent."""
    root = tmp_path / "work" if confined else None
    done, record, sent = wrap_in_job(
        tmp_path, root, "generic", {"command": ["true"], "result_files": patterns}
    )
    assert done.returncode == 1
    assert not record["success"] and words in record["reason"]
    assert [queue for queue, _ in sent] == ["failure", "completed"]
    assert words in sent[0][1]


def test_generic_does_not_report_a_link_leading_out_of_the_root(
    tmp_path: Path, outside: Path
) -> None:
    command = ["sh", "-c", f"echo ok > ok.txt; ln -s {outside / 'victim'} leak.txt"]
    done, record, sent = wrap_in_job(
        tmp_path, tmp_path / "work", "generic", {"command": command, "result_files": ["*.txt"]}
    )
    assert done.returncode == 0, done.stderr
    assert record["success"] and [f["file_name"] for f in record["files"]] == ["ok.txt"]
    assert [queue for queue, _ in sent] == ["result-individual-file", "success", "completed"]
    assert "leak.txt" in done.stderr and "not reported" in done.stderr  # logged, not sent
    untouched(outside)


@pytest.mark.parametrize("wrapper", ["xia2", "fast_ep", "generic"])
@pytest.mark.parametrize("where", ["absolute", "dotdot", "link", "link below"])
def test_wrapper_working_directory_outside_the_root_fails_cleanly(
    wrapper: str, where: str, tmp_path: Path, outside: Path
) -> None:
    """Checked again in the job: its root comes from the job script, not from the message."""
    root = tmp_path / "work"
    root.mkdir()
    (root / "link").symlink_to(outside)
    given = {
        "absolute": str(outside),
        "dotdot": "../../outside",
        "link": str(root / "link"),
        "link below": str(root / "link" / "deeper"),
    }[where]
    params = {"working_directory": given, "command": ["true"], "fast_ep": {"data": "/x.mtz"}}
    done, record, sent = wrap_in_job(tmp_path, root, wrapper, params)
    assert done.returncode == 1
    assert "outside the profile's workdir_root" in record["reason"]
    assert [queue for queue, _ in sent] == ["failure", "completed"]
    untouched(outside)


def test_a_link_planted_as_the_tools_folder_is_refused(tmp_path: Path, outside: Path) -> None:
    """xia2 runs in <working_directory>/xia2: a link there must not lead the tool out."""
    root = tmp_path / "work"
    (root / "job").mkdir(parents=True)
    (root / "job" / "xia2").symlink_to(outside)
    done, record, sent = wrap_in_job(tmp_path, root, "xia2", {})
    assert done.returncode == 1 and "resolves to" in record["reason"]
    assert [queue for queue, _ in sent] == ["failure", "completed"]
    untouched(outside)


def test_a_working_directory_inside_the_root_is_created_private(tmp_path: Path) -> None:
    root = tmp_path / "work"
    done, record, _ = wrap_in_job(
        tmp_path, root, "generic", {"working_directory": "sub/dir", "command": ["true"]}
    )
    assert done.returncode == 0 and record["success"], record
    assert mode(root / "job" / "sub") == 0o700 and mode(root / "job" / "sub" / "dir") == 0o700


def test_result_records_of_a_run_are_in_the_root(
    tmp_path: Path, make_profile: Any, work_root: Path, zbatch: ZbatchRun
) -> None:
    """The job script passes the profile's root to `zbatch wrap`; the message cannot."""
    recipe = step(work_root)
    recipe["1"]["job_parameters"] = {"command": ["true"], "result_files": ["/etc/*"]}
    result = run(zbatch, tmp_path, make_profile(), recipe)
    assert result.returncode == 1
    (record,) = result_records(work_root)
    assert "must be relative to the working directory" in record["reason"]
