"""Results an ended step still owes its recipe, delivered exactly once however long it takes.

When the tracker settles a job it records in the ledger, in the same write, what the step
owes: the messages its wrapper left in the outbox (the broker was down at the job's end) and,
for a job that ended without its wrapper reporting, zbatch's own `failure`. They stay owed
until delivered: a dispatcher (any replica sharing the ledger) or `zbatch run` claims the step
with a conditional update, sends in order and records its progress after every send, so a
restart or another replica carries on where it stopped and sends nothing twice. The outbox
file is never changed: it holds only what the wrapper did not send, and the ledger holds what
zbatch has sent of it. A failed try leaves all that is unsent owed for the next one.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from zbatch.clusters import Cluster
from zbatch.errors import TransportError, ZbatchError
from zbatch.injob.outbox import Outbox
from zbatch.model.jobs import JobState, outbox_path
from zbatch.model.message import WRAPPER_DEFAULT_CHANNEL, StepMessage
from zbatch.service.ledger import Ledger, LedgerEntry, Owed, Reported
from zbatch.service.submitter import worker_id, wrapper_reported
from zbatch.transport.base import Transport

log = logging.getLogger(__name__)

# A claim on a step's owed messages lapses this long after its holder's last send, so that a
# holder killed mid-send is replaced; a holder that died on this host is replaced at once.
LEASE_S = 300.0
_OUTCOMES = ("success", "failure")
# A step whose delivery failed for a reason of its own is tried again after this long,
# doubling per failure up to the cap (the broker being down is the caller's business).
FIRST_RETRY_S = 5.0
MAX_RETRY_S = 600.0


class NotOurs(ZbatchError):
    """Another process took over the step's owed messages (our claim lapsed)."""

    transient = True


def new_claimant() -> str:
    """host:pid#random: unique per deliverer, even for two in one process."""
    return f"{worker_id()}#{uuid.uuid4().hex[:8]}"


def dead_here(claimant: str) -> bool:
    """Did this claimant's process (on this host) die? False when it cannot tell."""
    where = claimant.partition("#")[0]
    host, _, pid = where.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):
        return False
    return False


def read_outbox(cluster: Cluster, entry: LedgerEntry) -> Outbox | None:
    """The job's outbox as its wrapper left it; None when there is none. Raises ZbatchError
    when it cannot be read (RecipeError when it is not an outbox zbatch wrote)."""
    path = outbox_path(entry.message_path)
    text = cluster.read_text(PurePosixPath(path))
    if not text:
        return None
    return Outbox.from_text(Path(path), text, _no_transport)


def _no_transport() -> Transport:
    raise AssertionError("owed messages go through the deliverer's transport")


def owed_at_end(cluster: Cluster, entry: LedgerEntry, state: JobState, reason: str) -> Owed:
    """What a job that just ended owes its recipe: its outbox's messages, and zbatch's own
    failure report when the job failed without its wrapper reporting (or queueing) one.

    Raises ZbatchError when its files cannot be read now (the job is settled later).
    """
    try:
        box = read_outbox(cluster, entry)
    except ZbatchError as exc:
        if exc.transient:
            raise
        # The job wrote it, so it may be anything: nothing in it can be trusted or sent.
        log.error("job %s: outbox not sent, it is not one zbatch wrote: %s", entry.job_id, exc)
        box = None
    channels = tuple(channel for channel, _ in box.pending) if box else ()
    failure = ""
    reported = any(channel in _OUTCOMES for channel in channels)
    if state is not JobState.SUCCEEDED and not reported and not wrapper_reported(entry, cluster):
        failure = f"job {entry.job_id} {state.value}" + (f" ({reason})" if reason else "")
    return Owed(channels, failure)


@dataclass
class _Hold:
    failures: int
    until: float


