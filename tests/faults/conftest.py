"""Fixtures shared by the fault scenarios: fresh broker queues and a jobs folder per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.support import JOBS_ROOT, Queues


@pytest.fixture()
def queues() -> Iterator[Queues]:
    q = Queues()
    yield q
    q.close()


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    """Below JOBS_ROOT (inside the profiles' workdir_root); unique across pytest sessions,
    whose tmp_path names repeat."""
    path = JOBS_ROOT / f"{tmp_path.name}-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True, exist_ok=True)
    return path
