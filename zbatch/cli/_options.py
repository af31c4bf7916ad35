"""Options shared by the commands that take a recipe and a profile."""

from __future__ import annotations

import click

profile_option = click.option(
    "--profile", "-p", "profile_name", metavar="P", help="Profile name or YAML file."
)
param_option = click.option(
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="Fill the recipe's {KEY} placeholders (repeatable).",
)
db_option = click.option(
    "--embedded-db",
    metavar="FILE",
    default=None,
    help="SQLite queue that jobs report to (default ~/.local/state/zbatch).",
)
