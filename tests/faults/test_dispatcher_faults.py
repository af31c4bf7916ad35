"""The dispatcher against real RabbitMQ and Slurm while things break.

Every step must be submitted exactly once (counted in Slurm by the marker each job carries),
and nothing may be lost: what is not submitted is in the dead-letter queue with a reason.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

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
from zbatch.service.ledger import Ledger
from zbatch.transport.base import REASON_HEADER

pytestmark = [pytest.mark.faults, pytest.mark.rabbitmq, pytest.mark.slurm]


def submitted_keys(state_dir: Path) -> dict[str, str | None]:
    ledger = Ledger(state_dir / "ledger.sqlite")
    try:
        return {e.key: e.job_id for e in ledger.find()}
    finally:
        ledger.close()


def wait_for_all_submitted(queues: Queues, state_dir: Path, expected: list[str], what: str) -> None:
    wait_until(
        lambda: (
            queues.depth(queues.work) == 0
            and all(submitted_keys(state_dir).get(k) for k in expected)
        ),
        240,
        what,
    )


def assert_exactly_once(expected: list[str]) -> None:
    counts = slurm_jobs_by_marker()
    missing = [k for k in expected if counts[k] == 0]
    doubled = [k for k in expected if counts[k] > 1]
    assert not missing, f"{len(missing)} steps never reached Slurm"
    assert not doubled, f"{len(doubled)} steps were submitted more than once"


def test_sigkill_three_times_submits_every_step_exactly_once(
    queues: Queues, workdir: Path, tmp_path: Path, state_dir: Path
) -> None:
    messages = steps(queues, 200, workdir)
    for message in messages:
        queues.transport.send_step(message)
    dispatcher = Dispatcher("slurm-local", queues.work, tmp_path / "dispatcher.log")
    rng = random.Random(20261129)  # noqa: S311 - reproducible kill points, not security
    for _ in range(3):
        dispatcher.start()
        # Let it get going, then kill it mid-flight: each kill lands somewhere in the loop.
        wait_until(
            lambda: len(submitted_keys(state_dir)) > 0 or not dispatcher.alive(),
            60,
            "the dispatcher to start submitting",
            every=0.05,
        )
        time.sleep(rng.uniform(0.05, 0.6))
        assert dispatcher.kill() == -9
    dispatcher.start()
    expected = keys(messages)
    wait_for_all_submitted(queues, state_dir, expected, "every step to be submitted")
    dispatcher.stop()
    assert_exactly_once(expected)
    assert queues.depth(f"dlq.{queues.work}") == 0
    notices = queues.drain(queues.submitted)
    assert {n[1]["recipe-pointer"] for n in notices} == {2}
    assert {n[1]["payload"]["scheduler"] for n in notices} == {"slurm"}
    assert len({n[1]["payload"]["jobid"] for n in notices}) == 200
    # Published once each: the notice and the ack commit together, so a kill between them
    # leaves both undone and the redelivery sends the one notice.
    time.sleep(2)
    notices += queues.drain(queues.submitted)
    assert len(notices) == 200, f"{len(notices) - 200} duplicate job_submitted notices"


def test_sigkill_during_sbatch_is_recovered_from_the_job_marker(
    queues: Queues, workdir: Path, tmp_path: Path, state_dir: Path
) -> None:
    """A slow site `sbatch` wrapper makes every kill land while sbatch runs: the killed
    dispatcher never learns the job id, but the orphaned sbatch still creates the job."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    real = subprocess.run(["which", "sbatch"], capture_output=True, text=True, check=True)
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\nsleep 0.5\nexec {real.stdout.strip()} "$@"\n')
    (bin_dir / "sbatch").chmod(0o755)
    messages = steps(queues, 12, workdir)
    for message in messages:
        queues.transport.send_step(message)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    # One submission at a time, so that each kill lands inside an sbatch.
    dispatcher = Dispatcher("slurm-local", queues.work, tmp_path / "dispatcher.log", env, workers=1)
    log_path = tmp_path / "dispatcher.log"
    log_path.touch()
    for _ in range(3):
        before = log_path.read_text().count("submitted to slurm-local")
        dispatcher.start()
        wait_until(
            lambda n=before: log_path.read_text().count("submitted to slurm-local") > n,
            90,
            "a submission by this run",
            every=0.05,
        )
        time.sleep(0.75)  # mid-way through the next sbatch
        assert dispatcher.kill() == -9
    dispatcher.start()
    expected = keys(messages)
    wait_until(
        lambda: all(submitted_keys(state_dir).get(k) for k in expected),
        180,
        "every step, including the interrupted ones",
    )
    dispatcher.stop()
    assert_exactly_once(expected)
    log = (tmp_path / "dispatcher.log").read_text()
    assert log.count("recovered the job id") >= 1, log[-3000:]


