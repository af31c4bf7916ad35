"""The dispatcher over the embedded queue and the local scheduler: acks, idempotency, DLQ."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import claim, wrapper_step
from zbatch.clusters import cluster_for
from zbatch.model.message import StepMessage, start_messages, step_key
from zbatch.model.profiles import load_profile_file
from zbatch.model.recipe import Recipe
from zbatch.prepare.job_files import JobContext
from zbatch.service import submitter as submitter_module
from zbatch.service.dispatcher import Dispatcher, DispatcherConfig
from zbatch.service.ledger import Ledger
from zbatch.transport.base import REASON_HEADER
from zbatch.transport.embedded import EmbeddedTransport
from zbatch.transport.factory import TransportConfig


@pytest.fixture()
def setup(tmp_path: Path, make_profile: Any) -> tuple[Dispatcher, EmbeddedTransport]:
    profile = load_profile_file(make_profile())
    config = TransportConfig("embedded", str(tmp_path / "queue.sqlite"))
    transport = EmbeddedTransport(config.db_path())
    dispatcher = Dispatcher(
        profile,
        cluster_for(profile),
        Ledger(),
        transport,
        JobContext(config.job_args()),
        DispatcherConfig(backoff_s=0.01),
    )
    return dispatcher, transport


def recipe_message(
    command: list[str], work: Path, output: dict[str, Any] | None = None
) -> StepMessage:
    step = wrapper_step(
        command,
        output={"job_submitted": 2, "failure": 3, "success": 4} if output is None else output,
    )
    step["parameters"]["workingdir"] = str(work)
    recipe = Recipe.from_json(
        {
            "1": step,
            "2": {"queue": "submitted"},
            "3": {"queue": "failed"},
            "4": {"queue": "done"},
            "start": [[1, {"n": 1}]],
        }
    )
    return start_messages(recipe)[0]


def drain(transport: EmbeddedTransport, queue: str) -> list[Any]:
    bodies = []
    while (d := transport.receive(queue, 0)) is not None:
        bodies.append((d.headers, json.loads(d.body)))
        transport.ack(d)
    return bodies


def test_submits_acks_and_reports_job_submitted(setup: Any, work_root: Path) -> None:
    dispatcher, transport = setup
    message = recipe_message(["true"], work_root / "a")
    transport.send_step(message)
    dispatcher.serve(threading.Event(), max_messages=1)
    assert dispatcher.outcomes == {"submitted": 1}
    assert transport.depth("cluster.submission") == 0
    ((headers, body),) = drain(transport, "submitted")
    assert headers == {"workflows-recipe": True}
    assert body["payload"]["scheduler"] == "local" and body["payload"]["jobid"]
    assert body["recipe-pointer"] == 2 and body["recipe-path"] == [1]


def test_redelivered_step_is_not_submitted_twice(setup: Any, work_root: Path) -> None:
    dispatcher, transport = setup
    message = recipe_message(["true"], work_root / "b")
    for _ in range(3):
        transport.send_step(message)
    dispatcher.serve(threading.Event(), max_messages=3)
    assert dispatcher.outcomes == {"submitted": 1, "duplicate": 2}
    assert len(drain(transport, "submitted")) == 1


def test_a_step_without_job_submitted_output_is_acked_without_notice(
    setup: Any, work_root: Path
) -> None:
    dispatcher, transport = setup
    message = recipe_message(
        ["true"], work_root / "c", output={"failure": 3, "success": 4, "unused": 2}
    )
    transport.send_step(message)
    dispatcher.serve(threading.Event(), max_messages=1)
    assert dispatcher.outcomes == {"submitted": 1}
    assert transport.depth("cluster.submission") == 0
    entry = dispatcher.ledger.get(step_key(message))
    assert entry is not None and entry.job_id and entry.reported == 0
    assert drain(transport, "submitted") == []


BAD_BODIES: list[tuple[bytes, dict[str, Any], str]] = [
    (b"{not json", {"workflows-recipe": True}, "not valid JSON"),
    (b'{"recipe": {}, "recipe-pointer": 1}', {"workflows-recipe": True}, "non-empty"),
    (b'{"x": 1}', {}, "not a recipe message"),
    (b"\xff\xfe\x00", {"workflows-recipe": True}, "not valid JSON"),
]


@pytest.mark.parametrize(("body", "headers", "reason"), BAD_BODIES)
def test_malformed_messages_are_dead_lettered(
    setup: Any, body: bytes, headers: dict[str, Any], reason: str, work_root: Path
) -> None:
    dispatcher, transport = setup
    transport.publish("cluster.submission", body, headers)
    good = recipe_message(["true"], work_root / "c")
    transport.send_step(good)
    dispatcher.serve(threading.Event(), max_messages=2)
    assert dispatcher.outcomes == {"dead-lettered": 1, "submitted": 1}
    (dead,) = [d for d in [transport.receive("dlq.cluster.submission", 0)] if d]
    assert reason in dead.headers[REASON_HEADER] and dead.body == body


def test_hostile_step_is_dead_lettered_with_reason(setup: Any, work_root: Path) -> None:
    dispatcher, transport = setup
    message = recipe_message(["true"], work_root / "d")
    message.step["parameters"]["cluster"]["job_name"] = "x$(touch /tmp/zbatch-canary-disp)"
    transport.send_step(message)
    dispatcher.serve(threading.Event(), max_messages=1)
    dead = transport.receive("dlq.cluster.submission", 0)
    assert dead is not None and "job_name" in dead.headers[REASON_HEADER]
    assert not Path("/tmp/zbatch-canary-disp").exists()


def test_interrupted_submission_is_recovered_by_marker(
    setup: Any, work_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dispatcher, transport = setup
    message = recipe_message(["true"], work_root / "e")
    # First dispatcher "dies" right after the scheduler accepted the job: no job id recorded.
    original = dispatcher.ledger.update
    monkeypatch.setattr(dispatcher.ledger, "update", lambda *_a, **_k: None)
    dispatcher.submitter.submit(message)
    monkeypatch.setattr(dispatcher.ledger, "update", original)
    entry = dispatcher.ledger.get(step_key(message))
    assert entry is not None and entry.job_id is None
    monkeypatch.setattr(submitter_module, "RECOVERY_GRACE_S", 0.0)
    transport.send_step(message)
    dispatcher.serve(threading.Event(), max_messages=1)
    assert dispatcher.outcomes == {"duplicate": 1}
    recovered = dispatcher.ledger.get(step_key(message))
    assert recovered is not None and recovered.job_id is not None


def test_young_claim_is_requeued_not_duplicated(setup: Any, work_root: Path) -> None:
    dispatcher, transport = setup
    message = recipe_message(["true"], work_root / "f")
    claim(
        dispatcher.ledger,
        step_key(message),
        recipe_id=message.recipe_id,
        profile="test-local",
        scheduler="local",
        workdir=str(work_root),
        message_path="/x",
        claimed_by="elsewhere:1",
    )
    transport.send_step(message)
    dispatcher.config = DispatcherConfig(backoff_s=0.01, claim_wait_s=0.5)
    dispatcher.serve(threading.Event(), max_messages=1)
    assert dispatcher.outcomes == {"requeued": 1}
    assert transport.depth("cluster.submission") == 1


def failures_reported(dispatcher: Dispatcher, transport: EmbeddedTransport) -> list[Any]:
    """Track until something arrives on the recipe's failure output (30 s at most)."""
    deadline = time.monotonic() + 30
    failures: list[Any] = []
    while not failures and time.monotonic() < deadline:
        dispatcher.track()
        failures = drain(transport, "failed")
        time.sleep(0.2)
    return failures


