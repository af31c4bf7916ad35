"""Notices sent once, and no queue can stall the dispatcher (issue 11, items 3 and 4).

The real `zbatch dispatcher` process against the real RabbitMQ and Slurm. Jobs are submitted
on hold (they never run: only submission and notices are measured) and cancelled at the end,
by their ids, so other work on the cluster is left alone.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.faults.support import (
    Dispatcher,
    Queues,
    keys,
    restart,
    slurm_jobs_by_marker,
    steps,
    wait_until,
)
from zbatch.model.message import StepMessage, start_messages, step_key
from zbatch.model.profiles import load_profile
from zbatch.model.recipe import Recipe
from zbatch.service.ledger import Ledger, LedgerEntry
from zbatch.transport.base import ORIGIN_HEADER, REASON_HEADER

pytestmark = [pytest.mark.faults, pytest.mark.rabbitmq, pytest.mark.slurm]


@pytest.fixture()
def held_profile(tmp_path: Path, state_dir: Path) -> Iterator[str]:
    """slurm-local with every job submitted on hold; the test's jobs are cancelled after."""
    profile = load_profile("slurm-local")
    profile = profile.model_copy(update={"extra_directives": [*profile.extra_directives, "--hold"]})
    path = tmp_path / "slurm-local-held.yaml"
    path.write_text(yaml.safe_dump(profile.model_dump(mode="json", exclude={"source"})))
    yield str(path)
    ids = [e.job_id for e in ledger_entries(state_dir).values() if e.job_id]
    for start in range(0, len(ids), 200):
        subprocess.run(["scancel", *ids[start : start + 200]], capture_output=True, check=False)


def ledger_entries(state_dir: Path) -> dict[str, LedgerEntry]:
    if not (state_dir / "ledger.sqlite").exists():
        return {}
    ledger = Ledger(state_dir / "ledger.sqlite")
    try:
        return {e.key: e for e in ledger.find()}
    finally:
        ledger.close()


