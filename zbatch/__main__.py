"""`python -m zbatch`: the same command line as the `zbatch` script."""

from __future__ import annotations

from zbatch.cli import command

command()
