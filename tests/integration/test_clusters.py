"""Real jobs on the real clusters, through every backend: local commands, SSH and DRMAA.

Each backend runs the same cases: success, exit 3, time limit, cancel of a held and of a
running job, and a job killed by SIGKILL; each must settle with the right state and code.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wrapper_step
from zbatch.clusters import Cluster, cluster_for
from zbatch.model.jobs import JobState
from zbatch.model.message import start_messages
from zbatch.model.profiles import Profile, load_profile
from zbatch.model.recipe import Recipe
from zbatch.prepare.job_files import JobContext
from zbatch.service.ledger import Ledger, LedgerEntry
from zbatch.service.submitter import Submitter
from zbatch.service.tracker import Tracker, cancel_jobs

BACKENDS = [
    pytest.param("slurm-local", marks=[pytest.mark.slurm], id="slurm-local"),
    pytest.param("slurm-over-ssh", marks=[pytest.mark.slurm, pytest.mark.ssh], id="slurm-ssh"),
    pytest.param("sge-local", marks=[pytest.mark.sge], id="sge-local"),
    pytest.param("sge-over-ssh", marks=[pytest.mark.sge, pytest.mark.ssh], id="sge-ssh"),
    pytest.param("sge-drmaa", marks=[pytest.mark.sge, pytest.mark.drmaa], id="sge-drmaa"),
]
HOLD = {"slurm": "--hold", "sge": "-h"}


class Backend:
    """One profile's cluster, ledger and tracker, with helpers to run a job to its end."""

    def __init__(self, profile: Profile, workdir: Path, ledger: Ledger) -> None:
        self.profile = profile
        self.workdir = workdir
        self.ledger = ledger
        self.cluster: Cluster = cluster_for(profile)
        self.submitter = Submitter(profile, self.cluster, ledger, JobContext())
        self.tracker = Tracker(self.cluster, ledger, profile.name, interval_s=0.5, max_interval_s=2)

    def submit(self, commands: list[str], **cluster: Any) -> LedgerEntry:
        step = wrapper_step(["unused"])
        del step["parameters"]["wrapper"]
        step["parameters"]["cluster"].update(cluster, commands=commands)
        step["parameters"]["workingdir"] = str(self.workdir / f"job{time.monotonic_ns()}")
        message = start_messages(Recipe.from_json({"1": step, "start": [[1, {}]]}))[0]
        return self.submitter.submit(message).entry

    def state(self, entry: LedgerEntry) -> LedgerEntry:
        self.tracker.poll_once()
        current = self.ledger.get(entry.key)
        assert current is not None
        return current

    def wait_for(self, entry: LedgerEntry, states: set[str], timeout: float = 150) -> LedgerEntry:
        deadline = time.monotonic() + timeout
        while True:
            current = self.state(entry)
            if current.state in states or time.monotonic() > deadline:
                return current
            time.sleep(0.5)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    profile = load_profile(request.param)
    workdir = Path("/tmp/zbatch-cluster-tests") / tmp_path.name
    workdir.mkdir(parents=True, exist_ok=True)
    backend = Backend(profile, workdir, Ledger(tmp_path / "ledger.sqlite"))
    yield backend
    active = [e for e in backend.ledger.find(active_only=True) if e.job_id]
    if active:
        backend.cluster.cancel([e.job_id for e in active if e.job_id])
    backend.cluster.close()


FINAL = {s.value for s in JobState if s.final}


def test_success(backend: Backend) -> None:
    done = backend.wait_for(backend.submit(["echo hello"]), FINAL)
    assert (done.state, done.exit_code) == ("succeeded", 0)
    assert (Path(done.workdir) / f"zbatch-{done.tag}.out").read_text() == "hello\n"


def test_exit_code_three(backend: Backend) -> None:
    done = backend.wait_for(backend.submit(["exit 3"]), FINAL)
    assert (done.state, done.exit_code) == ("failed", 3)


def test_killed_by_sigkill(backend: Backend) -> None:
    # SIGKILL to the job script itself: no trap can run, so no exit record is written.
    done = backend.wait_for(backend.submit(["kill -9 $$", "sleep 30"]), FINAL)
    assert done.state == "failed", done
    assert done.exit_code == 137, done


def test_cancel_running(backend: Backend) -> None:
    entry = backend.submit(["sleep 120"])
    running = backend.wait_for(entry, {"running"}, timeout=60)
    assert running.state == "running"
    time.sleep(1)
    cancel_jobs(backend.cluster, backend.ledger, [running])
    done = backend.wait_for(entry, FINAL)
    assert done.state == "cancelled", done


def test_cancel_held(backend: Backend) -> None:
    held_profile = backend.profile.model_copy(
        update={"extra_directives": [HOLD[backend.profile.scheduler]]}
    )
    backend.submitter.profile = held_profile
    entry = backend.submit(["echo never"])
    pending = backend.wait_for(entry, {"pending"}, timeout=30)
    assert pending.state == "pending"
    time.sleep(2)
    assert backend.state(entry).state == "pending"
    cancel_jobs(backend.cluster, backend.ledger, [pending])
    done = backend.wait_for(entry, FINAL)
    assert done.state == "cancelled", done
    assert not (Path(done.workdir) / f"zbatch-{done.tag}.out").exists()


def test_time_limit(backend: Backend) -> None:
    # Slurm counts whole minutes (the kill comes 60-75 s in); SGE's h_rt takes seconds.
    limit = "0:01:00" if backend.profile.scheduler == "slurm" else "0:00:10"
    done = backend.wait_for(backend.submit(["sleep 300"], time_limit=limit), FINAL, timeout=240)
    assert done.state == "timeout", done
