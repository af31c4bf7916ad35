"""How the ledger fixtures here were made: through the Ledger API of an older zbatch.

    git archive 9cfe679 zbatch | tar -x -C /tmp/v0      # today's layout, ADDED_COLUMNS
    PYTHONPATH=/tmp/v0 python tests/data/ledger/make_fixture.py v0 tests/data/ledger/v0.sql
    git archive 79f8682 zbatch | tar -x -C /tmp/old     # zbatch/ledger.py, no owed columns
    PYTHONPATH=/tmp/old python tests/data/ledger/make_fixture.py old \
        tests/data/ledger/v0-before-owed.sql

A fake clock makes the timestamps the same on every run. The output is `iterdump` SQL
(what `sqlite3 ledger.sqlite .dump` prints), headed by a comment naming the commit.
"""

from __future__ import annotations

import importlib
import sqlite3
import sys
import time
from itertools import count
from pathlib import Path
from typing import Any

HEADERS = {
    "v0": "A ledger written by zbatch at commit 9cfe679 (today's schema: ADDED_COLUMNS, "
    "no PRAGMA user_version)",
    "old": "A ledger written by zbatch at commit 79f8682 (before the owed columns of "
    "ADDED_COLUMNS; no PRAGMA user_version)",
}


def main(era: str, out: Path) -> None:
    ticks = count()
    time.time = lambda: 1_700_000_000.0 + next(ticks)  # deterministic timestamps
    module = importlib.import_module("zbatch.service.ledger" if era == "v0" else "zbatch.ledger")
    db = out.with_suffix(".sqlite")
    ledger = module.Ledger(db)
    _write(ledger, module, era == "v0")
    ledger.close()
    conn = sqlite3.connect(db)
    lines = list(conn.iterdump())
    conn.close()
    header = f"-- {HEADERS[era]},\n-- through its Ledger API by {Path(__file__).name}.\n"
    out.write_text(header + "\n".join(lines) + "\n")
    for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        path.unlink(missing_ok=True)


def _claim(ledger: Any, key: str, pointer: int, **extra: Any) -> None:
    fields = {
        "recipe_id": f"recipe-{key}",
        "pointer": pointer,
        "profile": "cluster-a",
        "profile_source": "/etc/zbatch/profiles/cluster-a.yaml",
        "scheduler": "slurm",
        "job_name": f"zbatch-{key}",
        "workdir": f"/dls/tmp/{key}",
        "tag": f"tag-{key}",
        "message_path": f"/dls/tmp/{key}/zbatch-tag-{key}.recipewrap.json",
        "claimed_by": "ws001:4242",
        **extra,
    }
    assert ledger.claim(key, **fields) is None


def _write(ledger: Any, module: Any, owed: bool) -> None:
    # Claimed, never given a job id (state `submitting`).
    _claim(ledger, "claimed", 1, claimed_by="ws001:4242:139872:uncertain")
    # Submitted; its job_submitted notice sent (`reported` bit 1).
    _claim(ledger, "pending", 2)
    ledger.update("pending", job_id="1001", state="pending", submitted_at=time.time())
    ledger.update("pending", reported=1)
    # Running, cancel requested; odd text kept as it is.
    odd = "naïve 'job'; \"x\""
    _claim(ledger, "running", 3, profile="cluster-b", scheduler="sge", job_name=odd)
    ledger.update(
        "running",
        job_id="1002.4",
        state="running",
        submitted_at=time.time(),
        reason="r: ✓",
        cancel_requested=1,
        reported=1,
    )
    _claim(ledger, "succeeded", 4)
    ledger.update("succeeded", job_id="1003", state="pending", submitted_at=time.time(), reported=1)
    _claim(ledger, "failed", 5, scheduler="drmaa")
    ledger.update("failed", job_id="1004", state="pending", submitted_at=time.time())
    if not owed:
        ledger.update("succeeded", state="succeeded", exit_code=0)
        ledger.update("failed", state="failed", exit_code=3, reason="NonZeroExitCode", reported=2)
        return
    owes = module.Owed
    assert ledger.settle("succeeded", "succeeded", 0, "", owes())
    # Ended badly, its failure report sent (bit 2).
    assert ledger.settle("failed", "failed", 3, "NonZeroExitCode", owes((), "job 1004 failed"))
    assert ledger.claim_owed("failed", "ws002:77#1", lease_s=300)
    assert ledger.record_delivery("failed", "ws002:77#1", owes(), 0, 300, reported=2)
    # Ended with its outbox owed: one send done, the last try's error kept, a claim held.
    _claim(ledger, "owed", 6)
    ledger.update("owed", job_id="1005", state="running", submitted_at=time.time(), reported=1)
    full = owes(("starting", "success", "completed"), "job 1005 timeout")
    assert ledger.settle("owed", "timeout", 143, "TimeLimit", full)
    assert ledger.claim_owed("owed", "ws003:99#2", lease_s=300)
    rest = owes(("success", "completed"), "job 1005 timeout")
    assert ledger.record_delivery("owed", "ws003:99#2", rest, 1, 300)
    ledger.release_owed("owed", "ws003:99#2", "broker unreachable: connection refused")
    assert ledger.claim_owed("owed", "ws003:99#3", lease_s=300)
    # Outbox then failure report delivered (bits 1|2|4); nothing owed any more.
    _claim(ledger, "delivered", 7)
    ledger.update("delivered", job_id="1006", state="running", submitted_at=time.time(), reported=1)
    assert ledger.settle("delivered", "lost", None, "gone", owes(("failure",), "job 1006 lost"))
    assert ledger.claim_owed("delivered", "ws003:99#4", lease_s=300)
    lost = owes((), "job 1006 lost")
    assert ledger.record_delivery("delivered", "ws003:99#4", lost, 0, 300, reported=4)
    assert ledger.record_delivery("delivered", "ws003:99#4", owes(), 0, 300, reported=2)


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
