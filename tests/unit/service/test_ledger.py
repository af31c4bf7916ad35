"""The ledger: its write policy (only claims wait for fsync), and its schema: columns by name,
a version, migration of ledgers written by an older zbatch (tests/data/ledger)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ZbatchRun, claim, one_line_error
from zbatch.errors import ZbatchError
from zbatch.model.jobs import JobState
from zbatch.service.ledger import (
    ACTIVE,
    COLUMNS,
    SCHEMA_VERSION,
    V0_LATE_COLUMNS,
    Ledger,
    LedgerEntry,
    LedgerError,
    Owed,
    Reported,
)


def test_only_claims_are_written_with_fsync(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    statements: list[str] = []
    ledger.db.set_trace_callback(statements.append)
    assert claim(ledger, "k1") is None
    claim_sql = list(statements)
    statements.clear()
    ledger.update("k1", job_id="42", state="pending")
    update_sql = list(statements)
    assert (
        claim_sql[0] == "PRAGMA synchronous=FULL" and claim_sql[-1] == "PRAGMA synchronous=NORMAL"
    )
    assert any(sql.startswith("INSERT OR IGNORE") for sql in claim_sql)
    assert not any("synchronous" in sql for sql in update_sql)
    assert ledger.db.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL again


def test_a_second_claim_returns_the_first(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    assert claim(ledger, "k1") is None
    ledger.update("k1", job_id="42", state="pending")
    reopened = Ledger(tmp_path / "ledger.sqlite")  # what a restarted dispatcher sees
    existing = claim(reopened, "k1")
    assert existing is not None and existing.job_id == "42"


# -- Schema: named columns, versions, migration of ledgers written by older zbatch ----------

FIXTURES = Path(__file__).resolve().parents[2] / "data" / "ledger"
# Written through the Ledger API of zbatch 9cfe679 (today's unversioned schema) and 79f8682
# (before the owed columns): see tests/data/ledger/make_fixture.py.
OLD_LEDGERS = ["v0.sql", "v0-before-owed.sql"]
LATE_DEFAULTS = {"owed": "", "owed_sent": 0, "owed_by": "", "owed_until": 0.0, "owed_error": ""}


def load(fixture: str, path: Path) -> dict[str, dict[str, Any]]:
    """The fixture as a ledger file (in WAL mode, as zbatch left it); its rows by key."""
    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript((FIXTURES / fixture).read_text())
        assert db.execute("PRAGMA user_version").fetchone() == (0,)
        db.row_factory = sqlite3.Row
        return {row["key"]: dict(row) for row in db.execute("SELECT * FROM jobs")}


def version_and_columns(path: Path) -> tuple[int, list[str]]:
    with closing(sqlite3.connect(path)) as db:
        (version,) = db.execute("PRAGMA user_version").fetchone()
        return version, [row[1] for row in db.execute("PRAGMA table_info(jobs)")]


def test_the_entry_has_a_field_for_each_column_by_the_same_name() -> None:
    assert [f.name for f in fields(LedgerEntry)] == list(COLUMNS)


def test_a_new_ledger_gets_the_current_schema_version(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.close()
    assert version_and_columns(tmp_path / "ledger.sqlite") == (SCHEMA_VERSION, list(COLUMNS))
    with closing(sqlite3.connect(tmp_path / "ledger.sqlite")) as db:
        indexes = {
            row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='index'")
        }
    assert {"jobs_active", "jobs_job_id", "jobs_owed"} <= indexes


@pytest.mark.parametrize("fixture", OLD_LEDGERS)
def test_an_old_ledger_is_migrated_and_reads_with_every_field_intact(
    fixture: str, tmp_path: Path
) -> None:
    path = tmp_path / "ledger.sqlite"
    written = load(fixture, path)
    ledger = Ledger(path)
    assert version_and_columns(path) == (SCHEMA_VERSION, list(COLUMNS))
    entries = {e.key: e for e in ledger.find()}
    assert entries.keys() == written.keys()
    for key, row in written.items():
        entry = entries[key]
        assert {name: getattr(entry, name) for name in COLUMNS} == {**LATE_DEFAULTS, **row}, key
        assert type(entry.state) is JobState and type(entry.reported) is Reported
    # The stored values, as the typed fields see them.
    assert entries["claimed"].state is JobState.SUBMITTING and entries["claimed"].job_id is None
    assert entries["claimed"].claimed_by == "ws001:4242:139872:uncertain"
    assert entries["pending"].reported == Reported.SUBMITTED
    assert entries["running"].cancel_requested == 1 and entries["running"].submitted_at
    assert (
        entries["running"].job_name == "naïve 'job'; \"x\"" and entries["running"].reason == "r: ✓"
    )
    assert (entries["failed"].state, entries["failed"].exit_code) == (JobState.FAILED, 3)
    assert entries["failed"].reported == Reported.FAILURE
    active = {e.key for e in ledger.find(active_only=True)}
    assert active == {"claimed", "pending", "running"}
    if fixture == "v0.sql":
        owed = entries["owed"]
        assert owed.state is JobState.TIMEOUT and owed.exit_code == 143
        assert owed.owes == Owed(("success", "completed"), "job 1005 timeout")
        assert (owed.owed_sent, owed.owed_by) == (1, "ws003:99#3")
        assert owed.owed_until == 1_700_000_324.0
        assert owed.owed_error == "broker unreachable: connection refused"
        assert [e.key for e in ledger.owing("cluster-a")] == ["owed"]
        everything = Reported.SUBMITTED | Reported.FAILURE | Reported.OUTBOX
        assert entries["delivered"].reported == everything and not entries["delivered"].owes


@pytest.mark.parametrize("fixture", OLD_LEDGERS)
def test_a_migrated_ledger_works_on(fixture: str, tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    load(fixture, path)
    ledger = Ledger(path)
    claimed = ledger.get("claimed")
    assert claimed is not None
    assert ledger.take_over("claimed", claimed, "ws009:1")
    ledger.release("claimed")
    assert ledger.get("claimed") is None
    assert ledger.settle("running", JobState.CANCELLED, 143, "cancelled on request", Owed())
    assert not ledger.settle("succeeded", JobState.FAILED, 1, "", Owed())  # settled once only
    assert claim(ledger, "new") is None
    reopened = Ledger(path)  # opening it again changes nothing
    running = reopened.get("running")
    assert running is not None and running.state is JobState.CANCELLED
    assert version_and_columns(path) == (SCHEMA_VERSION, list(COLUMNS))


def test_the_values_on_disk_are_unchanged_by_the_migration(tmp_path: Path) -> None:
    """A ledger written by the old code reads the same, and holds the same values after."""
    path = tmp_path / "ledger.sqlite"
    load("v0.sql", path)
    with closing(sqlite3.connect(path)) as db:
        before = [line for line in db.iterdump() if line.startswith("INSERT")]
    Ledger(path).close()
    with closing(sqlite3.connect(path)) as db:
        after = [line for line in db.iterdump() if line.startswith("INSERT")]
    assert after == before and len(before) == 7


def test_processes_opening_an_old_ledger_at_once_migrate_it_once(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    load("v0-before-owed.sql", path)
    code = (
        "import sys; from pathlib import Path; from zbatch.service.ledger import Ledger; "
        "print(len(list(Ledger(Path(sys.argv[1])).find())))"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    results = [proc.communicate(timeout=60) for proc in procs]
    assert [
        (proc.returncode, out, err) for proc, (out, err) in zip(procs, results, strict=True)
    ] == [(0, "5\n", "")] * len(procs)
    assert version_and_columns(path) == (SCHEMA_VERSION, list(COLUMNS))


def test_a_migration_waits_for_one_in_progress_and_does_not_repeat_it(tmp_path: Path) -> None:
    """Another process holds the write lock while migrating: this one waits for it, then looks
    at the version and table again (adding the columns a second time would fail)."""
    path = tmp_path / "ledger.sqlite"
    load("v0-before-owed.sql", path)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    opened: list[Ledger | BaseException] = []

    def open_it() -> None:
        try:
            opened.append(Ledger(path))
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            opened.append(exc)

    thread = threading.Thread(target=open_it)
    thread.start()
    time.sleep(0.5)
    assert thread.is_alive()  # waiting for the lock
    for name in V0_LATE_COLUMNS:
        other.execute(f"ALTER TABLE jobs ADD COLUMN {name} {COLUMNS[name]}")
    other.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    other.execute("COMMIT")
    other.close()
    thread.join(30)
    (ledger,) = opened
    assert isinstance(ledger, Ledger), ledger
    assert len(list(ledger.find())) == 5


def test_a_failed_migration_changes_nothing(tmp_path: Path) -> None:
    """The very first ledgers (zbatch 2b7b80b) had no profile_source and no cancel_requested
    (they were never migrated): refused, and left as they were."""
    path = tmp_path / "ledger.sqlite"
    first = [
        n for n in COLUMNS if n not in ("profile_source", "cancel_requested", *V0_LATE_COLUMNS)
    ]
    with closing(sqlite3.connect(path)) as db:
        db.execute(f"CREATE TABLE jobs ({', '.join(f'{n} {COLUMNS[n]}' for n in first)})")
    with pytest.raises(LedgerError, match=rf"ledger {path}: .* lacks profile_source, cancel_"):
        Ledger(path)
    assert version_and_columns(path) == (0, first)


def test_a_ledger_from_a_newer_zbatch_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    Ledger(path).close()
    with closing(sqlite3.connect(path)) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(LedgerError) as caught:
        Ledger(path)
    assert isinstance(caught.value, ZbatchError) and not caught.value.transient
    assert str(path) in str(caught.value) and "newer" in str(caught.value)
    assert version_and_columns(path)[0] == SCHEMA_VERSION + 1  # left alone


def test_the_cli_refuses_a_newer_ledger_in_one_line(state_dir: Path, zbatch: ZbatchRun) -> None:
    path = state_dir / "ledger.sqlite"
    Ledger(path).close()
    with closing(sqlite3.connect(path)) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    line = one_line_error(zbatch("status", "--no-refresh"))
    assert str(path) in line and f"schema version {SCHEMA_VERSION + 1}" in line


def test_columns_are_read_by_name_not_position(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    shuffled = list(reversed(COLUMNS.items()))
    with closing(sqlite3.connect(path)) as db:
        db.execute(f"CREATE TABLE jobs ({', '.join(f'{n} {k}' for n, k in shuffled)})")
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.commit()
    ledger = Ledger(path)
    assert claim(ledger, "k", pointer=3, job_name="name") is None
    ledger.update("k", job_id="42", state=JobState.RUNNING, reported=Reported.SUBMITTED)
    entry = ledger.get("k")
    assert entry is not None
    assert (entry.key, entry.pointer, entry.job_name, entry.job_id) == ("k", 3, "name", "42")
    assert (entry.state, entry.reported, entry.owed_until) == (JobState.RUNNING, 1, 0.0)


def test_states_and_reported_bits_keep_their_values_on_disk(tmp_path: Path) -> None:
    assert {s.name: s.value for s in JobState} == {
        "SUBMITTING": "submitting",
        "PENDING": "pending",
        "RUNNING": "running",
        "SUCCEEDED": "succeeded",
        "FAILED": "failed",
        "TIMEOUT": "timeout",
        "CANCELLED": "cancelled",
        "OUT_OF_MEMORY": "out-of-memory",
        "NODE_FAILURE": "node-failure",
        "LOST": "lost",
        "UNKNOWN": "unknown",
    }
    assert [(r.name, r.value) for r in Reported] == [
        ("SUBMITTED", 1),
        ("FAILURE", 2),
        ("OUTBOX", 4),
    ]
    ledger = Ledger(tmp_path / "ledger.sqlite")
    claim(ledger, "k")
    ledger.update("k", reported=Reported.SUBMITTED | Reported.OUTBOX)
    raw = ledger.db.execute("SELECT state, typeof(state), reported, typeof(reported) FROM jobs")
    assert raw.fetchall() == [("submitting", "text", 5, "integer")]


def test_submitting_is_active_and_not_final() -> None:
    assert not JobState.SUBMITTING.final
    assert set(ACTIVE) == {
        JobState.SUBMITTING,
        JobState.PENDING,
        JobState.RUNNING,
        JobState.UNKNOWN,
    }


def test_a_state_unknown_to_this_zbatch_is_an_error_naming_the_file(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    claim(ledger, "k")
    ledger.db.execute("UPDATE jobs SET state = 'hibernating'")
    with pytest.raises(
        LedgerError, match=rf"ledger {tmp_path}/ledger.sqlite: step k .*'hibernating'"
    ):
        ledger.get("k")
    with pytest.raises(ValueError, match="hibernating"):
        ledger.update("k", state="hibernating")  # and none is written
