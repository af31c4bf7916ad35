"""Son of Grid Engine: qsub / qstat -xml / qdel / qacct argv and their output (SGE 8.1.9)."""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from typing import ClassVar

from zbatch.errors import SchedulerError
from zbatch.model.jobs import JobState
from zbatch.schedulers.base import Scheduler, SchedulerStatus
from zbatch.schedulers.parsing import (
    base_id,
    check_ids,
    check_script,
    combine,
    find_submitted_id,
    select,
    shorten,
)

log = logging.getLogger(__name__)

# A job (123) or one array task (123.4); ids end up in argv, so nothing else is accepted.
JOB_ID = re.compile(r"^[0-9]{1,12}(?:\.[0-9]{1,9})?$")
# `-terse` prints "123", or "123.1-10:1" for an array; without it: 'Your job 123 ("x") has
# been submitted' or 'Your job-array 123.1-10:1 ("x") has been submitted'.
_SUBMIT_LINE = re.compile(r"^\s*([0-9]{1,12})(?:\.[0-9]+-[0-9]+:[0-9]+)?\s*$")
_SUBMIT_TEXT = re.compile(r"\bYour job(?:-array)? ([0-9]{1,12})\b.*has been submitted")
_NO_JOBS_AT_ALL = re.compile(r"Following jobs do not exist:\s*\*")
# qstat -xml of a whole busy cluster is a few MB; far more than this is not a qstat answer.
MAX_XML = 64 * 1024 * 1024

_P, _R, _F = JobState.PENDING, JobState.RUNNING, JobState.FAILED
# The state combinations qstat(1) lists, plus those seen on 8.1.9 (qhold of a running job:
# hr, hs, dhs). Error states (E) never leave the queue on their own: the job failed to start
# and waits for an admin's `qmod -cj` or a `qdel`, so they are reported FAILED (the tracker
# should qdel them). Deletion in progress (d) is still RUNNING: the process may not be dead
# yet, and qacct settles how it ended.
_STATES: dict[str, JobState] = {
    **dict.fromkeys(["qw", "hqw", "hRwq"], _P),
    **dict.fromkeys(["r", "t", "Rr", "Rt", "hr", "hs"], _R),
    **dict.fromkeys(["s", "ts", "S", "tS", "T", "tT", "Rs", "Rts", "RS", "RtS", "RT", "RtT"], _R),
    **dict.fromkeys(["dr", "dt", "dRr", "dRt", "ds", "dS", "dT", "dRs", "dRS", "dRT", "dhs"], _R),
    **dict.fromkeys(["Eqw", "Ehqw", "EhRqw"], _F),
}
_REASONS = {
    "E": "error state (see qstat -j)",
    "d": "being deleted",
    "h": "held",
    "s": "suspended",
    "S": "queue suspended",
    "T": "suspended by threshold",
}
# qacct `failed` codes (sge_status / execd) that are not the job's own doing.
_FAILED_LIMIT = 37  # "qmaster enforced h_rt, h_cpu, or h_vmem limit"
_FAILED_ASSUMED = 100  # "assumedly after job": killed by a signal, e.g. qdel of a running job


