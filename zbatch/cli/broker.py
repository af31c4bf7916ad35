"""CLI commands that provision the broker and inspect or replay dead-lettered messages."""

from __future__ import annotations

from typing import Any

import click

from zbatch.cli._common import ZbatchGroup, echo_json, transport_options
from zbatch.model.recipe import Recipe
from zbatch.transport.admin import (
    dlq_list,
    dlq_name,
    dlq_replay,
    dlq_show,
    empty_queue,
    setup_broker,
)
from zbatch.transport.factory import TransportConfig, make_transport
from zbatch.transport.pika import PikaTransport

DEFAULT_QUEUES = ["cluster.submission"]


def _open(
    kind: str, embedded_db: str | None, rabbit_conf: str | None, stomp_conf: str | None
) -> Any:
    transport = make_transport(TransportConfig(kind, embedded_db, rabbit_conf, stomp_conf))
    transport.connect()
    return transport


@click.group(cls=ZbatchGroup)
def broker() -> None:
    """Provision RabbitMQ for zbatch and its recipes.

    \b
    Example:
      zbatch broker setup --rabbit-conf /etc/zbatch/rabbit.ini --recipe my-recipe.json
    """


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
        click.echo(f"zbatch: warning: {note}", err=True)


def _recipe_queues(paths: tuple[str, ...]) -> list[str]:
    found: list[str] = []
    for path in paths:
        for node in Recipe.load(path).nodes.values():
            if isinstance(node.get("queue"), str) and node["queue"]:
                found.append(node["queue"])
    return found


@click.group(cls=ZbatchGroup)
def dlq() -> None:
    """Inspect and replay dead-lettered messages.

    \b
    Example:
      zbatch dlq list
      zbatch dlq show cluster.submission --transport embedded
    """


@dlq.command("list")
@click.option("--queue", "queues", multiple=True, help="Work queue whose DLQ to count.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@transport_options
def dlq_list_cmd(
    queues: tuple[str, ...],
    as_json: bool,
    kind: str,
    embedded_db: str | None,
    rabbit_conf: str | None,
    stomp_conf: str | None,
) -> None:
    """Count dead letters per queue (default: cluster.submission).

    \b
    Example:
      zbatch dlq list --queue cluster.submission
    """
    transport = _open(kind, embedded_db, rabbit_conf, stomp_conf)
    wanted = list(dict.fromkeys(queues)) or DEFAULT_QUEUES
    try:
        counts = dlq_list(transport, wanted)
    finally:
        transport.disconnect()
    if as_json:
        rows = [
            {"queue": queue, "dlq": dlq, "count": count}
            for queue, (dlq, count) in zip(wanted, counts.items(), strict=True)
        ]
        echo_json({"schema": "zbatch.dead-letter-counts/1", "queues": rows})  # docs/json.md
        return
    for name, count in counts.items():
        click.echo(f"{name:<40} {count}" if count else empty_queue(name))


@dlq.command("show")
@click.argument("queue")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Show at most this many.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@transport_options
def dlq_show_cmd(
    queue: str,
    limit: int,
    as_json: bool,
    kind: str,
    embedded_db: str | None,
    rabbit_conf: str | None,
    stomp_conf: str | None,
) -> None:
    """Show dead letters with their reasons; they stay in the DLQ.

    \b
    Example:
      zbatch dlq show cluster.submission --limit 5
    """
    transport = _open(kind, embedded_db, rabbit_conf, stomp_conf)
    try:
        letters = dlq_show(transport, queue, limit)
    finally:
        transport.disconnect()
    if as_json:
        echo_json(
            {
                "schema": "zbatch.dead-letters/1",  # docs/json.md
                "letters": [
                    {
                        "dlq": d.dlq,
                        "origin": d.origin,
                        "reason": d.reason,
                        # ISO 8601 UTC, as every zbatch JSON time ("Z", not "+00:00").
                        "dead_lettered_at": d.dead_lettered_at
                        and d.dead_lettered_at.replace("+00:00", "Z"),
                        "body": d.body.decode("utf-8", "replace"),
                    }
                    for d in letters
                ],
            }
        )
        return
    if not letters:
        click.echo(empty_queue(queue))
        return
    for letter in letters:
        click.echo(f"{letter.dlq} -> {letter.origin}: {letter.reason or '(no reason recorded)'}")


@dlq.command("replay")
@click.argument("queue")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Replay at most this many.")
@transport_options
def dlq_replay_cmd(
    queue: str,
    limit: int | None,
    kind: str,
    embedded_db: str | None,
    rabbit_conf: str | None,
    stomp_conf: str | None,
) -> None:
    """Send dead letters back to the queue they came from.

    \b
    Example:
      zbatch dlq replay cluster.submission
    """
    transport = _open(kind, embedded_db, rabbit_conf, stomp_conf)
    try:
        count = dlq_replay(transport, queue, limit)
    finally:
        transport.disconnect()
    if not count:
        click.echo(f"{empty_queue(queue)}: nothing replayed")
        return
    click.echo(f"replayed {count} message(s) from {dlq_name(queue)}")
