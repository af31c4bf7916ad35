"""zbatch: run Zocalo recipe wrapper steps as Slurm, SGE or local batch jobs."""

from __future__ import annotations

# The one copy of the version: pyproject.toml reads it (dynamic), and `zbatch --version`
# shows it without asking importlib.metadata, which would slow every start.
__version__ = "0.1.0"
