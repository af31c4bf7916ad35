"""Schedulers know command syntax and state names only; they never run a process.

The set is closed: a profile's `scheduler` is one of these names (checked when the profile
loads), and adding a scheduler means a class here, its name in the profile model and a
template (docs/structure.md, "Adding a scheduler").
"""

from __future__ import annotations

from zbatch.model.profiles import Profile
from zbatch.schedulers.base import Scheduler
from zbatch.schedulers.local import LocalScheduler
from zbatch.schedulers.sge import SgeScheduler
from zbatch.schedulers.slurm import SlurmScheduler

SCHEDULERS: dict[str, type[Scheduler]] = {
    "local": LocalScheduler,
    "slurm": SlurmScheduler,
    "sge": SgeScheduler,
}


def scheduler_for(profile: Profile) -> Scheduler:
    """The scheduler a profile names (the profile model admits no other name)."""
    return SCHEDULERS[profile.scheduler](profile)
