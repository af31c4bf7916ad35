"""zbatch: run Zocalo recipe wrapper steps as Slurm, SGE or local batch jobs."""

from __future__ import annotations

__version__ = "0.1.0"