class Deliverer:
    """Sends what ended steps owe through one transport (called from one thread)."""

    def __init__(
        self,
        ledger: Ledger,
        cluster: Cluster,
        transport: Transport,
        claimant: str | None = None,
        lease_s: float = LEASE_S,
    ) -> None:
        self.ledger = ledger
        self.cluster = cluster
        self.transport = transport
        self.claimant = claimant or new_claimant()
        self.lease_s = lease_s
        self.delivered = 0  # steps this deliverer brought to nothing owed
        self._held: dict[str, _Hold] = {}

    def due(self, profile: str) -> list[LedgerEntry]:
        """The steps of `profile` that owe messages and are not waiting out a failure."""
        now = time.monotonic()
        owing = self.ledger.owing(profile)
        keys = {e.key for e in owing}
        for key in [k for k in self._held if k not in keys]:
            del self._held[key]  # delivered by another process meanwhile
        return [e for e in owing if e.key not in self._held or self._held[e.key].until <= now]

    def deliver(self, entry: LedgerEntry) -> bool:
        """Send all that `entry` owes; False when another process is sending it.

        A transient TransportError (the broker is unreachable) is raised for the caller to
        wait the outage out; any other failure is logged (once per streak), noted in the
        ledger for `status`, and the step is tried again after a backoff of its own. Either
        way what is unsent stays owed.
        """
        held = self.ledger.claim_owed(
            entry.key,
            self.claimant,
            self.lease_s,
            stale=entry.owed_by if entry.owed_by and dead_here(entry.owed_by) else "",
        )
        if held is None:
            return False
        try:
            self._send(held)
        except NotOurs:
            log.warning("job %s: another dispatcher took over its owed messages", entry.job_id)
            return False
        except TransportError as exc:
            self.ledger.release_owed(entry.key, self.claimant, f"not delivered: {exc}")
            if exc.transient:
                raise
            self._failed(held, exc)
        except Exception as exc:  # noqa: BLE001 - an unreadable file or a defect: this step only
            self.ledger.release_owed(entry.key, self.claimant, f"not delivered: {exc}")
            self._failed(held, exc)
        except BaseException:
            self.ledger.release_owed(entry.key, self.claimant, "interrupted")
            raise
        else:
            self._held.pop(entry.key, None)
            self.delivered += 1
            return True
        return False

    def _failed(self, entry: LedgerEntry, exc: Exception) -> None:
        hold = self._held.get(entry.key)
        failures = hold.failures + 1 if hold else 1
        delay = min(MAX_RETRY_S, FIRST_RETRY_S * 2 ** (failures - 1))
        self._held[entry.key] = _Hold(failures, time.monotonic() + delay)
        if hold is None:
            log.error(
                "job %s: owed %s not delivered, retrying with backoff: %s",
                entry.job_id,
                ", ".join(entry.owes.channels),
                exc,
                exc_info=not isinstance(exc, ZbatchError),
            )

    def _send(self, entry: LedgerEntry) -> None:
        owed, sent = entry.owes, entry.owed_sent
        if owed.outbox:
            self._send_outbox(entry, owed, sent)
            owed, sent = Owed((), owed.failure), 0
        if owed.failure:
            text = self.cluster.read_text(PurePosixPath(entry.message_path))
            if text is None:
                raise ZbatchError(f"message file {entry.message_path} is gone")
            message = StepMessage.from_body(text, source=entry.message_path)
            # Sent for the job's wrapper, so as zocalo.wrap would: no default channel.
            targets = message.destinations("failure", default_channel=WRAPPER_DEFAULT_CHANNEL)
            while sent < len(targets):
                self.transport.send_step(message.onward(targets[sent], owed.failure))
                sent += 1
                if sent < len(targets):
                    self._record(entry, owed, sent)
            self._record(entry, Owed(), 0, Reported.FAILURE)
            log.info("job %s: reported its failure: %s", entry.job_id, owed.failure)

    def _send_outbox(self, entry: LedgerEntry, owed: Owed, sent: int) -> None:
        """The outbox's sends from `sent` on, recording progress after each."""
        box = read_outbox(self.cluster, entry)
        if box is None:
            raise ZbatchError(f"outbox {outbox_path(entry.message_path)} is gone")
        sends = box.sends()
        channels = tuple(channel for channel, _ in box.pending)
        if sent > len(sends) or channels[len(channels) - len(owed.outbox) :] != owed.outbox:
            raise ZbatchError(
                f"outbox {box.path} changed since the job ended: it holds "
                f"{', '.join(channels) or 'nothing'}; owed are {', '.join(owed.outbox)} "
                f"after {sent} send(s)"
            )
        first = sent
        while sent < len(sends):
            self.transport.send_step(sends[sent][1])
            sent += 1
            if sent < len(sends):
                self._record(entry, Owed(box.channels_after(sent), owed.failure), sent)
        self._record(entry, Owed((), owed.failure), 0, Reported.OUTBOX)
        log.info(
            "job %s: sent the messages its wrapper had kept in %s (%d send(s))",
            entry.job_id,
            box.path,
            sent - first,
        )

    def _record(
        self, entry: LedgerEntry, owed: Owed, sent: int, reported: Reported = Reported.NOTHING
    ) -> None:
        if not self.ledger.record_delivery(
            entry.key, self.claimant, owed, sent, self.lease_s, reported
        ):
            raise NotOurs(f"job {entry.job_id}: owed messages taken over by another process")