class SgeScheduler(Scheduler):
    name: ClassVar[str] = "sge"
    unavailable_patterns: ClassVar[tuple[re.Pattern[str], ...]] = (
        re.compile(r"unable to send message to qmaster"),
        re.compile(r"unable to contact qmaster"),
        re.compile(r"commlib error: (got select error|can't connect|access denied)"),
        re.compile(r"cannot connect to qmaster|qmaster is not alive", re.IGNORECASE),
    )
    state_map: ClassVar[Mapping[str, JobState]] = _STATES

    def map_state(self, raw: str, job_id: str) -> JobState:
        state = self.state_map.get(raw)
        if state is None and raw and set(raw) <= set("qwhRrtsSTEd"):
            # An undocumented mix of known letters: the letters still say enough.
            state = _F if "E" in raw else _R if set(raw) & set("rtsST") else _P
            log.info("job %s: undocumented sge state %r read as %s", job_id, raw, state)
        return state if state is not None else super().map_state(raw, job_id)

    def submit_argv(self, script_path: str) -> list[str]:
        return ["qsub", "-terse", check_script(script_path, self.name)]

    def parse_submit(self, stdout: str) -> str:
        return find_submitted_id(stdout, _SUBMIT_LINE, _SUBMIT_TEXT, "qsub")

    def status_argv(self, job_ids: Sequence[str]) -> list[str]:
        check_ids(job_ids, JOB_ID, self.name)
        # qstat cannot select several jobs by id; without -u it lists only the caller's own jobs
        # (the documented default `-u $user`), which are the only ones we submit. `-g d` gives
        # one entry per array task instead of folding pending tasks into "4-10:1".
        return ["qstat", "-xml", "-g", "d"]

    def parse_status(self, stdout: str, job_ids: Sequence[str]) -> dict[str, SchedulerStatus]:
        root = _parse_xml(stdout)
        if root is None:
            return {}
        wanted = set(job_ids)
        found: dict[str, list[SchedulerStatus]] = {}
        for entry in root.iter("job_list"):
            number = (entry.findtext("JB_job_number") or "").strip()
            raw = (entry.findtext("state") or "").strip()
            if not number.isdigit():
                log.warning("qstat job entry without a job number, ignored")
                continue
            tasks = _tasks((entry.findtext("tasks") or "").strip())
            keys = [number] + [f"{number}.{t}" for t in tasks if f"{number}.{t}" in wanted]
            for key in keys:
                if key in wanted:
                    status = SchedulerStatus(key, self.map_state(raw, key), None, _reason(raw), raw)
                    found.setdefault(key, []).append(status)
        return select(found, job_ids)

    def cancel_argv(self, job_ids: Sequence[str]) -> list[str]:
        return ["qdel", *check_ids(job_ids, JOB_ID, self.name)]

    def find_argv(self) -> list[str] | None:
        # The template sets the job context "zbatch=<marker>" (-ac); qstat -j shows it for
        # queued and running jobs. A finished job is found through its exit record instead.
        return ["qstat", "-j", "*"]

    def find_error_is_empty(self, stderr: str) -> bool:
        # With no job queued at all, `qstat -j '*'` exits 1 saying the job "*" does not exist.
        return _NO_JOBS_AT_ALL.fullmatch(stderr.strip()) is not None

    def parse_find(self, stdout: str, marker: str) -> str | None:
        job_id = ""
        for line in stdout.splitlines():
            key, _, value = line.partition(":")
            if key == "job_number":
                job_id = value.strip()
            elif key == "context" and f"zbatch={marker}" in value.strip().split(","):
                return job_id if JOB_ID.fullmatch(job_id) else None
        return None

    def detail_argv(self, job_id: str) -> list[str] | None:
        check_ids([job_id], JOB_ID, self.name)
        job, _, task = job_id.partition(".")
        return ["qacct", "-j", job, *(["-t", task] if task else [])]

    def parse_detail(self, stdout: str, job_id: str) -> SchedulerStatus | None:
        if re.search(r"error: job id \S+ not found", stdout):
            return None
        # Records are separated by "=====" lines; qacct lists a reused id once per run, oldest
        # first, so the last record per task is the one we submitted.
        latest: dict[str, dict[str, str]] = {}
        for block in re.split(r"^=+\s*$", stdout, flags=re.MULTILINE):
            record = _record(block)
            mine = base_id(job_id) == record.get("jobnumber", base_id(job_id))
            if mine and "failed" in record and "exit_status" in record:
                latest.pop(record.get("taskid", ""), None)  # keep insertion order = newest
                latest[record.get("taskid", "")] = record
        if not latest:
            return None
        return combine(job_id, [self._outcome(r, job_id) for r in latest.values()])

    def _outcome(self, record: Mapping[str, str], job_id: str) -> SchedulerStatus:
        failed_text = record["failed"]
        failed = int(failed_text.split()[0]) if failed_text.split()[0].isdigit() else -1
        exit_text = record["exit_status"].split()[0]
        exit_code = int(exit_text) if exit_text.isdigit() else None
        reason = failed_text.partition(":")[2].strip()
        raw = f"failed={failed} exit_status={exit_code}"
        if failed == _FAILED_LIMIT:
            state = JobState.OUT_OF_MEMORY if _memory_hit(record) else JobState.TIMEOUT
        elif failed == _FAILED_ASSUMED and exit_code == 137:
            # qdel of a running job and a kill -9 of its script leave identical records.
            state, reason = JobState.CANCELLED, f"{reason}: SIGKILL (qdel, or any kill -9)"
        elif failed != 0:
            state, reason = JobState.FAILED, reason or f"failed {failed}"
        else:
            state = JobState.SUCCEEDED if exit_code == 0 else JobState.FAILED
        return SchedulerStatus(job_id, state, exit_code, reason, raw)


