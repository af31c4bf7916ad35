"""The command line over ActiveMQ: `submit`, `recipe-starter` (fed by the real workflows
StompTransport, as zocalo.go sends) and `dlq list|show|replay` with `--transport stomp`."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from workflows.transport.stomp_transport import StompTransport as WorkflowsStomp

from tests.helpers import ZbatchRun, write_recipe
from zbatch.model.message import StepMessage, is_recipe_message
from zbatch.transport.base import REASON_HEADER
from zbatch.transport.stomp import StompTransport

pytestmark = pytest.mark.activemq

STOMP_INI = Path("/var/lib/zbatch-services/stomp.ini")
STOMP = ["--transport", "stomp", "--stomp-conf", str(STOMP_INI)]


@pytest.fixture()
def tag() -> str:
    return f"zbatch-test.{uuid.uuid4().hex[:10]}"


@pytest.fixture()
def transport(tag: str) -> Iterator[StompTransport]:
    transport = StompTransport.from_conf(str(STOMP_INI))
    transport.connect()
    yield transport
    for queue in (tag, f"{tag}.go", f"dlq.{tag}", f"dlq.{tag}.go"):
        transport.purge(queue)
    transport.disconnect()


def test_submit_publishes_the_start_steps(
    tmp_path: Path, tag: str, transport: StompTransport, zbatch: ZbatchRun
) -> None:
    recipe = write_recipe(
        tmp_path / "r.json",
        {
            "1": {
                "queue": tag,
                "parameters": {"wrapper": "generic", "workingdir": str(tmp_path / "w")},
                "job_parameters": {"command": ["echo", "{who}"]},
            },
            "start": [[1, {"from": "submit"}]],
        },
    )
    done = zbatch("submit", str(recipe), "--param", "who=me", "--json", *STOMP)
    assert done.returncode == 0, done.stderr
    published = json.loads(done.stdout)
    assert published["transport"] == "stomp"
    ((sent),) = published["messages"]
    assert sent["queue"] == tag and sent["step"] == 1
    delivery = transport.receive(tag, 10)
    assert delivery is not None and is_recipe_message(delivery.headers)
    step = StepMessage.from_body(delivery.body)
    assert step.recipe_id == sent["recipe_id"] and step.payload == {"from": "submit"}
    assert step.step["job_parameters"]["command"] == ["echo", "me"]
    transport.ack(delivery)


def test_recipe_starter_serves_zocalo_go_over_stomp(
    tmp_path: Path, tag: str, transport: StompTransport, zbatch: ZbatchRun
) -> None:
    saved = dict(WorkflowsStomp.defaults)
    WorkflowsStomp.load_configuration_file(str(STOMP_INI))
    go = WorkflowsStomp()
    go.connect()
    try:
        custom = {"1": {"queue": tag, "parameters": {"dc": "{ispyb_dcid}"}}, "start": [[1, []]]}
        # As zocalo.go sends a request: a plain JSON message on processing_recipe.
        go.send(
            f"{tag}.go",
            {"custom_recipe": custom, "parameters": {"ispyb_dcid": "42"}},
            headers={"zocalo.go.user": "gda2", "zocalo.go.host": "ws001"},
        )
        go.send(f"{tag}.go", "not a request")
    finally:
        go.disconnect()
        WorkflowsStomp.defaults.clear()
        WorkflowsStomp.defaults.update(saved)
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    done = zbatch(
        "recipe-starter",
        "--recipe-dir",
        str(recipes),
        "--queue",
        f"{tag}.go",
        "--max-messages",
        "2",
        *STOMP,
    )
    assert done.returncode == 0, done.stderr
    started = transport.receive(tag, 10)
    assert started is not None
    step = StepMessage.from_body(started.body)
    assert step.pointer == 1 and step.step["parameters"] == {"dc": "42"}
    transport.ack(started)
    dead = transport.receive(f"dlq.{tag}.go", 10)
    assert dead is not None and "must be a JSON object" in dead.headers[REASON_HEADER]
    transport.ack(dead)


def test_dlq_list_show_and_replay_on_the_command_line(
    tag: str, transport: StompTransport, zbatch: ZbatchRun
) -> None:
    transport.publish(tag, b'{"a": 1}', {"workflows-recipe": True})
    delivery = transport.receive(tag, 10)
    assert delivery is not None
    transport.dead_letter(delivery, "scheduler refused: bad partition")
    listed = zbatch("dlq", "list", "--queue", tag, "--json", *STOMP)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["queues"] == [{"queue": tag, "dlq": f"dlq.{tag}", "count": 1}]
    shown = zbatch("dlq", "show", tag, "--json", *STOMP)
    assert shown.returncode == 0, shown.stderr
    (letter,) = json.loads(shown.stdout)["letters"]
    assert letter["origin"] == tag and letter["reason"] == "scheduler refused: bad partition"
    assert letter["body"] == '{"a": 1}' and letter["dead_lettered_at"].endswith("Z")
    replayed = zbatch("dlq", "replay", tag, *STOMP)
    assert replayed.returncode == 0, replayed.stderr
    assert f"replayed 1 message(s) from dlq.{tag}" in replayed.stdout
    back = transport.receive(tag, 10)
    assert back is not None and back.body == b'{"a": 1}' and is_recipe_message(back.headers)
    transport.ack(back)
    assert transport.queue_depth(f"dlq.{tag}") == 0


def test_a_wrong_stomp_conf_is_one_line(tmp_path: Path, zbatch: ZbatchRun) -> None:
    bad = tmp_path / "stomp.ini"
    bad.write_text("[stomp]\nport = many\n")
    done = zbatch("dlq", "list", "--transport", "stomp", "--stomp-conf", str(bad))
    assert done.returncode != 0 and "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "port must be a number" in line
