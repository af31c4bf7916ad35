"""A real python-workflows client and subscriber around zbatch, on real RabbitMQ and Slurm.

workflows starts the xia2 -> fast_ep recipe on zbatch's queue; the dispatcher submits each
step to Slurm; inside the jobs `zbatch wrap` runs the wrappers against the stand-in tools and
publishes through RabbitMQ; workflows subscribers receive and parse every onward message.
"""

from __future__ import annotations

import json
import os
import queue as queue_mod
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from workflows.recipe import Recipe as WorkflowsRecipe
from workflows.recipe.wrapper import RecipeWrapper
from workflows.transport.pika_transport import PikaTransport as WorkflowsPika

from tests.faults.support import JOBS_ROOT, SERVICES, Dispatcher, Queues
from tests.standins.make_dataset import make_dataset
from zbatch.transport.admin import setup_broker
from zbatch.transport.base import STATUS_EXCHANGE

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slurm, pytest.mark.wrappers]
REPO = Path(__file__).resolve().parents[2]
STANDINS = REPO / "tests" / "standins"


@pytest.fixture()
def queues() -> Iterator[Queues]:
    q = Queues()
    yield q
    q.close()


def chain_recipe(queues: Queues, images: str, workdir: Path) -> dict[str, Any]:
    recipe: dict[str, Any] = json.loads((REPO / "examples" / "xia2-fast_ep.json").read_text())
    for node, name in (("1", "xia2"), ("2", "fast_ep")):
        recipe[node]["queue"] = queues.work
        recipe[node]["parameters"]["workingdir"] = str(workdir / name)
        recipe[node]["output"]["job_submitted"] = 5
    recipe["1"]["job_parameters"]["xia2"]["images"] = images
    recipe["3"]["queue"] = queues.failed
    recipe["4"]["queue"] = queues.submitted + ".topaz"
    recipe["5"] = {"queue": queues.submitted}
    return recipe


def subscribe(wf: WorkflowsPika, name: str) -> queue_mod.Queue[tuple[dict[str, Any], Any]]:
    received: queue_mod.Queue[tuple[dict[str, Any], Any]] = queue_mod.Queue()
    wf.subscribe(name, lambda h, m: received.put((h, m)), acknowledgement=False)
    return received


@pytest.mark.usefixtures("state_dir")
def test_workflows_runs_xia2_fast_ep_through_zbatch_on_slurm(
    queues: Queues, tmp_path: Path
) -> None:
    topaz_queue = queues.submitted + ".topaz"
    setup_broker(queues.transport, [topaz_queue], quorum=False)
    workdir = JOBS_ROOT / tmp_path.name
    sweep = make_dataset(workdir / "images", images=20)
    env = {"PATH": f"{STANDINS}{os.pathsep}{os.environ['PATH']}"}
    dispatcher = Dispatcher("slurm-local", queues.work, tmp_path / "dispatcher.log", env)
    dispatcher.start()
    wf = WorkflowsPika()
    wf.connect()
    try:
        topaz, submitted = subscribe(wf, topaz_queue), subscribe(wf, queues.submitted)
        start = RecipeWrapper(
            recipe=WorkflowsRecipe(chain_recipe(queues, sweep, workdir)), transport=wf
        )
        start.environment = {"ID": "workflows-e2e"}
        start.start()
        header, body = topaz.get(timeout=240)
        result = RecipeWrapper(message=body, transport=wf)
        notices = [submitted.get(timeout=30) for _ in range(2)]
    finally:
        wf.disconnect()
        dispatcher.stop()
    assert header["workflows-recipe"] in (True, "True")
    assert result.recipe_path == [1, 2] and result.environment == {"ID": "workflows-e2e"}
    assert result.payload["hkl_file"].endswith("sad.hkl")
    assert result.payload["space_group"]
    jobs = [RecipeWrapper(message=m, transport=None).payload for _, m in notices]
    assert {j["scheduler"] for j in jobs} == {"slurm"} and len({j["jobid"] for j in jobs}) == 2
    assert queues.drain(queues.failed) == []


def start_sleeper(
    queues: Queues, workdir: Path, tmp_path: Path, name: str, seconds: int, output: dict[str, int]
) -> Dispatcher:
    """A dispatcher, and a one-step recipe started by workflows whose tool sleeps."""
    node = {
        "queue": queues.work,
        "output": output,
        "parameters": {
            "wrapper": "generic",
            "workingdir": str(workdir),
            "cluster": {"job_name": name},
        },
        "job_parameters": {"command": ["sleep", str(seconds)]},
    }
    recipe = {"1": node, "2": {"queue": queues.submitted}, "start": [[1, {}]]}
    dispatcher = Dispatcher("slurm-local", queues.work, tmp_path / "dispatcher.log")
    dispatcher.start()
    wf = WorkflowsPika()
    wf.connect()
    try:
        RecipeWrapper(recipe=WorkflowsRecipe(recipe), transport=wf).start()
    finally:
        wf.disconnect()
    return dispatcher


def test_heartbeats_reach_transient_status_while_the_tool_runs(
    queues: Queues, tmp_path: Path
) -> None:
    status_queue = f"{queues.work}.status"
    queues.transport.admin("declare", lambda ch: ch.queue_declare(status_queue, auto_delete=True))
    queues.transport.admin("bind", lambda ch: ch.queue_bind(status_queue, STATUS_EXCHANGE))
    workdir = JOBS_ROOT / tmp_path.name
    dispatcher = start_sleeper(queues, workdir, tmp_path, "beat", 8, {"completed": 2})
    beats: list[dict[str, Any]] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not queues.depth(queues.submitted):
        while (delivery := queues.transport.get(status_queue)) is not None:
            queues.transport.ack(delivery)
            beat = json.loads(delivery.body)
            if beat.get("task", "").startswith("generic") and beat.get("cluster_job_id"):
                beats.append(beat)
        time.sleep(0.5)
    dispatcher.stop()
    assert len([b for b in beats if b["status"] == 4]) >= 2, beats
    assert {"host", "status", "statustext", "workflows"} <= set(beats[0])


def test_results_sent_after_the_broker_comes_back(queues: Queues, tmp_path: Path) -> None:
    workdir = JOBS_ROOT / tmp_path.name
    dispatcher = start_sleeper(
        queues, workdir, tmp_path, "late", 12, {"success": 2, "completed": 2}
    )
    deadline = time.monotonic() + 60
    while not list(workdir.glob("zbatch-*.out")) and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(2)  # the tool is running and "starting" has gone out
    down = subprocess.run([str(SERVICES / "down"), "rabbitmq"], capture_output=True, check=False)
    assert down.returncode == 0
    time.sleep(15)  # the tool ends while the broker is away; the wrapper keeps retrying
    up = subprocess.run(
        [str(SERVICES / "up"), "rabbitmq"], capture_output=True, text=True, check=False
    )
    assert up.returncode == 0, up.stderr
    deadline = time.monotonic() + 120
    while queues.depth(queues.submitted) < 2 and time.monotonic() < deadline:
        time.sleep(1)
    dispatcher.stop()
    bodies = queues.drain(queues.submitted)
    assert [b["payload"] for _, b in bodies][-1] == "Finished processing"
    assert bodies[0][1]["payload"]["status"] == "Finished processing"
