"""Issue 10's crashes in the services: no message, request or job-written file stops them.

The real dispatcher on the embedded queue with the local scheduler, the real recipe starter
through the CLI, and the tracker over real local jobs. A hostile input ends in the DLQ with a
clear reason (or, written by a job, reads as "no valid record") and the next valid message is
still submitted and processed.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ZbatchRun, one_line_error, write_recipe
from tests.integration.test_recipe_starter import starter as run_starter
from zbatch.clusters import cluster_for
from zbatch.model.jobs import JobPaths, JobState, result_record_path
from zbatch.model.message import StepMessage, start_messages, step_key
from zbatch.model.profiles import load_profile_file
from zbatch.model.recipe import Recipe
from zbatch.prepare import job_files as submission
from zbatch.prepare.job_files import JobContext, job_tag
from zbatch.service.dispatcher import Dispatcher, DispatcherConfig
from zbatch.service.ledger import Ledger
from zbatch.service.recipe_starter import RecipeStarter
from zbatch.service.tracker import Tracker
from zbatch.transport.base import REASON_HEADER, Delivery
from zbatch.transport.embedded import EmbeddedTransport
from zbatch.transport.factory import TransportConfig

DEEP = 10_000
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
RECIPE_HEADERS = {"workflows-recipe": True}


def deep_array(depth: int = DEEP) -> str:
    return "[" * depth + "]" * depth


def deep_object(depth: int = DEEP) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def splice(document: dict[str, Any], marker: str, raw: str) -> str:
    return json.dumps(document).replace(json.dumps(marker), raw)


@pytest.fixture()
def service(tmp_path: Path, make_profile: Any) -> tuple[Dispatcher, EmbeddedTransport]:
    profile = load_profile_file(make_profile(limits={"max_json_depth": 32}))
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


def generic_step(work: Path, command: list[str]) -> dict[str, Any]:
    return {
        "queue": "cluster.submission",
        "parameters": {
            "wrapper": "generic",
            "workingdir": str(work),
            "cluster": {"time_limit": "0:05:00"},
        },
        "job_parameters": {"command": command},
        "output": {"failure": 3, "success": 4},
    }


def message_for(node: dict[str, Any], payload: Any = None) -> StepMessage:
    recipe = Recipe.from_json(
        {"1": node, "3": {"queue": "failed"}, "4": {"queue": "done"}, "start": [[1, payload]]}
    )
    return start_messages(recipe)[0]


def wait_for(transport: EmbeddedTransport, dispatcher: Dispatcher, queue: str) -> list[Any]:
    """Track (as the service loop does) until a message arrives on `queue`; 60 s at most."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        dispatcher.track()
        if transport.depth(queue):
            bodies = []
            while (d := transport.receive(queue, 0)) is not None:
                bodies.append(json.loads(d.body))
                transport.ack(d)
            return bodies
        time.sleep(0.2)
    raise AssertionError(f"nothing arrived on {queue}")


def dead_letters(transport: EmbeddedTransport) -> list[Delivery]:
    letters = []
    while (d := transport.receive("dlq.cluster.submission", 0)) is not None:
        letters.append(d)
    return letters


def dead_lettered(dispatcher: Dispatcher, kind: str) -> float:
    value = dispatcher.metrics.registry.get_sample_value(
        "zbatch_messages_dead_lettered_total", {"reason": kind}
    )
    return value or 0.0


def hostile_bodies(good: StepMessage) -> dict[str, bytes]:
    body = good.to_body()
    node = json.loads(json.dumps(body))
    node["recipe"]["1"]["parameters"]["cluster"]["environment"] = "DEEP"
    return {
        "deep array": deep_array().encode(),
        "deep object": deep_object().encode(),
        "deep payload": splice({**body, "payload": "DEEP"}, "DEEP", deep_array()).encode(),
        "deep environment": splice({**body, "environment": "DEEP"}, "DEEP", deep_object()).encode(),
        "deep in a node": splice(node, "DEEP", deep_object()).encode(),
        # Deeper than the profile's max_json_depth (32), shallow enough for json to parse.
        "over the profile's depth": splice({**body, "payload": "D"}, "D", deep_array(40)).encode(),
    }


