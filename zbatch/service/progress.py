"""What a waiting user is told: each step's state changes, from what the tracker observed.

The board only turns observations (a step's job and state, as the ledger holds them after a
poll) into changes; how they are shown (lines, or a display rewritten in place) is the CLI's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from zbatch.model.jobs import JobState
from zbatch.service.ledger import LedgerEntry

# The words a user reads: a job the scheduler holds but has not started is "queued".
_WORDS = {JobState.PENDING: "queued", JobState.SUBMITTING: "submitting"}


def state_word(state: JobState) -> str:
    return _WORDS.get(state, state.value)


@dataclass(frozen=True)
class StepProgress:
    pointer: int
    job_id: str | None
    state: JobState
    since: float  # time.time() of the last change

    @property
    def word(self) -> str:
        return state_word(self.state)


@dataclass(frozen=True)
class Change:
    before: StepProgress | None
    after: StepProgress

    def line(self) -> str:
        """`07:20:01 step 1 (job 42): queued -> running`"""
        at = time.strftime("%H:%M:%S", time.localtime(self.after.since))
        job = f" (job {self.after.job_id})" if self.after.job_id else ""
        was = f"{self.before.word} -> " if self.before is not None else ""
        return f"{at} step {self.after.pointer}{job}: {was}{self.after.word}"


Listener = Callable[["ProgressBoard", Change], None]


class ProgressBoard:
    """The latest state of each step of one run; tells `listener` of every change once."""

    def __init__(self, listener: Listener | None = None) -> None:
        self.listener = listener
        self.steps: dict[int, StepProgress] = {}

    def observe(self, pointer: int, job_id: str | None, state: JobState) -> Change | None:
        before = self.steps.get(pointer)
        if before is not None and (before.state, before.job_id) == (state, job_id):
            return None
        if before is not None and before.state.final and not state.final:
            return None  # a late poll cannot bring an ended step back
        after = StepProgress(pointer, job_id, state, time.time())
        self.steps[pointer] = after
        change = Change(before, after)
        if self.listener is not None:
            self.listener(self, change)
        return change

    def observe_entries(self, entries: Iterable[LedgerEntry]) -> list[Change]:
        """The ledger's view of the run's jobs after a poll."""
        changes = [self.observe(e.pointer, e.job_id, e.state) for e in entries]
        return [c for c in changes if c is not None]

    def ordered(self) -> list[StepProgress]:
        return [self.steps[p] for p in sorted(self.steps)]
