"""Why a step ended the way it did: the wrapper's reason, the tool's exit code, its stderr.

The job's result record (written by `zbatch wrap`, injob/runner.py) knows why a wrapper failed
far better than the exit code does; the job's stderr shows what the tool said last. Both are
read through the cluster's connection, so this works for jobs on this machine and over SSH.
A job writes these files itself: anything malformed counts as nothing said.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import PurePosixPath

from zbatch.clusters import Cluster
from zbatch.errors import ZbatchError
from zbatch.model import safejson
from zbatch.model.jobs import MAX_RECORD_BYTES, result_record_path
from zbatch.service.ledger import LedgerEntry

log = logging.getLogger(__name__)

TAIL_LINES = 10
MAX_REASON_CHARS = 500


@dataclass(frozen=True)
class ResultSummary:
    """What a result record says about a failure (empty when it says nothing usable)."""

    success: bool
    reason: str = ""
    tool_exit_code: int | None = None


@dataclass(frozen=True)
class Why:
    """Why a step ended: the reason ('' when none is known), the tool's own exit code (None
    when the tool never ran or no record says) and the last lines of the job's stderr."""

    reason: str
    tool_exit_code: int | None
    stderr_tail: list[str]


def one_line(text: str) -> str:
    """A reason fit for one line of a table: whitespace folded, bounded."""
    folded = " ".join(text.split())
    if len(folded) > MAX_REASON_CHARS:
        return folded[: MAX_REASON_CHARS - 1] + "…"
    return folded


def parse_result(text: str, source: str) -> ResultSummary | None:
    """The record's success, reason and tool exit code; None when it is not a record."""
    try:
        data = safejson.loads(text, source, max_bytes=MAX_RECORD_BYTES)
    except ZbatchError as exc:
        log.warning("%s: no valid result record: %s", source, exc)
        return None
    if not isinstance(data, dict) or not isinstance(data.get("success"), bool):
        log.warning("%s: no valid result record", source)
        return None
    reason = data.get("reason")
    code = data.get("tool_exit_code")
    # -1: the tool never ran (runner.py); a bool or a huge number is not an exit code.
    usable = isinstance(code, int) and not isinstance(code, bool) and 0 <= code < 2**31
    return ResultSummary(
        data["success"],
        one_line(reason) if isinstance(reason, str) else "",
        code if usable else None,
    )


def read_result(cluster: Cluster, entry: LedgerEntry) -> ResultSummary | None:
    """The entry's result record as its wrapper left it, or None (none, unreadable, invalid).
    Raises ZbatchError when the cluster cannot be reached (worth trying again)."""
    path = result_record_path(entry.message_path)
    text = cluster.read_text(PurePosixPath(path))
    return None if text is None else parse_result(text, path)


def stderr_tail(cluster: Cluster, entry: LedgerEntry, lines: int = TAIL_LINES) -> list[str]:
    """The last `lines` non-blank lines of the job's stderr ([] when there is none)."""
    text = cluster.read_text(PurePosixPath(entry.paths.stderr))
    if not text:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]


def why(entry: LedgerEntry, cluster: Cluster) -> Why:
    """Why `entry`'s job ended as it did, from its result record and its stderr; falls back on
    the ledger's reason. A file the cluster cannot read right now is left out (logged)."""
    reason, code = entry.reason, None
    tail: list[str] = []
    try:
        result = read_result(cluster, entry)
        if result is not None and not result.success:
            reason, code = result.reason or reason, result.tool_exit_code
        tail = stderr_tail(cluster, entry)
    except ZbatchError as exc:
        log.warning("job %s: cannot read why it ended: %s", entry.job_id, exc)
    return Why(reason, code, tail)
