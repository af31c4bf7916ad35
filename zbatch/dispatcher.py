"""The dispatcher service: step messages in, cluster jobs out, nothing lost.

A message is acknowledged only after its job is recorded in the ledger and accepted by the
scheduler. Malformed or refused messages go to `dlq.<queue>` with the reason in a header;
transient failures are retried with backoff a bounded number of times, then dead-lettered
(replayable with `zbatch dlq replay`). Jobs that end without their wrapper reporting get a
`failure` message from the dispatcher, so a recipe never hangs silently.

No message stops the service: any exception met while accepting, submitting or settling one
message (a defect, not only a refusal) dead-letters that message with the reason
"internal error: <type>: <text>", logs the traceback and counts it (`internal-error`); only
the broker itself failing (TransportError) leaves a message to be redelivered.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter as Tally
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tenacity import RetryError, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from zbatch.cluster import Cluster
from zbatch.envelope import StepMessage, internal_reason, is_recipe_message
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
class InFlight:
    """A message accepted for submission, and when it arrived."""

    delivery: Delivery
    message: StepMessage
    started: float


@dataclass(frozen=True)
class DispatcherConfig:
    queue: str = "cluster.submission"
    attempts: int = 4  # submission attempts for transient failures before dead-lettering
    backoff_s: float = 0.5
    receive_timeout_s: float = 0.5
    track: bool = True
    workers: int = 8  # submissions at once; the scheduler, not this process, is the limit
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
        self._poller = ThreadPoolExecutor(1, thread_name_prefix="zbatch-track")
        self._polling: Future[list[tuple[LedgerEntry, Settled]]] | None = None

    def serve(self, stop: threading.Event, max_messages: int | None = None) -> None:
        """Consume until `stop` is set; messages in hand are always finished first.

        Up to `config.workers` submissions run at once in threads (the scheduler accepts
        concurrent calls); the broker is only ever touched from this thread.
        """
        log.info("dispatcher for profile %s consuming %s", self.profile.name, self.config.queue)
        self.transport.set_prefetch(self.config.workers)
        handled = 0
        in_flight: dict[Future[Submitted], InFlight] = {}
        with ThreadPoolExecutor(self.config.workers, thread_name_prefix="zbatch-submit") as pool:
            while in_flight or not stop.is_set():
                self.metrics.last_loop = time.monotonic()
                room = max_messages is None or handled + len(in_flight) < max_messages
                if room and not stop.is_set() and len(in_flight) < self.config.workers:
                    wait_s = 0.0 if in_flight else self.config.receive_timeout_s
                    delivery = self._receive(stop, wait_s)
                    if delivery is not None:
                        job = self._accept(delivery)
                        if isinstance(job, InFlight):
                            in_flight[pool.submit(self._submit_with_retries, job.message)] = job
                        else:
                            self.outcomes[job] += 1
                            handled += 1
                        continue
                handled += self._harvest(in_flight)
                if self.config.track:
                    self._track_safely()
                if not in_flight and max_messages is not None and handled >= max_messages:
                    break
        log.info("dispatcher stopping: %s", dict(self.outcomes))

    def _receive(self, stop: threading.Event, timeout: float) -> Delivery | None:
        try:
            delivery = self.transport.receive(self.config.queue, timeout)
        except TransportError as exc:
            self.metrics.set_connected(False)
            if not exc.transient:
                raise
            log.warning("broker unavailable, retrying: %s", exc)
            stop.wait(1.0)
            return None
        self.metrics.set_connected(True)
        return delivery

    def _harvest(self, in_flight: dict[Future[Submitted], InFlight]) -> int:
        """Settle the submissions that have finished; returns how many."""
        if not in_flight:
            return 0
        done, _ = wait(list(in_flight), timeout=0.05, return_when=FIRST_COMPLETED)
        for future in done:
            job = in_flight.pop(future)
            error = future.exception()
            result: Submitted | BaseException = error if error is not None else future.result()
            self.outcomes[self._settle_safely(job, result)] += 1
        return len(done)

    def handle(self, delivery: Delivery) -> str:
        """Process one message start to end in this thread; returns what became of it."""
        job = self._accept(delivery)
        if not isinstance(job, InFlight):
            return job
        try:
            result: Submitted | BaseException = self._submit_with_retries(job.message)
        except Exception as exc:
            result = exc
        return self._settle_safely(job, result)

    def _accept(self, delivery: Delivery) -> InFlight | str:
        """Check a message before submitting; dead-letter it when it cannot be a step."""
        self.metrics.received.inc()
        try:
            return self._check(delivery)
        except TransportError:
            raise
        except Exception:
            # Not even dead-lettering worked: leave the message unacknowledged (the broker
            # redelivers it) rather than stop the service.
            log.exception("message %s could not be dead-lettered", delivery.tag)
            return "redelivery-pending"

    def _check(self, delivery: Delivery) -> InFlight | str:
        limits = self.profile.limits
        try:
            if not is_recipe_message(delivery.headers):
                return self._dead_letter(
                    delivery, "not a recipe message (no workflows-recipe header)", "not-recipe"
                )
            message = StepMessage.from_body(
                delivery.body,
                source=f"message on {delivery.queue}",
                max_bytes=limits.max_message_bytes,
                max_depth=limits.max_json_depth,
            )
        except TransportError:
            raise
        except ZbatchError as exc:
            return self._dead_letter(delivery, str(exc), "malformed")
        except Exception as exc:
            return self._internal_error(delivery, exc)
        return InFlight(delivery, message, time.monotonic())

    def _internal_error(self, delivery: Delivery, exc: BaseException) -> str:
        """A defect met while handling one message: dead-letter it, log the traceback, go on."""
        log.error(
            "internal error on message %s from %s",
            delivery.tag,
            delivery.queue,
            exc_info=(type(exc), exc, exc.__traceback__),
        )
        return self._dead_letter(delivery, internal_reason(exc), "internal-error")

    def _settle_safely(self, job: InFlight, result: Submitted | BaseException) -> str:
        try:
            try:
                return self._settle(job, result)
            except TransportError:
                raise
            except Exception as exc:  # e.g. the ledger failing while noting job_submitted
                return self._internal_error(job.delivery, exc)
        except TransportError as exc:
            # The connection dropped mid-message: the broker redelivers it, and the ledger
            # makes sure the redelivery does not submit the step again.
            log.warning(
                "message %s not settled, the broker will redeliver it: %s", job.delivery.tag, exc
            )
            return "redelivery-pending"
        except Exception:
            # Not even dead-lettering worked: leave the message unacknowledged (the broker
            # redelivers it) rather than stop the service.
            log.exception("message %s could not be dead-lettered", job.delivery.tag)
            return "redelivery-pending"

    def _settle(self, job: InFlight, result: Submitted | BaseException) -> str:
        """Acknowledge a submitted step, or requeue / dead-letter one that was not."""
        delivery = job.delivery
        if isinstance(result, ClaimBusy):
            self.transport.nack(delivery, requeue=True)
            return "requeued"
        if isinstance(result, ZbatchError):
            kind = "unreachable" if result.transient else "refused"
            return self._dead_letter(delivery, str(result), kind)
        if isinstance(result, Exception):
            return self._internal_error(delivery, result)
        if isinstance(result, BaseException):
            raise result
        self._notify_submitted(job.message, result.entry)
        self.transport.ack(delivery)
        if result.new:
            self.metrics.submitted.inc()
            self.metrics.latency.observe(time.monotonic() - job.started)
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
        if not message.destinations("job_submitted"):
            return  # nobody listens: no ledger round trip (it waits behind workers' commits)
        # Read afresh: a duplicate settled after its twin carries a stale snapshot.
        entry = self.ledger.get(entry.key) or entry
        if entry.reported & NOTIFIED_SUBMITTED:
            return
        payload = {"jobid": entry.job_id, "scheduler": entry.scheduler}
        self.transport.send_onward(message, "job_submitted", payload)
        self.ledger.update(entry.key, reported=entry.reported | NOTIFIED_SUBMITTED)

    def _track_safely(self) -> None:
        try:
            self.track()
        except Exception:  # tracking trouble must not stop the intake of messages
            log.exception("job tracking failed; trying again at the next poll")
            self._polling = None
            self._next_poll = time.monotonic() + self.tracker.next_delay()

    def track(self) -> None:
        """Poll the cluster (one query) when due, in the background: a status query for
        thousands of jobs takes the scheduler a while (0.45 s for 1000 on the test Slurm),
        and this thread must keep feeding the workers meanwhile. Reports, from this thread,
        the jobs the last poll found dead without a word from their wrapper."""
        polling = self._polling
        if polling is None:
            if time.monotonic() >= self._next_poll:
                self._polling = self._poller.submit(self.tracker.poll_once)
            return
        if not polling.done():
            return
        self._polling = None
        self._next_poll = time.monotonic() + self.tracker.next_delay()
        for entry, settled in polling.result():  # poll_once logs and absorbs cluster errors
            try:
                self._report_outcome(entry, settled)
            except Exception:  # one job's odd files must not keep the others unreported
                log.exception("job %s: outcome not reported (internal error)", entry.job_id)
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
