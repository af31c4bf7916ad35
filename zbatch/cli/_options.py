"""Options shared by the commands that take a recipe and a profile."""

from __future__ import annotations

import click

profile_option = click.option(
    "--profile", "-p", "profile_name", metavar="P", help="Profile name or YAML file."
)
param_option = click.option(
    "--param",
    "-s",
    "--set",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="Fill the recipe's {KEY} placeholders (repeatable; -s/--set as zocalo.go takes).",
)
dry_run_option = click.option(
    "--dry-run",
    is_flag=True,
    help="Check every wrapper step and print its job script and command; submit nothing.",
)
db_option = click.option(
    "--embedded-db",
    metavar="FILE",
    default=None,
    help="SQLite queue that jobs report to (default ~/.local/state/zbatch).",
)
