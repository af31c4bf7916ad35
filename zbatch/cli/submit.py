"""`zbatch submit`: start a recipe through a broker, or submit its steps directly."""

from __future__ import annotations

import click

from zbatch.cli._common import echo_json, fail, parse_params
from zbatch.cli._entries import print_entries
from zbatch.cli._options import db_option, param_option, profile_option
from zbatch.clusters import cluster_for
from zbatch.model.jobs import JobState
from zbatch.model.message import start_messages
from zbatch.model.profiles import load_profile
from zbatch.model.recipe import Recipe
from zbatch.prepare.job_files import JobContext
from zbatch.prepare.parameters import is_wrapper_step
from zbatch.service import status_refresh
from zbatch.service.ledger import Ledger
from zbatch.service.submitter import Submitter
from zbatch.transport.factory import TransportConfig, make_transport


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
    print_entries(entries, as_json)
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
