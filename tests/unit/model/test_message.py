"""The step envelope is byte-compatible with python-workflows' RecipeWrapper, both ways."""

from __future__ import annotations

import json
from typing import Any

import pytest
from workflows.recipe.wrapper import RecipeWrapper

from zbatch.errors import RecipeError
from zbatch.model.message import StepMessage, is_recipe_message, start_messages
from zbatch.model.recipe import Recipe
from zbatch.transport.base import Delivery, Transport

RECIPE: dict[str, Any] = {
    "1": {
        "queue": "cluster.submission",
        "parameters": {"wrapper": "generic"},
        "output": {"success": [2], "failure": 3, "job_submitted": 4},
    },
    "2": {"queue": "downstream", "transport-delay": 5, "output": [3]},
    "3": {"queue": "errors"},
    "4": {"queue": "jobs", "exchange": "results"},
    "start": [[1, {"dcid": 42}]],
}


class Recorder:
    """Stands in for a workflows transport: records what RecipeWrapper sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any, dict[str, Any], dict[str, Any]]] = []

    def send(self, destination: str, message: Any, headers: dict[str, Any], **kw: Any) -> None:
        self.sent.append((destination, message, headers, kw))

    def broadcast(self, destination: str, message: Any, headers: dict[str, Any], **kw: Any) -> None:
        self.sent.append(("topic:" + destination, message, headers, kw))


class Capture(Transport):
    """A zbatch transport that records publishes."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, dict[str, Any], dict[str, Any]]] = []

    def connect(self) -> None: ...
    def disconnect(self) -> None: ...

    def publish(
        self,
        queue: str,
        body: bytes,
        headers: dict[str, Any],
        *,
        exchange: str = "",
        delay: float | None = None,
    ) -> None:
        self.published.append((queue, body, headers, {"exchange": exchange, "delay": delay}))

    def broadcast(
        self,
        exchange: str,
        body: bytes,
        headers: dict[str, Any],
        expiration_s: float | None = None,  # noqa: ARG002 - Transport.broadcast signature
    ) -> None:
        self.published.append(("topic:" + exchange, body, headers, {}))

    def receive(self, _queue: str, _timeout: float) -> Delivery | None:
        return None

    def ack(self, delivery: Delivery) -> None: ...
    def nack(self, delivery: Delivery, requeue: bool = True) -> None: ...
    def dead_letter(self, delivery: Delivery, reason: str) -> None: ...


def test_zbatch_reads_what_workflows_starts() -> None:
    recorder = Recorder()
    RecipeWrapper(recipe=RECIPE, transport=recorder, environment={"ID": "abc"}).start()
    queue, body, headers, _ = recorder.sent[0]
    assert queue == "cluster.submission" and is_recipe_message(headers)
    message = StepMessage.from_body(json.dumps(body))
    assert (message.pointer, message.path, message.recipe_id) == (1, [], "abc")
    assert message.payload == {"dcid": 42}


@pytest.mark.parametrize("channel", ["success", "failure", "job_submitted"])
def test_onward_messages_are_identical_to_workflows(channel: str) -> None:
    start = start_messages(Recipe.from_json(RECIPE), {"ID": "abc"})[0]
    recorder = Recorder()
    theirs = RecipeWrapper(message=json.loads(json.dumps(start.to_body())), transport=recorder)
    theirs.send_to(channel, {"result": 1})
    ours = Capture()
    ours.send_onward(start, channel, {"result": 1})
    assert len(ours.published) == len(recorder.sent) == 1
    (queue, body, headers, kw), (their_queue, their_body, their_headers, their_kw) = (
        ours.published[0],
        recorder.sent[0],
    )
    assert queue == their_queue
    assert headers == their_headers == {"workflows-recipe": True}
    assert body == json.dumps(their_body).encode()
    assert kw["exchange"] == their_kw.get("exchange", "")


def test_workflows_reads_what_zbatch_sends() -> None:
    start = start_messages(Recipe.from_json(RECIPE), {"ID": "abc"})[0]
    ours = Capture()
    ours.send_onward(start, "success", "done")
    queue, body, _, kw = ours.published[0]
    assert (queue, kw["delay"]) == ("downstream", 5.0)
    theirs = RecipeWrapper(message=json.loads(body), transport=Recorder())
    assert theirs.recipe_pointer == 2 and theirs.recipe_path == [1]
    assert theirs.payload == "done" and theirs.environment == {"ID": "abc"}


def test_unnamed_outputs_follow_the_default_channel_only() -> None:
    step2 = StepMessage(Recipe.from_json(RECIPE), 2, [1], {"ID": "x"}, None)
    assert step2.destinations("success", default_channel=None) == []
    assert step2.destinations(None, default_channel=None) == [3]
    assert step2.destinations("job_submitted", default_channel="job_submitted") == [3]
    assert step2.destinations("failure", default_channel="job_submitted") == []


OUTPUT_FORMS: list[Any] = [
    None,
    2,
    [2],
    [2, 3],
    {"success": 2},
    {"success": [2, 3], "failure": 3, "job_submitted": 2},
    {"job_submitted": [3]},
    {},
]


@pytest.mark.parametrize("output", OUTPUT_FORMS)
@pytest.mark.parametrize("default_channel", [None, "job_submitted", "success", ""])
@pytest.mark.parametrize("channel", [None, "success", "failure", "job_submitted", "other"])
def test_destinations_are_workflows_send_and_send_to(
    output: Any, default_channel: str | None, channel: str | None
) -> None:
    """Every output form, channel and default channel: the nodes workflows' RecipeWrapper
    sends to with `set_default_channel(default_channel)` then `send`/`send_to(channel)`."""
    node: dict[str, Any] = {"queue": "one"}
    if output is not None:
        node["output"] = output
    recipe = {
        "1": node,
        "2": {"queue": "two"},
        "3": {"queue": "three"},
        "start": [[1, []]],
        "error": [2, 3],  # nodes 2 and 3 referenced whatever node 1's output
    }
    message = start_messages(Recipe.from_json(recipe), {"ID": "x"})[0]
    recorder = Recorder()
    theirs = RecipeWrapper(message=json.loads(json.dumps(message.to_body())), transport=recorder)
    if default_channel is not None:
        theirs.set_default_channel(default_channel)
    if channel is None:
        theirs.send("payload")
    else:
        theirs.send_to(channel, "payload")
    expected = [body["recipe-pointer"] for _, body, _, _ in recorder.sent]
    assert message.destinations(channel, default_channel=default_channel) == expected


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\xff\xfe", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (b'{"recipe": {}}', "missing recipe-pointer"),
        (json.dumps({"recipe": RECIPE, "recipe-pointer": 9}).encode(), "names no node"),
        (json.dumps({"recipe": RECIPE, "recipe-pointer": True}).encode(), "names no node"),
        (
            json.dumps({"recipe": RECIPE, "recipe-pointer": 1, "recipe-path": "x"}).encode(),
            "recipe-path",
        ),
        (
            json.dumps({"recipe": RECIPE, "recipe-pointer": 1, "environment": []}).encode(),
            "environment",
        ),
        (b" " * (9 * 1024 * 1024), "over the"),
    ],
)
def test_malformed_envelopes_are_refused(body: bytes, message: str) -> None:
    with pytest.raises(RecipeError) as caught:
        StepMessage.from_body(body)
    assert message in str(caught.value)
