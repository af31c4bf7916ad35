"""zbatch: run Zocalo recipe wrapper steps as Slurm, SGE or local batch jobs."""

from __future__ import annotations

# `zbatch --version` shows this, since asking importlib.metadata would slow every start; it
# must equal pyproject.toml's version (tests/unit/cli/test_startup.py checks).
__version__ = "0.1.0"
