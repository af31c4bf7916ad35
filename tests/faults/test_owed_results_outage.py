"""Results kept in a job's outbox through a RabbitMQ outage: every one delivered, once.

Issue 11, item 1. Steps run the generic wrapper on real Slurm; RabbitMQ stops while their
tools run, so every wrapper gives up (ZBATCH_SEND_RETRY_S is small) and leaves `success`
and `completed` in its outbox. Two dispatchers, each with its own queues and state folder,
live through the same outage:

- "stays-up" keeps running, with `[rabbit] reconnect = 5` (the setting that lost 5 of 10
  steps' `success` in a 60 s outage: its first send failed and nothing tried again);
- "restarted" has the default settings and is restarted twice during the outage: at once
  (the new process meets the outage from its start, settles the jobs and records what they
  owe), and again once all is recorded (the third process must deliver from the ledger).

When RabbitMQ is back, every step's `starting`, `success` and `completed` must arrive
exactly once (counted by step), with nothing lost and nothing on `failure`.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.faults.support import (
    JOBS_ROOT,
    SERVICES,
    Dispatcher,
    keys,
    slurm_jobs_by_marker,
    wait_until,
)
from zbatch.model.jobs import JobPaths, result_record_path
from zbatch.model.message import StepMessage, start_messages
from zbatch.model.recipe import Recipe
from zbatch.prepare.job_files import job_tag
from zbatch.service.ledger import Ledger
from zbatch.transport.admin import setup_broker
from zbatch.transport.pika import PikaTransport

pytestmark = [pytest.mark.faults, pytest.mark.rabbitmq, pytest.mark.slurm]

STEPS = 10  # per dispatcher
TOOL_S = 15  # how long each step's tool runs: it ends while the broker is down
CHANNELS = ("starting", "success", "completed", "failure")
FEW_RECONNECTS = "amqp://guest:guest@localhost:5672/%2F?reconnect=5"


@dataclass
class Side:
    """One dispatcher of the scenario, with its own queues, state folder and steps."""

    name: str
    work: Path
    state: Path
    queues: dict[str, str]
    dispatcher: Dispatcher
    messages: list[StepMessage] = field(default_factory=list)
    restarts: int = 0

    @property
    def ledger_path(self) -> Path:
        return self.state / "ledger.sqlite"

    def owed(self) -> dict[str, list[str]]:
        """What each step of this side owes, by step key (only steps that owe something)."""
        if not self.ledger_path.exists():
            return {}
        ledger = Ledger(self.ledger_path)
        try:
            return {e.key: e.owes.channels for e in ledger.find() if e.owes}
        finally:
            ledger.close()

    def restart(self) -> None:
        """A crash and a restart: SIGKILL (a graceful stop may wait out a reconnect)."""
        self.dispatcher.kill(signal.SIGKILL)
        self.dispatcher.start()
        self.restarts += 1

    def log_tail(self) -> str:
        return self.dispatcher.log.read_text()[-4000:]


def make_side(
    name: str, admin: PikaTransport, tmp_path: Path, env: dict[str, str] | None = None
) -> Side:
    base = f"zbatch-test.{uuid.uuid4().hex[:8]}"
    queues = {"work": base, **{c: f"{base}.{c}" for c in CHANNELS}}
    setup_broker(admin, list(queues.values()), quorum=True)
    state = tmp_path / f"state-{name}"
    dispatcher = Dispatcher(
        "slurm-local",
        base,
        tmp_path / f"{name}.log",
        {"ZBATCH_STATE_DIR": str(state), "ZBATCH_SEND_RETRY_S": "2", **(env or {})},
    )
    # A folder of its own: pytest reuses tmp_path names in later sessions.
    work = JOBS_ROOT / f"{tmp_path.name}-{base.rpartition('.')[2]}" / name
    return Side(name, work, state, queues, dispatcher)


def step_messages(side: Side) -> list[StepMessage]:
    out = []
    for index in range(STEPS):
        node = {
            "queue": side.queues["work"],
            "parameters": {
                "wrapper": "generic",
                "workingdir": str(side.work / f"step{index}"),
                "cluster": {"time_limit": "0:10:00"},
            },
            "job_parameters": {"command": ["sleep", str(TOOL_S)]},
            "output": {c: n for n, c in enumerate(CHANNELS, 2)},
        }
        nodes = {str(n): {"queue": side.queues[c]} for n, c in enumerate(CHANNELS, 2)}
        recipe = Recipe.from_json({"1": node, **nodes, "start": [[1, {"i": index}]]})
        out.append(start_messages(recipe)[0])
    return out


def services(action: str) -> None:
    done = subprocess.run(
        [str(SERVICES / action), "rabbitmq"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


@contextlib.contextmanager
def rabbitmq_down_for(seconds: float) -> Iterator[float]:
    """Stop RabbitMQ; start it again `seconds` after it stopped, whatever happens inside."""
    services("down")
    stopped = time.monotonic()
    try:
        yield stopped
        time.sleep(max(0.0, stopped + seconds - time.monotonic()))
    finally:
        services("up")


def received(admin: PikaTransport, side: Side) -> dict[str, Counter[str]]:
    """Per channel, how many messages arrived for each step (by recipe run ID)."""
    out: dict[str, Counter[str]] = {}
    for channel in CHANNELS:
        bodies = []
        while (delivery := admin.get(side.queues[channel])) is not None:
            bodies.append(json.loads(delivery.body))
            admin.ack(delivery)
        out[channel] = Counter(str(b["environment"]["ID"]) for b in bodies)
    return out


def result_records(side: Side) -> list[dict[str, object]]:
    """What each step's wrapper wrote about its run (`results_sent`: did it send them?)."""
    out = []
    for index, message in enumerate(side.messages):
        paths = JobPaths(side.work / f"step{index}", job_tag(message))
        out.append(json.loads(Path(result_record_path(str(paths.recipewrapper))).read_text()))
    return out


