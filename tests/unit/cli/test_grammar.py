"""One grammar across the command line: every help has an example, every `--transport` takes
the same names, empty results are said in words, and the dispatcher ends with a sentence.

Each check goes through the real `zbatch` command; the tree of commands comes from the CLI's
own table, so a command added later is checked too.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from tests.helpers import ZbatchRun
from zbatch.cli import main
from zbatch.cli._common import TRANSPORT_HELP, TRANSPORTS, transport_option
from zbatch.transport.base import REASON_HEADER
from zbatch.transport.embedded import EmbeddedTransport

ZBATCH = Path(sys.executable).parent / "zbatch"  # the installed console script


def command_paths() -> list[tuple[str, ...]]:
    """Every group and command below `zbatch`, as the words that name it."""
    paths: list[tuple[str, ...]] = []
    ctx = click.Context(main)

    def walk(group: click.Group, prefix: tuple[str, ...]) -> None:
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            if command is None or command.hidden:
                continue
            paths.append((*prefix, name))
            if isinstance(command, click.Group):
                walk(command, (*prefix, name))

    walk(main, ())
    return paths


def command_at(path: tuple[str, ...]) -> click.Command:
    ctx = click.Context(main)
    command: click.Command = main
    for name in path:
        assert isinstance(command, click.Group)
        found = command.get_command(ctx, name)
        assert found is not None, path
        command = found
    return command


def help_of(path: tuple[str, ...]) -> str:
    done = subprocess.run(
        [str(ZBATCH), *path, "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


PATHS = command_paths()
TRANSPORT_PATHS = [p for p in PATHS if any("--transport" in o.opts for o in command_at(p).params)]


def test_the_tree_holds_the_groups_and_the_service_commands() -> None:
    assert {("broker",), ("dlq", "show"), ("wrappers", "list"), ("dispatcher",)} <= set(PATHS)
    assert {("dlq", "list"), ("dispatcher",), ("recipe-starter",)} <= set(TRANSPORT_PATHS)


@pytest.mark.parametrize("path", PATHS, ids=" ".join)
def test_every_help_has_an_example(path: tuple[str, ...]) -> None:
    text = help_of(path)
    match = re.search(r"^  Example:\n((?:    zbatch .*\n)+)", text, re.M)
    assert match, text
    assert all(line.split()[1 : 1 + len(path)] == list(path) for line in match[1].splitlines())


@pytest.mark.parametrize("path", TRANSPORT_PATHS, ids=" ".join)
def test_every_transport_option_takes_the_same_names(path: tuple[str, ...]) -> None:
    assert f"--transport [{'|'.join(TRANSPORTS)}]" in help_of(path)
    (option,) = [o for o in command_at(path).params if "--transport" in o.opts]
    assert option.help == TRANSPORT_HELP


def test_an_unknown_transport_is_refused_with_the_names(zbatch: ZbatchRun, tmp_path: Path) -> None:
    db = tmp_path / "q.sqlite"
    refused = zbatch("dlq", "show", "q", "--transport", "bogus", "--embedded-db", str(db))
    assert refused.returncode == 2
    assert "'bogus' is not one of 'embedded', 'pika'" in refused.stderr


def test_a_hidden_alias_is_taken_but_never_offered() -> None:
    """For `zbatch wrap`, whose old job scripts say zocalo.wrap's `PikaTransport` or
    `StompTransport`."""

    @click.command()
    @transport_option(
        "embedded", "-t", aliases={"PikaTransport": "pika", "StompTransport": "stomp"}
    )
    def show(kind: str) -> None:
        click.echo(kind)

    runner = CliRunner()
    assert runner.invoke(show, ["-t", "PikaTransport"]).output == "pika\n"
    assert runner.invoke(show, ["-t", "StompTransport"]).output == "stomp\n"
    assert "[embedded|pika|stomp]" in runner.invoke(show, ["--help"]).output
    refused = runner.invoke(show, ["-t", "Pika"])
    assert refused.exit_code == 2
    assert "PikaTransport" not in refused.output and "StompTransport" not in refused.output


def test_a_transport_may_be_left_unset() -> None:
    """For `zbatch submit`, which submits directly when no queue is named."""

    @click.command()
    @transport_option(None)
    def show(kind: str | None) -> None:
        click.echo(repr(kind))

    assert CliRunner().invoke(show, []).output == "None\n"
    assert CliRunner().invoke(show, ["--transport", "pika"]).output == "'pika'\n"


@pytest.mark.parametrize("command", ["show", "list", "replay"])
def test_an_empty_dead_letter_queue_is_said_in_words(
    zbatch: ZbatchRun, tmp_path: Path, command: str
) -> None:
    db = str(tmp_path / "q.sqlite")
    args = ["cluster.submission"] if command != "list" else []
    done = zbatch("dlq", command, *args, "--transport", "embedded", "--embedded-db", db)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("queue dlq.cluster.submission is empty"), done.stdout


def test_a_dead_letter_is_shown_not_said_to_be_empty(zbatch: ZbatchRun, tmp_path: Path) -> None:
    db = tmp_path / "q.sqlite"
    queue = EmbeddedTransport(db)
    queue.publish("dlq.cluster.submission", b"{}", {REASON_HEADER: "bad"})
    queue.disconnect()
    args = ("--transport", "embedded", "--embedded-db", str(db))
    shown = zbatch("dlq", "show", "cluster.submission", *args)
    assert shown.stdout == "dlq.cluster.submission -> cluster.submission: bad\n", shown.stderr
    listed = zbatch("dlq", "list", *args)
    assert listed.stdout.split() == ["dlq.cluster.submission", "1"], listed.stderr


def test_a_bad_limit_is_one_usage_error(zbatch: ZbatchRun, tmp_path: Path) -> None:
    db = str(tmp_path / "q.sqlite")
    done = zbatch(
        "dlq", "show", "q", "--limit", "0", "--transport", "embedded", "--embedded-db", db
    )
    assert done.returncode == 2
    assert "Invalid value for '--limit'" in done.stderr


def test_the_dispatcher_ends_with_a_sentence(
    zbatch: ZbatchRun, tmp_path: Path, make_profile: Any
) -> None:
    db = tmp_path / "q.sqlite"
    queue = EmbeddedTransport(db)
    queue.publish("cluster.submission", b"not a recipe message", {})
    queue.disconnect()
    done = zbatch(
        "dispatcher", "--profile", str(make_profile()), "--transport", "embedded",
        "--embedded-db", str(db), "--max-messages", "1",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines()[-1] == "dispatcher stopped: 1 dead-lettered", done.stderr


def test_a_dispatcher_that_handled_nothing_says_so(
    zbatch: ZbatchRun, tmp_path: Path, make_profile: Any
) -> None:
    done = zbatch(
        "dispatcher", "--profile", str(make_profile()), "--transport", "embedded",
        "--embedded-db", str(tmp_path / "q.sqlite"), "--max-messages", "0",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines()[-1] == "dispatcher stopped: no messages handled"
