"""`zbatch status` and `zbatch cancel`: tracked jobs."""

from __future__ import annotations

import click

from zbatch.cli._common import fail
from zbatch.cli._entries import print_entries
from zbatch.service import status_refresh
from zbatch.service.ledger import Ledger


@click.command()
@click.argument("jobs", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--no-refresh", is_flag=True, help="Show the ledger without asking the clusters.")
@click.option(
    "--owed", "owed_only", is_flag=True, help="Only steps that still owe their recipe messages."
)
def status(jobs: tuple[str, ...], as_json: bool, no_refresh: bool, owed_only: bool) -> None:
    """Tracked jobs and their states (all of them when no JOB id is given).

    A step that ended while the broker was down still owes its recipe the messages its job
    could not send ("owes: success, completed"), or zbatch's own failure report; the
    dispatcher delivers them once the broker takes them.

    \b
    Example:
      zbatch status --json 1234 1235
      zbatch status --owed
    """
    ledger = Ledger()
    entries = list(ledger.find(list(jobs) or None, owed_only=owed_only))
    if jobs and not entries and not owed_only:
        fail(f"no tracked job matches {' '.join(jobs)}")
    if not no_refresh:
        entries = status_refresh.refresh(ledger, entries, _warn)
    print_entries(entries, as_json)


def _warn(message: str) -> None:
    click.echo(f"zbatch: warning: {message}", err=True)


@click.command()
@click.argument("jobs", nargs=-1, required=True)
def cancel(jobs: tuple[str, ...]) -> None:
    """Cancel tracked jobs, pending or running.

    \b
    Example:
      zbatch cancel 1234
    """
    ledger = Ledger()
    entries = list(ledger.find(list(jobs)))
    missing = set(jobs) - {e.job_id for e in entries} - {e.key for e in entries}
    if missing:
        fail(f"no tracked job {', '.join(sorted(missing))}")
    status_refresh.cancel(ledger, entries, lambda e: click.echo(f"{e.job_id}: cancel requested"))
