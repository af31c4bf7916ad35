"""The tracker's poll interval: longer while the scheduler fails or answers slowly."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from tests.helpers import claim
from zbatch.clusters import Cluster
from zbatch.errors import SchedulerError
from zbatch.model.jobs import JobState, PreparedJob
from zbatch.schedulers.base import SchedulerStatus
from zbatch.service.ledger import Ledger
from zbatch.service.tracker import SLOW_FACTOR, Tracker


class SlowCluster(Cluster):
    """A stand-in whose status query takes `delay` seconds, or fails."""

    scheduler_name = "fake"

    def __init__(self, delay: float) -> None:
        self.delay, self.fail = delay, False

    def submit(self, job: PreparedJob) -> str:
        raise NotImplementedError

    def statuses(self, job_ids: Sequence[str]) -> dict[str, SchedulerStatus]:
        time.sleep(self.delay)
        if self.fail:
            raise SchedulerError("squeue: timed out", transient=True)
        return {i: SchedulerStatus(i, JobState.PENDING, None, "", "PENDING") for i in job_ids}

    def detail(self, _job_id: str) -> SchedulerStatus | None:
        return None

    def cancel(self, job_ids: Sequence[str]) -> None:
        raise NotImplementedError

    def read_text(self, _path: PurePosixPath) -> str | None:
        return None


def tracker_with_a_job(tmp_path: Path, cluster: Cluster) -> Tracker:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    claim(
        ledger,
        "k",
        scheduler="fake",
        workdir=str(tmp_path),
        message_path=str(tmp_path / "m.json"),
    )
    ledger.update("k", job_id="7", state="pending")
    return Tracker(cluster, ledger, "p", interval_s=0.05, max_interval_s=30)


def test_a_slow_scheduler_is_polled_less_often(tmp_path: Path) -> None:
    cluster = SlowCluster(delay=0.1)
    tracker = tracker_with_a_job(tmp_path, cluster)
    assert tracker.next_delay() == 0.05  # nothing measured yet
    tracker.poll_once()
    assert SLOW_FACTOR * 0.1 <= tracker.next_delay() < SLOW_FACTOR * 0.1 + 1.0
    cluster.delay = 0.0
    tracker.poll_once()
    assert tracker.next_delay() < 0.1  # quick again: back to the profile's interval


def test_a_failing_scheduler_is_polled_less_often_up_to_the_cap(tmp_path: Path) -> None:
    cluster = SlowCluster(delay=0.0)
    cluster.fail = True
    tracker = tracker_with_a_job(tmp_path, cluster)
    delays = []
    for _ in range(3):
        tracker.poll_once()
        delays.append(tracker.next_delay())
    assert delays[0] < delays[1] < delays[2]
    for _ in range(20):
        tracker.poll_once()
    assert tracker.next_delay() == 30
