"""CLI commands about the installed wrapper adapters."""

from __future__ import annotations

import click

from zbatch.cli._common import ZbatchGroup, echo_json
from zbatch.wrapper import describe_installed

SCHEMA = "zbatch.wrappers/1"


@click.group(cls=ZbatchGroup)
def wrappers() -> None:
    """Installed wrapper adapters.

    \b
    Example:
      zbatch wrappers list
    """


@wrappers.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def wrappers_list(as_json: bool) -> None:
    """Wrappers registered in the `zbatch.wrappers` entry-point group, each loaded.

    Shows each wrapper's one-line description, or the error that stops it from loading
    (a recipe step naming that wrapper would fail the same way).

    \b
    Example:
      zbatch wrappers list
      zbatch wrappers list --json
    """
    found = describe_installed()
    if as_json:
        echo_json({"schema": SCHEMA, "wrappers": [w.to_json() for w in found]})
        return
    if not found:
        click.echo("no wrappers are installed (entry-point group zbatch.wrappers)")
        return
    width = max(16, *(len(w.name) + 1 for w in found))
    for w in found:
        about = f"BROKEN: {w.error}" if w.error else w.description or "(no description)"
        click.echo(f"{w.name:<{width}} {about}  [{w.target}]")
