"""What every command module shares: error exits, option groups, JSON output.

Kept to click and zbatch.errors, so that a command pays only for its own imports.
"""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

import click

from zbatch.errors import ZbatchError

EXIT_USER_ERROR = 2


class ZbatchGroup(click.Group):
    """Turns every ZbatchError raised below it (any sub-command, any nested group) into one
    line on stderr and exit 1 (transient: worth retrying) or 2 (user error), no traceback."""

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
