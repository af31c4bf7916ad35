"""Ledger entries as `status`, `cancel`, `logs` and `submit` address and print them.

A job is addressed as `profile:id` (job ids of different profiles may be equal: two local
schedulers both have a job 1), or by its bare job id or step key when that is unambiguous.
Every command lists jobs with the same JSON object (`job_json`, documented in docs/json.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

import click

from zbatch.cli._common import echo_json, fail
from zbatch.service.ledger import Ledger, LedgerEntry

JOBS_SCHEMA = "zbatch.jobs/1"
HEADER = f"{'JOB':<20} {'STEP':>4}  {'SUBMITTED (UTC)':<20}  {'RECIPE':<8}  STATE"


def iso(epoch: float | None) -> str | None:
    """A time as ISO 8601 in UTC, to the second ("2026-12-01T07:19:19Z")."""
    if epoch is None:
        return None
    stamp = datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")
    return stamp.replace("+00:00", "Z")


def address(entry: LedgerEntry) -> str:
    """How the user names this job: `profile:job id` (the step key before it has a job id)."""
    return f"{entry.profile}:{entry.job_id or entry.key}"


def job_json(entry: LedgerEntry, stderr_tail: list[str] | None = None) -> dict[str, object]:
    """The public view of a job: no claims, report bits or other bookkeeping."""
    return {
        "id": address(entry),
        "job_id": entry.job_id,
        "profile": entry.profile,
        "scheduler": entry.scheduler,
        "recipe_id": entry.recipe_id,
        "step": entry.pointer,
        "step_key": entry.key,
        "job_name": entry.job_name,
        "state": entry.state.value,
        "exit_code": entry.exit_code,
        "reason": entry.reason,
        "workdir": entry.workdir,
        "submitted_at": iso(entry.submitted_at),
        "updated_at": iso(entry.updated_at),
        # The channels whose messages the step still owes its recipe, in order.
        "owed": entry.owes.channels,
        "owed_error": entry.owed_error,
        "stderr_tail": stderr_tail,
    }


def jobs_json(entries: list[LedgerEntry], tails: dict[str, list[str]] | None = None) -> object:
    tails = tails or {}
    return {"schema": JOBS_SCHEMA, "jobs": [job_json(e, tails.get(e.key)) for e in entries]}


def by_submission(entries: Iterable[LedgerEntry]) -> list[LedgerEntry]:
    """Oldest submission first; steps not yet submitted last, by when they were claimed."""
    return sorted(entries, key=lambda e: (e.submitted_at is None, e.submitted_at or e.updated_at))


def outcome_text(entry: LedgerEntry) -> str:
    """`failed exit 3: No suitable lattice could be found`, `running`, `succeeded`."""
    text = entry.state.value
    if entry.exit_code is not None:
        text += f" exit {entry.exit_code}"
    # The tracker's fallback reason only repeats the exit code.
    if entry.reason and entry.reason != f"exit code {entry.exit_code}":
        text += f": {entry.reason}"
    return text


def print_entries(
    entries: list[LedgerEntry],
    as_json: bool,
    tails: dict[str, list[str]] | None = None,
    details: bool = False,
) -> None:
    """A table (header, one row per job) or JSON. `details`: each job's working directory
    under its row, and the last lines of its stderr where `tails` (by step key) has them."""
    if as_json:
        echo_json(jobs_json(entries, tails))
        return
    tails = tails or {}
    click.echo(HEADER)
    for e in entries:
        submitted = (iso(e.submitted_at) or "-").replace("T", " ").rstrip("Z")
        click.echo(
            f"{address(e):<20} {e.pointer:>4}  {submitted:<20}  {e.recipe_id[:8]:<8}  "
            f"{outcome_text(e)}{_owed_note(e)}"
        )
        if details:
            click.echo(f"    workdir: {e.workdir}")
        if details and tails.get(e.key):
            click.echo(f"    stderr (last {len(tails[e.key])} lines, `zbatch logs` for all):")
            for line in tails[e.key]:
                click.echo(f"    | {line}")


def _owed_note(entry: LedgerEntry) -> str:
    """What the step still owes its recipe (zbatch delivers it when the broker takes it)."""
    owes = entry.owes
    if not owes:
        return ""
    note = f"  owes: {', '.join(owes.channels)}"
    if entry.owed_error:
        note += f" (last try: {entry.owed_error})"
    return note


def resolve(ledger: Ledger, names: Iterable[str]) -> list[LedgerEntry]:
    """The entries the user named, one per name, in order: `profile:id`, or a bare job id or
    step key. An unknown name or a bare id that several jobs share is a user error (exit 2,
    listing the candidates as profile:id)."""
    found: list[LedgerEntry] = []
    for name in names:
        entry = _one(ledger, name)
        if entry.key not in {e.key for e in found}:
            found.append(entry)
    return found


def _one(ledger: Ledger, name: str) -> LedgerEntry:
    profile, sep, ident = name.partition(":")
    candidates = list(ledger.find([ident] if sep else [name]))
    if sep:
        candidates = [e for e in candidates if e.profile == profile]
    if not candidates:
        fail(f"no tracked job matches {name}")
    if len(candidates) > 1:
        listed = ", ".join(
            address(e)
            if [address(c) for c in candidates].count(address(e)) == 1
            else f"{address(e)} (step key {e.key})"
            for e in by_submission(candidates)
        )
        fail(f"job {name} is ambiguous: it may be {listed}; name one as profile:id")
    return candidates[0]
