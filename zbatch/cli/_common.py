"""What every command module shares: error exits, option groups, JSON output.

Kept to click and zbatch.errors, so that a command pays only for its own imports.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click
from click.decorators import FC

from zbatch.errors import RestartNeeded, ZbatchError

EXIT_USER_ERROR = 2


class ZbatchGroup(click.Group):
    """Turns every ZbatchError raised below it (any sub-command, any nested group) into one
    line on stderr and exit 1 (transient: worth retrying) or 2 (user error), no traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RestartNeeded as exc:
            restart(exc)
        except ZbatchError as exc:
            fail(str(exc), 1 if exc.transient else EXIT_USER_ERROR)


class ProcessRole:
    """Whether this process is the `zbatch` command itself (the script, `python -m zbatch`),
    which may replace itself, rather than a program calling the CLI (tests, CliRunner)."""

    is_the_command = False


def restart(needed: RestartNeeded) -> NoReturn:
    """Start this same command again in a process that has `needed.environment` from its start
    (raised before the command did anything); a second time round it is an ordinary error."""
    if not ProcessRole.is_the_command or os.environ.get(_RESTARTED):
        fail(str(needed))
    environment = {**os.environ, **needed.environment, _RESTARTED: "1"}
    sys.stdout.flush()
    sys.stderr.flush()
    # The same interpreter and arguments, no shell: nothing here comes from a message.
    argv = [sys.executable, "-m", "zbatch", *sys.argv[1:]]
    os.execve(sys.executable, argv, environment)  # noqa: S606


_RESTARTED = "ZBATCH_RESTARTED"


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


# One set of transport names and one help text for every command's --transport.
TRANSPORTS = ("embedded", "pika", "stomp")
TRANSPORT_HELP = (
    "Which queue: embedded (SQLite file on this machine), pika (RabbitMQ) or stomp (ActiveMQ)."
)


class TransportChoice(click.Choice[str]):
    """`embedded|pika|stomp`; also takes hidden aliases (zocalo.wrap's `PikaTransport`) that
    old job scripts still pass, without showing them in --help or in error messages."""

    def __init__(self, aliases: dict[str, str] | None = None) -> None:
        super().__init__(TRANSPORTS)
        self.aliases = dict(aliases or {})

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and value in self.aliases:
            return self.aliases[value]
        return super().convert(value, param, ctx)


def transport_option(
    default: str | None = "pika",
    *flags: str,
    dest: str = "kind",
    aliases: dict[str, str] | None = None,
) -> Callable[[FC], FC]:
    """The --transport option, with TRANSPORTS and TRANSPORT_HELP (flags: extra spellings).

    `default=None` leaves it unset unless given (for a command that can also do without a
    queue); `aliases` are extra names taken but never shown."""
    return click.option(
        *flags,
        "--transport",
        dest,
        type=TransportChoice(aliases),
        default=default,
        show_default=True,
        help=TRANSPORT_HELP,
    )


def transport_options(func: Any) -> Any:
    """--transport embedded|pika|stomp with --rabbit-conf, --stomp-conf and --embedded-db, as
    every service takes."""
    func = click.option(
        "--stomp-conf", metavar="FILE", help="ActiveMQ settings ([stomp] INI) for stomp."
    )(func)
    func = click.option(
        "--rabbit-conf", metavar="FILE", help="RabbitMQ settings ([rabbit] INI) for pika."
    )(func)
    func = click.option("--embedded-db", metavar="FILE", help="SQLite queue for embedded.")(func)
    return transport_option()(func)


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))
