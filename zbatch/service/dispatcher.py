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

from tenacity import RetryError, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from zbatch.clusters import Cluster
from zbatch.errors import ClaimBusy, ClusterUnavailable, TransportError, ZbatchError
from zbatch.model.jobs import JobState
from zbatch.model.message import (
    DISPATCHER_DEFAULT_CHANNEL,
    StepMessage,
    internal_reason,
    is_recipe_message,
    job_submitted_payload,
)
from zbatch.model.profiles import Profile
from zbatch.prepare.job_files import JobContext
from zbatch.service.ledger import Ledger, LedgerEntry, Reported
from zbatch.service.metrics import DispatcherMetrics
from zbatch.service.outage import HandedBack, OutageGate, is_unavailability
from zbatch.service.owed import Deliverer
from zbatch.service.submitter import RECOVERY_GRACE_S, Submitted, Submitter
from zbatch.service.tracker import Settled, Tracker
from zbatch.transport.base import Delivery, Settlement, Transport, onward_outgoing

log = logging.getLogger(__name__)

# Owed results: at most this many steps per turn of the loop (intake goes on between), and
# the longest wait between tries while the broker is down.
OWED_PER_CYCLE = 100
OWED_MAX_BACKOFF_S = 30.0


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
    # A busy claim is not retried here: the message goes back to the queue instead. An
    # unreachable cluster was waited out already, up to the outage budget.
    return (
        isinstance(exc, ZbatchError)
        and exc.transient
        and not isinstance(exc, ClaimBusy)
        and not is_unavailability(exc)
    )


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
        counted = context.counting(self.metrics.count_unknown_cluster_key)  # ignored keys
        self.submitter = Submitter(profile, cluster, ledger, counted)
        self.tracker = Tracker(cluster, ledger, profile.name, profile.poll_interval_s)
        self.outcomes: Tally[str] = Tally()
        self._next_poll = 0.0
        self._poller = ThreadPoolExecutor(1, thread_name_prefix="zbatch-track")
        self._stopping = threading.Event()
        self.gate = OutageGate(
            f"{cluster.scheduler_name} ({profile.name})",
            profile.outage_budget_s,
            on_change=self.metrics.set_cluster_available,
        )
        self._polling: Future[list[tuple[LedgerEntry, Settled]]] | None = None
        self.owed = Deliverer(ledger, cluster, transport)
        self._owed_next = 0.0
        self._owed_failures = 0
        self._owed_outage: float | None = None  # since when the broker refuses owed results

    def serve(self, stop: threading.Event, max_messages: int | None = None) -> None:
        """Consume until `stop` is set; messages in hand are always finished first.

        Up to `config.workers` submissions run at once in threads (the scheduler accepts
        concurrent calls); the broker is only ever touched from this thread.
        """
        log.info("dispatcher for profile %s consuming %s", self.profile.name, self.config.queue)
        self._stopping = stop
        self.transport.set_prefetch(self.config.workers)
        handled = 0
        in_flight: dict[Future[Submitted], InFlight] = {}
        with ThreadPoolExecutor(self.config.workers, thread_name_prefix="zbatch-submit") as pool:
            while in_flight or not stop.is_set():
                self.metrics.last_loop = time.monotonic()
                room = max_messages is None or handled + len(in_flight) < max_messages
                # While the cluster is unreachable, new messages stay in the broker; but one
                # is taken when none is in hand, so that a probe goes on and the dispatcher
                # notices when the cluster is back.
                room = room and (self.gate.accepting or not in_flight)
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
                if not room:
                    self._keep_alive()
                handled += self._harvest(in_flight)
                if self.config.track:
                    self._track_safely()
                if not in_flight and max_messages is not None and handled >= max_messages:
                    break
        log.info("dispatcher stopping: %s", dict(self.outcomes))

    def _keep_alive(self) -> None:
        """Not receiving during a cluster outage: still answer the broker's heartbeats, so
        the messages in hand are not taken back from a silent consumer."""
        try:
            self.transport.keep_alive()
        except TransportError as exc:
            log.warning("broker connection: %s", exc)

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
        except Exception as exc:  # noqa: BLE001 - no message may stop the dispatcher
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
            except Exception as exc:  # noqa: BLE001 - e.g. the ledger failing on job_submitted
                return self._internal_error(job.delivery, exc)
        except TransportError as exc:
            # The transport does not keep a message it failed to settle (its connection or
            # channel is gone, or it was requeued): the broker redelivers it, and the ledger
            # makes sure the redelivery does not submit the step again. Not retried here: a
            # commit whose answer was lost may have happened.
            log.warning(
                "message %s not settled, the broker will redeliver it: %s", job.delivery.tag, exc
            )
            return "redelivery-pending"
        except Exception:
            # Not even reporting the defect worked (`_dead_letter` requeues what it cannot
            # dead-letter): go on rather than stop the service.
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
        self._notify_submitted(job, result)  # and acknowledges the step, as one unit
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
            except ClaimBusy as exc:
                if isinstance(exc, HandedBack) or time.monotonic() > deadline:
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
                    return self._submit_through_outages(message)
        except RetryError as exc:
            cause = exc.last_attempt.exception()
            reason = f"gave up after {self.config.attempts} attempts: {cause}"
            raise ZbatchError(reason, transient=True) from None
        raise AssertionError("unreachable: Retrying either returns or raises")

    def _submit_through_outages(self, message: StepMessage) -> Submitted:
        """Submit; while the cluster does not answer, hold the step and probe (one worker at
        a time, with backoff) until it does or the step has waited the outage budget."""
        waiting_since: float | None = None
        while True:
            self.gate.take_turn(self._stopping)
            try:
                submitted = self.submitter.submit(message)
            except ZbatchError as exc:
                if not is_unavailability(exc):
                    self.gate.succeeded()  # it answered, if only to say no
                    raise
                self.gate.failed(exc)
                self.metrics.retried.inc()
                waiting_since = waiting_since or self.gate.clock()
                if self.gate.over_budget(waiting_since):
                    raise ClusterUnavailable(
                        f"cluster {self.cluster.scheduler_name} of profile {self.profile.name} "
                        f"unavailable for {self.gate.clock() - waiting_since:.0f} s, the "
                        f"profile's outage budget (outage_budget_s {self.profile.outage_budget_s}):"
                        f" {exc}"
                    ) from None
                continue
            self.gate.succeeded()
            return submitted

    def _dead_letter(self, delivery: Delivery, reason: str, kind: str) -> str:
        log.warning("dead-lettering message %s from %s: %s", delivery.tag, delivery.queue, reason)
        try:
            self.transport.dead_letter(delivery, reason)
        except TransportError as exc:
            # The transport never keeps a message it could not settle: its channel is gone
            # or it was requeued, so the broker delivers it again.
            log.error(
                "message %s not dead-lettered, the broker will redeliver it: %s", delivery.tag, exc
            )
            return "redelivery-pending"
        except Exception:
            # A defect: the transport rolled back and still holds the message. Put it back
            # rather than hold it (and a prefetch slot) for good; a quorum queue's delivery
            # limit dead-letters it if this keeps happening.
            log.exception("message %s could not be dead-lettered; requeueing it", delivery.tag)
            try:
                self.transport.nack(delivery, requeue=True)
            except Exception:
                log.exception("message %s could not be requeued either", delivery.tag)
            return "redelivery-pending"
        self.metrics.dead_lettered.labels(kind).inc()
        return "dead-lettered"

    def _notify_submitted(self, job: InFlight, result: Submitted) -> None:
        """Send the step's `job_submitted` notice and acknowledge the step, as one unit.

        The notice and the ack are one broker transaction (`Transport.settle`), so the
        notice goes out once: it is only (re)sent when the step is (re)delivered, and the
        broker redelivers a step only when that transaction did not commit. A commit whose
        answer was lost (connection forced) is not tried again here: TransportError leaves
        the step to the broker ("redelivery-pending"). The ledger bit only spares a second
        copy of the same step (published twice) a second notice.

        A notice whose queue does not exist is dead-lettered in the same transaction, with
        the job id in the reason; the step is acknowledged all the same (its job exists),
        so it never holds a prefetch slot.

        The transport may commit several steps' units at once (while other submissions are
        in flight, until the next receive): what follows the commit runs in `committed`.
        """
        message, entry, notices = job.message, result.entry, []
        # As dlstbx: set_default_channel("job_submitted"), then send(): named outputs get it
        # on `job_submitted`, unnamed (list) outputs all get it.
        # Nobody listens: no ledger round trip (it waits behind workers' commits).
        if message.destinations(None, default_channel=DISPATCHER_DEFAULT_CHANNEL):
            if not result.new:
                # Read afresh: a duplicate settled after its twin carries a stale snapshot.
                # (A new claim's own snapshot is fresh: only a settled twin sets the bit.)
                entry = self.ledger.get(entry.key) or entry
            if not entry.reported & Reported.SUBMITTED:
                payload = job_submitted_payload(entry.job_id, entry.scheduler)
                what = f"job_submitted notice for job {entry.job_id}"
                notices = onward_outgoing(
                    message, None, payload, what, default_channel=DISPATCHER_DEFAULT_CHANNEL
                )

        def committed(settlement: Settlement) -> None:
            for _notice, reason in settlement.undeliverable:
                log.warning(
                    "step %s: %s; the notice is in dlq.%s", entry.key, reason, job.delivery.queue
                )
                self.metrics.dead_lettered.labels("undeliverable-notice").inc()
            if notices:  # only now: had the unit not happened, the redelivery must send it
                # Other bits (the outcome's) may have been set since the snapshot: keep them.
                fresh = self.ledger.get(entry.key) or entry
                self.ledger.update(entry.key, reported=fresh.reported | Reported.SUBMITTED)

        self.transport.settle(job.delivery, notices, committed)

    def _track_safely(self) -> None:
        try:
            self.track()
        except Exception:  # tracking trouble must not stop the intake of messages
            log.exception("job tracking failed; trying again at the next poll")
            self._polling = None
            self._next_poll = time.monotonic() + self.tracker.next_delay()
            self._owed_next = time.monotonic() + self.tracker.next_delay()

    def track(self) -> None:
        """Poll the cluster (one query) when due, in the background: a status query for
        thousands of jobs takes the scheduler a while (0.45 s for 1000 on the test Slurm),
        and this thread must keep feeding the workers meanwhile. Delivers, from this thread,
        what ended steps still owe (owed.py): those the last poll settled, and any
        left owed before, by this process, a replica, or one that has since stopped."""
        self._deliver_owed()
        polling = self._polling
        if polling is None:
            if time.monotonic() >= self._next_poll:
                self._polling = self._poller.submit(self.tracker.poll_once)
            return
        if not polling.done():
            return
        self._polling = None
        self._next_poll = time.monotonic() + self.tracker.next_delay()
        settled = polling.result()  # poll_once logs and absorbs cluster errors
        if any(entry.owes for entry, _ in settled) and self._owed_outage is None:
            self._owed_next = 0.0  # deliver them now, not at the next check
            self._deliver_owed()
        counts = Tally(e.state for e in self.tracker.active())
        for state in JobState:
            self.metrics.jobs.labels(state.value).set(counts.get(state, 0))

    def _deliver_owed(self) -> None:
        """Deliver what ended steps owe, when due: every poll interval, and with backoff
        (doubling up to OWED_MAX_BACKOFF_S) while the broker is unreachable, which is
        logged once when the outage begins and once when it ends, not on every try."""
        now = time.monotonic()
        if now < self._owed_next:
            return
        self._owed_next = now + self.tracker.interval_s
        due = self.owed.due(self.profile.name)
        for entry in due[:OWED_PER_CYCLE]:
            try:
                self._report_outcome(entry)
            except TransportError as exc:  # transient: the broker is unreachable
                self._owed_failures += 1
                delay = self.tracker.interval_s * 2.0**self._owed_failures
                self._owed_next = time.monotonic() + min(OWED_MAX_BACKOFF_S, delay)
                if self._owed_outage is None:
                    self._owed_outage = time.monotonic()
                    log.warning(
                        "results owed by %d step(s) wait for the broker (%s); retrying with "
                        "backoff until it takes them",
                        len(self.ledger.owing(self.profile.name)),
                        exc,
                    )
                return
        if self._owed_outage is not None:
            log.info(
                "the broker takes owed results again (refused for %.0f s); %d step(s) owe some",
                time.monotonic() - self._owed_outage,
                len(self.ledger.owing(self.profile.name)),
            )
            self._owed_outage, self._owed_failures = None, 0
        if len(due) > OWED_PER_CYCLE:
            self._owed_next = 0.0  # more at the next turn of the loop: intake goes on between

    def _report_outcome(self, entry: LedgerEntry) -> None:
        """Send what one ended step owes (its outbox, or zbatch's own failure report) unless
        another replica is at it; raises TransportError only while the broker is down."""
        try:
            self.owed.deliver(entry)
        except TransportError:
            raise
        except Exception:  # a defect with one step's files must not keep the others owed
            log.exception("job %s: owed results not delivered (internal error)", entry.job_id)
