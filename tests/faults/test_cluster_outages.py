"""Scheduler controllers restarted mid-burst: steps wait, nothing is refused, lost or doubled.

slurmctld is stopped for 10 s and for 120 s, and sge_qmaster is restarted, while a real
dispatcher works through 300 steps from RabbitMQ. Every step must end with exactly one job
and exactly one `job_submitted` notice, and nothing may reach the dead-letter queue: the
outage is far shorter than the profile's outage budget.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.faults.support import (
    SERVICES,
    Dispatcher,
    Queues,
    keys,
    slurm_jobs_by_marker,
    steps,
    wait_until,
)
from zbatch.model.message import StepMessage

pytestmark = [pytest.mark.faults, pytest.mark.rabbitmq]

STEPS = 300
SLURMCTLD_PID = Path("/run/slurmctld.pid")
QMASTER_PID = Path("/var/spool/gridengine/qmaster/qmaster.pid")
SGE_ACCOUNTING = (
    Path(os.environ.get("SGE_ROOT", "/var/lib/gridengine")) / "default/common/accounting"
)


def stop_daemon(pidfile: Path, name: str) -> None:
    """Stop a controller as an admin would for maintenance, and wait until it is gone."""
    pid = int(pidfile.read_text().split()[0])
    os.kill(pid, 15)
    wait_until(lambda: not Path(f"/proc/{pid}").exists(), 60, f"{name} to stop")


def start_services(service: str) -> None:
    done = subprocess.run(
        [str(SERVICES / "up"), service], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def notices(queues: Queues) -> Counter[int]:
    """job_submitted notices per step index (the start payload of each step's recipe)."""
    found: Counter[int] = Counter()
    jobs: Counter[str] = Counter()
    for _, body in queues.drain(queues.submitted):
        found[body["recipe"]["start"][0][1]["i"]] += 1
        jobs[str(body["payload"]["jobid"])] += 1
    assert all(n == 1 for n in jobs.values()), "two notices carry the same job id"
    return found


def burst_through_outage(
    queues: Queues,
    messages: list[StepMessage],
    profile: str,
    log: Path,
    outage: tuple[Path, str, str, float],
) -> dict[str, int]:
    """Publish, let the dispatcher start, stop the controller mid-burst, bring it back."""
    pidfile, daemon, service, down_s = outage
    for message in messages:
        queues.transport.send_step(message)
    dispatcher = Dispatcher(profile, queues.work, log, workers=2)
    dispatcher.start()
    try:
        wait_until(lambda: queues.depth(queues.submitted) >= 20, 120, "the burst to start")
        stop_daemon(pidfile, daemon)
        at_stop = queues.depth(queues.submitted)
        assert at_stop < len(messages), "the burst ended before the outage began"
        time.sleep(down_s)
        during = queues.depth(queues.submitted)
        start_services(service)
        wait_until(
            lambda: (
                queues.depth(queues.submitted) >= len(messages) and queues.depth(queues.work) == 0
            ),
            600,
            "every step's notice",
        )
        time.sleep(2)  # a duplicate notice would arrive now
    finally:
        dispatcher.stop()
    counts = notices(queues)
    dead = queues.depth(f"dlq.{queues.work}")
    missing = [i for i in range(len(messages)) if counts[i] == 0]
    doubled = [i for i in range(len(messages)) if counts[i] > 1]
    figures = {
        "published": len(messages),
        "notices at stop": at_stop,
        "notices during outage": during,
        "notices": sum(counts.values()),
        "dlq": dead,
        "lost": len(missing),
        "duplicated": len(doubled),
    }
    print(f"\n{daemon} down {down_s:g} s: {figures}")
    assert dead == 0, "a step reached the DLQ within the outage budget"
    assert not missing and not doubled, figures
    assert "Traceback" not in log.read_text()
    return figures


@pytest.mark.slurm
@pytest.mark.parametrize("down_s", [10, 120])
def test_slurmctld_stopped_mid_burst(
    down_s: float, queues: Queues, workdir: Path, tmp_path: Path
) -> None:
    messages = steps(queues, STEPS, workdir)
    outage = (SLURMCTLD_PID, "slurmctld", "slurm", down_s)
    burst_through_outage(queues, messages, "slurm-local", tmp_path / "dispatcher.log", outage)
    counts = slurm_jobs_by_marker()
    jobs = [counts[key] for key in keys(messages)]
    assert jobs.count(1) == STEPS, (
        f"{jobs.count(0)} without a job, {sum(n > 1 for n in jobs)} doubled"
    )


def sge_jobs_by_name(prefix: str) -> Counter[str]:
    """Finished SGE jobs per job name, from the accounting file (job name is field 5)."""
    found: Counter[str] = Counter()
    for line in SGE_ACCOUNTING.read_text(errors="replace").splitlines():
        fields = line.split(":")
        if len(fields) > 5 and fields[4].startswith(prefix):
            found[fields[4]] += 1
    return found


@pytest.mark.sge
def test_sge_qmaster_restarted_mid_burst(queues: Queues, workdir: Path, tmp_path: Path) -> None:
    messages = steps(queues, STEPS, workdir)
    prefix = f"o{queues.work.rsplit('.', 1)[-1]}-"
    for index, message in enumerate(messages):
        message.step["parameters"]["cluster"]["job_name"] = f"{prefix}{index}"
    outage = (QMASTER_PID, "sge_qmaster", "sge", 10)
    burst_through_outage(queues, messages, "sge-local", tmp_path / "dispatcher.log", outage)
    wait_until(lambda: len(sge_jobs_by_name(prefix)) >= STEPS, 300, "every SGE job in accounting")
    counts = sge_jobs_by_name(prefix)
    doubled = [name for name, n in counts.items() if n > 1]
    assert len(counts) == STEPS and not doubled, f"{len(doubled)} steps ran twice"
    assert json.dumps(sorted(counts)) == json.dumps(sorted(f"{prefix}{i}" for i in range(STEPS)))
