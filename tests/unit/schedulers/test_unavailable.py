"""Telling a scheduler that is down from one that said no, from its real captured output."""

from __future__ import annotations

from pathlib import Path

import pytest

from zbatch.model.profiles import Profile
from zbatch.schedulers.base import Scheduler
from zbatch.schedulers.sge import SgeScheduler
from zbatch.schedulers.slurm import SlurmScheduler

DATA = Path(__file__).resolve().parents[2] / "data" / "scheduler-output"


def scheduler(kind: type[Scheduler]) -> Scheduler:
    return kind(Profile(name="p", scheduler=kind.name))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        (SlurmScheduler, "slurm/sbatch-controller-down.stderr"),
        (SlurmScheduler, "slurm/squeue-controller-down.stderr"),
        (SlurmScheduler, "slurm/scancel-controller-down.stderr"),
        (SgeScheduler, "sge/qsub-qmaster-down.stderr"),
        (SgeScheduler, "sge/qstat-qmaster-down.stderr"),
        (SgeScheduler, "sge/qdel-qmaster-down.stderr"),
        (SgeScheduler, "sge/qdel-qmaster-down.txt"),
    ],
)
def test_controller_down_is_unavailability(kind: type[Scheduler], name: str) -> None:
    assert scheduler(kind).unavailable((DATA / name).read_text())


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        (SlurmScheduler, "slurm/sbatch-bad-partition.stderr"),
        (SlurmScheduler, "slurm/sbatch-too-much-memory.stderr"),
        (SlurmScheduler, "slurm/squeue-invalid-id.stderr"),
        (SlurmScheduler, "slurm/scontrol-invalid-id.stderr"),
        (SgeScheduler, "sge/qsub-unknown-queue.stderr"),
        (SgeScheduler, "sge/qacct-not-found.stderr"),
    ],
)
def test_refusals_are_not_unavailability(kind: type[Scheduler], name: str) -> None:
    assert not scheduler(kind).unavailable((DATA / name).read_text())
