"""The SQLite record of every step zbatch submitted: idempotency and status across restarts.

A step is claimed (state `submitting`) before the scheduler sees it and updated with the job
id once accepted, so a redelivered message for a claimed step is recognised, not resubmitted.
When its job ends, the outcome is recorded once, with what the step still owes its recipe
(`owed`: messages its job could not send, or zbatch's own failure report) and, while those
are delivered (`zbatch.service.owed`), who is sending them and how far they got.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from zbatch.model.jobs import JobState
from zbatch.paths import create_private, default_state_dir, make_dirs

# Columns added since the first release, with their definitions: a ledger file written by an
# older zbatch gets them (ALTER TABLE ADD COLUMN) when it is opened.
ADDED_COLUMNS = {
    # What the step still owes its recipe (Owed as JSON; '' when nothing is owed).
    "owed": "TEXT NOT NULL DEFAULT ''",
    # How many sends of the first owed part (outbox, then failure report) are done.
    "owed_sent": "INTEGER NOT NULL DEFAULT 0",
    # Who is sending them (host:pid#id) and until when that claim holds (epoch seconds).
    "owed_by": "TEXT NOT NULL DEFAULT ''",
    "owed_until": "REAL NOT NULL DEFAULT 0",
    # Why the last try did not deliver them (shown by `zbatch status`).
    "owed_error": "TEXT NOT NULL DEFAULT ''",
}
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    key TEXT PRIMARY KEY,
    recipe_id TEXT NOT NULL,
    pointer INTEGER NOT NULL,
    profile TEXT NOT NULL,
    profile_source TEXT NOT NULL,
    scheduler TEXT NOT NULL,
    job_name TEXT NOT NULL,
    job_id TEXT,
    state TEXT NOT NULL,
    exit_code INTEGER,
    reason TEXT NOT NULL DEFAULT '',
    workdir TEXT NOT NULL,
    tag TEXT NOT NULL,
    message_path TEXT NOT NULL,
    claimed_by TEXT NOT NULL DEFAULT '',
    reported INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    submitted_at REAL,
    updated_at REAL NOT NULL,
    {added}
);
""".format(added=",\n    ".join(f"{name} {kind}" for name, kind in ADDED_COLUMNS.items()))
INDEXES = """
CREATE INDEX IF NOT EXISTS jobs_active ON jobs (state, profile);
CREATE INDEX IF NOT EXISTS jobs_job_id ON jobs (job_id);
CREATE INDEX IF NOT EXISTS jobs_owed ON jobs (profile, updated_at) WHERE owed != '';
"""
SUBMITTING = "submitting"
ACTIVE = (SUBMITTING, JobState.PENDING.value, JobState.RUNNING.value, JobState.UNKNOWN.value)


@dataclass(frozen=True)
class Owed:
    """What an ended step still owes its recipe, recorded when the tracker settles its job.

    `outbox`: the channels of the messages in the job's outbox (its wrapper could not send
    them) that are not all sent yet, in order; `failure`: the failure report zbatch sends
    itself for a job that ended without its wrapper reporting ('' when none is owed).
    """

    outbox: tuple[str, ...] = ()
    failure: str = ""

    def __bool__(self) -> bool:
        return bool(self.outbox or self.failure)

    @property
    def channels(self) -> list[str]:
        return [*self.outbox, *(["failure"] if self.failure else [])]

    def dump(self) -> str:
        if not self:
            return ""
        return json.dumps({"outbox": list(self.outbox), "failure": self.failure})

    @classmethod
    def parse(cls, text: str) -> Owed:
        """The column's value; zbatch wrote it, so anything else is a defect (ValueError)."""
        if not text:
            return cls()
        data = json.loads(text)
        outbox, failure = data["outbox"], data["failure"]
        if not (isinstance(outbox, list) and all(isinstance(c, str) for c in outbox)):
            raise ValueError(f"ledger: owed outbox {outbox!r} is not a list of channels")
        if not isinstance(failure, str):
            raise ValueError(f"ledger: owed failure {failure!r} is not text")
        return cls(tuple(outbox), failure)


