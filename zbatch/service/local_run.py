"""`zbatch run`: a whole recipe on this machine through the embedded queue.

The runner plays the dispatcher for every wrapper step: it takes step messages from their
queues, submits them through the profile's cluster, tracks the jobs, and lets the wrappers'
own onward messages drive the recipe forward. Messages for nodes that no zbatch service
serves stay on their queues and are listed at the end.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zbatch.clusters import Cluster
from zbatch.errors import ZbatchError
from zbatch.model import safety
from zbatch.model.jobs import JobState, result_record_path
from zbatch.model.message import StepMessage, internal_reason, start_messages
from zbatch.model.profiles import Profile
from zbatch.model.recipe import Recipe
from zbatch.prepare.job_files import JobContext
from zbatch.prepare.parameters import is_wrapper_step
from zbatch.service.ledger import Ledger, LedgerEntry
from zbatch.service.owed import Deliverer
from zbatch.service.submitter import Submitter
from zbatch.service.tracker import Settled, Tracker
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


class RecipeRunner:
    def __init__(
        self,
        profile: Profile,
        cluster: Cluster,
        ledger: Ledger,
        run_root: Path,
        echo: Printer,
        poll_s: float = 0.2,
    ) -> None:
        self.profile = profile
        self.cluster = cluster
        self.ledger = ledger
        self.run_root = run_root
        self.echo = echo
        self.poll_s = poll_s
        self.outcomes: dict[int, StepOutcome] = {}
        self.messages: dict[str, StepMessage] = {}

    def run(
        self, recipe: Recipe, parameters: dict[str, Any], timeout_s: float | None = None
    ) -> list[StepOutcome]:
        recipe = recipe.apply_parameters(parameters)
        starts = start_messages(recipe)
        run_id = starts[0].recipe_id
        run_dir = self.run_root / safety.safe_tag(run_id, 36)
        config = TransportConfig("embedded", str(run_dir / "queue.sqlite"))
        transport = EmbeddedTransport(config.db_path())
        submitter = Submitter(
            self.profile, self.cluster, self.ledger, JobContext(transport_args=config.job_args())
        )
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
                busy = took or tracker.has_active() or any(transport.depth(q) for q in served)
                if not busy:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise ZbatchError(f"recipe run {run_id} did not finish within {timeout_s:g} s")
                time.sleep(self.poll_s)
            self._report_leftovers(transport, served)
        finally:
            transport.disconnect()
        return sorted(self.outcomes.values(), key=lambda o: o.pointer)

    def _take_messages(
        self, transport: EmbeddedTransport, queues: list[str], submitter: Submitter
    ) -> bool:
        took = False
        for queue in queues:
            while (delivery := transport.receive(queue, 0)) is not None:
                took = True
                try:
                    message = StepMessage.from_body(delivery.body, source=f"queue {queue}")
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
                self.messages[entry.key] = message
                self.outcomes[message.pointer] = StepOutcome(
                    message.pointer, JobState.PENDING, entry.job_id, entry.workdir
                )
                self.echo(
                    f"  step {message.pointer} submitted as {self.cluster.scheduler_name} "
                    f"job {entry.job_id} (workdir {entry.workdir})"
                )
        return took

    def _finish(self, entry: LedgerEntry, settled: Settled, transport: EmbeddedTransport) -> None:
        record = result_record_path(entry.message_path)
        self.outcomes[entry.pointer] = StepOutcome(
            entry.pointer, settled.state, entry.job_id, entry.workdir, settled.reason, record
        )
        detail = f" ({settled.reason})" if settled.reason else ""
        self.echo(f"  step {entry.pointer} {settled.state.value}{detail}: result {record}")
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
