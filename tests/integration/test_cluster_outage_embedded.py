"""An unreachable cluster is backpressure: steps held, none taken, resumed, budget-bound.

The cluster is the real local scheduler behind a switch that makes `submit` fail as an
unreachable controller does (the real-service outages are in tests/faults).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from tests.integration.test_dispatcher_embedded import drain, recipe_message
from zbatch.clusters import Cluster, cluster_for
from zbatch.errors import ClusterUnavailable
from zbatch.model.jobs import PreparedJob
from zbatch.model.profiles import load_profile_file
from zbatch.prepare.job_files import JobContext
from zbatch.schedulers.base import SchedulerStatus
from zbatch.service.dispatcher import Dispatcher, DispatcherConfig
from zbatch.service.ledger import Ledger
from zbatch.transport.base import REASON_HEADER
from zbatch.transport.embedded import EmbeddedTransport
from zbatch.transport.factory import TransportConfig


class SwitchedCluster(Cluster):
    """A real cluster whose controller can be 'switched off' for submissions."""

    def __init__(self, real: Cluster) -> None:
        self.real = real
        self.scheduler_name = real.scheduler_name
        self.down = threading.Event()
        self.lose_reply = threading.Event()
        self.accepted: list[str] = []
        self.calls_while_down = 0

    def submit(self, job: PreparedJob) -> str:
        if self.lose_reply.is_set():
            # The controller took the job, then the connection broke before its answer.
            self.lose_reply.clear()
            self.accepted.append(self.real.submit(job))
            self.down.set()
            raise ClusterUnavailable("slurm controller unavailable: Socket timed out on send/recv")
        if self.down.is_set():
            self.calls_while_down += 1
            raise ClusterUnavailable(
                "slurm controller unavailable: sbatch: error: Batch job submission failed: "
                "Unable to contact slurm controller (connect failure)"
            )
        return self.real.submit(job)

    def find(self, marker: str) -> str | None:
        if self.down.is_set():
            raise ClusterUnavailable("slurm controller unavailable: slurm_load_jobs error")
        return self.real.find(marker)

    def statuses(self, job_ids: Sequence[str]) -> dict[str, SchedulerStatus]:
        return self.real.statuses(job_ids)

    def detail(self, job_id: str) -> SchedulerStatus | None:
        return self.real.detail(job_id)

    def cancel(self, job_ids: Sequence[str]) -> None:
        self.real.cancel(job_ids)

    def read_text(self, path: PurePosixPath) -> str | None:
        return self.real.read_text(path)

    def resolve_paths(self, paths: Sequence[str]) -> list[str]:
        return self.real.resolve_paths(paths)


def make(tmp_path: Path, make_profile: Any, budget: str | int, workers: int = 4) -> Any:
    profile = load_profile_file(make_profile(outage_budget_s=budget))
    config = TransportConfig("embedded", str(tmp_path / "queue.sqlite"))
    transport = EmbeddedTransport(config.db_path())
    cluster = SwitchedCluster(cluster_for(profile))
    dispatcher = Dispatcher(
        profile,
        cluster,
        Ledger(),
        transport,
        JobContext(config.job_args()),
        DispatcherConfig(backoff_s=0.01, workers=workers),
    )
    # The dispatcher's connection belongs to its serving thread; the test feeds and reads
    # the same queue through a connection of its own.
    return dispatcher, EmbeddedTransport(config.db_path()), cluster


def serve(dispatcher: Dispatcher) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=dispatcher.serve, args=(stop,), daemon=True)
    thread.start()
    return thread, stop


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_outage_holds_steps_takes_none_and_resumes(
    tmp_path: Path, make_profile: Any, work_root: Path
) -> None:
    dispatcher, transport, cluster = make(tmp_path, make_profile, "0:30:00", workers=4)
    cluster.down.set()
    for index in range(20):
        transport.send_step(recipe_message(["true"], work_root / f"s{index}"))
    thread, stop = serve(dispatcher)
    wait_for(lambda: cluster.calls_while_down >= 3, 20, "probes during the outage")
    # Four held by the workers; the other sixteen were never taken from the queue.
    time.sleep(0.5)
    assert dispatcher.metrics.received._value.get() == 4
    assert not dispatcher.gate.accepting
    assert dispatcher.metrics.cluster_available._value.get() == 0
    calls = cluster.calls_while_down
    time.sleep(1.0)
    assert cluster.calls_while_down - calls <= 2, "the cluster was hammered during the outage"
    cluster.down.clear()
    wait_for(
        lambda: (
            len(drain(transport, "submitted")) == 0
            and dispatcher.outcomes.get("submitted", 0) == 20
        ),
        60,
        "all twenty submitted",
    )
    stop.set()
    thread.join(30)
    assert transport.depth("dlq.cluster.submission") == 0
    assert dispatcher.metrics.cluster_available._value.get() == 1


def test_outage_longer_than_the_budget_dead_letters_the_held_steps(
    tmp_path: Path, make_profile: Any, work_root: Path
) -> None:
    dispatcher, transport, cluster = make(tmp_path, make_profile, 2, workers=2)
    cluster.down.set()
    for index in range(5):
        transport.send_step(recipe_message(["true"], work_root / f"s{index}"))
    thread, stop = serve(dispatcher)
    wait_for(lambda: transport.depth("dlq.cluster.submission") >= 2, 60, "held steps dead-lettered")
    cluster.down.clear()  # back: the steps still queued are submitted, none is lost
    wait_for(
        lambda: transport.depth("dlq.cluster.submission") + dispatcher.outcomes["submitted"] == 5,
        60,
        "every step dead-lettered or submitted",
    )
    stop.set()
    thread.join(30)
    letters = drain(transport, "dlq.cluster.submission")
    assert 2 <= len(letters) < 5
    for headers, _ in letters:
        reason = str(headers[REASON_HEADER])
        assert "outage budget" in reason and "slurm controller unavailable" in reason
    assert transport.depth("cluster.submission") == 0


def test_stopping_during_an_outage_requeues_the_held_steps(
    tmp_path: Path, make_profile: Any, work_root: Path
) -> None:
    dispatcher, transport, cluster = make(tmp_path, make_profile, "0:30:00", workers=2)
    cluster.down.set()
    for index in range(3):
        transport.send_step(recipe_message(["true"], work_root / f"s{index}"))
    thread, stop = serve(dispatcher)
    wait_for(lambda: cluster.calls_while_down >= 2, 20, "the outage")
    stop.set()
    thread.join(30)
    assert not thread.is_alive(), "stopping waited for the outage to end"
    assert transport.depth("dlq.cluster.submission") == 0
    assert transport.depth("cluster.submission") == 3


@pytest.mark.parametrize("budget", ["-1", "soon"])
def test_outage_budget_must_be_a_duration(make_profile: Any, budget: str) -> None:
    from zbatch.errors import ProfileError

    with pytest.raises(ProfileError, match="outage_budget_s"):
        load_profile_file(make_profile(outage_budget_s=budget))


def test_a_job_accepted_before_the_outage_is_found_not_submitted_again(
    tmp_path: Path, make_profile: Any, work_root: Path
) -> None:
    """An answer lost to the outage: the retry looks for the job's marker before sbatch."""
    dispatcher, transport, cluster = make(tmp_path, make_profile, "0:30:00", workers=1)
    cluster.lose_reply.set()
    transport.send_step(recipe_message(["true"], work_root / "s"))
    thread, stop = serve(dispatcher)
    wait_for(lambda: cluster.calls_while_down >= 1 or len(cluster.accepted) == 1, 20, "the outage")
    time.sleep(1.5)
    cluster.down.clear()
    wait_for(
        lambda: (
            dispatcher.outcomes.get("duplicate", 0) + dispatcher.outcomes.get("submitted", 0) == 1
        ),
        60,
        "the step settled",
    )
    stop.set()
    thread.join(30)
    ((_, body),) = drain(transport, "submitted")
    assert [str(body["payload"]["jobid"])] == cluster.accepted