def _parse_xml(stdout: str) -> ET.Element | None:
    if len(stdout) > MAX_XML:
        raise SchedulerError(f"qstat -xml output is {len(stdout)} characters; refusing to parse")
    start = min((i for i in (stdout.find("<?xml"), stdout.find("<job_info")) if i >= 0), default=-1)
    if start < 0:
        if stdout.strip():
            raise SchedulerError(f"qstat printed no XML: {shorten(stdout)}")
        return None
    text = stdout[start:]
    # qstat never declares entities; refusing a DTD rules out entity-expansion tricks.
    if "<!DOCTYPE" in text or "<!ENTITY" in text:
        raise SchedulerError("qstat -xml output carries a DTD; refusing to parse it")
    try:
        # S314: no DTD and a size cap leave only expat's own (billion-laughs-safe) parsing.
        return ET.fromstring(text)  # noqa: S314
    except ET.ParseError as exc:
        raise SchedulerError(f"qstat -xml output is not XML ({exc}): {shorten(text)}") from exc


def _tasks(text: str) -> list[int]:
    """Task ids from qstat's `tasks` field: "3", "4-10:1" or "1,3,5-7:2" (small ranges only)."""
    out: list[int] = []
    for part in filter(None, text.split(",")):
        match = re.fullmatch(r"([0-9]+)(?:-([0-9]+)(?::([0-9]+))?)?", part)
        if match:
            first = int(match.group(1))
            last = int(match.group(2) or first)
            step = max(int(match.group(3) or 1), 1)
            out.extend(range(first, min(last, first + 100_000 * step) + 1, step))
    return out


def _reason(raw: str) -> str:
    return ", ".join(text for letter, text in _REASONS.items() if letter in raw)


def _record(block: str) -> dict[str, str]:
    record: dict[str, str] = {}
    for line in block.splitlines():
        key, _, value = line.strip().partition(" ")
        if key and value.strip():
            record[key] = value.strip()
    return record


_UNITS = {"B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def _bytes(text: str) -> float | None:
    """qacct sizes ("5.094MB", "0.000B") and request sizes ("5M", "2G") as bytes."""
    match = re.fullmatch(r"([0-9.]+)\s*([BKMGT]?)B?", text.strip(), flags=re.IGNORECASE)
    if not match or match.group(1).count(".") > 1:
        return None
    return float(match.group(1)) * _UNITS[(match.group(2) or "B").upper()]


def _memory_hit(record: Mapping[str, str]) -> bool:
    """failed 37 covers h_rt, h_cpu and h_vmem: memory only if maxvmem reached the h_vmem
    request and the run time did not reach h_rt (qacct: category "-l h_rt=20,h_vmem=1G")."""
    category = record.get("category", "")
    limit = re.search(r"\bh_vmem=([0-9.]+[BKMGT]?)", category, re.IGNORECASE)
    used = _bytes(record.get("maxvmem", ""))
    cap = _bytes(limit.group(1)) if limit else None
    if cap is None or used is None or used < 0.95 * cap:
        return False
    h_rt = re.search(r"\bh_rt=([0-9]+)\b", category)  # qacct shows h_rt in seconds
    wall = re.fullmatch(r"([0-9]+)s?", record.get("ru_wallclock", ""))
    return not (h_rt and wall and int(wall.group(1)) >= int(h_rt.group(1)))
