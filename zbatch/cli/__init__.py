"""The `zbatch` command line: the main group only.

Each command's module is imported when that command runs, not before: `zbatch --help` lists
them from the table below, and a job's `zbatch wrap` does not load the dispatcher's libraries.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, NamedTuple

import click

from zbatch import __version__
from zbatch.cli._common import ProcessRole, ZbatchGroup


class Lazy(NamedTuple):
    target: str  # "module:attribute" of the click command
    summary: str  # its help's first sentence, for `zbatch --help` (a test keeps them equal)


COMMANDS: dict[str, Lazy] = {
    "run": Lazy(
        "zbatch.cli.run:run",
        "Run a whole recipe on this machine and wait; exit 0 only if every step succeeded.",
    ),
    "render": Lazy(
        "zbatch.cli.render:render",
        "Print the job script a step would submit, without submitting it.",
    ),
    "submit": Lazy(
        "zbatch.cli.submit:submit",
        "Start a recipe: submit its start steps to a cluster, or publish it to a broker.",
    ),
    "status": Lazy(
        "zbatch.cli.status:status",
        "Tracked jobs and their states (all of them when no JOB id is given).",
    ),
    "cancel": Lazy("zbatch.cli.status:cancel", "Cancel tracked jobs, pending or running."),
    "logs": Lazy(
        "zbatch.cli.logs:logs",
        "Print a job's stdout and stderr, read where the job ran (locally or over SSH).",
    ),
    "wrap": Lazy(
        "zbatch.cli.wrap:wrap", "Run a wrapper inside a job (the options of zocalo.wrap)."
    ),
    "wrappers": Lazy("zbatch.cli.wrappers:wrappers", "Installed wrapper adapters."),
    "dispatcher": Lazy(
        "zbatch.cli.service:dispatcher",
        "Consume step messages and submit them as jobs; SIGTERM stops it cleanly.",
    ),
    "recipe-starter": Lazy(
        "zbatch.cli.service:recipe_starter",
        "Start recipes requested on `processing_recipe`, so `zocalo.go` can drive zbatch.",
    ),
    "broker": Lazy("zbatch.cli.broker:broker", "Provision RabbitMQ for zbatch and its recipes."),
    "dlq": Lazy("zbatch.cli.broker:dlq", "Inspect and replay dead-lettered messages."),
    "profiles": Lazy("zbatch.cli.profiles:profiles", "List and validate site profiles."),
}


class LazyGroup(ZbatchGroup):
    """A group whose sub-commands are imported on first use, from a name -> Lazy table."""

    def __init__(self, *args: Any, lazy: Mapping[str, Lazy], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy:
            self.add_command(self.load(cmd_name), cmd_name)
        return super().get_command(ctx, cmd_name)

    def load(self, name: str) -> click.Command:
        module, _, attribute = self.lazy[name].target.partition(":")
        command = getattr(importlib.import_module(module), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{self.lazy[name].target} is not a click command")
        return command

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except click.exceptions.NoSuchCommand as exc:
            # click suggests close names from the loaded commands only; offer all of them.
            raise click.exceptions.NoSuchCommand(
                exc.command_name, possibilities=self.list_commands(ctx), ctx=ctx
            ) from None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """click.Group's command list, with the summaries from the table: nothing imported."""
        names = self.list_commands(ctx)
        commands = [
            (name, self.commands.get(name) or click.Command(name, help=self.lazy[name].summary))
            for name in names
        ]
        commands = [(name, command) for name, command in commands if not command.hidden]
        if not commands:
            return
        limit = formatter.width - 6 - max(len(name) for name, _ in commands)
        with formatter.section("Commands"):
            formatter.write_dl(
                [(name, command.get_short_help_str(limit)) for name, command in commands]
            )


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
# The version given here, not looked up: importlib.metadata would cost every start its time.
@click.version_option(__version__)
def main(verbose: int) -> None:
    """Run Zocalo recipe wrapper steps as Slurm, SGE or local batch jobs.

    \b
    Example:
      zbatch run examples/hello.json -p local-commands --param who=me
      zbatch render examples/hello.json --profile slurm-local --step 1 --param who=me
    """
    import logging  # here: --help and --version configure no logging, so need not load it

    level = logging.WARNING - 10 * verbose
    logging.basicConfig(
        level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s"
    )
    # pika and stomp.py log every expected reconnect as an error or warning; zbatch reports
    # broker trouble itself.
    for library in ("pika", "stomp.py"):
        logging.getLogger(library).setLevel(logging.DEBUG if verbose >= 3 else logging.CRITICAL)


def command() -> None:
    """The `zbatch` script and `python -m zbatch`: the process is the command's own, so it may
    start itself again with what a library needs from process start (libdrmaa)."""
    ProcessRole.is_the_command = True
    main()
