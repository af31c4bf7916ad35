"""CLI command for the in-job runner: `zbatch wrap`, which every job runs."""

from __future__ import annotations

import click

from zbatch.cli._common import fail

TRANSPORT_ALIASES = {"embedded": "embedded", "pika": "pika", "PikaTransport": "pika"}


@click.command()
@click.option("--wrap", "name", metavar="NAME", help="Wrapper to run (see `zbatch wrappers list`).")
@click.option(
    "--recipewrapper",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="Step message file written at submission.",
)
@click.option(
    "-t",
    "--transport",
    default="embedded",
    show_default=True,
    type=click.Choice(sorted(TRANSPORT_ALIASES)),
    help="Where results are sent.",
)
@click.option("--embedded-db", metavar="FILE", help="SQLite queue for --transport embedded.")
@click.option("--rabbit-conf", metavar="FILE", help="RabbitMQ settings for --transport pika.")
@click.option("--dry-run", is_flag=True, help="Print the tool's command line and exit.")
@click.option(
    "--workdir-root",
    metavar="DIR",
    help="The profile's workdir_root: the tool's folders and result files must lie in it.",
)
def wrap(
    name: str | None,
    recipewrapper: str | None,
    transport: str,
    embedded_db: str | None,
    rabbit_conf: str | None,
    dry_run: bool,
    workdir_root: str | None,
) -> None:
    """Run a wrapper inside a job (the options of zocalo.wrap).

    Exits 0 when the wrapper succeeded and 1 when it failed (zocalo.wrap exits 0 either way),
    so that the scheduler's accounting tells the truth; 143 when stopped by SIGTERM.

    \b
    Example:
      zbatch wrap --wrap generic --recipewrapper /data/job/zbatch-abc-1.recipewrap.json
    """
    if not name:
        fail("A wrapper object must be specified (--wrap NAME).")
    if not recipewrapper:
        fail("--recipewrapper FILE is required")
    # Imported here, not above: `--help` and a usage error need no runner (tenacity, the
    # wrappers' entry points); a job pays for it only when the wrapper really runs.
    from pathlib import Path

    from zbatch.injob.runner import wrap as run_wrapper
    from zbatch.transport.factory import TransportConfig, make_transport

    config = TransportConfig(TRANSPORT_ALIASES[transport], embedded_db, rabbit_conf)
    code, summary = run_wrapper(
        name, Path(recipewrapper), lambda: make_transport(config), dry_run, workdir_root
    )
    click.echo(summary, err=not dry_run)
    raise SystemExit(code)
