"""The dispatcher service: step messages in, cluster jobs out, nothing lost.

A message is acknowledged only after its job is recorded in the ledger and accepted by the
scheduler. Malformed or refused messages go to `dlq.<queue>` with the reason in a header;
transient failures are retried with backoff a bounded number of times, then dead-lettered
(replayable with `zbatch dlq replay`). Jobs that end without their wrapper reporting get a
`failure` message from the dispatcher, so a recipe never hangs silently.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter as Tally
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tenacity import RetryError, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from zbatch.cluster import Cluster
from zbatch.envelope import StepMessage, is_recipe_message
from zbatch.errors import ClaimBusy, TransportError, ZbatchError
from zbatch.jobs import JobState, outbox_path
from zbatch.ledger import Ledger, LedgerEntry
from zbatch.metrics import DispatcherMetrics
from zbatch.outbox import Outbox
from zbatch.profiles import Profile
from zbatch.submission import JobContext
from zbatch.submitter import RECOVERY_GRACE_S, Submitted, Submitter, wrapper_reported
from zbatch.tracker import Settled, Tracker
from zbatch.transport.base import Delivery, Transport

log = logging.getLogger(__name__)

NOTIFIED_SUBMITTED = 1  # ledger `reported` bits
NOTIFIED_OUTCOME = 2
NOTIFIED_OUTBOX = 4


@dataclass(frozen=True)
class DispatcherConfig:
    queue: str = "cluster.submission"
    attempts: int = 4  # submission attempts for transient failures before dead-lettering
    backoff_s: float = 0.5
    receive_timeout_s: float = 0.5
    track: bool = True
    # How long to wait for another submitter's fresh claim before requeueing the message.
    claim_wait_s: float = RECOVERY_GRACE_S + 30


def _transient(exc: BaseException) -> bool:
    # A busy claim is not retried here: the message goes back to the queue instead.
    return isinstance(exc, ZbatchError) and exc.transient and not isinstance(exc, ClaimBusy)


class Dispatcher:
    def __init__(
        self,
        profile: Profile,
        cluster: Cluster,
        ledger: Ledger,
        transport: Transport,
        context: JobContext,
        config: DispatcherConfig | None = None,
        metrics: DispatcherMetrics | None = None,
    ) -> None:
        self.profile = profile
        self.cluster = cluster
        self.ledger = ledger
        self.transport = transport
        self.config = config or DispatcherConfig()
        self.metrics = metrics or DispatcherMetrics()
        self.submitter = Submitter(profile, cluster, ledger, context)
        self.tracker = Tracker(cluster, ledger, profile.name, profile.poll_interval_s)
        self.outcomes: Tally[str] = Tally()
        self._next_poll = 0.0

    def serve(self, stop: threading.Event, max_messages: int | None = None) -> None:
        """Consume until `stop` is set; the message in hand is always finished first."""
        log.info("dispatcher for profile %s consuming %s", self.profile.name, self.config.queue)
        handled = 0
        while not stop.is_set():
            self.metrics.last_loop = time.monotonic()
            try:
                delivery = self.transport.receive(self.config.queue, self.config.receive_timeout_s)
                self.metrics.set_connected(True)
            except TransportError as exc:
                self.metrics.set_connected(False)
                if not exc.transient:
                    raise
                log.warning("broker unavailable, retrying: %s", exc)
                stop.wait(1.0)
                continue
            if delivery is not None:
                try:
                    self.outcomes[self.handle(delivery)] += 1
                except TransportError as exc:
                    # The connection dropped mid-message: the broker redelivers it, and the
                    # ledger makes sure the redelivery does not submit the step again.
                    log.warning(
                        "message %s not settled, the broker will redeliver it: %s",
                        delivery.tag,
                        exc,
                    )
                    self.outcomes["redelivery-pending"] += 1
                handled += 1
            if self.config.track:
                self.track()
            if max_messages is not None and handled >= max_messages:
                break
        log.info("dispatcher stopping: %s", dict(self.outcomes))

    def handle(self, delivery: Delivery) -> str:
        """Process one message; returns what became of it."""
        self.metrics.received.inc()
        started = time.monotonic()
        if not is_recipe_message(delivery.headers):
            return self._dead_letter(
                delivery, "not a recipe message (no workflows-recipe header)", "not-recipe"
            )
        try:
            message = StepMessage.from_body(delivery.body, source=f"message on {delivery.queue}")
        except ZbatchError as exc:
            return self._dead_letter(delivery, str(exc), "malformed")
        try:
            done = self._submit_with_retries(message)
        except ClaimBusy:
            self.transport.nack(delivery, requeue=True)
            return "requeued"
        except ZbatchError as exc:
            kind = "unreachable" if exc.transient else "refused"
            return self._dead_letter(delivery, str(exc), kind)
        self._notify_submitted(message, done.entry)
        self.transport.ack(delivery)
        if done.new:
            self.metrics.submitted.inc()
            self.metrics.latency.observe(time.monotonic() - started)
            return "submitted"
        self.metrics.duplicates.inc()
        return "duplicate"

    def _submit_with_retries(self, message: StepMessage) -> Submitted:
        """Submit, retrying transient failures; wait out another submitter's fresh claim.

        Waiting here rather than requeueing keeps a crash from using up the message's
        delivery limit (a quorum queue would dead-letter it after a few requeues).
        """
        deadline = time.monotonic() + self.config.claim_wait_s
        while True:
            try:
                return self._submit_transient_retries(message)
            except ClaimBusy:
                if time.monotonic() > deadline:
                    raise
                time.sleep(self.config.backoff_s)

    def _submit_transient_retries(self, message: StepMessage) -> Submitted:
        try:
            for attempt in Retrying(
                retry=retry_if_exception(_transient),
                stop=stop_after_attempt(self.config.attempts),
                wait=wait_exponential(multiplier=self.config.backoff_s, max=10),
                reraise=False,
            ):
                with attempt:
                    if attempt.retry_state.attempt_number > 1:
                        self.metrics.retried.inc()
                    return self.submitter.submit(message)
        except RetryError as exc:
            cause = exc.last_attempt.exception()
            reason = f"gave up after {self.config.attempts} attempts: {cause}"
            raise ZbatchError(reason, transient=True) from None
        raise AssertionError("unreachable: Retrying either returns or raises")

    def _dead_letter(self, delivery: Delivery, reason: str, kind: str) -> str:
        log.warning("dead-lettering message %s from %s: %s", delivery.tag, delivery.queue, reason)
        self.transport.dead_letter(delivery, reason)
        self.metrics.dead_lettered.labels(kind).inc()
        return "dead-lettered"

    def _notify_submitted(self, message: StepMessage, entry: LedgerEntry) -> None:
        if entry.reported & NOTIFIED_SUBMITTED:
            return
        payload = {"jobid": entry.job_id, "scheduler": entry.scheduler}
        self.transport.send_onward(message, "job_submitted", payload)
        self.ledger.update(entry.key, reported=entry.reported | NOTIFIED_SUBMITTED)

    def track(self) -> None:
        """Poll the cluster (one query) when due; report jobs that died without a word."""
        now = time.monotonic()
        if now < self._next_poll:
            return
        for entry, settled in self.tracker.poll_once():
            self._report_outcome(entry, settled)
        self._next_poll = time.monotonic() + self.tracker.next_delay()
        counts = Tally(e.state for e in self.tracker.active())
        for state in JobState:
            self.metrics.jobs.labels(state.value).set(counts.get(state.value, 0))

    def _flush_outbox(self, entry: LedgerEntry) -> bool:
        """Send results a job could not send itself (broker down at its end); True if any."""
        path = outbox_path(entry.message_path)
        text = self.cluster.read_text(PurePosixPath(path))
        if not text or entry.reported & NOTIFIED_OUTBOX:
            return False
        box = Outbox.from_text(Path(path), text, lambda: self.transport)
        box.send_via(self.transport)
        log.info(
            "job %s: sent %d message(s) its wrapper had kept in %s", entry.job_id, box.sent, path
        )
        self.ledger.update(entry.key, reported=entry.reported | NOTIFIED_OUTBOX)
        return True

    def _report_outcome(self, entry: LedgerEntry, settled: Settled) -> None:
        try:
            flushed = self._flush_outbox(entry)
        except ZbatchError as exc:
            log.warning("job %s: kept results not sent yet: %s", entry.job_id, exc)
            return
        if settled.state is JobState.SUCCEEDED or entry.reported & NOTIFIED_OUTCOME:
            return
        try:
            if flushed or wrapper_reported(entry, self.cluster):
                return
            text = self.cluster.read_text(PurePosixPath(entry.message_path))
            if text is None:
                log.error(
                    "job %s: message file %s is gone; cannot report its %s",
                    entry.job_id,
                    entry.message_path,
                    settled.state.value,
                )
                return
            message = StepMessage.from_body(text, source=entry.message_path)
            reason = f"job {entry.job_id} {settled.state.value}"
            if settled.reason:
                reason += f" ({settled.reason})"
            self.transport.send_onward(message, "failure", reason)
        except ZbatchError as exc:
            log.warning("job %s: failure not reported yet: %s", entry.job_id, exc)
            return
        self.ledger.update(entry.key, reported=entry.reported | NOTIFIED_OUTCOME)
