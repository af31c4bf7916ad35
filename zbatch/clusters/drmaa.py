"""SGE through DRMAA: jobs go in through one in-process session instead of a qsub per job.

libdrmaa reads SGE_ROOT/SGE_CELL when it loads: zbatch exports them (and DRMAA_LIBRARY_PATH)
from the profile's `drmaa` settings just before. glibc reads GLIBC_TUNABLES only when the
process starts, so that one must be set before Python starts where glibc needs it. The job
script stays the one place for directives: its `#$` header lines become the job template's
attributes and its nativeSpecification.
"""

from __future__ import annotations

import atexit
import logging
import os
import shlex
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import PurePosixPath
from typing import Any

from zbatch.clusters import Cluster
from zbatch.connections.local import LocalConnection
from zbatch.errors import (
    ClusterUnavailable,
    ConnectionFailure,
    RestartNeeded,
    SchedulerError,
    ZbatchError,
)
from zbatch.model.jobs import JobState, PreparedJob
from zbatch.model.profiles import DrmaaConfig, Profile
from zbatch.schedulers.base import SchedulerStatus
from zbatch.schedulers.parsing import check_ids
from zbatch.schedulers.sge import JOB_ID, SgeScheduler

log = logging.getLogger(__name__)

# libdrmaa's initial-exec TLS needs more static TLS than glibc keeps spare for a library loaded
# after start ("cannot allocate memory in static TLS block"); glibc reads this only at start.
STATIC_TLS_TUNABLE = "glibc.rtld.optional_static_tls=16384"
HOWTO = (
    "give the profile drmaa: {sge_root, sge_cell, library_path (the path of libdrmaa.so)} or "
    "set SGE_ROOT, SGE_CELL, DRMAA_LIBRARY_PATH, and set "
    f"GLIBC_TUNABLES={STATIC_TLS_TUNABLE} before Python starts (the zbatch command does that "
    "by itself)"
)
# The profile's `drmaa` settings, by the variable libdrmaa (and the drmaa module) reads.
VARIABLES = {"SGE_ROOT": "sge_root", "SGE_CELL": "sge_cell", "DRMAA_LIBRARY_PATH": "library_path"}
# DRMAA 1.0 state names (drmaa.JobState), kept here so that reading them needs no libdrmaa.
_PENDING = ("queued_active", "system_on_hold", "user_on_hold", "user_system_on_hold")
_RUNNING = ("running", "system_suspended", "user_suspended", "user_system_suspended")
STATES: dict[str, JobState] = {
    **dict.fromkeys(_PENDING, JobState.PENDING),
    **dict.fromkeys(_RUNNING, JobState.RUNNING),  # suspended still holds its slots
    "done": JobState.SUCCEEDED,  # DRMAA "done" = exited (any code): ended_status refines it
    "failed": JobState.FAILED,  # never ran, was deleted or signalled; also SGE's Eqw
}
# The directives DRMAA sets as job template attributes (they would override nativeSpecification).
ATTRIBUTES = {"-o": "outputPath", "-e": "errorPath", "-wd": "workingDirectory", "-N": "jobName"}
# DRMAA jobs are binary by default: the shepherd execs the script file (hence mode 0700 and its
# #! line) and never reads its `#$` lines. Said explicitly in case a site default says -b n.
BINARY = ["-b", "y", "-shell", "no"]
_ENDED_KEPT = 10_000  # verdicts of reaped jobs kept for a retried poll


def split_directives(script: str) -> tuple[dict[str, str], list[str]]:
    """The `#$` lines of the script's leading comment block: attribute values, native options.

    Only the header counts (qsub reads `#$` anywhere): a command line in the body that starts
    with `#$` must not become a directive.
    """
    attributes: dict[str, str] = {}
    native: list[str] = []
    for line in script.splitlines():
        text = line.strip()
        if text and not text.startswith("#"):
            break
        if not text.startswith("#$"):
            continue
        try:
            tokens = shlex.split(text[2:])
        except ValueError as exc:
            raise SchedulerError(f"directive {text!r} cannot be parsed: {exc}") from None
        if any(not token or any(c.isspace() for c in token) for token in tokens):
            # nativeSpecification is split on whitespace by SGE and has no quoting at all.
            raise SchedulerError(f"directive {text!r} has a value DRMAA cannot carry (whitespace)")
        while tokens:
            option = tokens.pop(0)
            if option in ATTRIBUTES and tokens:
                attributes[ATTRIBUTES[option]] = tokens.pop(0)
            else:
                native.append(option)
    return attributes, native