def test_unreachable_cluster_past_its_outage_budget_dead_letters_then_replay_succeeds(
    queues: Queues, workdir: Path, tmp_path: Path, state_dir: Path
) -> None:
    """An unreachable login node is waited out (backpressure) for the profile's outage
    budget, here 5 s; then the step in hand goes to the DLQ with the reason, while the others
    wait in the queue; once sshd is back and the DLQ replayed, every step runs once."""
    shipped = Path(__file__).resolve().parents[2] / "site-configs" / "slurm-over-ssh.yaml"
    profile = yaml.safe_load(shipped.read_text())
    profile["outage_budget_s"] = 5
    profile_path = tmp_path / "slurm-over-ssh-short-budget.yaml"
    profile_path.write_text(yaml.safe_dump(profile))
    messages = steps(queues, 5, workdir)
    stop = subprocess.run(
        [str(Path(__file__).resolve().parents[2] / "scripts/services/down"), "sshd"],
        capture_output=True,
        check=False,
    )
    assert stop.returncode == 0
    try:
        dispatcher = Dispatcher(str(profile_path), queues.work, tmp_path / "dispatcher.log")
        dispatcher.start()
        for message in messages:
            queues.transport.send_step(message)
        dlq = f"dlq.{queues.work}"
        wait_until(lambda: queues.depth(dlq) >= 1, 180, "the held step in the DLQ")
        letters = []
        while (d := queues.transport.get(dlq)) is not None:
            letters.append(d)
        reasons = {str(d.headers[REASON_HEADER]) for d in letters}
        for d in letters:
            queues.transport.nack(d, requeue=True)
        assert all("outage budget" in r and "127.0.0.1:2222" in r for r in reasons), reasons
        # Backpressure: the others were held back, one at a time in hand, none submitted.
        assert len(letters) < 5
        assert not any(submitted_keys(state_dir).values())
    finally:
        restart("sshd")
    replay = subprocess.run(
        [sys.executable, "-m", "zbatch", "dlq", "replay", queues.work],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "replayed" in replay.stdout, replay.stderr
    expected = keys(messages)
    wait_until(
        lambda: all(submitted_keys(state_dir).get(k) for k in expected), 120, "the replayed steps"
    )
    dispatcher.stop()
    assert_exactly_once(expected)


HOSTILE = [
    b"",
    b"{",
    b"null",
    b"[]",
    b'"a string"',
    b"\xff\xfe\xfd",
    b"{}",
    b'{"recipe": 5}',
    b'{"recipe": {}, "recipe-pointer": 1}',
    b'{"recipe": {"1": {}, "start": [[1, []]]}, "recipe-pointer": 7}',
    b'{"recipe": {"1": {"output": 1}, "start": [[1, []]]}, "recipe-pointer": 1}',
    b'{"recipe": {"1": {}, "start": [[1, []]]}, "recipe-pointer": "1"}',
    b"x" * (9 * 1024 * 1024),
]


def hostile_step(field: str, value: object, queues: Queues, workdir: Path) -> bytes:
    message = steps(queues, 1, workdir)[0]
    params = message.step["parameters"]
    if field.startswith("cluster."):
        params["cluster"][field.removeprefix("cluster.")] = value
    else:
        params[field] = value
    return json.dumps(message.to_body()).encode()


HOSTILE_FIELDS: list[tuple[str, object]] = [
    ("workingdir", "/tmp/$(touch /tmp/zbatch-canary-faults)"),
    ("workingdir", "/tmp/../etc"),
    ("workingdir", "relative"),
    ("cluster.job_name", "a;touch /tmp/zbatch-canary-faults"),
    ("cluster.partition", "debug\n#SBATCH --uid=0"),
    ("cluster.cpus_per_task", 1000),
    ("cluster.time_limit", "1000:00:00"),
    ("cluster.environment", {"$(id)": "x"}),
    ("cluster.environment", {"A": "x\u0000"}),
    ("cluster.qos", "`reboot`"),
    ("cluster.array", "1-3;id"),
    ("cluster.unknown_key", 1),
    ("wrapper", "no-such-wrapper"),
    ("recipewrapper", "/tmp/`id`"),
    ("cluster_queue", "nonexistent"),
    ("cluster.memory_per_node", "1P"),
    ("cluster.exclusive", "perhaps"),
]


def test_thirty_malformed_or_hostile_messages_are_dead_lettered(
    queues: Queues, workdir: Path, tmp_path: Path
) -> None:
    canary = Path("/tmp/zbatch-canary-faults")
    canary.unlink(missing_ok=True)
    bodies = [(b, {"workflows-recipe": True}) for b in HOSTILE]
    bodies += [
        (hostile_step(f, v, queues, workdir), {"workflows-recipe": True}) for f, v in HOSTILE_FIELDS
    ]
    bodies.append((json.dumps(steps(queues, 1, workdir)[0].to_body()).encode(), {}))  # no header
    assert len(bodies) >= 30
    for body, headers in bodies:
        queues.transport.publish(queues.work, body, headers)
    good = steps(queues, 1, workdir)[0]
    queues.transport.send_step(good)
    dispatcher = Dispatcher("slurm-local", queues.work, tmp_path / "dispatcher.log")
    dispatcher.start()
    dlq = f"dlq.{queues.work}"
    wait_until(
        lambda: queues.depth(dlq) == len(bodies) and queues.depth(queues.work) == 0,
        120,
        "every bad message in the DLQ",
    )
    assert dispatcher.alive()
    dispatcher.stop()
    letters: list[tuple[dict[str, object], bytes]] = []
    while (d := queues.transport.get(dlq)) is not None:
        letters.append((d.headers, d.body))
        queues.transport.ack(d)
    assert all(h.get(REASON_HEADER) for h, _ in letters)
    assert sorted(b for _, b in letters) == sorted(b for b, _ in bodies)
    assert_exactly_once(keys([good]))
    assert not canary.exists()


def test_two_replicas_never_submit_a_step_twice(
    queues: Queues, workdir: Path, tmp_path: Path, state_dir: Path
) -> None:
    messages = steps(queues, 100, workdir)
    for message in messages + messages:  # every step delivered twice
        queues.transport.send_step(message)
    replicas = [Dispatcher("slurm-local", queues.work, tmp_path / f"d{i}.log") for i in range(2)]
    for replica in replicas:
        replica.start()
    expected = keys(messages)
    wait_for_all_submitted(queues, state_dir, expected, "both replicas to drain the queue")
    for replica in replicas:
        replica.stop()
    assert_exactly_once(expected)
    logs = "".join((tmp_path / f"d{i}.log").read_text() for i in range(2))
    assert logs.count("submitted to slurm-local") == 100
