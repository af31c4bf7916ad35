"""The SQLite record of every step zbatch submitted: idempotency and status across restarts.

A step is claimed (state `submitting`) before the scheduler sees it and updated with the job
id once accepted, so a redelivered message for a claimed step is recognised, not resubmitted.
When its job ends, the outcome is recorded once, with what the step still owes its recipe
(`owed`: messages its job could not send, or zbatch's own failure report) and, while those
are delivered (owed.py), who is sending them and how far they got.

The file's schema has a version (`PRAGMA user_version`, SCHEMA_VERSION): a ledger written by
an older zbatch is migrated when it is opened, one written by a newer zbatch is refused.
Columns are always named (COLUMNS), never taken by position.
"""

from __future__ import annotations

import enum
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zbatch.errors import ZbatchError
from zbatch.model.jobs import JobPaths, JobState
from zbatch.paths import create_private, default_state_dir, make_dirs

# The ledger file's schema version. Any change to the table (a column, an index, a new state
# or `reported` bit an older zbatch would misread) raises it, with a step in `_migrate`.
#   0: before versioning (zbatch up to 9cfe679); the owed columns came late within it.
#   1: the same table, versioned.
SCHEMA_VERSION = 1

# Every column of the `jobs` table with its definition, in table order: the table, every
# SELECT and every LedgerEntry (field for field, by name) come from this one list.
COLUMNS: dict[str, str] = {
    "key": "TEXT PRIMARY KEY",
    "recipe_id": "TEXT NOT NULL",
    "pointer": "INTEGER NOT NULL",
    "profile": "TEXT NOT NULL",
    # The profile file the step was submitted with (`zbatch status` polls through it).
    "profile_source": "TEXT NOT NULL",
    "scheduler": "TEXT NOT NULL",
    "job_name": "TEXT NOT NULL",
    "job_id": "TEXT",
    # A JobState value.
    "state": "TEXT NOT NULL",
    "exit_code": "INTEGER",
    "reason": "TEXT NOT NULL DEFAULT ''",
    "workdir": "TEXT NOT NULL",
    "tag": "TEXT NOT NULL",
    "message_path": "TEXT NOT NULL",
    # Who holds the submission claim (host:pid, or host:pid:thread:uncertain).
    "claimed_by": "TEXT NOT NULL DEFAULT ''",
    # Reported bits: which of the step's notices are sent.
    "reported": "INTEGER NOT NULL DEFAULT 0",
    "cancel_requested": "INTEGER NOT NULL DEFAULT 0",
    "submitted_at": "REAL",
    "updated_at": "REAL NOT NULL",
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
# Version 0 ledgers written before owed results lack these (they are added on migration).
V0_LATE_COLUMNS = ("owed", "owed_sent", "owed_by", "owed_until", "owed_error")
SELECT = f"SELECT {', '.join(COLUMNS)} FROM jobs"  # noqa: S608 - fixed names
CREATE_TABLE = "CREATE TABLE IF NOT EXISTS jobs (\n    {}\n)".format(
    ",\n    ".join(f"{name} {kind}" for name, kind in COLUMNS.items())
)
CREATE_INDEXES = (
    "CREATE INDEX IF NOT EXISTS jobs_active ON jobs (state, profile)",
    "CREATE INDEX IF NOT EXISTS jobs_job_id ON jobs (job_id)",
    "CREATE INDEX IF NOT EXISTS jobs_owed ON jobs (profile, updated_at) WHERE owed != ''",
)
# States in which a step's job may still change: the tracker polls these.
ACTIVE = tuple(state for state in JobState if not state.final)


class Reported(enum.IntFlag):
    """Which of a step's notices are sent (the `reported` column; the values are on disk)."""

    NOTHING = 0
    SUBMITTED = 1  # the job_submitted notice
    FAILURE = 2  # zbatch's own failure report, for a job that ended without its wrapper's
    OUTBOX = 4  # every message of the job's outbox


class LedgerError(ZbatchError):
    """A ledger file this zbatch cannot use (written by a newer zbatch, or not a ledger)."""


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
    """One row of the ledger; its fields are COLUMNS, by name."""

    key: str
    recipe_id: str
    pointer: int
    profile: str
    profile_source: str
    scheduler: str
    job_name: str
    job_id: str | None
    state: JobState
    exit_code: int | None
    reason: str
    workdir: str
    tag: str
    message_path: str
    claimed_by: str
    reported: Reported
    cancel_requested: int
    submitted_at: float | None
    updated_at: float
    owed: str
    owed_sent: int
    owed_by: str
    owed_until: float
    owed_error: str

    @property
    def paths(self) -> JobPaths:
        """The job's files (script, output, exit record), named from its folder and tag."""
        return JobPaths(Path(self.workdir), self.tag)

    @property
    def active(self) -> bool:
        return not self.state.final

    @property
    def owes(self) -> Owed:
        """The messages this step still owes its recipe (empty when all are delivered)."""
        return Owed.parse(self.owed)


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
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            # Only a claim must survive a power cut (it is what stops a redelivered step from
            # being submitted twice), so only claims wait for fsync; other writes reach the
            # disk with the next claim, and any of them lost is rebuilt from the claim and the
            # job's marker.
            self.db.execute("PRAGMA synchronous=NORMAL")
            self._upgrade()
        except BaseException:
            self.db.close()
            raise

    def _version(self) -> int:
        version = int(self.db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise LedgerError(
                f"ledger {self.path} has schema version {version}, newer than this zbatch "
                f"knows ({SCHEMA_VERSION}): it was written by a newer zbatch; use that one"
            )
        return version

    def _upgrade(self) -> None:
        """Create the schema, or bring a ledger written by an older zbatch up to date: in one
        transaction, taken before the version is read again, as other processes may be
        opening the same file at the same moment."""
        with self.lock:
            if self._version() == SCHEMA_VERSION:
                return
            self.db.execute("BEGIN IMMEDIATE")
            try:
                version = self._version()
                if version < SCHEMA_VERSION:
                    self._migrate(version)
                    self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    def _migrate(self, version: int) -> None:
        """Each step from `version` on, in the caller's transaction (no executescript: it
        would commit). A new file is version 0 with no table."""
        if version == 0:
            self._from_v0()

    def _from_v0(self) -> None:
        have = self._columns()
        if not have:
            self.db.execute(CREATE_TABLE)
        else:  # written before versioning; the owed columns may be missing
            for name in V0_LATE_COLUMNS:
                if name not in have:
                    self.db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {COLUMNS[name]}")
        missing = [name for name in COLUMNS if name not in self._columns()]
        if missing:
            raise LedgerError(
                f"ledger {self.path}: its jobs table lacks {', '.join(missing)}: "
                "it is not a zbatch ledger, or one too old to migrate"
            )
        for statement in CREATE_INDEXES:
            self.db.execute(statement)

    def _columns(self) -> set[str]:
        return {row[1] for row in self.db.execute("PRAGMA table_info(jobs)")}

    def close(self) -> None:
        self.db.close()

    def _run(
        self, sql: str, args: Sequence[Any] = (), durable: bool = False
    ) -> tuple[int, list[dict[str, Any]]]:
        """One statement under the lock: (rows changed, rows returned, by column name).
        `durable`: on disk (fsync) when this returns, with every write before it."""
        with self.lock:
            if durable:
                self.db.execute("PRAGMA synchronous=FULL")
            try:
                cursor = self.db.execute(sql, args)
                names = [column[0] for column in cursor.description or ()]
                return cursor.rowcount, [dict(zip(names, row, strict=True)) for row in cursor]
            finally:
                if durable:
                    self.db.execute("PRAGMA synchronous=NORMAL")

    def claim(self, key: str, **fields: Any) -> LedgerEntry | None:
        """Record a step before submitting it; returns the existing entry if already claimed."""
        now = time.time()
        row = _checked({"key": key, "state": JobState.SUBMITTING, "updated_at": now, **fields})
        columns = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        changed, _ = self._run(
            f"INSERT OR IGNORE INTO jobs ({columns}) VALUES ({marks})",  # noqa: S608 - fixed names
            tuple(row.values()),
            durable=True,
        )
        return None if changed == 1 else self.get(key)

    def update(self, key: str, **fields: Any) -> None:
        fields = _checked({**fields, "updated_at": time.time()})
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
            (claimant, time.time(), key, JobState.SUBMITTING, entry.claimed_by, entry.updated_at),
        )
        return changed == 1

    def settle(
        self, key: str, state: JobState, exit_code: int | None, reason: str, owed: Owed
    ) -> bool:
        """Record a job's outcome and what it owes its recipe, in one write and only once:
        False when another tracker (a replica, `zbatch status`) settled it first."""
        marks = ",".join("?" * len(ACTIVE))
        changed, _ = self._run(
            "UPDATE jobs SET state = ?, exit_code = ?, reason = ?, owed = ?, owed_sent = 0, "  # noqa: S608 - fixed names
            "owed_by = '', owed_until = 0, owed_error = '', updated_at = ? "
            f"WHERE key = ? AND state IN ({marks})",
            (JobState(state), exit_code, reason, owed.dump(), time.time(), key, *ACTIVE),
            durable=bool(owed),
        )
        return changed == 1

    def owing(self, profile: str) -> list[LedgerEntry]:
        """The steps of `profile` that still owe messages, in the order they ended."""
        _, rows = self._run(
            f"{SELECT} WHERE owed != '' AND profile = ? ORDER BY updated_at", (profile,)
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
        reported: Reported = Reported.NOTHING,
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
            (
                owed.dump(),
                sent,
                claimant if owed else "",
                until,
                error,
                Reported(reported),
                key,
                claimant,
            ),
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
        self._run("DELETE FROM jobs WHERE key = ? AND state = ?", (key, JobState.SUBMITTING))

    def get(self, key: str) -> LedgerEntry | None:
        _, rows = self._run(f"{SELECT} WHERE key = ?", (key,))
        return self._entry(rows[0]) if rows else None

    def _entry(self, row: dict[str, Any]) -> LedgerEntry:
        values = {name: row[name] for name in COLUMNS}
        try:
            state = JobState(values["state"])
        except ValueError:
            raise LedgerError(
                f"ledger {self.path}: step {values['key']} has state {values['state']!r}, "
                "unknown to this zbatch"
            ) from None
        return LedgerEntry(**{**values, "state": state, "reported": Reported(values["reported"])})

    def find(
        self,
        ids: list[str] | None = None,
        active_only: bool = False,
        profile: str | None = None,
        owed_only: bool = False,
    ) -> Iterator[LedgerEntry]:
        query = f"{SELECT} WHERE 1=1"
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


def _checked(fields: dict[str, Any]) -> dict[str, Any]:
    """Values to write, by column: names must be columns, a state a JobState, `reported` bits
    Reported (ValueError otherwise: the caller is at fault, not the file)."""
    unknown = [name for name in fields if name not in COLUMNS]
    if unknown:
        raise ValueError(f"ledger: no column {', '.join(unknown)}")
    if "state" in fields:
        fields["state"] = JobState(fields["state"])
    if "reported" in fields:
        fields["reported"] = Reported(fields["reported"])
    return fields
