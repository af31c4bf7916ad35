"""`zbatch run`: a whole recipe on this machine, waited for."""

from __future__ import annotations

import sys

import click

from zbatch.cli._common import fail, parse_params
from zbatch.cli._drive import drive_recipe
from zbatch.cli._entries import print_entries
from zbatch.cli._options import dry_run_option, param_option, profile_option
from zbatch.cli._progress import ProgressView
from zbatch.model.jobs import JobState
from zbatch.model.profiles import load_profile
from zbatch.model.recipe import Recipe

keep_running_option = click.option(
    "--keep-running",
    is_flag=True,
    help="On Ctrl-C or --timeout, leave the run's jobs running (default: cancel them).",
)


@click.command()
@click.argument("recipe_file", metavar="RECIPE")
@profile_option
@param_option
@click.option(
    "--timeout", type=float, default=None, help="Give up (and cancel) after this many seconds."
)
@keep_running_option
@dry_run_option
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="At the end, the run's jobs as JSON on stdout (progress goes to stderr).",
)
def run(
    recipe_file: str,
    profile_name: str | None,
    params: tuple[str, ...],
    timeout: float | None,
    keep_running: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Run a whole recipe on this machine and wait; exit 0 only if every step succeeded.

    Every wrapper step is checked against the profile before anything is submitted. Ctrl-C
    or --timeout cancels the jobs the run started (exit 130 for Ctrl-C).

    \b
    Example:
      zbatch run examples/hello.json -p local-commands --param who=me
      zbatch run examples/hello.json -p local-commands -s who=me --dry-run
      zbatch run examples/hello.json -p local-commands -s who=me --json > jobs.json
    """
    if as_json and dry_run:
        fail("--json lists the jobs of a real run; leave it out with --dry-run")
    profile = load_profile(profile_name or "local")
    recipe = Recipe.load(recipe_file)
    values = parse_params(params)
    driven = drive_recipe(
        profile,
        recipe,
        values,
        ProgressView(sys.stderr if as_json else sys.stdout),
        dry_run=dry_run,
        timeout=timeout,
        keep_running=keep_running,
    )
    if driven is None:  # a dry run
        return
    runner, outcomes = driven
    failed = [o for o in outcomes if o.state is not JobState.SUCCEEDED]
    summary = f"{len(outcomes) - len(failed)} step(s) succeeded, {len(failed)} failed"
    click.echo(summary, err=as_json)
    if as_json:
        print_entries(runner.entries(), as_json=True)
    if failed or not outcomes:
        raise SystemExit(1)
