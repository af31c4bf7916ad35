"""CLI commands about the installed wrapper adapters."""

from __future__ import annotations

import click

from zbatch.cli._common import ZbatchGroup, echo_json
from zbatch.wrapper import installed


@click.group(cls=ZbatchGroup)
def wrappers() -> None:
    """Installed wrapper adapters."""


@wrappers.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def wrappers_list(as_json: bool) -> None:
    """Wrappers registered in the `zbatch.wrappers` entry-point group.

    \b
    Example:
      zbatch wrappers list
    """
    found = installed()
    if as_json:
        echo_json(found)
        return
    for name, target in sorted(found.items()):
        click.echo(f"{name:<16} {target}")
