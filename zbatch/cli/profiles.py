"""CLI commands that list and validate site profiles."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from zbatch.cli._common import EXIT_USER_ERROR, ZbatchGroup, echo_json
from zbatch.errors import ZbatchError
from zbatch.model.profiles import (
    Profile,
    find_profiles,
    load_profile,
    load_profile_file,
    profile_warnings,
)


@click.group(cls=ZbatchGroup)
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
