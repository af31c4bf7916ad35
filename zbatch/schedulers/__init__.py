"""Schedulers know command syntax and state names only; they never run a process."""

from __future__ import annotations

from importlib.metadata import entry_points

from zbatch.errors import ProfileError
from zbatch.model.profiles import Profile
from zbatch.schedulers.base import Scheduler


def scheduler_for(profile: Profile) -> Scheduler:
    """The scheduler a profile names, found through the `zbatch.schedulers` entry points."""
    found = {ep.name: ep for ep in entry_points(group="zbatch.schedulers")}
    if profile.scheduler not in found:
        known = ", ".join(sorted(found))
        raise ProfileError(
            f"{profile.source}: scheduler {profile.scheduler!r} is not installed; known: {known}"
        )
    cls = found[profile.scheduler].load()
    scheduler: Scheduler = cls(profile)
    return scheduler
