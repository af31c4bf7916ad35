"""site-configs/reference.yaml lists every profile key, with its default and a comment."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from zbatch.model.profiles import Profile, load_profile_file

REFERENCE = Path(__file__).resolve().parents[3] / "site-configs" / "reference.yaml"
# Keys a profile must give: the reference shows them with a sample value, not a default.
REQUIRED = {"name": "reference", "scheduler": "local"}


def model_keys(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every key of `model` and of the models nested in it, as paths."""
    for name, field in model.model_fields.items():
        if field.exclude:  # `source`: set by the loader, never written in a profile
            continue
        yield (*prefix, name)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from model_keys(annotation, (*prefix, name))


def lookup(data: dict[str, Any], path: tuple[str, ...]) -> bool:
    for part in path:
        if not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    return True


def test_every_profile_key_is_in_the_reference() -> None:
    data = yaml.safe_load(REFERENCE.read_text())
    missing = [".".join(path) for path in model_keys(Profile) if not lookup(data, path)]
    assert not missing, f"site-configs/reference.yaml lacks {', '.join(missing)}"


def test_model_keys_sees_nested_fields() -> None:
    """The walk would pass trivially if it missed nested models."""
    keys = set(model_keys(Profile))
    assert {("connection", "key_file"), ("limits", "max_memory"), ("local", "slots")} <= keys


def test_the_reference_is_a_valid_profile_of_defaults() -> None:
    """Loadable as written, and every value shown is the real default."""
    profile = load_profile_file(REFERENCE)
    defaults = Profile.model_validate({**REQUIRED, "source": str(REFERENCE)})
    assert profile.model_dump() == defaults.model_dump()


def test_every_key_has_a_comment() -> None:
    lines = REFERENCE.read_text().splitlines()
    bare = [
        line.strip()
        for before, line in zip(["", *lines], lines, strict=False)
        if re.match(r"\s*[a-z_]+:", line)
        and not before.strip().startswith("#")
        and " # " not in line
        and not line.rstrip().endswith(":")  # a section opener
    ]
    assert not bare, f"keys without a comment in reference.yaml: {bare}"


@pytest.mark.parametrize("key", ["memory_mb", "time_limit_s"])
def test_no_old_key_names(key: str) -> None:
    assert f"{key}:" not in REFERENCE.read_text()
