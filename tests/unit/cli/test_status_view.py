"""`zbatch status`, `cancel` and `logs` as a person reads them, and their documented JSON:
a header, jobs by submission time, `--recipe`, `profile:id` names, ended jobs not cancelled.

The ledger is written directly (no cluster is asked: `--no-refresh`, or jobs already ended).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ZbatchRun, claim, one_line_error
from zbatch.model.jobs import JobState
from zbatch.service.ledger import Ledger, Reported

ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
JOB_KEYS = {
    "id", "job_id", "profile", "scheduler", "recipe_id", "step", "step_key", "job_name",
    "state", "exit_code", "reason", "workdir", "submitted_at", "updated_at", "owed",
    "owed_error", "stderr_tail",
}  # fmt: skip
DAY = 1_796_000_000.0  # 2026-11-30T00:53:20Z


def add(key: str, job_id: str, submitted_at: float, profile: str = "local", **fields: Any) -> None:
    ledger = Ledger()
    claim(ledger, key, profile=profile, profile_source=f"/nowhere/{profile}.yaml")
    ledger.update(
        key,
        **{
            "job_id": job_id,
            "state": JobState.RUNNING,
            "submitted_at": submitted_at,
            "claimed_by": "host:1",
            "reported": Reported.SUBMITTED,
            **fields,
        },
    )
    ledger.close()


@pytest.fixture()
def jobs() -> None:
    """Three jobs recorded out of submission order; local:1 and local2:1 share a job id."""
    add("k-late", "7", DAY + 300, recipe_id="recipe-b", state=JobState.SUCCEEDED, exit_code=0)
    add("k-early", "1", DAY + 100, recipe_id="recipe-a")
    failed = {"state": JobState.FAILED, "exit_code": 3, "reason": "No suitable lattice"}
    add("k-middle", "1", DAY + 200, profile="local2", recipe_id="recipe-a", **failed)


def rows(text: str) -> list[str]:
    return [line.split()[0] for line in text.splitlines()[1:] if not line.startswith(" ")]


@pytest.mark.usefixtures("jobs")
def test_table_has_a_header_and_lists_jobs_by_submission(zbatch: ZbatchRun) -> None:
    shown = zbatch("status", "--no-refresh")
    assert shown.returncode == 0, shown.stderr
    header = shown.stdout.splitlines()[0].split()
    assert header[:2] == ["JOB", "STEP"] and header[-1] == "STATE"
    assert rows(shown.stdout) == ["local:1", "local2:1", "local:7"]
    assert "local2:1 " in shown.stdout and "failed exit 3: No suitable lattice" in shown.stdout


@pytest.mark.usefixtures("jobs")
def test_recipe_filter(zbatch: ZbatchRun) -> None:
    shown = zbatch("status", "--no-refresh", "--recipe", "recipe-a")
    assert rows(shown.stdout) == ["local:1", "local2:1"]
    assert rows(zbatch("status", "--no-refresh", "--recipe", "recipe-b").stdout) == ["local:7"]


@pytest.mark.usefixtures("jobs")
@pytest.mark.parametrize("command", ["status", "cancel", "logs"])
def test_a_bare_id_two_profiles_share_is_refused_naming_both(
    zbatch: ZbatchRun, command: str
) -> None:
    refused = zbatch(command, "1")
    assert refused.returncode == 2
    line = one_line_error(refused)
    assert "job 1 is ambiguous" in line and "local:1" in line and "local2:1" in line


@pytest.mark.usefixtures("jobs")
def test_profile_and_id_name_one_job(zbatch: ZbatchRun) -> None:
    shown = zbatch("status", "--no-refresh", "local2:1")
    assert shown.returncode == 0, shown.stderr
    assert rows(shown.stdout) == ["local2:1"]
    assert "    workdir: /w" in shown.stdout
    assert rows(zbatch("status", "--no-refresh", "7").stdout) == ["local:7"]  # unambiguous
    one_line_error(zbatch("status", "--no-refresh", "local:9"))


@pytest.mark.usefixtures("jobs")
def test_cancelling_an_ended_job_says_so_and_fails(zbatch: ZbatchRun) -> None:
    refused = zbatch("cancel", "local:7")
    assert refused.returncode == 2
    assert "cancel requested" not in refused.stdout
    assert "local:7 already ended (succeeded exit 0)" in one_line_error(refused)
    as_json = zbatch("cancel", "local2:1", "--json")
    assert as_json.returncode == 2
    data = json.loads(as_json.stdout)
    assert data["schema"] == "zbatch.cancel/1"
    assert (data["cancelled"], data["already_ended"]) == ([], ["local2:1"])
    assert set(data["jobs"][0]) == JOB_KEYS


@pytest.mark.usefixtures("jobs")
def test_json_is_documented_public_and_iso_timed(zbatch: ZbatchRun) -> None:
    data = json.loads(zbatch("status", "--no-refresh", "--json").stdout)
    assert data["schema"] == "zbatch.jobs/1"
    assert [j["id"] for j in data["jobs"]] == ["local:1", "local2:1", "local:7"]
    for job in data["jobs"]:
        assert set(job) == JOB_KEYS  # no claimed_by, reported, cancel_requested ...
        assert ISO_UTC.fullmatch(job["submitted_at"]) and ISO_UTC.fullmatch(job["updated_at"])
    assert data["jobs"][0]["submitted_at"] == "2026-11-30T00:55:00Z"
    documented = (Path(__file__).resolve().parents[3] / "docs" / "json.md").read_text()
    for key in JOB_KEYS:
        assert f"| `{key}` |" in documented, key


def test_profiles_list_json_carries_its_schema(zbatch: ZbatchRun) -> None:
    data = json.loads(zbatch("profiles", "list", "--json").stdout)
    assert data["schema"] == "zbatch.profiles/1"
    assert {"name", "path", "scheduler", "connection", "error"} <= set(data["profiles"][0])
