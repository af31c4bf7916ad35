"""`zbatch run`: a whole recipe on this machine through the embedded queue.

The runner plays the dispatcher for every wrapper step: it takes step messages from their
queues, submits them through the profile's cluster, tracks the jobs, and lets the wrappers'
own onward messages drive the recipe forward. Messages for nodes that no zbatch service
serves stay on their queues and are listed at the end. Every wrapper step is checked before
the first is submitted (`plan`), and a run stopped early cancels the jobs it started (`stop`).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zbatch.clusters import Cluster
from zbatch.errors import ZbatchError
from zbatch.model import safety
from zbatch.model.jobs import JobState, result_record_path
from zbatch.model.message import (
    DISPATCHER_DEFAULT_CHANNEL,
    StepMessage,
    internal_reason,
    job_submitted_payload,
    start_messages,
)
from zbatch.model.profiles import Profile
from zbatch.model.recipe import Recipe
from zbatch.prepare.job_files import JobContext
from zbatch.prepare.parameters import is_wrapper_step
from zbatch.prepare.recipe_check import CheckedStep, check_recipe
from zbatch.service.ledger import Ledger, LedgerEntry, Reported
from zbatch.service.outcome import stderr_tail
from zbatch.service.owed import Deliverer
from zbatch.service.progress import Listener, ProgressBoard
from zbatch.service.submitter import Submitter
from zbatch.service.tracker import Settled, Tracker, cancel_jobs
from zbatch.transport.embedded import EmbeddedTransport
from zbatch.transport.factory import TransportConfig

log = logging.getLogger(__name__)

Printer = Callable[[str], None]


@dataclass
class StepOutcome:
    pointer: int
    state: JobState
    job_id: str | None
    workdir: str
    reason: str = ""
    result_record: str = ""


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Ctrl-C is taken after the block, not inside it (main thread only: elsewhere Python
    delivers no SIGINT); a cancellation then finds every job the block submitted."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


class RunTimeout(ZbatchError):
    transient = True  # the jobs were fine, only slower than the user would wait


@dataclass(frozen=True)
class RunPlan:
    """A run checked and ready: its ID, its own queue, and every wrapper step prepared."""

    recipe: Recipe  # placeholders filled
    run_id: str
    config: TransportConfig
    environment: dict[str, Any]
    steps: list[CheckedStep]

    @property
    def context(self) -> JobContext:
        return JobContext(transport_args=self.config.job_args())


class RecipeRunner:
    def __init__(
        self,
        profile: Profile,
        cluster: Cluster,
        ledger: Ledger,
        run_root: Path,
        echo: Printer,
        poll_s: float = 0.2,
        listener: Listener | None = None,
    ) -> None:
        self.profile = profile
        self.cluster = cluster
        self.ledger = ledger
        self.run_root = run_root
        self.echo = echo
        self.poll_s = poll_s
        self.outcomes: dict[int, StepOutcome] = {}
        self.messages: dict[str, StepMessage] = {}
        self.board = ProgressBoard(listener)
        self.run_id = ""

    def plan(
        self, recipe: Recipe, parameters: dict[str, Any], resolve_on_cluster: bool = True
    ) -> RunPlan:
        """Check every wrapper step against the profile, as each will be sent (raises the
        first step's error); nothing is written or submitted. `resolve_on_cluster=False`
        checks paths as text only where jobs run elsewhere (a dry run need not reach them)."""
        environment: dict[str, Any] = {"ID": str(uuid.uuid4())}
        run_dir = self.run_root / safety.safe_tag(environment["ID"], 36)
        config = TransportConfig("embedded", str(run_dir / "queue.sqlite"))
        context = JobContext(transport_args=config.job_args())
        if resolve_on_cluster:
            context = context.on(self.cluster)
        steps = check_recipe(recipe, parameters, self.profile, context, environment)
        filled = recipe.apply_parameters(parameters)
        return RunPlan(filled, environment["ID"], config, environment, steps)

    def run(self, plan: RunPlan, timeout_s: float | None = None) -> list[StepOutcome]:
        recipe, run_id, config = plan.recipe, plan.run_id, plan.config
        self.run_id = run_id
        starts = start_messages(recipe, plan.environment)
        transport = EmbeddedTransport(config.db_path())
        submitter = Submitter(self.profile, self.cluster, self.ledger, plan.context)
        tracker = Tracker(self.cluster, self.ledger, self.profile.name, recipe_ids={run_id})
        served = sorted(
            {
                str(n["queue"])
                for n in recipe.nodes.values()
                if is_wrapper_step(n) and n.get("queue")
            }
        )
        self.echo(f"recipe run {run_id}: profile {self.profile.name}, queue {config.db_path()}")
        for message in starts:
            transport.send_step(message)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            while True:
                took = self._take_messages(transport, served, submitter)
                for entry, settled in tracker.poll_once():
                    self._finish(entry, settled, transport)
                active = tracker.active()
                self.board.observe_entries(active)
                busy = took or bool(active) or any(transport.depth(q) for q in served)
                if not busy:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise RunTimeout(f"recipe run {run_id} did not finish within {timeout_s:g} s")
                time.sleep(self.poll_s)
            self._report_leftovers(transport, served)
        finally:
            transport.disconnect()
        return sorted(self.outcomes.values(), key=lambda o: o.pointer)

    def entries(self) -> list[LedgerEntry]:
        """Every job this run submitted, as the ledger holds it, in node order."""
        found = [
            e for e in self.ledger.find(profile=self.profile.name) if e.recipe_id == self.run_id
        ]
        return sorted(found, key=lambda e: e.pointer)

    def unfinished(self) -> list[LedgerEntry]:
        """The jobs this run started that have not ended (any submitted, whatever it printed)."""
        return [
            e
            for e in self.ledger.find(active_only=True, profile=self.profile.name)
            if self.run_id and e.recipe_id == self.run_id
        ]

    def stop(self, settle_s: float = 15.0) -> list[LedgerEntry]:
        """Cancel the run's unfinished jobs through the cluster (recorded in the ledger), then
        wait up to `settle_s` for the scheduler to end them; returns the jobs cancelled."""
        jobs = [e for e in self.unfinished() if e.job_id]
        if not jobs:
            return []
        cancel_jobs(self.cluster, self.ledger, jobs)
        tracker = Tracker(self.cluster, self.ledger, self.profile.name, recipe_ids={self.run_id})
        deadline = time.monotonic() + settle_s
        while tracker.has_active() and time.monotonic() < deadline:
            for entry, settled in tracker.poll_once():
                self.board.observe(entry.pointer, entry.job_id, settled.state)
            time.sleep(self.poll_s)
        return jobs

    def _take_messages(
        self, transport: EmbeddedTransport, queues: list[str], submitter: Submitter
    ) -> bool:
        took = False
        for queue in queues:
            while (delivery := transport.receive(queue, 0)) is not None:
                took = True
                try:
                    message = StepMessage.from_body(delivery.body, source=f"queue {queue}")
                    with interrupts_deferred():  # the job id reaches the ledger: Ctrl-C sees it
                        done = submitter.submit(message)
                except Exception as exc:  # a defect fails its step, not the whole run
                    reason = str(exc) if isinstance(exc, ZbatchError) else internal_reason(exc)
                    if not isinstance(exc, ZbatchError):
                        log.exception("step message on %s: %s", queue, reason)
                    transport.dead_letter(delivery, reason)
                    self.echo(f"  step message on {queue} refused: {reason}")
                    self.outcomes[-delivery.tag] = StepOutcome(
                        -delivery.tag, JobState.FAILED, None, "", reason
                    )
                    continue
                transport.ack(delivery)
                entry = done.entry
                self._notify_submitted(transport, message, entry)
                self.messages[entry.key] = message
                self.outcomes[message.pointer] = StepOutcome(
                    message.pointer, JobState.PENDING, entry.job_id, entry.workdir
                )
                self.echo(
                    f"  step {message.pointer} submitted as {self.cluster.scheduler_name} "
                    f"job {entry.job_id} (workdir {entry.workdir})"
                )
                self.board.observe(message.pointer, entry.job_id, entry.state)
        return took

    def _notify_submitted(
        self, transport: EmbeddedTransport, message: StepMessage, entry: LedgerEntry
    ) -> None:
        """The dispatcher's `job_submitted` notice, by the same rules (once per step; as
        dlstbx: default channel `job_submitted`, then send(), so unnamed outputs get it)."""
        if entry.reported & Reported.SUBMITTED:
            return
        payload = job_submitted_payload(entry.job_id, entry.scheduler)
        if transport.send_onward(
            message, None, payload, default_channel=DISPATCHER_DEFAULT_CHANNEL
        ):
            fresh = self.ledger.get(entry.key) or entry  # keep any bit set since
            self.ledger.update(entry.key, reported=fresh.reported | Reported.SUBMITTED)

    def _echo_stderr_tail(self, entry: LedgerEntry) -> None:
        """The last lines the failed job wrote to its stderr, where the user looks first."""
        try:
            tail = stderr_tail(self.cluster, entry)
        except ZbatchError as exc:
            self.echo(f"    (its stderr cannot be read: {exc})")
            return
        for line in tail:
            self.echo(f"    stderr: {line[:300]}")

    def _finish(self, entry: LedgerEntry, settled: Settled, transport: EmbeddedTransport) -> None:
        record = result_record_path(entry.message_path)
        self.outcomes[entry.pointer] = StepOutcome(
            entry.pointer, settled.state, entry.job_id, entry.workdir, settled.reason, record
        )
        self.board.observe(entry.pointer, entry.job_id, settled.state)
        detail = f" ({settled.reason})" if settled.reason else ""
        self.echo(f"  step {entry.pointer} {settled.state.value}{detail}: result {record}")
        if settled.state is not JobState.SUCCEEDED:
            self._echo_stderr_tail(entry)
        if not entry.owes:
            return
        # What the job could not send (its outbox), or the failure zbatch reports for a job
        # that died before its wrapper could: recorded as owed when the job was settled.
        try:
            Deliverer(self.ledger, self.cluster, transport).deliver(entry)
        except ZbatchError as exc:
            self.echo(f"  step {entry.pointer}: owed messages not delivered: {exc}")

    def _report_leftovers(self, transport: EmbeddedTransport, served: list[str]) -> None:
        for queue, count in sorted(transport.queues().items()):
            if queue not in served:
                self.echo(f"  {count} message(s) left on queue {queue!r} (no zbatch service)")
