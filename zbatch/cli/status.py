"""`zbatch status` and `zbatch cancel`: tracked jobs."""

from __future__ import annotations

import sys

import click

from zbatch.cli._common import EXIT_USER_ERROR, echo_json
from zbatch.cli._entries import (
    address,
    by_submission,
    job_json,
    outcome_text,
    print_entries,
    resolve,
)
from zbatch.model.jobs import JobState
from zbatch.service import status_refresh
from zbatch.service.ledger import Ledger, LedgerEntry

CANCEL_SCHEMA = "zbatch.cancel/1"


@click.command()
@click.argument("jobs", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (docs/json.md).")
@click.option("--no-refresh", is_flag=True, help="Show the ledger without asking the clusters.")
@click.option(
    "--owed", "owed_only", is_flag=True, help="Only steps that still owe their recipe messages."
)
@click.option(
    "--recipe",
    "recipe_id",
    metavar="ID",
    help="Only the steps of this recipe run (its ID, or the start of it).",
)
def status(
    jobs: tuple[str, ...], as_json: bool, no_refresh: bool, owed_only: bool, recipe_id: str | None
) -> None:
    """Tracked jobs and their states (all of them when no JOB id is given).

    A JOB is `profile:id` (job ids of different profiles may be equal), or a bare job id or
    step key that only one job has. Jobs are listed oldest submission first; a failed JOB
    named on the command line is shown with the last lines of its stderr.

    A step that ended while the broker was down still owes its recipe the messages its job
    could not send ("owes: success, completed"), or zbatch's own failure report; the
    dispatcher delivers them once the broker takes them.

    \b
    Example:
      zbatch status --json local:1234 1235
      zbatch status --recipe 6f1c2a5e-0b7d-4c1e-9a51-6d2b8f0e9c3a
      zbatch status --owed
    """
    ledger = Ledger()
    entries = resolve(ledger, jobs) if jobs else list(ledger.find(owed_only=owed_only))
    if owed_only:
        entries = [e for e in entries if e.owes]
    if recipe_id is not None:
        entries = [e for e in entries if e.recipe_id.startswith(recipe_id)]
    if not no_refresh:
        entries = status_refresh.refresh(ledger, entries, _warn)
    entries = by_submission(entries)
    tails: dict[str, list[str]] = {}
    if jobs:  # the stderr of a failed job the user asked about: why it failed, in its words
        failed = [e for e in entries if e.state is JobState.FAILED]
        explained = status_refresh.explain(failed, _warn)
        tails = {key: w.stderr_tail for key, w in explained.items()}
    print_entries(entries, as_json, tails, details=bool(jobs))


def _warn(message: str) -> None:
    click.echo(f"zbatch: warning: {message}", err=True)


@click.command()
@click.argument("jobs", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (docs/json.md).")
def cancel(jobs: tuple[str, ...], as_json: bool) -> None:
    """Cancel tracked jobs, pending or running.

    A JOB is `profile:id`, or a bare job id or step key that only one job has. Exits 2 when
    a job named had already ended (the others are still cancelled).

    \b
    Example:
      zbatch cancel local:1234
    """
    ledger = Ledger()
    entries = status_refresh.refresh(ledger, resolve(ledger, jobs), _warn)
    ended = [e for e in entries if not e.active]
    active = [e for e in entries if e.active]
    cancelled: list[LedgerEntry] = []
    status_refresh.cancel(ledger, active, cancelled.append)
    if as_json:
        echo_json(
            {
                "schema": CANCEL_SCHEMA,
                "cancelled": [address(e) for e in cancelled],
                "already_ended": [address(e) for e in ended],
                "jobs": [job_json(e) for e in status_refresh.current(ledger, entries)],
            }
        )
    else:
        for entry in cancelled:
            click.echo(f"{address(entry)}: cancel requested")
        for entry in ended:
            click.echo(
                f"zbatch: error: {address(entry)} already ended ({outcome_text(entry)}): "
                "nothing to cancel",
                err=True,
            )
    if ended:
        sys.exit(EXIT_USER_ERROR)
