"""CLI commands for the long-running dispatcher service."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Mapping
from pathlib import Path
from types import FrameType

import click

from zbatch.cli._common import transport_options
from zbatch.clusters import cluster_for
from zbatch.errors import ZbatchError
from zbatch.model.profiles import load_profile
from zbatch.prepare.job_files import JobContext
from zbatch.service.dispatcher import Dispatcher, DispatcherConfig
from zbatch.service.ledger import Ledger
from zbatch.service.metrics import DispatcherMetrics, StatusServer
from zbatch.service.recipe_starter import QUEUE, RecipeStarter
from zbatch.transport.factory import TransportConfig, make_transport

log = logging.getLogger(__name__)


@click.command()
@click.option(
    "--profile",
    "-p",
    "profile_name",
    required=True,
    metavar="P",
    help="Profile name or YAML file of the cluster to submit to.",
)
@transport_options
@click.option(
    "--queue",
    default="cluster.submission",
    show_default=True,
    help="Queue of step messages to consume.",
)
@click.option(
    "--metrics-port",
    type=int,
    default=None,
    help="Serve /metrics, /healthz and /readyz on this port (0 picks one).",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=8,
    show_default=True,
    help="Submissions in flight at once.",
)
@click.option("--max-messages", type=int, default=None, hidden=True)
def dispatcher(
    profile_name: str,
    kind: str,
    queue: str,
    rabbit_conf: str | None,
    stomp_conf: str | None,
    embedded_db: str | None,
    metrics_port: int | None,
    workers: int,
    max_messages: int | None,
) -> None:
    """Consume step messages and submit them as jobs; SIGTERM stops it cleanly.

    \b
    Example:
      zbatch dispatcher --profile slurm-local --transport pika --metrics-port 9101
    """
    profile = load_profile(profile_name)
    config = TransportConfig(kind, embedded_db, rabbit_conf, stomp_conf)
    transport = make_transport(config)
    cluster = cluster_for(profile)
    metrics = DispatcherMetrics()
    service = Dispatcher(
        profile,
        cluster,
        Ledger(),
        transport,
        JobContext(config.job_args()),
        DispatcherConfig(queue=queue, workers=workers),
        metrics,
    )
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: finishing the message in hand, then stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = StatusServer(metrics, metrics_port) if metrics_port is not None else None
    if server is not None:
        server.start()
        click.echo(f"status endpoints on http://127.0.0.1:{server.port}/", err=True)
    try:
        try:
            cluster.warm_up()
        except ZbatchError as exc:  # not fatal: steps are retried, then dead-lettered
            log.warning("cannot reach the cluster of profile %s yet: %s", profile.name, exc)
        service.serve(stop, max_messages)
    finally:
        transport.disconnect()
        cluster.close()
        if server is not None:
            server.stop()
    click.echo(f"dispatcher stopped: {outcome_summary(service.outcomes)}", err=True)


def outcome_summary(outcomes: Mapping[str, int]) -> str:
    """`2 submitted, 1 dead-lettered`: what became of the messages handled, most first."""
    if not outcomes:
        return "no messages handled"
    ranked = sorted(outcomes.items(), key=lambda item: (-item[1], item[0]))
    return ", ".join(f"{count} {outcome}" for outcome, count in ranked)


@click.command("recipe-starter")
@click.option(
    "--recipe-dir",
    required=True,
    type=click.Path(file_okay=False, exists=True),
    help="Folder of <name>.json recipes that requests may name.",
)
@transport_options
@click.option("--queue", default=QUEUE, show_default=True, help="Queue of recipe requests.")
@click.option("--max-messages", type=int, default=None, hidden=True)
def recipe_starter(
    recipe_dir: str,
    kind: str,
    queue: str,
    rabbit_conf: str | None,
    stomp_conf: str | None,
    embedded_db: str | None,
    max_messages: int | None,
) -> None:
    """Start recipes requested on `processing_recipe`, so `zocalo.go` can drive zbatch.

    \b
    Example:
      zbatch recipe-starter --recipe-dir /dls_sw/apps/zocalo/live/recipes
    """
    transport = make_transport(TransportConfig(kind, embedded_db, rabbit_conf, stomp_conf))
    starter = RecipeStarter(transport, Path(recipe_dir))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _s, _f: stop.set())
    signal.signal(signal.SIGINT, lambda _s, _f: stop.set())
    try:
        starter.serve(stop, queue, max_messages, lambda outcome: click.echo(outcome, err=True))
    finally:
        transport.disconnect()
