"""`zbatch wrap` inside a real Slurm job: scancel's SIGTERM reaches the tool."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.helpers import wrapper_step
from zbatch.clusters import cluster_for
from zbatch.model.jobs import JobState, result_record_path
from zbatch.model.message import start_messages
from zbatch.model.profiles import load_profile
from zbatch.model.recipe import Recipe
from zbatch.prepare.job_files import JobContext
from zbatch.service.ledger import Ledger
from zbatch.service.submitter import Submitter
from zbatch.service.tracker import Tracker, cancel_jobs
from zbatch.transport.embedded import EmbeddedTransport
from zbatch.transport.factory import TransportConfig


@pytest.mark.slurm
def test_scancel_reaches_the_tool_and_the_step_reports_cancelled(tmp_path: Path) -> None:
    workdir = Path("/tmp/zbatch-cluster-tests") / tmp_path.name
    marker = workdir / "tool-got-sigterm"
    script = f"trap 'echo TERM > {marker}; exit 143' TERM; sleep 120 & wait"
    step = wrapper_step(["bash", "-c", script], output={"failure": 2})
    step["parameters"]["workingdir"] = str(workdir)
    recipe = Recipe.from_json({"1": step, "2": {"queue": "failures"}, "start": [[1, {}]]})
    message = start_messages(recipe)[0]
    profile = load_profile("slurm-local")
    cluster = cluster_for(profile)
    ledger = Ledger(tmp_path / "ledger.sqlite")
    config = TransportConfig("embedded", str(tmp_path / "queue.sqlite"))
    entry = Submitter(profile, cluster, ledger, JobContext(config.job_args())).submit(message).entry
    tracker = Tracker(cluster, ledger, profile.name, interval_s=0.5)
    transport = EmbeddedTransport(config.db_path())
    deadline = time.monotonic() + 60
    while (
        transport.depth("failures") == 0
        and not any(b for _, b in transport.broadcasts("transient.status"))
        and time.monotonic() < deadline
    ):
        time.sleep(0.2)  # the wrapper has started once it sends its first heartbeat
    time.sleep(1)
    cancel_jobs(cluster, ledger, [ledger.get(entry.key) or entry])
    while tracker.has_active() and time.monotonic() < deadline + 60:
        tracker.poll_once()
        time.sleep(0.5)
    final = ledger.get(entry.key)
    assert final is not None and final.state == JobState.CANCELLED.value, final
    assert marker.read_text() == "TERM\n"
    record = json.loads(Path(result_record_path(final.message_path)).read_text())
    assert record["stopped_by"] == "SIGTERM" and not record["success"]
    failure = transport.receive("failures", 5)
    assert failure is not None and json.loads(failure.body)["payload"] == "stopped by SIGTERM"
    cluster.close()
