"""CLI commands that list and validate site profiles."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from zbatch.cli._common import EXIT_USER_ERROR, ZbatchGroup, echo_json
from zbatch.errors import ZbatchError
from zbatch.model.profiles import (
    PROFILE_SUFFIXES,
    Profile,
    ambiguity,
    ambiguous_names,
    find_profiles,
    load_profile,
    load_profile_file,
    missing_paths,
    profile_warnings,
)
from zbatch.prepare.template_check import template_problems


@click.group(cls=ZbatchGroup)
def profiles() -> None:
    """List and validate site profiles.

    \b
    Example:
      zbatch profiles list
      zbatch profiles check site-configs/slurm-local.yaml
    """


@profiles.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def profiles_list(as_json: bool) -> None:
    """Profiles found on the search path (ZBATCH_CONFIG_DIR, ~/.config/zbatch/profiles, shipped).

    Files a profile names that are missing here (key_file, known_hosts, template_dir) are
    warned about on stderr; `zbatch profiles check` counts them as errors.

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
        for problem in missing_paths(profile) if profile else []:
            click.echo(f"zbatch: warning: {problem}", err=True)
    if as_json:
        echo_json({"schema": "zbatch.profiles/1", "profiles": rows})  # docs/json.md
        return
    for row in rows:
        what = f"{row['scheduler']} via {row['connection']}" if not row["error"] else "INVALID"
        click.echo(f"{row['name']:<20} {what:<18} {row['path']}")


def _load(target: str) -> Profile:
    if Path(target).suffix in PROFILE_SUFFIXES:
        return load_profile_file(target)
    return load_profile(target)


def _check(target: str) -> list[str]:
    """Everything wrong with one profile, one line each; prints `ok` and warnings if nothing."""
    try:
        profile = _load(target)
    except ZbatchError as exc:
        return [str(exc)]
    problems = missing_paths(profile) or template_problems(profile)
    if problems:
        return problems
    click.echo(f"ok: {target} ({profile.name}: {profile.scheduler} via {profile.connection.type})")
    for warning in profile_warnings(profile):
        click.echo(f"zbatch: warning: {warning}", err=True)
    return []


@profiles.command("check")
@click.argument("files", nargs=-1)
def profiles_check(files: tuple[str, ...]) -> None:
    """Validate profiles (all known ones when no FILE is given); exit 2 if any is invalid.

    Besides the keys, checks that defaults stay within the limits, that the files the profile
    names on this machine (key_file, known_hosts, template_dir) exist, and that a site template
    renders a sample step with every part zbatch relies on. Settings that are valid but risky
    (accept_unknown_hosts) are warned about on stderr.

    \b
    Example:
      zbatch profiles check site-configs/slurm-local.yaml
    """
    problems: list[str] = []
    if not files:
        problems += [ambiguity(name, paths) for name, paths in ambiguous_names().items()]
    for target in list(files) or [str(p) for p in find_profiles().values()]:
        problems += _check(target)
    for problem in problems:
        click.echo(f"zbatch: error: {problem}", err=True)
    if problems:
        sys.exit(EXIT_USER_ERROR)