HOSTILE = [
    "deep array",
    "deep object",
    "deep payload",
    "deep environment",
    "deep in a node",
    "over the profile's depth",
]


@pytest.mark.parametrize("case", HOSTILE)
def test_deep_message_is_dead_lettered_and_the_next_one_processed(
    case: str, service: Any, work_root: Path
) -> None:
    dispatcher, transport = service
    good = message_for(generic_step(work_root / "good", ["echo", "still here"]))
    body = hostile_bodies(good)[case]
    transport.publish("cluster.submission", body, RECIPE_HEADERS)
    transport.send_step(good)
    dispatcher.serve(threading.Event(), max_messages=2)
    assert dispatcher.outcomes == {"dead-lettered": 1, "submitted": 1}
    (dead,) = dead_letters(transport)
    # The profile's max_json_depth (32) applies, whatever made the message too deep.
    assert dead.headers[REASON_HEADER].endswith("nested more than 32 levels deep")
    assert dead.body == body
    assert dead_lettered(dispatcher, "malformed") == 1
    # The next message's job ran to the end and its wrapper reported success.
    (done,) = wait_for(transport, dispatcher, "done")
    assert "still here" in json.dumps(done["payload"])


def test_a_message_that_raises_is_dead_lettered_and_the_service_goes_on(
    service: Any, work_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dispatcher, transport = service
    original = submission.prepare_job

    def flaky(message: StepMessage, *args: Any) -> Any:
        if message.payload == {"boom": True}:
            raise RuntimeError("boom\nsecond line")
        return original(message, *args)

    monkeypatch.setattr("zbatch.service.submitter.prepare_job", flaky)
    transport.send_step(message_for(generic_step(work_root / "bad", ["true"]), {"boom": True}))
    good = message_for(generic_step(work_root / "good", ["echo", "after the defect"]))
    transport.send_step(good)
    dispatcher.serve(threading.Event(), max_messages=2)
    assert dispatcher.outcomes == {"dead-lettered": 1, "submitted": 1}
    (dead,) = dead_letters(transport)
    assert dead.headers[REASON_HEADER] == "internal error: RuntimeError: boom second line"
    assert dead_lettered(dispatcher, "internal-error") == 1
    assert transport.depth("cluster.submission") == 0
    (done,) = wait_for(transport, dispatcher, "done")
    assert "after the defect" in json.dumps(done["payload"])


def test_a_defect_while_reading_a_message_is_dead_lettered(
    service: Any, work_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dispatcher, transport = service
    original = StepMessage.from_body.__func__  # type: ignore[attr-defined]
    calls = {"n": 0}

    def first_raises(cls: type[StepMessage], body: Any, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyError("surprise")
        return original(cls, body, *args, **kwargs)

    monkeypatch.setattr(StepMessage, "from_body", classmethod(first_raises))
    transport.send_step(message_for(generic_step(work_root / "a", ["true"])))
    transport.send_step(message_for(generic_step(work_root / "b", ["true"])))
    dispatcher.serve(threading.Event(), max_messages=2)
    assert dispatcher.outcomes == {"dead-lettered": 1, "submitted": 1}
    (dead,) = dead_letters(transport)
    assert dead.headers[REASON_HEADER] == "internal error: KeyError: 'surprise'"


# --- records a job writes about itself ------------------------------------------------------

HOSTILE_RECORDS = [
    "[1]",
    "null",
    '"a string"',
    '{"exit_code": 1e999, "end_time": 1}',
    '{"exit_code": NaN, "end_time": 1, "results_sent": [1]}',
    '{"exit_code": ' + "9" * 400 + ', "end_time": 1}',
    deep_object(),
]


def overwriting_step(work: Path, record: str, message: StepMessage) -> list[str]:
    """Commands that replace the job's exit and result records with `record`, then SIGKILL
    the job script so that its EXIT trap cannot write the real exit record."""
    paths = JobPaths(work, job_tag(message))
    quoted = shlex.quote(record)
    return [
        f"printf '%s' {quoted} > {shlex.quote(str(paths.exit_record))}",
        f"printf '%s' {quoted} > {shlex.quote(result_record_path(str(paths.recipewrapper)))}",
        "kill -9 $$",
    ]


def commands_message(work: Path, record: str) -> StepMessage:
    node: dict[str, Any] = {
        "queue": "cluster.submission",
        "parameters": {
            "workingdir": str(work),
            "cluster": {"time_limit": "0:05:00", "commands": ["true"]},
        },
        "output": {"failure": 3, "success": 4},
    }
    message = message_for(node)
    message.step["parameters"]["cluster"]["commands"] = overwriting_step(work, record, message)
    return message


@pytest.mark.parametrize("record", HOSTILE_RECORDS, ids=range(len(HOSTILE_RECORDS)))
def test_hostile_job_records_are_no_record_and_failure_is_reported(
    record: str, service: Any, work_root: Path
) -> None:
    dispatcher, transport = service
    message = commands_message(work_root / "rec", record)
    transport.send_step(message)
    good = message_for(generic_step(work_root / "good", ["echo", "fine"]))
    transport.send_step(good)
    dispatcher.serve(threading.Event(), max_messages=2)
    assert dispatcher.outcomes == {"submitted": 2}
    (failure,) = wait_for(transport, dispatcher, "failed")
    assert failure["recipe-pointer"] == 3 and "failed" in failure["payload"]
    entry = dispatcher.ledger.get(step_key(message))
    assert entry is not None and entry.state == JobState.FAILED.value
    (done,) = wait_for(transport, dispatcher, "done")
    assert "fine" in json.dumps(done["payload"])


def test_one_entry_that_raises_does_not_stop_polling_the_others(
    service: Any, work_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dispatcher, _ = service
    first = message_for(generic_step(work_root / "one", ["true"]))
    second = message_for(generic_step(work_root / "two", ["true"]))
    entries = [dispatcher.submitter.submit(m).entry for m in (first, second)]
    tracker: Tracker = dispatcher.tracker
    cluster = dispatcher.cluster
    original = cluster.exit_record
    bad_workdir = entries[0].workdir

    def raises_for_first(paths: JobPaths) -> Any:
        if str(paths.workdir) == bad_workdir:
            raise AttributeError("'list' object has no attribute 'get'")
        return original(paths)

    monkeypatch.setattr(cluster, "exit_record", raises_for_first)
    assert [e.key for e, _ in poll_until_settled(tracker)] == [entries[1].key]
    assert tracker.failures == 0
    monkeypatch.setattr(cluster, "exit_record", original)
    ((entry, outcome),) = poll_until_settled(tracker)
    assert entry.key == entries[0].key and outcome.state is JobState.SUCCEEDED


def poll_until_settled(tracker: Tracker) -> list[Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        settled = tracker.poll_once()
        if settled:
            return settled
        time.sleep(0.2)
    raise AssertionError("no job settled")


def test_run_with_hostile_job_records(tmp_path: Path, make_profile: Any, zbatch: ZbatchRun) -> None:
    """`zbatch run` reads the same records: it reports the step failed, with no traceback."""
    record = tmp_path / "record.json"
    record.write_text('{"exit_code": 1e999, "end_time": 1, "results_sent": [1]}')
    # The run gives the recipe its own ID, so the job's file names are not known in advance:
    # the commands overwrite the records of every job script in the step's folder instead.
    source = shlex.quote(str(record))
    recipe = {
        "1": {
            "queue": "cluster.submission",
            "parameters": {
                "workingdir": str(tmp_path / "work" / "step"),
                "cluster": {
                    "time_limit": "0:05:00",
                    "commands": [
                        "for f in zbatch-*.sh; do b=$(basename $f .sh); "
                        f"cp {source} $b.exit; cp {source} $b.result.json; done",
                        "kill -9 $$",
                    ],
                },
            },
        },
        "start": [[1, []]],
    }
    path = write_recipe(tmp_path / "recipe.json", recipe)
    result = zbatch("run", str(path), "--profile", str(make_profile()), "--timeout", "90")
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1, result.stdout + result.stderr
    assert "0 step(s) succeeded, 1 failed" in result.stdout


# --- the recipe starter ---------------------------------------------------------------------


def starter(db: Path, recipe_dir: Path, count: int) -> subprocess.CompletedProcess[str]:
    """The real recipe-starter CLI, with time for hostile requests to be refused."""
    return run_starter(db, recipe_dir, count, timeout=120)


STARTER_CASES: list[tuple[str, bytes, str]] = [
    ("deep request", deep_array().encode(), "nested more than 64 levels deep"),
    (
        "deep parameters",
        splice({"recipes": ["hello"], "parameters": "D"}, "D", deep_object()).encode(),
        "nested more than 64 levels deep",
    ),
    (
        "deep custom recipe",
        splice({"custom_recipe": "D"}, "D", deep_object()).encode(),
        "nested more than 64 levels deep",
    ),
    (
        "huge placeholder width",
        json.dumps(
            {
                "custom_recipe": {
                    "1": {"queue": "x", "parameters": {"a": "{p:>1500000000}"}},
                    "start": [[1, []]],
                },
                "parameters": {"p": "x"},
            }
        ).encode(),
        "over 1000 is not allowed",
    ),
    (
        "guid of a line break",
        json.dumps({"recipes": ["hello"], "parameters": {"guid": "a\nb"}}).encode(),
        "guid contains a line break",
    ),
    (
        "guid not text",
        json.dumps({"recipes": ["hello"], "parameters": {"guid": ["x"]}}).encode(),
        "guid must be a string",
    ),
]


@pytest.mark.parametrize(
    ("_case", "body", "reason"), STARTER_CASES, ids=[c[0] for c in STARTER_CASES]
)
def test_recipe_starter_dead_letters_and_goes_on(
    _case: str, body: bytes, reason: str, tmp_path: Path
) -> None:
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    shutil.copy(EXAMPLES / "hello.json", recipes / "hello.json")
    db = tmp_path / "q.sqlite"
    transport = EmbeddedTransport(db)
    transport.publish("processing_recipe", body, {})
    transport.send_json("processing_recipe", {"recipes": ["hello"], "parameters": {"who": "x"}})
    done = starter(db, recipes, 2)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    dead = transport.receive("dlq.processing_recipe", 0)
    assert dead is not None and reason in dead.headers[REASON_HEADER]
    assert transport.receive("dlq.processing_recipe", 0) is None
    started = transport.receive("cluster.submission", 0)
    assert started is not None
    assert StepMessage.from_body(started.body).step["job_parameters"]["command"] == [
        "echo",
        "Hello from x",
    ]


def test_recipe_starter_dead_letters_a_defect(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    transport = EmbeddedTransport(tmp_path / "q.sqlite")
    starter_service = RecipeStarter(transport, EXAMPLES)

    def broken(_self: Recipe, _parameters: Any) -> Recipe:
        raise ZeroDivisionError("division by zero")

    transport.send_json("processing_recipe", {"recipes": ["hello"]})
    monkeypatch.setattr(Recipe, "apply_parameters", broken)
    delivery = transport.receive("processing_recipe", 0)
    assert delivery is not None
    assert starter_service.handle(delivery) == "dead-lettered"
    dead = transport.receive("dlq.processing_recipe", 0)
    assert dead is not None
    assert dead.headers[REASON_HEADER] == "internal error: ZeroDivisionError: division by zero"


def test_render_of_a_deep_recipe_is_one_line(
    tmp_path: Path, make_profile: Any, zbatch: ZbatchRun
) -> None:
    path = tmp_path / "deep.json"
    path.write_text(deep_array())
    result = zbatch("render", "--profile", str(make_profile()), "--recipe", str(path))
    assert "nested more than 64 levels deep" in one_line_error(result)