def ended_status(
    job_id: str, raw: str, info: Any, detail: Callable[[], SchedulerStatus | None]
) -> SchedulerStatus:
    """A verdict from DRMAA's JobInfo, refined by qacct (`detail`) where DRMAA cannot tell.

    DRMAA knows whether a job was deleted (wasAborted) or killed by a signal; only qacct knows
    that a signal or exit came from an h_rt or memory limit, and why a job failed to start.
    """
    usage: dict[str, str] = info.resourceUsage or {}
    exit_code: int | None = info.exitStatus if info.hasExited else _number(usage.get("exit_status"))
    if info.hasExited and exit_code == 0 and not info.wasAborted:
        return SchedulerStatus(job_id, JobState.SUCCEEDED, 0, "", raw)
    accounting = detail()
    if accounting is not None and accounting.state in (JobState.TIMEOUT, JobState.OUT_OF_MEMORY):
        return accounting
    started = (_number(usage.get("start_time")) or 0) > 0
    if info.wasAborted and started:  # qdel / TERMINATE of a running job
        return SchedulerStatus(job_id, JobState.CANCELLED, exit_code, "deleted while running", raw)
    if info.wasAborted:
        why = accounting.reason if accounting and accounting.reason else "aborted before start"
        return SchedulerStatus(job_id, JobState.FAILED, None, why, raw)
    if info.hasSignal:  # killed from outside SGE: qacct would call it "assumedly after job"
        why = f"killed by {info.terminatedSignal}"
        return SchedulerStatus(job_id, JobState.FAILED, exit_code, why, raw)
    return SchedulerStatus(job_id, JobState.FAILED, exit_code, f"exit code {exit_code}", raw)


def _no_rusage(exc: BaseException) -> bool:
    """DRMAA_ERRNO_NO_RUSAGE (code 24), known by its class, never by its message.

    drmaa-python raises DRMAA error code N as the class at `drmaa.errors._ERRORS[N - 1]`; code
    24 has no class of its own there and comes as the bare `Exception`, the only error raised
    with exactly that class (a subclass, such as a ValueError from a defect, is not it).
    """
    return type(exc) is Exception


def _number(text: str | None) -> int | None:
    try:
        return None if text is None else int(float(text))
    except ValueError:
        return None


def export_settings(settings: DrmaaConfig | None) -> None:
    """Put the profile's SGE settings where libdrmaa looks: this process's environment (which
    qsub and qacct, run for accounting, inherit too)."""
    for name, key in VARIABLES.items():
        value = getattr(settings, key) if settings else None
        if value:
            os.environ[name] = value


def load_drmaa(settings: DrmaaConfig | None = None) -> Any:
    export_settings(settings)
    missing = [name for name in ("SGE_ROOT", "DRMAA_LIBRARY_PATH") if not os.environ.get(name)]
    if missing:
        raise ConnectionFailure(f"DRMAA: {', '.join(missing)} unset; {HOWTO}", transient=False)
    try:
        import drmaa  # libdrmaa loads on import, so importing zbatch never needs it
    except (OSError, RuntimeError) as exc:
        tunables = os.environ.get("GLIBC_TUNABLES", "")
        if "static TLS" in str(exc) and "optional_static_tls" not in tunables:
            added = ":".join(t for t in (tunables, STATIC_TLS_TUNABLE) if t)
            raise RestartNeeded(
                f"DRMAA: cannot load libdrmaa ({exc}); {HOWTO}", {"GLIBC_TUNABLES": added}
            ) from None
        raise ConnectionFailure(
            f"DRMAA: cannot load libdrmaa ({exc}); {HOWTO}", transient=False
        ) from None
    return drmaa


