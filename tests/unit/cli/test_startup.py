"""Start-up: what `zbatch --version`, `--help` and a job's `zbatch wrap` load before working.

Every job runs `zbatch wrap` and every operator types `zbatch --help`: neither may pay for the
service's libraries. The command modules load only when their command runs (a table in
zbatch.cli); these tests run real interpreters and look at what they imported, never at time
(benchmarks/startup.py measures that).
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from tests.helpers import one_line_error
from zbatch.cli import COMMANDS, Lazy, LazyGroup, main
from zbatch.cli._common import ZbatchGroup
from zbatch.errors import ZbatchError

ZBATCH = Path(sys.executable).parent / "zbatch"  # the installed console script

# The service's libraries (broker, metrics, templates, models, SSH, DRMAA, retries).
SERVICE_LIBRARIES = (
    "pika",
    "prometheus_client",
    "jinja2",
    "pydantic",
    "paramiko",
    "drmaa",
    "tenacity",
)
# What a job's runner must never load (the contract in pyproject.toml, checked at run time).
RUNNER_FORBIDDEN = ("prometheus_client", "jinja2", "paramiko", "drmaa")

# Runs the CLI in this interpreter (no console script: `main` is what it calls), then writes
# the names of the loaded modules to the file given first.
LOADED_BY_CLI = """
import sys
from zbatch.cli import main
try:
    main(sys.argv[2:], prog_name="zbatch", standalone_mode=False)
finally:
    loaded = sorted(sys.modules)
    with open(sys.argv[1], "w") as out:
        out.write("\\n".join(loaded))
"""


def loaded_modules(tmp_path: Path, code: str, *args: str) -> set[str]:
    listing = tmp_path / "modules.txt"
    done = subprocess.run(
        [sys.executable, "-c", code, str(listing), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return set(listing.read_text().splitlines())


def offenders(modules: set[str], packages: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in packages)


@pytest.mark.parametrize(
    ("args", "own_modules"),
    [
        (["--version"], set()),
        (["--help"], set()),
        (["wrap", "--help"], {"zbatch.cli.wrap"}),
    ],
    ids=["version", "help", "wrap-help"],
)
def test_start_up_loads_only_what_it_uses(
    tmp_path: Path, args: list[str], own_modules: set[str]
) -> None:
    modules = loaded_modules(tmp_path, LOADED_BY_CLI, *args)
    assert offenders(modules, SERVICE_LIBRARIES) == []
    # The version is zbatch.__version__, not looked up in the installed metadata.
    assert "importlib.metadata" not in modules
    zbatch_modules = {m for m in modules if m.split(".")[0] == "zbatch"}
    assert zbatch_modules == {"zbatch", "zbatch.cli", "zbatch.cli._common", "zbatch.errors"} | (
        own_modules
    )


def test_the_in_job_runner_loads_no_service_library(tmp_path: Path) -> None:
    code = """
import sys
import zbatch.injob, zbatch.injob.runner
with open(sys.argv[1], "w") as out:
    out.write("\\n".join(sorted(sys.modules)))
"""
    assert offenders(loaded_modules(tmp_path, code), RUNNER_FORBIDDEN) == []


def test_version_is_the_installed_one() -> None:
    done = subprocess.run(
        [str(ZBATCH), "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"zbatch, version {importlib.metadata.version('zbatch')}\n"


def test_help_lists_every_command_with_its_summary() -> None:
    done = subprocess.run(
        [str(ZBATCH), "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    listed = dict(
        re.findall(r"^  (\S+)\s+(.+)$", done.stdout.split("Commands:\n", 1)[1], re.MULTILINE)
    )
    assert sorted(listed) == sorted(COMMANDS)
    for name, text in listed.items():
        summary = COMMANDS[name].summary
        assert text == summary or (text.endswith("...") and summary.startswith(text[:-3]))


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_table_matches_each_command(name: str) -> None:
    """The table's summary is the command's own first sentence: they cannot drift apart."""
    command = main.load(name)
    assert command.name == name
    assert command.get_short_help_str(10_000) == COMMANDS[name].summary


@pytest.mark.parametrize("width", [40, 80, 120, 200])
def test_help_reads_as_click_would_print_it(width: int) -> None:
    """Byte for byte what click.Group prints with every command imported."""
    lazy = LazyGroup("zbatch", lazy=COMMANDS)
    eager = click.Group("zbatch", commands={name: lazy.load(name) for name in COMMANDS})
    shown = []
    for group in (lazy, eager):
        ctx = click.Context(group, info_name="zbatch", terminal_width=width)
        formatter = ctx.make_formatter()
        group.format_commands(ctx, formatter)
        shown.append(formatter.getvalue())
    assert shown[0] == shown[1]
    assert not lazy.commands  # and the lazy group imported nothing to print it


def test_a_typo_is_answered_with_the_close_command_names() -> None:
    result = CliRunner().invoke(main, ["stat"])
    assert result.exit_code == 2
    assert "No such command 'stat'. Did you mean 'status'?" in result.output


def test_an_error_in_a_lazily_loaded_command_is_one_line(tmp_path: Path) -> None:
    """A nested group (dlq) and a plain command (render), each loaded on first use."""
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    queue = not_a_folder / "q.sqlite"
    for args in (
        ["dlq", "show", "q", "--transport", "embedded", "--embedded-db", str(queue)],
        ["render", "--profile", str(tmp_path / "nope.yaml"), "--recipe", "x.json"],
    ):
        done = subprocess.run(
            [str(ZBATCH), *args], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 2, done.stderr
        one_line_error(done)


# For the next test: commands in a table, as zbatch.cli has them, raising ZbatchErrors.
@click.command()
@click.option("--transient", is_flag=True)
def failing(transient: bool) -> None:
    raise ZbatchError("it went wrong", transient=transient)


@click.group(cls=ZbatchGroup)
def nested() -> None:
    """A nested group."""


nested.add_command(failing)


@pytest.mark.parametrize(("flag", "code"), [([], 2), (["--transient"], 1)])
@pytest.mark.parametrize("path", [["failing"], ["nested", "failing"]])
def test_zbatch_errors_exit_1_when_transient_else_2(
    path: list[str], flag: list[str], code: int
) -> None:
    table = {
        "failing": Lazy(f"{__name__}:failing", "Fails."),
        "nested": Lazy(f"{__name__}:nested", "A nested group."),
    }
    result = CliRunner().invoke(LazyGroup("zbatch", lazy=table), [*path, *flag])
    assert result.exit_code == code
    assert result.stderr == "zbatch: error: it went wrong\n"
    assert "Traceback" not in result.output


def test_help_of_the_module_entry_point_matches(tmp_path: Path) -> None:
    """`python -m zbatch` is the same command line (tests and jobs use it)."""
    done = subprocess.run(
        [sys.executable, "-m", "zbatch", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert all(f"  {name}" in done.stdout for name in COMMANDS)
