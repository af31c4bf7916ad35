"""A dispatcher process under test, the broker queues it uses, and Slurm job counting."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from zbatch.model.message import StepMessage, start_messages, step_key
from zbatch.model.recipe import Recipe
from zbatch.transport.admin import setup_broker
from zbatch.transport.pika import PikaTransport

SERVICES = Path(__file__).resolve().parents[2] / "scripts" / "services"
JOBS_ROOT = Path("/tmp/zbatch-fault-tests")


class Dispatcher:
    """`zbatch dispatcher` as a real process, restartable and killable."""

    def __init__(
        self,
        profile: str,
        queue: str,
        log: Path,
        env: dict[str, str] | None = None,
        workers: int = 8,
    ) -> None:
        self.env = {**os.environ, **(env or {})}
        self.argv = [
            sys.executable,
            "-m",
            "zbatch",
            "-v",
            "dispatcher",
            "--profile",
            profile,
            "--transport",
            "pika",
            "--queue",
            queue,
            "--workers",
            str(workers),
        ]
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=log, env=self.env)

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=60)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int:
        return (
            self.kill(signal.SIGTERM)
            if self.alive()
            else (self.proc.returncode if self.proc else 0)
        )


class Queues:
    """A uniquely named work queue (with its DLQ) and an output queue, removed afterwards."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:8]
        self.work = f"zbatch-test.{tag}"
        self.submitted = f"zbatch-test.{tag}.submitted"
        self.failed = f"zbatch-test.{tag}.failed"
        self.transport = PikaTransport()
        self.transport.connect()
        setup_broker(self.transport, [self.work, self.submitted, self.failed], quorum=True)

    def depth(self, queue: str) -> int:
        return self.transport.queue_depth(queue)

    def drain(self, queue: str) -> list[tuple[dict[str, Any], Any]]:
        out = []
        while (delivery := self.transport.get(queue)) is not None:
            out.append((delivery.headers, json.loads(delivery.body)))
            self.transport.ack(delivery)
        return out

    def close(self) -> None:
        for queue in (self.work, self.submitted, self.failed):
            for name in (queue, f"dlq.{queue}"):
                with contextlib.suppress(Exception):  # best-effort clean-up after a test
                    self.transport.delete_queue(name)
        self.transport.disconnect()


def steps(
    queues: Queues,
    count: int,
    workdir: Path,
    commands: list[str] | None = None,
) -> list[StepMessage]:
    """`count` one-step recipes addressed to the test's work queue."""
    out = []
    for index in range(count):
        node = {
            "queue": queues.work,
            "parameters": {
                "cluster": {"commands": commands or ["true"], "time_limit": "0:05:00"},
                "workingdir": str(workdir / f"step{index}"),
            },
            "output": {"job_submitted": 2, "failure": 3},
        }
        recipe = Recipe.from_json(
            {
                "1": node,
                "2": {"queue": queues.submitted},
                "3": {"queue": queues.failed},
                "start": [[1, {"i": index}]],
            }
        )
        out.append(start_messages(recipe)[0])
    return out


def slurm_jobs_by_marker() -> Counter[str]:
    """How many Slurm jobs carry each zbatch marker (the step key) in their comment."""
    out = subprocess.run(
        ["squeue", "-h", "-t", "all", "-o", "%i|%k"], capture_output=True, text=True, check=True
    ).stdout
    return Counter(
        line.split("|", 1)[1].removeprefix("zbatch:")
        for line in out.splitlines()
        if "|zbatch:" in line
    )


def keys(messages: list[StepMessage]) -> list[str]:
    return [step_key(m) for m in messages]


def wait_until(condition: Any, timeout: float, what: str, every: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


def restart(service: str) -> None:
    done = subprocess.run(
        [str(SERVICES / "restart"), service],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
