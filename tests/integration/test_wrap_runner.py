"""`zbatch wrap` as a job runs it: outputs in zocalo's order, heartbeats, signals, big output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wrapper_step
from zbatch.injob.outbox import Outbox
from zbatch.model.jobs import outbox_path, result_record_path
from zbatch.model.message import start_messages
from zbatch.model.recipe import Recipe
from zbatch.transport.embedded import EmbeddedTransport

CHANNELS = {
    "starting": 2,
    "success": 3,
    "failure": 4,
    "completed": 5,
    "updates": 6,
    "result-individual-file": 7,
    "result-all-files": 8,
}


def write_step(tmp_path: Path, command: list[str], **job_parameters: Any) -> Path:
    step = wrapper_step(command, output=CHANNELS)
    step["job_parameters"].update(job_parameters, working_directory=str(tmp_path / "run"))
    nodes = {str(n): {"queue": name} for name, n in CHANNELS.items()}
    recipe = Recipe.from_json({"1": step, **nodes, "start": [[1, {}]]})
    path = tmp_path / "zbatch-t-1.recipewrap.json"
    path.write_text(json.dumps(start_messages(recipe)[0].to_body()))
    return path


def wrap_argv(recipewrapper: Path, db: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "zbatch",
        "wrap",
        "--wrap",
        "generic",
        "--recipewrapper",
        str(recipewrapper),
        "--transport",
        "embedded",
        "--embedded-db",
        str(db),
    ]


def sent(db: Path) -> list[tuple[str, Any]]:
    """(queue, payload) of every message the wrapper sent, in order."""
    transport = EmbeddedTransport(db)
    rows = transport.db.execute("SELECT queue, body FROM messages ORDER BY id").fetchall()
    return [(queue, json.loads(body)["payload"]) for queue, body in rows]


def test_outputs_follow_zocalos_order(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "out.txt").write_text("x")
    path = write_step(tmp_path, ["echo", "hello"], result_files=["*.txt"])
    db = tmp_path / "q.sqlite"
    done = subprocess.run(wrap_argv(path, db), capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "hello\n"
    queues = [queue for queue, _ in sent(db)]
    assert queues == [
        "starting",
        "result-individual-file",
        "result-all-files",
        "success",
        "completed",
    ]
    record = json.loads(Path(result_record_path(str(path))).read_text())
    assert record["success"] and record["results_sent"] and record["command"] == ["echo", "hello"]


def test_failure_exits_non_zero_unlike_zocalo_wrap(tmp_path: Path) -> None:
    path = write_step(tmp_path, ["false"])
    db = tmp_path / "q.sqlite"
    done = subprocess.run(wrap_argv(path, db), capture_output=True, text=True, check=False)
    assert done.returncode == 1
    assert sent(db) == [
        ("starting", "Starting processing"),
        ("failure", "false exited with code 1"),
        ("completed", "Finished processing"),
    ]


def test_dry_run_prints_the_command(tmp_path: Path) -> None:
    path = write_step(tmp_path, ["echo", "$(touch x)", "a b"])
    argv = [*wrap_argv(path, tmp_path / "q.sqlite"), "--dry-run", "--json"]
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    assert json.loads(done.stdout)["argv"] == ["echo", "$(touch x)", "a b"]
    assert not (tmp_path / "q.sqlite").exists()


def test_heartbeats_arrive_while_the_tool_runs(tmp_path: Path) -> None:
    path = write_step(tmp_path, ["sleep", "7"])
    db = tmp_path / "q.sqlite"
    subprocess.run(wrap_argv(path, db), capture_output=True, check=True)
    beats = [json.loads(body) for _, body in EmbeddedTransport(db).broadcasts("transient.status")]
    processing = [b for b in beats if b["status"] == 4]
    assert len(processing) >= 2, beats
    assert {"host", "task", "status", "statustext", "workflows"} <= set(beats[0])
    assert beats[-1]["status"] == 6


def test_sigterm_reaches_the_tool_and_the_step_fails(tmp_path: Path) -> None:
    marker = tmp_path / "got-term"
    script = f"trap 'echo term > {marker}; exit 143' TERM; sleep 60 & wait"
    path = write_step(tmp_path, ["bash", "-c", script])
    db = tmp_path / "q.sqlite"
    proc = subprocess.Popen(
        wrap_argv(path, db), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 20
    while not any(q == "starting" for q, _ in sent(db)) if db.exists() else True:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 143
    assert marker.read_text() == "term\n"
    assert ("failure", "stopped by SIGTERM") in sent(db)


def test_a_gigabyte_of_output_does_not_grow_the_runner(tmp_path: Path) -> None:
    path = write_step(tmp_path, ["head", "-c", str(1024**3), "/dev/zero"])
    # Measured from a fresh parent whose only child is the runner: this test process's own
    # RUSAGE_CHILDREN also holds the peaks of every other test's subprocesses.
    measure = (
        "import json, resource, subprocess, sys\n"
        "done = subprocess.run(json.loads(sys.argv[1]), stdout=subprocess.DEVNULL,"
        " stderr=subprocess.PIPE, check=False)\n"
        "print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        "sys.stderr.write(done.stderr.decode(errors='replace'))\n"
    )
    argv = json.dumps(wrap_argv(path, tmp_path / "q.sqlite"))
    done = subprocess.run(
        [sys.executable, "-c", measure, argv], capture_output=True, text=True, check=False
    )
    code, peak_kib = (int(word) for word in done.stdout.split())
    assert code == 0, done.stderr
    peak_mib = peak_kib / 1024
    assert peak_mib < 200, f"runner peaked at {peak_mib:.0f} MiB"


def test_results_survive_an_unreachable_queue(tmp_path: Path) -> None:
    path = write_step(tmp_path, ["echo", "kept"])
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the queue's folder should be")
    done = subprocess.run(
        wrap_argv(path, blocker / "q.sqlite"),
        capture_output=True,
        text=True,
        env={**os.environ, "ZBATCH_SEND_RETRY_S": "1"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    record = json.loads(Path(result_record_path(str(path))).read_text())
    assert record["success"] and not record["results_sent"]
    kept = Path(outbox_path(str(path)))
    db = tmp_path / "q.sqlite"
    transport = EmbeddedTransport(db)
    Outbox.from_text(kept, kept.read_text(), lambda: transport).send_via(transport)
    assert [q for q, _ in sent(db)] == ["starting", "success", "completed"]


@pytest.mark.parametrize(
    "args",
    [
        ["--recipewrapper", "/nonexistent.json", "--wrap", "generic"],
        ["--recipewrapper", "/etc/hostname"],
        ["--wrap", "nosuch", "--recipewrapper", "/etc/hostname"],
    ],
)
def test_usage_errors_are_one_line(args: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "zbatch", "wrap", *args], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("zbatch: error: ")
