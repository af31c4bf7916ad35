"""CLI command for the in-job runner: `zbatch wrap`, which every job runs."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from zbatch.cli._common import echo_json, fail, transport_option

if TYPE_CHECKING:
    from zbatch.transport.stomp_settings import StompSettings

# zocalo.wrap's STOMP options, which job scripts written for it pass: taken, not shown in the
# help. zbatch's own jobs name a `[stomp]` INI with `--stomp-conf` instead (a password on a
# command line is visible to every user of the host). Option -> the StompSettings field.
PIECES = {
    "--stomp-host": "host",
    "--stomp-port": "port",
    "--stomp-user": "username",
    "--stomp-pass": "password",
    "--stomp-prfx": "prefix",
}


def stomp_piece_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Hidden --stomp-host/--stomp-port/--stomp-user/--stomp-pass/--stomp-prfx; the command
    receives those given as one `stomp_pieces` argument (field -> value)."""

    @functools.wraps(func)  # keeps the options declared so far (click's __click_params__)
    def command(*args: Any, **kwargs: Any) -> Any:
        given = {name: kwargs.pop(f"stomp_{name}") for name in PIECES.values()}
        pieces = {name: value for name, value in given.items() if value is not None}
        return func(*args, stomp_pieces=pieces, **kwargs)

    for option, name in PIECES.items():
        kind: Any = click.IntRange(1, 65535) if name == "port" else str
        click.option(option, f"stomp_{name}", type=kind, hidden=True)(command)
    return command


def stomp_settings(conf: str | None, pieces: dict[str, Any]) -> StompSettings | None:
    """StompSettings from `conf` (or the environment) with zocalo.wrap's pieces over it;
    None when no piece was given (the transport reads `conf` itself)."""
    if not pieces:
        return None
    from zbatch.transport.stomp_settings import StompSettings

    base = StompSettings.from_ini(conf) if conf else StompSettings.from_env()
    return dataclasses.replace(base, **pieces)


@click.command()
@click.option("--wrap", "name", metavar="NAME", help="Wrapper to run (see `zbatch wrappers list`).")
@click.option(
    "--recipewrapper",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="Step message file written at submission.",
)
# zocalo.wrap's `-t PikaTransport`/`-t StompTransport`, as job scripts written for it say, are
# taken but not shown.
@transport_option(
    "embedded",
    "-t",
    dest="transport",
    aliases={"PikaTransport": "pika", "StompTransport": "stomp"},
)
@click.option("--embedded-db", metavar="FILE", help="SQLite queue for --transport embedded.")
@click.option("--rabbit-conf", metavar="FILE", help="RabbitMQ settings for --transport pika.")
@click.option("--stomp-conf", metavar="FILE", help="ActiveMQ settings for --transport stomp.")
@stomp_piece_options
@click.option("--dry-run", is_flag=True, help="Print the tool's command line and exit.")
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: machine-readable output.")
@click.option(
    "-v", "--verbose", count=True, help="Debug log output (the wrapper's steps are logged anyway)."
)
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
    stomp_conf: str | None,
    stomp_pieces: dict[str, str],
    dry_run: bool,
    as_json: bool,
    verbose: int,
    workdir_root: str | None,
) -> None:
    """Run a wrapper inside a job (the options of zocalo.wrap).

    Exits 0 when the wrapper succeeded; when it failed, with the tool's own exit code (1 when
    the tool never ran or exited 0), so that the scheduler's accounting tells the truth
    (zocalo.wrap exits 0 either way); 143 when stopped by SIGTERM. Logs its progress and,
    on failure, the reason on stderr.

    \b
    Example:
      zbatch wrap --wrap generic --recipewrapper /data/job/zbatch-abc-1.recipewrap.json
    """
    if not name:
        fail("A wrapper object must be specified (--wrap NAME).")
    if not recipewrapper:
        fail("--recipewrapper FILE is required")
    if as_json and not dry_run:
        fail("--json goes with --dry-run")
    # Imported here, not above: `--help` and a usage error need no runner (tenacity, the
    # wrappers' entry points); a job pays for it only when the wrapper really runs.
    from pathlib import Path

    from zbatch.injob import runner

    if dry_run:
        _print_dry_run(*runner.dry_run(name, Path(recipewrapper), workdir_root), as_json)
        return
    _log_progress(verbose)
    from zbatch.transport.factory import TransportConfig, make_transport

    config = TransportConfig(
        transport, embedded_db, rabbit_conf, stomp_conf, stomp_settings(stomp_conf, stomp_pieces)
    )
    code, summary = runner.wrap(
        name, Path(recipewrapper), lambda: make_transport(config), workdir_root
    )
    click.echo(summary if code == 0 else f"zbatch: {summary}", err=True)
    raise SystemExit(code)


def _log_progress(verbose: int) -> None:
    """The wrapper's steps at INFO, as zocalo.wrap logs them; -v adds zbatch's debug output."""
    import logging

    logging.getLogger("zbatch.injob.runner").setLevel(logging.INFO)
    if verbose:
        logging.getLogger("zbatch").setLevel(logging.DEBUG)


def _print_dry_run(workdir: Any, argv: list[str], as_json: bool) -> None:
    if as_json:
        echo_json({"schema": "zbatch.wrap-dry-run/1", "cwd": str(workdir), "argv": argv})
        return
    import shlex

    click.echo(f"working directory: {workdir}")
    click.echo(f"command: {shlex.join(argv)}")
