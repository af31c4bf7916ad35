"""Submit a step exactly once: claim it in the ledger, submit, record the job id."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import PurePosixPath

from zbatch.clusters import Cluster
from zbatch.errors import ClaimBusy, ZbatchError
from zbatch.model import safejson
from zbatch.model.jobs import JobState, result_record_path
from zbatch.model.message import StepMessage, step_key
from zbatch.model.profiles import Profile
from zbatch.prepare.job_files import JobContext, prepare_job
from zbatch.service.ledger import Ledger, LedgerEntry
from zbatch.service.outage import is_unavailability

log = logging.getLogger(__name__)
# A claim younger than this may belong to a submission still in flight (sbatch outlives a
# killed dispatcher by a moment); only older ones are looked up and taken over.
RECOVERY_GRACE_S = 10.0


@dataclass(frozen=True)
class Submitted:
    entry: LedgerEntry
    new: bool  # False when the step had been submitted before (a redelivery)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def uncertain_claim() -> str:
    """The claim of a submission by this thread whose outcome the scheduler never told."""
    return f"{worker_id()}:{threading.get_ident()}:uncertain"


class Submitter:
    def __init__(
        self, profile: Profile, cluster: Cluster, ledger: Ledger, context: JobContext
    ) -> None:
        self.profile = profile
        self.cluster = cluster
        self.ledger = ledger
        self.context = context.on(cluster)  # step paths resolved where the jobs run

    def submit(self, message: StepMessage) -> Submitted:
        """Raises ZbatchError when the step is malformed or the cluster refuses it."""
        job = prepare_job(message, self.profile, self.context)
        key = step_key(message)
        recipewrapper = job.message_path
        existing = self.ledger.claim(
            key,
            recipe_id=message.recipe_id,
            pointer=message.pointer,
            profile=self.profile.name,
            profile_source=self.profile.source,
            scheduler=self.cluster.scheduler_name,
            job_name=job.spec.name,
            workdir=job.spec.workdir,
            tag=job.paths.tag,
            message_path=str(recipewrapper),
            claimed_by=worker_id(),
        )
        if existing is not None:
            if existing.job_id is not None:
                log.info(
                    "step %s/%d already submitted as job %s; not submitting again",
                    message.recipe_id,
                    message.pointer,
                    existing.job_id,
                )
                return Submitted(existing, False)
            recovered = self._recover(existing, own=existing.claimed_by == uncertain_claim())
            if recovered is not None:
                return recovered
        try:
            job_id = self.cluster.submit(job)
        except ZbatchError as exc:
            if is_unavailability(exc):
                # The scheduler may have taken the job before the connection broke: keep the
                # claim, marked as this worker's, so the retry first looks for the job's marker.
                self.ledger.update(key, claimed_by=uncertain_claim())
            else:
                self.ledger.release(key)
            raise
        self.ledger.update(key, job_id=job_id, state=JobState.PENDING, submitted_at=time.time())
        log.info(
            "job %s: step %s/%d submitted to %s",
            job_id,
            message.recipe_id,
            message.pointer,
            self.profile.name,
        )
        entry = self.ledger.get(key)
        if entry is None:
            raise ZbatchError(f"ledger {self.ledger.path}: step {key} vanished once recorded")
        return Submitted(entry, True)

    def _recover(self, entry: LedgerEntry, own: bool = False) -> Submitted | None:
        """A step claimed but never given a job id: its submitter died, or is still at it
        (or, `own`, this worker's submission ended without a clear answer).

        Returns the job if the scheduler has it (found by its marker); None when this
        process has taken the claim over and should submit; raises (transient) while the
        claim is too young to tell an interrupted submission from one in progress.
        """
        age = time.time() - entry.updated_at
        if age < RECOVERY_GRACE_S and not own:
            raise ClaimBusy(
                f"step {entry.recipe_id}/{entry.pointer} is being submitted by "
                f"{entry.claimed_by}; try again later",
                transient=True,
            )
        # Queued or running jobs carry the marker; a finished one left its id in its exit record.
        job_id = self.cluster.find(entry.key)
        if job_id is None:
            record = self.cluster.exit_record(entry.paths)
            job_id = record.job_id if record and record.job_id else None
        if job_id is not None:
            log.warning(
                "job %s: recovered the job id of step %s/%d from the scheduler",
                job_id,
                entry.recipe_id,
                entry.pointer,
            )
            self.ledger.update(
                entry.key, job_id=job_id, state=JobState.PENDING, submitted_at=time.time()
            )
            updated = self.ledger.get(entry.key)
            # Our own unanswered submission, found: this delivery's first submission, not a
            # redelivery's duplicate.
            return Submitted(updated or entry, own)
        if not self.ledger.take_over(entry.key, entry, worker_id()):
            raise ClaimBusy(
                f"step {entry.recipe_id}/{entry.pointer} was taken over by another dispatcher",
                transient=True,
            )
        return None


def wrapper_reported(entry: LedgerEntry, cluster: Cluster) -> bool:
    """Did the job's wrapper send its own success/failure? (Then zbatch must not send one.)

    The job wrote the record, so anything but an object with `"results_sent": true` counts
    as "no": zbatch then reports the outcome itself.
    """
    path = result_record_path(entry.message_path)
    text = cluster.read_text(PurePosixPath(path))
    if not text:
        return False
    try:
        record = safejson.loads(text, f"result record {path}")
    except ZbatchError as exc:
        log.warning("job %s: no valid result record: %s", entry.job_id, exc)
        return False
    if not isinstance(record, dict):
        log.warning("job %s: no valid result record: %s is not an object", entry.job_id, path)
        return False
    return record.get("results_sent") is True
