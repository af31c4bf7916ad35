"""Ledger entries as `status` and `submit` print them."""

from __future__ import annotations

import click

from zbatch.cli._common import echo_json
from zbatch.service.ledger import LedgerEntry


def print_entries(entries: list[LedgerEntry], as_json: bool) -> None:
    if as_json:
        # `owed`: the channels whose messages the step still owes its recipe, in order.
        echo_json([{**e.__dict__, "owed": e.owes.channels} for e in entries])
        return
    for e in entries:
        code = "" if e.exit_code is None else f" exit {e.exit_code}"
        reason = f" ({e.reason})" if e.reason else ""
        click.echo(
            f"{e.job_id or '-':<10} {e.profile:<14} step {e.pointer:<3} {e.state}{code}"
            f"{reason}  {e.workdir}{_owed_note(e)}"
        )


def _owed_note(entry: LedgerEntry) -> str:
    """What the step still owes its recipe (zbatch delivers it when the broker takes it)."""
    owes = entry.owes
    if not owes:
        return ""
    note = f"  owes: {', '.join(owes.channels)}"
    if entry.owed_error:
        note += f" (last try: {entry.owed_error})"
    return note
