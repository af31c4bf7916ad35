"""`zbatch run`: a whole recipe on this machine, waited for."""

from __future__ import annotations

import os
from pathlib import Path

import click

from zbatch.cli._common import parse_params
from zbatch.cli._options import param_option, profile_option
from zbatch.clusters import cluster_for
from zbatch.model.jobs import JobState
from zbatch.model.profiles import load_profile
from zbatch.model.recipe import Recipe
from zbatch.service.ledger import Ledger
from zbatch.service.local_run import RecipeRunner


def _run_root(workdir_root: str | None) -> Path:
    return Path(os.path.expanduser(workdir_root or "~/zbatch-runs"))


@click.command()
@click.argument("recipe_file", metavar="RECIPE")
@profile_option
@param_option
@click.option("--timeout", type=float, default=None, help="Give up after this many seconds.")
def run(
    recipe_file: str, profile_name: str | None, params: tuple[str, ...], timeout: float | None
) -> None:
    """Run a whole recipe on this machine and wait; exit 0 only if every step succeeded.

    \b
    Example:
      zbatch run examples/hello.json --param greeting=hi
    """
    profile = load_profile(profile_name or "local")
    recipe = Recipe.load(recipe_file)
    cluster = cluster_for(profile)
    runner = RecipeRunner(profile, cluster, Ledger(), _run_root(profile.workdir_root), click.echo)
    try:
        outcomes = runner.run(recipe, parse_params(params), timeout)
    finally:
        cluster.close()
    failed = [o for o in outcomes if o.state is not JobState.SUCCEEDED]
    click.echo(f"{len(outcomes) - len(failed)} step(s) succeeded, {len(failed)} failed")
    if failed or not outcomes:
        raise SystemExit(1)
