"""`zbatch render`: the job script a step would get, without submitting it."""

from __future__ import annotations

import sys

import click

from zbatch.cli._common import fail, parse_params
from zbatch.cli._options import db_option, param_option, profile_option
from zbatch.model.message import StepMessage, start_messages
from zbatch.model.profiles import load_profile
from zbatch.model.recipe import Recipe
from zbatch.prepare.job_files import JobContext, prepare_job
from zbatch.prepare.parameters import is_wrapper_step
from zbatch.transport.factory import TransportConfig


def _step_message(recipe: Recipe, step: int | None) -> StepMessage:
    starts = start_messages(recipe, {"ID": "preview"})
    if step is None:
        wrappers = [m for m in starts if is_wrapper_step(m.step)]
        if not wrappers:
            fail("no start node is a wrapper step; choose one with --step")
        return wrappers[0]
    if step not in recipe.nodes:
        fail(f"recipe has no node {step}; nodes: {', '.join(map(str, sorted(recipe.nodes)))}")
    payload = next((p for n, p in recipe.start if n == step), None)
    return StepMessage(recipe, step, [], starts[0].environment, payload)


@click.command()
@click.argument("recipe_arg", metavar="RECIPE", required=False)
@profile_option
@click.option("--recipe", "recipe_file", metavar="R", help="The recipe, as an option (alias).")
@click.option("--step", type=int, default=None, help="Node to render (default: first start node).")
@param_option
@db_option
def render(
    recipe_arg: str | None,
    profile_name: str | None,
    recipe_file: str | None,
    step: int | None,
    params: tuple[str, ...],
    embedded_db: str | None,
) -> None:
    """Print the job script a step would submit, without submitting it.

    \b
    Example:
      zbatch render examples/hello.json --profile slurm-local --step 2 -s who=me
    """
    if recipe_arg and recipe_file and recipe_arg != recipe_file:
        fail(f"two recipes given ({recipe_arg} and --recipe {recipe_file}); give one")
    if not (recipe_arg or recipe_file):
        fail("give the recipe: zbatch render RECIPE [--step N]")
    profile = load_profile(profile_name or "local")
    recipe = Recipe.load(recipe_arg or recipe_file or "").apply_parameters(parse_params(params))
    config = TransportConfig("embedded", embedded_db)
    job = prepare_job(_step_message(recipe, step), profile, JobContext(config.job_args()))
    # Byte for byte what would be staged: click.echo strips ANSI escapes when not on a tty.
    sys.stdout.flush()
    sys.stdout.buffer.write(job.script.encode("utf-8"))
    sys.stdout.buffer.flush()
