"""CLI commands that render, submit, run and track jobs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from zbatch.cli._common import echo_json, fail, parse_params
from zbatch.clusters import cluster_for
from zbatch.model.jobs import JobState
from zbatch.model.message import StepMessage, start_messages
from zbatch.model.profiles import load_profile
from zbatch.model.recipe import Recipe
from zbatch.prepare.job_files import JobContext, prepare_job
from zbatch.prepare.parameters import is_wrapper_step
from zbatch.service import status_refresh
from zbatch.service.ledger import Ledger, LedgerEntry
from zbatch.service.local_run import RecipeRunner
from zbatch.service.submitter import Submitter
from zbatch.transport.factory import TransportConfig, make_transport

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
@profile_option
@click.option("--recipe", "recipe_file", required=True, metavar="R", help="Recipe JSON file.")
@click.option("--step", type=int, default=None, help="Node to render (default: first start node).")
@param_option
@db_option
def render(
    profile_name: str | None,
    recipe_file: str,
    step: int | None,
    params: tuple[str, ...],
    embedded_db: str | None,
) -> None:
    """Print the job script a step would submit, without submitting it.

    \b
    Example:
      zbatch render --profile slurm-local --recipe examples/hello.json --step 2
    """
    profile = load_profile(profile_name or "local")
    recipe = Recipe.load(recipe_file).apply_parameters(parse_params(params))
    config = TransportConfig("embedded", embedded_db)
    job = prepare_job(_step_message(recipe, step), profile, JobContext(config.job_args()))
    # Byte for byte what would be staged: click.echo strips ANSI escapes when not on a tty.
    sys.stdout.flush()
    sys.stdout.buffer.write(job.script.encode("utf-8"))
    sys.stdout.buffer.flush()


@click.command()
@click.argument("recipe_file", metavar="RECIPE")
@profile_option
@param_option
@db_option
@click.option(
    "--transport",
    "kind",
    type=click.Choice(["direct", "pika", "embedded"]),
    default="direct",
    show_default=True,
    help="direct: submit the start steps now; pika/embedded: publish the recipe's "
    "start messages for a dispatcher.",
)
@click.option("--rabbit-conf", metavar="FILE", help="RabbitMQ settings for --transport pika.")
@click.option("--wait", is_flag=True, help="Wait for the jobs; exit 0 only if all succeeded.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def submit(
    recipe_file: str,
    profile_name: str | None,
    params: tuple[str, ...],
    embedded_db: str | None,
    kind: str,
    rabbit_conf: str | None,
    wait: bool,
    as_json: bool,
) -> None:
    """Start a recipe: submit its start steps to a cluster, or publish it to a broker.

    \b
    Example:
      zbatch submit examples/hello.json --profile slurm-local --wait
      zbatch submit examples/hello.json --transport pika
    """
    recipe = Recipe.load(recipe_file).apply_parameters(parse_params(params))
    if kind != "direct":
        if wait:
            fail("--wait needs --transport direct; a dispatcher runs brokered recipes")
        _publish(recipe, TransportConfig(kind, embedded_db, rabbit_conf), as_json)
        return
    profile = load_profile(profile_name or "local")
    cluster = cluster_for(profile)
    ledger = Ledger()
    config = TransportConfig("embedded", embedded_db)
    submitter = Submitter(profile, cluster, ledger, JobContext(config.job_args()))
    entries = [submitter.submit(m).entry for m in start_messages(recipe) if is_wrapper_step(m.step)]
    if not entries:
        fail(f"{recipe_file}: no start node is a wrapper step")
    if wait:
        entries = status_refresh.wait_for(cluster, ledger, profile, entries)
    cluster.close()
    _print_entries(entries, as_json)
    if wait and any(e.state is not JobState.SUCCEEDED for e in entries):
        raise SystemExit(1)


def _publish(recipe: Recipe, config: TransportConfig, as_json: bool) -> None:
    """What workflows' RecipeWrapper.start() does: one message per start node."""
    transport = make_transport(config)
    transport.connect()
    try:
        messages = start_messages(recipe)
        for message in messages:
            transport.send_step(message)
    finally:
        transport.disconnect()
    sent = [
        {"recipe_id": m.recipe_id, "node": m.pointer, "queue": m.destination().queue}
        for m in messages
    ]
    if as_json:
        echo_json(sent)
        return
    for item in sent:
        click.echo(f"recipe {item['recipe_id']}: node {item['node']} sent to {item['queue']}")


def _print_entries(entries: list[LedgerEntry], as_json: bool) -> None:
    if as_json:
        # `owed`: the channels whose messages the step still owes its recipe, in order.
        echo_json([{**e.__dict__, "owed": e.owes.channels} for e in entries])
        return
    for e in entries:
        code = "" if e.exit_code is None else f" exit {e.exit_code}"
        reason = f" ({e.reason})" if e.reason else ""
        click.echo(
            f"{e.job_id or '-':<10} {e.profile:<14} step {e.pointer:<3} {e.state}{code}"
            f"{reason}  {e.workdir}{_owed_note(e)}"
        )


def _owed_note(entry: LedgerEntry) -> str:
    """What the step still owes its recipe (zbatch delivers it when the broker takes it)."""
    owes = entry.owes
    if not owes:
        return ""
    note = f"  owes: {', '.join(owes.channels)}"
    if entry.owed_error:
        note += f" (last try: {entry.owed_error})"
    return note


@click.command()
@click.argument("jobs", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--no-refresh", is_flag=True, help="Show the ledger without asking the clusters.")
@click.option(
    "--owed", "owed_only", is_flag=True, help="Only steps that still owe their recipe messages."
)
def status(jobs: tuple[str, ...], as_json: bool, no_refresh: bool, owed_only: bool) -> None:
    """Tracked jobs and their states (all of them when no JOB id is given).

    A step that ended while the broker was down still owes its recipe the messages its job
    could not send ("owes: success, completed"), or zbatch's own failure report; the
    dispatcher delivers them once the broker takes them.

    \b
    Example:
      zbatch status --json 1234 1235
      zbatch status --owed
    """
    ledger = Ledger()
    entries = list(ledger.find(list(jobs) or None, owed_only=owed_only))
    if jobs and not entries and not owed_only:
        fail(f"no tracked job matches {' '.join(jobs)}")
    if not no_refresh:
        entries = status_refresh.refresh(ledger, entries, _warn)
    _print_entries(entries, as_json)


def _warn(message: str) -> None:
    click.echo(f"zbatch: warning: {message}", err=True)


@click.command()
@click.argument("jobs", nargs=-1, required=True)
def cancel(jobs: tuple[str, ...]) -> None:
    """Cancel tracked jobs, pending or running.

    \b
    Example:
      zbatch cancel 1234
    """
    ledger = Ledger()
    entries = list(ledger.find(list(jobs)))
    missing = set(jobs) - {e.job_id for e in entries} - {e.key for e in entries}
    if missing:
        fail(f"no tracked job {', '.join(sorted(missing))}")
    status_refresh.cancel(ledger, entries, lambda e: click.echo(f"{e.job_id}: cancel requested"))
