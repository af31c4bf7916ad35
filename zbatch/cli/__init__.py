"""The `zbatch` command line: parsing and printing only; the work happens in the modules."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from zbatch.errors import ZbatchError
from zbatch.model.profiles import (
    Profile,
    find_profiles,
    load_profile,
    load_profile_file,
    profile_warnings,
)

log = logging.getLogger("zbatch")
EXIT_USER_ERROR = 2


class ZbatchGroup(click.Group):
    """Turns every ZbatchError into one line on stderr and a non-zero exit, no traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ZbatchError as exc:
            fail(str(exc), 1 if exc.transient else EXIT_USER_ERROR)


def fail(message: str, code: int = EXIT_USER_ERROR) -> NoReturn:
    click.echo(f"zbatch: error: {message}", err=True)
    sys.exit(code)


def parse_params(pairs: tuple[str, ...]) -> dict[str, str]:
    params: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"--param {pair!r} must look like KEY=VALUE")
        params[key] = value
    return params


def transport_options(func: Any) -> Any:
    """--transport pika|embedded with --rabbit-conf and --embedded-db, as every service takes."""
    func = click.option("--rabbit-conf", metavar="FILE", help="RabbitMQ settings ([rabbit] INI).")(
        func
    )
    func = click.option("--embedded-db", metavar="FILE", help="SQLite queue (embedded).")(func)
    return click.option(
        "--transport",
        "kind",
        type=click.Choice(["pika", "embedded"]),
        default="pika",
        show_default=True,
        help="Which broker.",
    )(func)


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


@click.group(cls=ZbatchGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="zbatch")
def main(verbose: int) -> None:
    """Run Zocalo recipe wrapper steps as Slurm, SGE or local batch jobs.

    \b
    Example:
      zbatch run examples/hello.json
      zbatch render --profile slurm-local --recipe examples/hello.json --step 1
    """
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(
        level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s"
    )
    # pika logs every expected reconnect as an error; zbatch reports broker trouble itself.
    logging.getLogger("pika").setLevel(logging.DEBUG if verbose >= 3 else logging.CRITICAL)


def register() -> None:
    from zbatch.cli.broker import broker, dlq
    from zbatch.cli.jobs import cancel, render, run, status, submit
    from zbatch.cli.service import dispatcher, recipe_starter
    from zbatch.cli.wrap import wrap, wrappers

    commands = (
        run,
        render,
        submit,
        status,
        cancel,
        wrap,
        wrappers,
        dispatcher,
        recipe_starter,
        broker,
        dlq,
    )
    for command in commands:
        main.add_command(command)


@main.group()
def profiles() -> None:
    """List and validate site profiles."""


@profiles.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def profiles_list(as_json: bool) -> None:
    """Profiles found on the search path (ZBATCH_CONFIG_DIR, ~/.config/zbatch/profiles, shipped).

    \b
    Example:
      zbatch profiles list
    """
    rows = []
    for name, path in sorted(find_profiles().items()):
        try:
            profile: Profile | None = load_profile_file(path)
        except ZbatchError as exc:
            profile, error = None, str(exc)
        rows.append(
            {
                "name": name,
                "path": str(path),
                "scheduler": profile.scheduler if profile else None,
                "connection": profile.connection.type if profile else None,
                "error": None if profile else error,
            }
        )
    if as_json:
        echo_json(rows)
        return
    for row in rows:
        what = f"{row['scheduler']} via {row['connection']}" if not row["error"] else "INVALID"
        click.echo(f"{row['name']:<20} {what:<18} {row['path']}")


@profiles.command("check")
@click.argument("files", nargs=-1)
def profiles_check(files: tuple[str, ...]) -> None:
    """Validate profiles (all known ones when no FILE is given); exit 2 if any is invalid.

    Settings that are valid but risky (accept_unknown_hosts) are warned about on stderr.

    \b
    Example:
      zbatch profiles check site-configs/slurm-local.yaml
    """
    targets = list(files) or [str(p) for p in find_profiles().values()]
    bad = 0
    for target in targets:
        try:
            profile = (
                load_profile(target)
                if Path(target).suffix not in (".yaml", ".yml")
                else load_profile_file(target)
            )
            click.echo(
                f"ok: {target} ({profile.name}: {profile.scheduler} via {profile.connection.type})"
            )
            for warning in profile_warnings(profile):
                click.echo(f"zbatch: warning: {warning}", err=True)
        except ZbatchError as exc:
            click.echo(f"zbatch: error: {exc}", err=True)
            bad += 1
    if bad:
        sys.exit(EXIT_USER_ERROR)


register()
