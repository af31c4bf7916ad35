"""`zbatch submit`: start a recipe through a broker, or submit its steps directly."""

from __future__ import annotations

import sys
import uuid

import click

from zbatch.cli._common import echo_json, fail, parse_params, transport_option
from zbatch.cli._drive import drive_recipe, show_dry_run, warn_unused
from zbatch.cli._entries import print_entries
from zbatch.cli._options import db_option, dry_run_option, param_option, profile_option
from zbatch.cli._progress import ProgressView
from zbatch.clusters import Cluster, cluster_for
from zbatch.model.jobs import JobState
from zbatch.model.message import start_messages
from zbatch.model.profiles import Profile, load_profile
from zbatch.model.recipe import Recipe
from zbatch.prepare.job_files import JobContext
from zbatch.prepare.recipe_check import CheckedStep, check_filled, check_recipe
from zbatch.service.ledger import Ledger, LedgerEntry
from zbatch.service.submitter import Submitter
from zbatch.transport.factory import TransportConfig, make_transport

PUBLISHED_SCHEMA = "zbatch.published/1"  # docs/json.md


@click.command()
@click.argument("recipe_file", metavar="RECIPE")
@profile_option
@param_option
@db_option
@transport_option(None)
@click.option("--rabbit-conf", metavar="FILE", help="RabbitMQ settings for --transport pika.")
@click.option("--stomp-conf", metavar="FILE", help="ActiveMQ settings for --transport stomp.")
@click.option(
    "--wait",
    is_flag=True,
    help="Drive the whole recipe (later steps too) and wait; exit 0 only if all succeeded.",
)
@dry_run_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def submit(
    recipe_file: str,
    profile_name: str | None,
    params: tuple[str, ...],
    embedded_db: str | None,
    kind: str | None,
    rabbit_conf: str | None,
    stomp_conf: str | None,
    wait: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Start a recipe: submit its start steps to a cluster, or publish it to a broker.

    Without --transport, the start steps are submitted to the profile's cluster now (and
    --wait drives the later steps too); with --transport, the recipe's start messages are
    published for a dispatcher. Every wrapper step is checked against the profile before
    anything is submitted.

    \b
    Example:
      zbatch submit examples/hello.json --profile slurm-local -s who=me --wait
      zbatch submit examples/hello.json --transport pika --param who=me
    """
    if as_json and dry_run:
        fail("--json lists what was really submitted or sent; leave it out with --dry-run")
    source = Recipe.load(recipe_file)
    values = parse_params(params)
    if kind is not None:
        if wait:
            fail(
                "--wait submits directly: leave out --transport (a dispatcher runs brokered steps)"
            )
        check_filled(source, values)
        if profile_name is not None:  # the dispatcher's profile, when the user names it
            _check_direct(source, values, load_profile(profile_name), embedded_db, True)[1].close()
        warn_unused(source, values)
        if dry_run:
            click.echo("dry run: the recipe's start messages were checked, nothing was published")
            return
        _publish(
            source.apply_parameters(values),
            TransportConfig(kind, embedded_db, rabbit_conf, stomp_conf),
            as_json,
        )
        return
    if wait and embedded_db is not None:
        fail("--wait drives the recipe through a queue of its own; leave out --embedded-db")
    profile = load_profile(profile_name or "local")
    if wait:
        _submit_and_wait(source, values, profile, as_json, dry_run)
        return
    steps, cluster = _check_direct(source, values, profile, embedded_db, dry_run)
    warn_unused(source, values)
    try:
        if dry_run:
            show_dry_run(steps)
            return
        entries = _submit_starts(steps, profile, cluster, embedded_db)
    finally:
        cluster.close()
    print_entries(entries, as_json)
    _say_waiting(steps, embedded_db)


def _check_direct(
    recipe: Recipe,
    values: dict[str, str],
    profile: Profile,
    embedded_db: str | None,
    dry_run: bool,
) -> tuple[list[CheckedStep], Cluster]:
    """Every wrapper step checked as it would be sent (raises the first step's error)."""
    cluster = cluster_for(profile)
    context = JobContext(TransportConfig("embedded", embedded_db).job_args())
    try:
        steps = check_recipe(
            recipe,
            values,
            profile,
            context if dry_run else context.on(cluster),
            {"ID": str(uuid.uuid4())},
        )
    except BaseException:
        cluster.close()
        raise
    return steps, cluster


def _submit_starts(
    steps: list[CheckedStep], profile: Profile, cluster: Cluster, embedded_db: str | None
) -> list[LedgerEntry]:
    config = TransportConfig("embedded", embedded_db)
    submitter = Submitter(profile, cluster, Ledger(), JobContext(config.job_args()))
    starts = [s.message for s in steps if not s.message.path]
    if not starts:
        fail("no start node is a wrapper step")
    return [submitter.submit(m).entry for m in starts]


def _say_waiting(steps: list[CheckedStep], embedded_db: str | None) -> None:
    """Later steps run only when a dispatcher serves their queue: say which, and where."""
    db = TransportConfig("embedded", embedded_db).db_path()
    for step in steps:
        if step.message.path:
            queue = step.message.destination().queue
            click.echo(
                f"step {step.message.pointer} waits for a dispatcher on queue {queue!r} of "
                f"{db} (or use --wait to drive the whole recipe)",
                err=True,
            )


def _submit_and_wait(
    recipe: Recipe, values: dict[str, str], profile: Profile, as_json: bool, dry_run: bool
) -> None:
    """The whole recipe driven as `zbatch run` drives it; the jobs stay on Ctrl-C."""
    view = ProgressView(sys.stderr if as_json else sys.stdout)
    driven = drive_recipe(
        profile, recipe, values, view, dry_run=dry_run, timeout=None, keep_running=True
    )
    if driven is None:  # a dry run
        return
    runner, _ = driven
    entries = runner.entries()
    print_entries(entries, as_json)
    if not entries or any(e.state is not JobState.SUCCEEDED for e in entries):
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
        {"recipe_id": m.recipe_id, "step": m.pointer, "queue": m.destination().queue}
        for m in messages
    ]
    if as_json:
        echo_json({"schema": PUBLISHED_SCHEMA, "transport": config.kind, "messages": sent})
        return
    for item in sent:
        click.echo(f"recipe {item['recipe_id']}: step {item['step']} sent to {item['queue']}")