def run_outage(tmp_path: Path, outage_s: float) -> dict[str, dict[str, int]]:
    admin = PikaTransport()
    admin.connect()
    sides = [
        make_side("stays-up", admin, tmp_path, {"ZBATCH_RABBIT_URL": FEW_RECONNECTS}),
        make_side("restarted", admin, tmp_path),
    ]
    restarted = sides[1]
    try:
        for side in sides:
            side.messages = step_messages(side)
            side.dispatcher.start()
            for message in side.messages:
                admin.send_step(message)
        # Every tool is running (its `starting` went out): now the broker goes away.
        wait_until(
            lambda: all(admin.queue_depth(s.queues["starting"]) == STEPS for s in sides),
            180,
            "every step's job to start",
        )
        markers = slurm_jobs_by_marker()  # finished jobs leave squeue after a while
        owed_in_outage: dict[str, int] = {}
        with rabbitmq_down_for(outage_s) as stopped:
            restarted.restart()
            # The tools end, their wrappers give up and keep their results; each dispatcher
            # records in its ledger what every step owes.
            wait_until(
                lambda: all(
                    len(s.owed()) == STEPS and all("success" in c for c in s.owed().values())
                    for s in sides
                ),
                max(30.0, outage_s - 10),
                "every step's results to be owed during the outage",
            )
            owed_in_outage = {s.name: len(s.owed()) for s in sides}
            restarted.restart()  # the third process holds nothing but the ledger
            assert time.monotonic() - stopped < outage_s, "the outage ended too soon"
        wait_until(
            lambda: all(not s.owed() for s in sides),
            240,
            "every owed result to be delivered after the outage",
        )
        time.sleep(3)  # a few more track cycles: nothing may be sent twice
        for side in sides:
            assert side.dispatcher.alive(), side.log_tail()
            side.dispatcher.stop()
        counts: dict[str, dict[str, int]] = {}
        for side in sides:
            got = received(admin, side)
            ids = [m.recipe_id for m in side.messages]
            records = result_records(side)
            counts[side.name] = {
                "published": len(side.messages),
                "jobs": sum(markers[k] for k in keys(side.messages)),
                "owed in outage": owed_in_outage[side.name],
                "kept by wrapper": sum(r.get("results_sent") is False for r in records),
                "results": sum(got["success"].values()),
                "duplicates": sum(max(0, got[c][i] - 1) for c in CHANNELS for i in ids),
                "lost": sum(
                    got[c][i] == 0 for c in ("starting", "success", "completed") for i in ids
                ),
                "failures": sum(got["failure"].values()),
                "restarts": side.restarts,
            }
        print(f"outage {outage_s:g} s: {counts}")
        for side in sides:
            c = counts[side.name]
            assert c["jobs"] == STEPS and c["kept by wrapper"] == STEPS, (c, side.log_tail())
            assert c["owed in outage"] == STEPS, (c, side.log_tail())
            assert c["results"] == STEPS and c["duplicates"] == 0 and c["lost"] == 0, (
                c,
                side.log_tail(),
            )
            assert c["failures"] == 0, c
        return counts
    finally:
        for side in sides:
            with contextlib.suppress(Exception):
                side.dispatcher.stop()
            for name in side.queues.values():
                for queue in (name, f"dlq.{name}"):
                    with contextlib.suppress(Exception):  # best-effort clean-up
                        admin.delete_queue(queue)
        admin.disconnect()


@pytest.mark.timeout(600)
def test_results_kept_through_a_60_s_outage_are_delivered_once(tmp_path: Path) -> None:
    run_outage(tmp_path, 60)


@pytest.mark.timeout(900)
def test_results_kept_through_a_5_minute_outage_are_delivered_once(tmp_path: Path) -> None:
    run_outage(tmp_path, 300)
