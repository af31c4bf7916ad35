"""The schedulers a profile may name are exactly the ones zbatch has (no dead plugin path)."""

from __future__ import annotations

import typing

import pytest

from zbatch.errors import ProfileError
from zbatch.model.profiles import Profile, parse_profile
from zbatch.schedulers import SCHEDULERS, scheduler_for


def test_every_profile_scheduler_name_has_a_scheduler_and_no_more() -> None:
    names = typing.get_args(Profile.model_fields["scheduler"].annotation)
    assert set(names) == set(SCHEDULERS)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_scheduler_for_builds_the_named_scheduler(name: str) -> None:
    profile = parse_profile({"name": "p", "scheduler": name}, "p.yaml")
    assert isinstance(scheduler_for(profile), SCHEDULERS[name])


def test_an_unknown_scheduler_is_refused_when_the_profile_loads() -> None:
    with pytest.raises(ProfileError, match=r"p\.yaml.*scheduler"):
        parse_profile({"name": "p", "scheduler": "pbs"}, "p.yaml")
