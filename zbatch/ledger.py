"""The SQLite record of every step zbatch submitted: idempotency and status across restarts.

A step is claimed (state `submitting`) before the scheduler sees it and updated with the job
id once accepted, so a redelivered message for a claimed step is recognised, not resubmitted.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zbatch.envelope import StepMessage
from zbatch.jobs import JobState
from zbatch.securefiles import create_private, make_dirs

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
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_active ON jobs (state, profile);
CREATE INDEX IF NOT EXISTS jobs_job_id ON jobs (job_id);
"""
SUBMITTING = "submitting"
ACTIVE = (SUBMITTING, JobState.PENDING.value, JobState.RUNNING.value, JobState.UNKNOWN.value)


def default_state_dir() -> Path:
    return Path(os.environ.get("ZBATCH_STATE_DIR") or Path.home() / ".local/state/zbatch")


def step_key(message: StepMessage) -> str:
    """Same recipe run, same step, same input: the same key, however often it is delivered."""
    ident = json.dumps(
        [message.recipe_id, message.pointer, message.path, message.payload],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(ident.encode()).hexdigest()[:32]


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

    @property
    def active(self) -> bool:
        return self.state in ACTIVE


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

    def release(self, key: str) -> None:
        """Forget a claim whose submission certainly failed, so a retry may submit again."""
        self._run("DELETE FROM jobs WHERE key = ? AND state = ?", (key, SUBMITTING))

    def get(self, key: str) -> LedgerEntry | None:
        _, rows = self._run("SELECT * FROM jobs WHERE key = ?", (key,))
        return self._entry(rows[0]) if rows else None

    def _entry(self, row: tuple[Any, ...]) -> LedgerEntry:
        return LedgerEntry(*row)

    def find(
        self, ids: list[str] | None = None, active_only: bool = False, profile: str | None = None
    ) -> Iterator[LedgerEntry]:
        query = "SELECT * FROM jobs WHERE 1=1"
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