def test_job_stopped_by_its_time_limit_reports_failure(setup: Any, work_root: Path) -> None:
    dispatcher, transport = setup
    message = recipe_message(["sleep", "60"], work_root / "g")
    message.step["parameters"]["cluster"]["time_limit"] = 1
    message.step["parameters"]["wrapper"] = "generic"
    transport.send_step(message)
    dispatcher.serve(threading.Event(), max_messages=1)
    ((_, body),) = failures_reported(dispatcher, transport)
    assert body["recipe-pointer"] == 3
    assert "timeout" in body["payload"] or "SIGTERM" in body["payload"]


def test_dispatcher_reports_a_job_whose_wrapper_never_ran(setup: Any, work_root: Path) -> None:
    dispatcher, transport = setup
    message = recipe_message(["true"], work_root / "h")
    del message.step["parameters"]["wrapper"]
    message.step["parameters"]["cluster"]["commands"] = ["exit 3"]
    transport.send_step(message)
    dispatcher.serve(threading.Event(), max_messages=1)
    ((_, body),) = failures_reported(dispatcher, transport)
    assert body["payload"].endswith("failed (exit code 3)")
    until = time.monotonic() + 2.5  # past the next poll (every 2 s, in the background)
    while time.monotonic() < until:
        dispatcher.track()
        time.sleep(0.1)
    assert drain(transport, "failed") == []  # reported once, not on every poll