class _SharedSession:
    """The process's one DRMAA session (DRMAA 1.0 allows one), counted by its users.

    `calls` admits one thread at a time into libdrmaa. SGE's library takes calls from many
    threads, but runs several times slower then (figures in docs/benchmarks.md, DRMAA).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls = threading.Lock()
        self.drmaa: Any = None
        self.session: Any = None
        self.users = 0

    def acquire(self, settings: DrmaaConfig | None = None) -> tuple[Any, Any]:
        with self.lock:
            if self.session is None:
                drmaa = load_drmaa(settings)
                try:
                    drmaa.Session.initialize()
                except drmaa.errors.AlreadyActiveSessionException:
                    log.info("DRMAA session already initialised in this process; sharing it")
                except drmaa.errors.DrmaaException as exc:
                    raise ConnectionFailure(f"DRMAA: cannot reach SGE: {exc}") from None
                self.drmaa, self.session = drmaa, drmaa.Session()
            self.users += 1
            return self.drmaa, self.session

    def release(self, everyone: bool = False) -> None:
        with self.lock:
            self.users = 0 if everyone else self.users - 1
            if self.users <= 0 and self.session is not None:
                session, self.session = self.session, None
                try:
                    session.exit()
                except self.drmaa.errors.DrmaaException as exc:
                    log.warning("DRMAA session exit failed: %s", exc)


_SHARED = _SharedSession()
atexit.register(_SHARED.release, everyone=True)


class DrmaaCluster(Cluster):
    scheduler_name = "sge"

    def __init__(self, profile: Profile) -> None:
        self.scheduler = SgeScheduler(profile)  # qacct argv and parsing only
        self.local = LocalConnection(profile.connection.command_timeout_s)
        self.drmaa, self.session = _SHARED.acquire(profile.drmaa)
        self.ended: OrderedDict[str, SchedulerStatus] = OrderedDict()
        self.terminated: set[str] = set()  # ids this session deleted (a held one leaves no trace)
        self.closed = False

    def submit(self, job: PreparedJob) -> str:
        with _SHARED.calls:  # the files too: a submission is ~2 ms, and threads only slow it
            return self._submit(job)

    def _submit(self, job: PreparedJob) -> str:
        self.local.put_files(job.staged_files())
        attributes, native = split_directives(job.script)
        values = {
            "workingDirectory": job.spec.workdir,
            "jobName": job.spec.name,
            "outputPath": str(job.paths.stdout),
            "errorPath": str(job.paths.stderr),
            **attributes,
            "remoteCommand": str(job.paths.script),
            "nativeSpecification": " ".join(BINARY + native),
        }
        for name in ("outputPath", "errorPath"):
            values[name] = ":" + values[name]  # DRMAA's [host]:path
        errors = self.drmaa.errors
        template = self.session.createJobTemplate()
        try:
            for name, value in values.items():
                setattr(template, name, value)
            job_id = str(self.session.runJob(template))
        except errors.DrmaaException as exc:
            if isinstance(exc, errors.DrmCommunicationException):
                # qmaster did not answer (a restart): unavailability, not a refusal.
                raise ClusterUnavailable(f"sge unavailable (DRMAA): {exc}") from None
            transient = isinstance(exc, errors.TryLaterException)
            message = f"sge refused job {job.spec.name} (DRMAA): {exc}"
            raise SchedulerError(message, transient=transient) from None
        finally:
            self.session.deleteJobTemplate(template)
        log.info("job %s: %s submitted through DRMAA", job_id, job.spec.name)
        return job_id

    def statuses(self, job_ids: Sequence[str]) -> dict[str, SchedulerStatus]:
        # DRMAA 1.0 has no batch query: one jobStatus per id (about 0.3 ms each on one node),
        # answered by qmaster or, for jobs of this session that ended, by the session itself.
        found: dict[str, SchedulerStatus] = {}
        for job_id in check_ids(job_ids, JOB_ID, "sge") if job_ids else []:
            if job_id in self.ended:
                found[job_id] = self.ended[job_id]
                continue
            try:
                with _SHARED.calls:
                    raw = str(self.session.jobStatus(job_id))
            except self.drmaa.errors.InvalidJobException:
                raw = "deleted"  # neither qmaster nor this session knows it (any more)
            except self.drmaa.errors.DrmaaException as exc:
                raise SchedulerError(f"DRMAA status of {job_id}: {exc}", transient=True) from None
            state = STATES.get(raw)
            if state is None:
                if job_id in self.terminated:
                    # We deleted it: gone (a held job leaves no trace), or "undetermined"
                    # while SGE deletes it (seen under load). Cancelled, not lost.
                    why = "deleted before start" if raw == "deleted" else "deleted on request"
                    found[job_id] = SchedulerStatus(job_id, JobState.CANCELLED, None, why, raw)
                elif raw != "deleted":
                    # "undetermined" or a state this table lacks: the job may still run, so
                    # it is unknown (polled again), never absent (which the tracker settles).
                    log.warning(
                        "job %s: DRMAA state %r not understood, treated as unknown", job_id, raw
                    )
                    found[job_id] = SchedulerStatus(job_id, JobState.UNKNOWN, None, "", raw)
                # Deleted (no one knows it any more): the exit record and qacct decide.
                continue
            reason = "held" if "hold" in raw else "suspended" if "suspended" in raw else ""
            found[job_id] = (
                self._reap(job_id, raw)
                if state.final
                else SchedulerStatus(job_id, state, None, reason, raw)
            )
        return found

    def _reap(self, job_id: str, raw: str) -> SchedulerStatus:
        """wait() hands over the job's end once and makes the session forget it: keep it."""
        try:
            with _SHARED.calls:
                info = self.session.wait(job_id, self.drmaa.Session.TIMEOUT_NO_WAIT)
        except self.drmaa.errors.DrmaaException as exc:
            log.warning("job %s: DRMAA wait failed (%s); state %s as reported", job_id, exc, raw)
            status = SchedulerStatus(job_id, STATES[raw], None, "", raw)
        except Exception as exc:
            if not _no_rusage(exc):
                raise
            # The job was deleted while pending, or it ran but the session lost its usage in a
            # qmaster restart: only qacct, which has a record for every job that ran, tells
            # them apart.
            never_ran = SchedulerStatus(
                job_id, JobState.CANCELLED, None, "deleted before start", raw
            )
            status = self._quiet_detail(job_id) or never_ran
        else:
            status = ended_status(job_id, raw, info, lambda: self._quiet_detail(job_id))
        self.ended[job_id] = status
        while len(self.ended) > _ENDED_KEPT:
            self.ended.popitem(last=False)
        return status

    def _quiet_detail(self, job_id: str) -> SchedulerStatus | None:
        try:
            return self.detail(job_id)
        except ZbatchError as exc:
            log.warning("job %s: qacct failed: %s", job_id, exc)
            return None

    def detail(self, job_id: str) -> SchedulerStatus | None:
        argv = self.scheduler.detail_argv(job_id)
        result = self.local.run(argv) if argv else None
        if result is None or result.returncode != 0:
            return None
        return self.scheduler.parse_detail(result.stdout, job_id)

    def cancel(self, job_ids: Sequence[str]) -> None:
        errors, failed = self.drmaa.errors, []
        # Checked ids only: "DRMAA_JOB_IDS_SESSION_ALL" would terminate every job of the session.
        for job_id in check_ids(job_ids, JOB_ID, "sge") if job_ids else []:
            try:
                with _SHARED.calls:
                    self.session.control(job_id, self.drmaa.JobControlAction.TERMINATE)
                self.terminated.add(job_id)
            except errors.InvalidJobException:
                log.info("job %s: already ended, nothing to cancel", job_id)
            except errors.DrmaaException as exc:
                failed.append(f"{job_id}: {exc}")
        if failed:
            raise SchedulerError(f"DRMAA cancel failed: {'; '.join(failed)}")

    def read_text(self, path: PurePosixPath) -> str | None:
        return self.local.read_file(path)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            _SHARED.release()