@dataclass(frozen=True)
class LedgerEntry:
    key: str
    recipe_id: str
    pointer: int
    profile: str
    profile_source: str
    scheduler: str
    job_name: str
    job_id: str | None
    state: str
    exit_code: int | None
    reason: str
    workdir: str
    tag: str
    message_path: str
    claimed_by: str
    reported: int
    cancel_requested: int
    submitted_at: float | None
    updated_at: float
    owed: str = ""
    owed_sent: int = 0
    owed_by: str = ""
    owed_until: float = 0.0
    owed_error: str = ""

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def owes(self) -> Owed:
        """The messages this step still owes its recipe (empty when all are delivered)."""
        return Owed.parse(self.owed)


COLUMNS = ", ".join(f.name for f in fields(LedgerEntry))


class Ledger:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_state_dir() / "ledger.sqlite"
        # Private: 0700 folder, 0600 file (SQLite gives its -wal and -shm files the same mode).
        make_dirs(self.path.parent)
        create_private(self.path)
        # Shared by the dispatcher's submission threads: one connection behind one lock.
        self.db = sqlite3.connect(
            self.path, timeout=30, isolation_level=None, check_same_thread=False
        )
        self.lock = threading.RLock()
        self.db.execute("PRAGMA journal_mode=WAL")
        # Only a claim must survive a power cut (it is what stops a redelivered step from being
        # submitted twice), so only claims wait for fsync; other writes reach the disk with the
        # next claim, and any of them lost is rebuilt from the claim and the job's marker.
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self._add_missing_columns()
        self.db.executescript(INDEXES)

    def _add_missing_columns(self) -> None:
        """Bring a ledger written by an older zbatch up to date (other processes may be
        opening it at the same moment: the check and the change are one transaction)."""
        with self.lock:
            if not self._missing_columns():
                return
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for name in self._missing_columns():
                    self.db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {ADDED_COLUMNS[name]}")
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    def _missing_columns(self) -> list[str]:
        have = {row[1] for row in self.db.execute("PRAGMA table_info(jobs)")}
        return [name for name in ADDED_COLUMNS if name not in have]

    def close(self) -> None:
        self.db.close()

    def _run(
        self, sql: str, args: Sequence[Any] = (), durable: bool = False
    ) -> tuple[int, list[tuple[Any, ...]]]:
        """One statement under the lock: (rows changed, rows returned). `durable`: on disk
        (fsync) when this returns, with every write before it."""
        with self.lock:
            if durable:
                self.db.execute("PRAGMA synchronous=FULL")
            try:
                cursor = self.db.execute(sql, args)
                return cursor.rowcount, cursor.fetchall()
            finally:
                if durable:
                    self.db.execute("PRAGMA synchronous=NORMAL")

    def claim(self, key: str, **fields: Any) -> LedgerEntry | None:
        """Record a step before submitting it; returns the existing entry if already claimed."""
        now = time.time()
        row = {"key": key, "state": SUBMITTING, "updated_at": now, **fields}
        columns = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        changed, _ = self._run(
            f"INSERT OR IGNORE INTO jobs ({columns}) VALUES ({marks})",  # noqa: S608 - fixed names
            tuple(row.values()),
            durable=True,
        )
        return None if changed == 1 else self.get(key)

    def update(self, key: str, **fields: Any) -> None:
        fields["updated_at"] = time.time()
        assignments = ", ".join(f"{name} = ?" for name in fields)
        self._run(
            f"UPDATE jobs SET {assignments} WHERE key = ?",  # noqa: S608 - fixed names
            (*fields.values(), key),
        )

    def take_over(self, key: str, entry: LedgerEntry, claimant: str) -> bool:
        """Claim an abandoned `submitting` entry; False if someone else changed it first."""
        changed, _ = self._run(
            "UPDATE jobs SET claimed_by = ?, updated_at = ? "
            "WHERE key = ? AND state = ? AND claimed_by = ? AND updated_at = ?",
            (claimant, time.time(), key, SUBMITTING, entry.claimed_by, entry.updated_at),
        )
        return changed == 1

    def settle(self, key: str, state: str, exit_code: int | None, reason: str, owed: Owed) -> bool:
        """Record a job's outcome and what it owes its recipe, in one write and only once:
        False when another tracker (a replica, `zbatch status`) settled it first."""
        marks = ",".join("?" * len(ACTIVE))
        changed, _ = self._run(
            "UPDATE jobs SET state = ?, exit_code = ?, reason = ?, owed = ?, owed_sent = 0, "  # noqa: S608 - fixed names
            "owed_by = '', owed_until = 0, owed_error = '', updated_at = ? "
            f"WHERE key = ? AND state IN ({marks})",
            (state, exit_code, reason, owed.dump(), time.time(), key, *ACTIVE),
            durable=bool(owed),
        )
        return changed == 1

    def owing(self, profile: str) -> list[LedgerEntry]:
        """The steps of `profile` that still owe messages, in the order they ended."""
        _, rows = self._run(
            f"SELECT {COLUMNS} FROM jobs WHERE owed != '' AND profile = ? "  # noqa: S608
            "ORDER BY updated_at",
            (profile,),
        )
        return [self._entry(row) for row in rows]

    def claim_owed(
        self, key: str, claimant: str, lease_s: float, stale: str = ""
    ) -> LedgerEntry | None:
        """Take the sending of a step's owed messages, as `take_over` takes a claim: only if
        nobody holds it, the holder's lease ran out, it is ours, or it is `stale` (a holder
        known to be dead). None when another process holds it or nothing is owed."""
        now = time.time()
        changed, _ = self._run(
            "UPDATE jobs SET owed_by = ?, owed_until = ? WHERE key = ? AND owed != '' "
            "AND (owed_by IN ('', ?, ?) OR owed_until < ?)",
            (claimant, now + lease_s, key, claimant, stale or claimant, now),
        )
        return self.get(key) if changed == 1 else None

    def record_delivery(
        self,
        key: str,
        claimant: str,
        owed: Owed,
        sent: int,
        lease_s: float,
        reported: int = 0,
        error: str = "",
    ) -> bool:
        """After each message sent: what is still owed and how many outbox sends are done,
        on disk before the next send (so no crash or restart sends one twice). The claim is
        renewed, or released once nothing is owed; `reported` bits are added, `error` kept
        for `status`. False when `claimant` no longer holds the claim."""
        until = time.time() + lease_s if owed else 0.0
        changed, _ = self._run(
            "UPDATE jobs SET owed = ?, owed_sent = ?, owed_by = ?, owed_until = ?, "
            "owed_error = ?, reported = reported | ? WHERE key = ? AND owed_by = ?",
            (owed.dump(), sent, claimant if owed else "", until, error, reported, key, claimant),
            durable=True,
        )
        return changed == 1

    def release_owed(self, key: str, claimant: str, error: str) -> None:
        """Let go of the sending after a failed try (anyone may try next), noting why."""
        self._run(
            "UPDATE jobs SET owed_by = '', owed_until = 0, owed_error = ? "
            "WHERE key = ? AND owed_by = ?",
            (error, key, claimant),
        )

    def release(self, key: str) -> None:
        """Forget a claim whose submission certainly failed, so a retry may submit again."""
        self._run("DELETE FROM jobs WHERE key = ? AND state = ?", (key, SUBMITTING))

    def get(self, key: str) -> LedgerEntry | None:
        _, rows = self._run(f"SELECT {COLUMNS} FROM jobs WHERE key = ?", (key,))  # noqa: S608
        return self._entry(rows[0]) if rows else None

    def _entry(self, row: tuple[Any, ...]) -> LedgerEntry:
        return LedgerEntry(*row)

    def find(
        self,
        ids: list[str] | None = None,
        active_only: bool = False,
        profile: str | None = None,
        owed_only: bool = False,
    ) -> Iterator[LedgerEntry]:
        query = f"SELECT {COLUMNS} FROM jobs WHERE 1=1"  # noqa: S608 - fixed names
        if owed_only:
            query += " AND owed != ''"
        args: list[Any] = []
        if ids:
            query += f" AND (job_id IN ({','.join('?' * len(ids))})"
            query += f" OR key IN ({','.join('?' * len(ids))}))"
            args += ids + ids
        if active_only:
            query += f" AND state IN ({','.join('?' * len(ACTIVE))})"
            args += list(ACTIVE)
        if profile:
            query += " AND profile = ?"
            args.append(profile)
        _, rows = self._run(query + " ORDER BY updated_at", args)
        for row in rows:
            yield self._entry(row)