def unacked(queue: str) -> int | None:
    """Messages delivered and not yet acknowledged (rabbitmqctl), None if it cannot tell."""
    ctl = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    try:
        done = subprocess.run(
            [ctl, "-q", "list_queues", "name", "messages_unacknowledged"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in done.stdout.splitlines():
        name, _, count = line.rpartition("\t")
        if name == queue:
            return int(count)
    return None


def notice_counts(notices: list[tuple[dict[str, Any], Any]]) -> Counter[str]:
    """job_submitted notices per recipe run (each test recipe has one step)."""
    return Counter(body["environment"]["ID"] for _, body in notices)


def undeliverable_step(queues: Queues, workdir: Path, index: int, absent: str) -> StepMessage:
    node = {
        "queue": queues.work,
        "parameters": {
            "cluster": {"commands": ["true"], "time_limit": "0:05:00"},
            "workingdir": str(workdir / f"bad{index}"),
        },
        "output": {"job_submitted": 2},
    }
    recipe = Recipe.from_json({"1": node, "2": {"queue": absent}, "start": [[1, {"bad": index}]]})
    return start_messages(recipe)[0]


def test_undeclared_notice_queue_never_stalls_the_dispatcher(
    queues: Queues, workdir: Path, tmp_path: Path, state_dir: Path, held_profile: str
) -> None:
    """Ten steps (more than the 8 prefetch slots, which used to stall the dispatcher for
    good) name an undeclared job_submitted queue, in the middle of a burst of 1000 steps
    whose notices go to a declared queue."""
    absent = f"{queues.work}.undeclared"
    good = steps(queues, 1000, workdir)
    bad = [undeliverable_step(queues, workdir, i, absent) for i in range(10)]
    for message in good[:500] + bad + good[500:]:
        queues.transport.send_step(message)
    dispatcher = Dispatcher(held_profile, queues.work, tmp_path / "dispatcher.log")
    dispatcher.start()
    everything = keys(good + bad)
    wait_until(
        lambda: (
            queues.depth(queues.work) == 0
            and queues.depth(queues.submitted) == 1000
            and queues.depth(f"dlq.{queues.work}") == 10
            and all(ledger_entries(state_dir).get(k, None) for k in everything)
        ),
        600,
        "1010 steps submitted, 1000 notices and 10 dead letters",
        every=1.0,
    )
    assert dispatcher.alive(), (tmp_path / "dispatcher.log").read_text()[-3000:]
    assert unacked(queues.work) == 0  # while the dispatcher still holds its connection
    dispatcher.stop()
    assert queues.depth(queues.work) == 0  # nothing it held came back when it left

    entries = ledger_entries(state_dir)
    jobs = slurm_jobs_by_marker()
    assert [k for k in everything if jobs[k] != 1] == []  # every step exactly one job
    notices = queues.drain(queues.submitted)
    counts = notice_counts(notices)
    assert len(notices) == 1000 and set(counts.values()) == {1}
    assert set(counts) == {m.recipe_id for m in good}
    assert {str(n[1]["payload"]["jobid"]) for n in notices} == {
        entries[step_key(m)].job_id for m in good
    }
    letters = queues.drain(f"dlq.{queues.work}")
    assert len(letters) == 10
    by_job = {entries[step_key(m)].job_id: m for m in bad}
    for headers, body in letters:
        job_id = str(body["payload"]["jobid"])  # a number when Slurm's id is one
        assert job_id in by_job
        assert headers[REASON_HEADER] == (
            f"job_submitted notice for job {job_id} undeliverable: queue {absent!r} does not exist"
        )
        assert headers[ORIGIN_HEADER] == absent  # a replay delivers it once it exists
    log = (tmp_path / "dispatcher.log").read_text()
    assert "not settled" not in log


def assert_one_notice_per_step(
    queues: Queues, messages: list[StepMessage], entries: dict[str, LedgerEntry]
) -> str:
    """Every step: one Slurm job and one job_submitted notice naming it. Returns the counts."""
    expected = keys(messages)
    jobs = slurm_jobs_by_marker()
    notices = queues.drain(queues.submitted)
    counts = notice_counts(notices)
    duplicated = {run: n for run, n in counts.items() if n > 1}
    lost = [m.recipe_id for m in messages if counts[m.recipe_id] == 0]
    summary = (
        f"published {len(messages)}, jobs {sum(jobs[k] for k in expected)}, notices "
        f"{len(notices)}, duplicates {sum(n - 1 for n in duplicated.values())}, lost {len(lost)}, "
        f"DLQ {queues.depth(f'dlq.{queues.work}')}"
    )
    print(summary)
    assert [k for k in expected if jobs[k] != 1] == [], summary
    assert not duplicated and not lost, summary
    assert sorted(str(n[1]["payload"]["jobid"]) for n in notices) == sorted(
        str(entries[step_key(m)].job_id) for m in messages
    )
    assert queues.depth(f"dlq.{queues.work}") == 0
    return summary


def test_broker_restart_mid_burst_sends_every_notice_exactly_once(
    queues: Queues, workdir: Path, tmp_path: Path, state_dir: Path, held_profile: str
) -> None:
    messages = steps(queues, 300, workdir)
    for message in messages:
        queues.transport.send_step(message)
    dispatcher = Dispatcher(held_profile, queues.work, tmp_path / "dispatcher.log")
    dispatcher.start()
    wait_until(lambda: len(ledger_entries(state_dir)) >= 60, 120, "some submissions", every=0.1)
    restart("rabbitmq")
    expected = keys(messages)
    wait_until(
        lambda: (
            queues.depth(queues.work) == 0
            and all((e := ledger_entries(state_dir).get(k)) and e.job_id for k in expected)
        ),
        300,
        "every step after the broker restart",
        every=1.0,
    )
    assert dispatcher.alive(), (tmp_path / "dispatcher.log").read_text()[-3000:]
    wait_until(lambda: queues.depth(queues.submitted) >= 300, 60, "the notices")
    dispatcher.stop()
    assert queues.depth(queues.work) == 0
    assert_one_notice_per_step(queues, messages, ledger_entries(state_dir))
    jobs = slurm_jobs_by_marker()
    assert [jobs[k] for k in expected] == [1] * len(expected), "a step has no job, or two"
    log = (tmp_path / "dispatcher.log").read_text()
    assert any(s in log for s in ("lost RabbitMQ", "broker unavailable", "reconnecting")), log[
        -3000:
    ]
