"""The ledger's write policy: only claims wait for fsync; everything else rides on them."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import claim
from zbatch.service.ledger import Ledger


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
