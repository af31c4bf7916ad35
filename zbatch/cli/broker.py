"""CLI commands that provision the broker and inspect or replay dead-lettered messages."""

from __future__ import annotations

from typing import Any

import click

from zbatch.cli._common import ZbatchGroup, echo_json, transport_options
from zbatch.model.recipe import Recipe
from zbatch.transport.admin import dlq_list, dlq_replay, dlq_show, setup_broker
from zbatch.transport.factory import TransportConfig, make_transport
from zbatch.transport.pika import PikaTransport

DEFAULT_QUEUES = ["cluster.submission"]


def _open(kind: str, embedded_db: str | None, rabbit_conf: str | None) -> Any:
    transport = make_transport(TransportConfig(kind, embedded_db, rabbit_conf))
    transport.connect()
    return transport


@click.group(cls=ZbatchGroup)
def broker() -> None:
    """Provision RabbitMQ for zbatch and its recipes."""


@broker.command("setup")
@click.option("--rabbit-conf", metavar="FILE", help="RabbitMQ settings ([rabbit] INI).")
@click.option("--queue", "queues", multiple=True, help="A queue to declare (repeatable).")
@click.option(
    "--recipe",
    "recipes",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="Declare every queue this recipe sends to (repeatable).",
)
@click.option("--classic", is_flag=True, help="Classic queues instead of quorum queues.")
def broker_setup(
    rabbit_conf: str | None, queues: tuple[str, ...], recipes: tuple[str, ...], classic: bool
) -> None:
    """Declare durable queues with `dlq.<name>` dead-letter queues and `transient.status`.

    \b
    Example:
      zbatch broker setup --queue cluster.submission --recipe examples/hello.json
    """
    names = list(dict.fromkeys([*DEFAULT_QUEUES, *queues, *_recipe_queues(recipes)]))
    transport = PikaTransport.from_conf(rabbit_conf)
    with transport:
        done = setup_broker(transport, names, quorum=not classic)
    for name in done.queues:
        click.echo(f"queue    {name}")
    for name in done.exchanges:
        click.echo(f"exchange {name}")
    for note in done.notes:
        click.echo(f"note: {note}", err=True)


def _recipe_queues(paths: tuple[str, ...]) -> list[str]:
    found: list[str] = []
    for path in paths:
        for node in Recipe.load(path).nodes.values():
            if isinstance(node.get("queue"), str) and node["queue"]:
                found.append(node["queue"])
    return found


@click.group(cls=ZbatchGroup)
def dlq() -> None:
    """Inspect and replay dead-lettered messages."""


@dlq.command("list")
@click.option("--queue", "queues", multiple=True, help="Work queue whose DLQ to count.")
@transport_options
def dlq_list_cmd(
    queues: tuple[str, ...], kind: str, embedded_db: str | None, rabbit_conf: str | None
) -> None:
    """Count dead letters per queue (default: cluster.submission).

    \b
    Example:
      zbatch dlq list --queue cluster.submission
    """
    transport = _open(kind, embedded_db, rabbit_conf)
    try:
        counts = dlq_list(transport, list(queues) or DEFAULT_QUEUES)
    finally:
        transport.disconnect()
    for name, count in counts.items():
        click.echo(f"{name:<40} {count}")


@dlq.command("show")
@click.argument("queue")
@click.option("--limit", type=int, default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@transport_options
def dlq_show_cmd(
    queue: str,
    limit: int,
    as_json: bool,
    kind: str,
    embedded_db: str | None,
    rabbit_conf: str | None,
) -> None:
    """Show dead letters with their reasons; they stay in the DLQ.

    \b
    Example:
      zbatch dlq show cluster.submission --limit 5
    """
    transport = _open(kind, embedded_db, rabbit_conf)
    try:
        letters = dlq_show(transport, queue, limit)
    finally:
        transport.disconnect()
    if as_json:
        echo_json(
            [
                {
                    "dlq": d.dlq,
                    "origin": d.origin,
                    "reason": d.reason,
                    "dead_lettered_at": d.dead_lettered_at,
                    "body": d.body.decode("utf-8", "replace"),
                }
                for d in letters
            ]
        )
        return
    for letter in letters:
        click.echo(f"{letter.dlq} -> {letter.origin}: {letter.reason or '(no reason recorded)'}")


@dlq.command("replay")
@click.argument("queue")
@click.option("--limit", type=int, default=None, help="Replay at most this many.")
@transport_options
def dlq_replay_cmd(
    queue: str, limit: int | None, kind: str, embedded_db: str | None, rabbit_conf: str | None
) -> None:
    """Send dead letters back to the queue they came from.

    \b
    Example:
      zbatch dlq replay cluster.submission
    """
    transport = _open(kind, embedded_db, rabbit_conf)
    try:
        count = dlq_replay(transport, queue, limit)
    finally:
        transport.disconnect()
    click.echo(f"replayed {count} message(s) from dlq.{queue.removeprefix('dlq.')}")
