"""Unnamed and named outputs, `job_submitted` and heartbeats, against the real upstream code.

The same recipe goes through python-workflows' own RecipeWrapper (dlstbx's cluster service:
`set_default_channel("job_submitted")` then `send()`; zocalo.wrap: `send_to(channel)` with no
default channel) and through zbatch (the dispatcher, `zbatch wrap`, `zbatch run`): the
messages must be the same, queue by queue, body by body. The real `zocalo.wrap` CLI runs too
(its `dummy` wrapper, with a recording transport) beside `zbatch wrap`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import workflows
import workflows.util
import zocalo.util
import zocalo.wrapper
from workflows.recipe.wrapper import RecipeWrapper
from workflows.services.common_service import Status

from tests.fakes import fake_profile as make_fake_profile
from tests.fakes import install
from tests.helpers import ZbatchRun, queue_bodies, wrapper_step, write_recipe
from zbatch.clusters import cluster_for
from zbatch.injob import heartbeat, runner
from zbatch.injob.outbox import Outbox
from zbatch.model.message import StepMessage, start_messages
from zbatch.model.recipe import Recipe
from zbatch.prepare.job_files import JobContext
from zbatch.service.dispatcher import Dispatcher, DispatcherConfig
from zbatch.service.ledger import Ledger
from zbatch.transport.embedded import EmbeddedTransport
from zbatch.transport.factory import TransportConfig

Sent = list[tuple[str, dict[str, Any]]]  # (queue, body) in the order sent

# Output forms of the wrapper step (node 1); every node it names is a plain queue `q<N>`.
OUTPUTS: dict[str, Any] = {
    "list": [2],
    "int": 2,
    "list of two": [2, 3],
    "named": {"job_submitted": 2, "starting": 3, "success": 4, "failure": 5, "completed": 6},
    "named, one to many": {"success": [2, 3], "failure": 4, "starting": 2},
    "named without job_submitted": {"success": 2},
    "none": None,
}


def nodes_of(output: Any) -> list[int]:
    if output is None:
        return []
    if isinstance(output, int):
        return [output]
    if isinstance(output, list):
        return list(output)
    return sorted({n for v in output.values() for n in (v if isinstance(v, list) else [v])})


def first_message(output: Any, command: list[str], workdir: Path) -> StepMessage:
    step = wrapper_step(command)
    if output is not None:
        step["output"] = output
    step["parameters"]["workingdir"] = str(workdir)
    step["job_parameters"]["working_directory"] = str(workdir)
    nodes = {str(n): {"queue": f"q{n}"} for n in nodes_of(output)}
    recipe = Recipe.from_json({"1": step, **nodes, "start": [[1, {"n": 1}]]})
    return start_messages(recipe, {"ID": "outputs-test"})[0]


class Recorder:
    """A workflows transport that records what RecipeWrapper sends."""

    def __init__(self) -> None:
        self.sent: Sent = []

    def send(self, destination: str, message: Any, headers: dict[str, Any], **_kw: Any) -> None:
        assert headers == {"workflows-recipe": True}
        self.sent.append((destination, json.loads(json.dumps(message))))

    def broadcast(self, destination: str, message: Any, *_args: Any, **_kw: Any) -> None:
        self.sent.append(("topic:" + destination, json.loads(json.dumps(message))))


def workflows_sends(
    message: StepMessage, calls: list[tuple[str | None, Any]], default_channel: str | None
) -> Sent:
    """What workflows' RecipeWrapper sends for `calls` ((None, p) is send(p), (name, p) is
    send_to(name, p)), with `default_channel` set first when given."""
    recorder = Recorder()
    rw = RecipeWrapper(message=json.loads(json.dumps(message.to_body())), transport=recorder)
    if default_channel is not None:
        rw.set_default_channel(default_channel)
    for channel, payload in calls:
        if channel is None:
            rw.send(payload)
        else:
            rw.send_to(channel, payload)
    return recorder.sent


def embedded_sends(db: Path, skip: str = "cluster.submission") -> Sent:
    """Every message on the embedded queue except those on `skip`, in the order sent."""
    transport = EmbeddedTransport(db)
    rows = transport.db.execute("SELECT queue, headers, body FROM messages ORDER BY id")
    sent = []
    for queue, headers, body in rows.fetchall():
        assert json.loads(headers) == {"workflows-recipe": True}
        if queue != skip:
            sent.append((queue, json.loads(body)))
    transport.disconnect()
    return sent


@pytest.mark.parametrize("form", list(OUTPUTS))
def test_dispatcher_notice_is_dlstbxs(
    form: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dlstbx: set_default_channel("job_submitted"); send({"jobid": N, "scheduler": name})."""
    fake = install(tmp_path / "cluster", "slurm", monkeypatch)
    profile = make_fake_profile("slurm", tmp_path / "work")
    db = tmp_path / "queue.sqlite"
    config = TransportConfig("embedded", str(db))
    dispatcher = Dispatcher(
        profile,
        cluster_for(profile),
        Ledger(),
        EmbeddedTransport(config.db_path()),
        JobContext(config.job_args()),
        DispatcherConfig(backoff_s=0.01, track=False),
    )
    message = first_message(OUTPUTS[form], ["true"], tmp_path / "work" / "step")
    dispatcher.transport.send_step(message)
    dispatcher.serve(threading.Event(), max_messages=1)
    assert dispatcher.outcomes == {"submitted": 1}
    (job_id,) = fake.ids()
    payload = {"jobid": int(job_id), "scheduler": "slurm"}  # a number, as dlstbx sends it
    theirs = workflows_sends(message, [(None, payload)], default_channel="job_submitted")
    assert embedded_sends(db) == theirs
    if isinstance(OUTPUTS[form], list | int):  # unnamed outputs: all of them get the notice
        assert [q for q, _ in theirs] == [f"q{n}" for n in nodes_of(OUTPUTS[form])]


def run_wrap_in_process(
    message: StepMessage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[int, list[tuple[str | None, Any]], Path]:
    """`zbatch wrap --wrap generic` on `message` over an embedded queue; the exit code, the
    (channel, payload) pairs the wrapper emitted, in order, and the queue."""
    path = tmp_path / "zbatch-t-1.recipewrap.json"
    path.write_text(json.dumps(message.to_body()))
    db = tmp_path / "wrap.sqlite"
    emitted: list[tuple[str | None, Any]] = []
    add = Outbox.add

    def recording_add(self: Outbox, channel: str, payload: Any) -> None:
        emitted.append((channel, json.loads(json.dumps(payload, default=str))))
        add(self, channel, payload)

    monkeypatch.setattr(Outbox, "add", recording_add)
    code, _ = runner.wrap("generic", path, lambda: EmbeddedTransport(db))
    return code, emitted, db


@pytest.mark.parametrize("form", list(OUTPUTS))
@pytest.mark.parametrize("command", [["true"], ["false"]])
def test_zbatch_wrap_sends_what_zocalo_wrap_would(
    form: str, command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """zocalo.wrap: send_to("starting"/"success"/"failure"/"completed") with no default
    channel; the same payloads through workflows give the same messages."""
    (tmp_path / "work").mkdir()
    message = first_message(OUTPUTS[form], command, tmp_path / "work")
    code, emitted, db = run_wrap_in_process(message, tmp_path, monkeypatch)
    assert code == (0 if command == ["true"] else 1)
    channels = [channel for channel, _ in emitted]
    outcome = "success" if command == ["true"] else "failure"
    assert channels == ["starting", outcome, "completed"]
    theirs = workflows_sends(message, emitted, default_channel=None)
    assert embedded_sends(db) == theirs
    if not isinstance(OUTPUTS[form], dict):
        assert theirs == []  # unnamed outputs get nothing from a wrapper


ZOCALO_WRAP = """
import json, sys, time
import workflows.transport
import zocalo.wrapper
from workflows.transport.common_transport import CommonTransport

class Recording(CommonTransport):
    def connect(self):
        return True
    def is_connected(self):
        return True
    def disconnect(self):
        pass
    def _send(self, destination, message, headers=None, **kwargs):
        print(json.dumps(["send", destination, message, headers]), flush=True)
    def _broadcast(self, destination, message, headers=None, **kwargs):
        print(json.dumps(["broadcast", destination, message, headers]), flush=True)
    def broadcast_status(self, status):
        pass

workflows.transport.lookup = lambda name: Recording
time.sleep = lambda seconds: None  # the dummy wrapper waits 20 s
if sys.argv[1] == "fail":
    zocalo.wrapper.DummyWrapper.run = lambda self: False
import zocalo.cli.wrap
sys.argv = ["zocalo.wrap", "--wrap", "dummy", "--recipewrapper", sys.argv[2]]
zocalo.cli.wrap.run()
"""


def real_zocalo_wrap(path: Path, fail: bool) -> Sent:
    """What the real `zocalo.wrap --wrap dummy` sends for the recipe wrapper at `path`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZOCALO_")}
    done = subprocess.run(
        [sys.executable, "-c", ZOCALO_WRAP, "fail" if fail else "ok", str(path)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        timeout=120,
    )
    sent: Sent = []
    for line in done.stdout.splitlines():
        kind, destination, body, headers = json.loads(line)
        assert kind == "send" and headers == {"workflows-recipe": True}
        sent.append((destination, json.loads(json.dumps(body))))
    return sent


@pytest.mark.parametrize("form", list(OUTPUTS))
@pytest.mark.parametrize("fail", [False, True])
def test_real_zocalo_wrap_and_zbatch_wrap_send_alike(
    form: str, fail: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real zocalo.wrap CLI and `zbatch wrap` on one recipe: the same messages to the same
    queues and nodes; `starting`/`completed` payloads are the same text (zbatch's `success`
    payload is its summary and its `failure` payload the reason, by design)."""
    (tmp_path / "work").mkdir()
    message = first_message(OUTPUTS[form], ["false" if fail else "true"], tmp_path / "work")
    path = tmp_path / "zocalo.recipewrap.json"
    path.write_text(json.dumps(message.to_body()))
    theirs = real_zocalo_wrap(path, fail)
    _, emitted, db = run_wrap_in_process(message, tmp_path, monkeypatch)
    outcome = "failure" if fail else "success"
    # zocalo.wrap's calls, as the model both sides are held to
    zocalo_calls: list[tuple[str | None, Any]] = [
        ("starting", "Starting processing"),
        (outcome, "Processing failed" if fail else "Finished processing"),
        ("completed", "Finished processing"),
    ]
    assert theirs == workflows_sends(message, zocalo_calls, default_channel=None)
    # zbatch's: the same calls, the outcome's payload its own
    assert [c for c, _ in emitted] == [c for c, _ in zocalo_calls]
    ours_calls = [zocalo_calls[0], (outcome, emitted[1][1]), zocalo_calls[2]]
    assert emitted == ours_calls
    assert embedded_sends(db) == workflows_sends(message, ours_calls, default_channel=None)
    # so the same queues, nodes, paths, environment and recipe, message for message
    assert [(q, b["recipe-pointer"], b["recipe-path"]) for q, b in embedded_sends(db)] == [
        (q, b["recipe-pointer"], b["recipe-path"]) for q, b in theirs
    ]
    if not isinstance(OUTPUTS[form], dict):
        assert theirs == []


def test_zbatch_run_sends_job_submitted_to_unnamed_outputs(
    tmp_path: Path, make_profile: Any, work_root: Path, zbatch: ZbatchRun
) -> None:
    """`zbatch run` plays the dispatcher: unnamed outputs get the job_submitted notice
    (a number for a numeric job id) and nothing from the job itself."""
    recipe = {
        "1": wrapper_step(["true"], output=[2]),
        "2": {"queue": "after"},
        "start": [[1, {}]],
    }
    result = zbatch(
        "run", str(write_recipe(tmp_path / "r.json", recipe)), "--profile", str(make_profile())
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (notice,) = queue_bodies(work_root, "after")
    assert notice["recipe-pointer"] == 2 and notice["recipe-path"] == [1]
    assert set(notice["payload"]) == {"jobid", "scheduler"}
    assert notice["payload"]["scheduler"] == "local"
    jobid = notice["payload"]["jobid"]
    assert isinstance(jobid, int) or not str(jobid).isdigit()


# --- heartbeats: zocalo.wrap's StatusNotifications, field by field -------------------------

STATES = [
    (heartbeat.STARTING, Status.STARTING),
    (heartbeat.PROCESSING, Status.PROCESSING),
    (heartbeat.END, Status.END),
    (heartbeat.ERROR, Status.ERROR),
]


def zocalo_status(status: Status, task_information: str | None) -> dict[str, Any]:
    """The dict zocalo.wrap's StatusNotifications broadcasts in `status` (built by the real
    class and zocalo.util.extended_status_dictionary, as zocalo.wrap does)."""
    got: list[dict[str, Any]] = []
    seen = threading.Condition()

    def send(status_dict: dict[str, Any]) -> None:
        with seen:
            got.append(dict(status_dict))
            seen.notify_all()

    notifications = zocalo.wrapper.StatusNotifications(send, "generic")
    try:
        for field, value in zocalo.util.extended_status_dictionary().items():
            notifications.set_static_status_field(field, value)
        if task_information:
            notifications.taskname += " (" + task_information + ")"
        notifications.set_status(status)
        with seen:
            wanted = {"status": status.intval, "task": notifications.taskname}
            assert seen.wait_for(
                lambda: bool(got) and wanted.items() <= got[-1].items(), timeout=10
            )
            return got[-1]
    finally:
        notifications.shutdown()


@pytest.mark.parametrize(("code", "status"), STATES)
@pytest.mark.parametrize("task_information", [None, "dataset 7"])
@pytest.mark.parametrize("sge", [False, True])
def test_heartbeat_fields_are_those_of_zocalo_wrap(
    code: int,
    status: Status,
    task_information: str | None,
    sge: bool,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for var in ("JOB_ID", "SGE_CELL", "SGE_JOB_SPOOL_DIR", "SLURM_JOB_ID"):
        monkeypatch.delenv(var, raising=False)
    if sge:
        spool = tmp_path / "spool"
        spool.mkdir()
        (spool / "config").write_text("JOB_ID=4242\nSGE_CELL=cell7\n")
        monkeypatch.setenv("JOB_ID", "4242")
        monkeypatch.setenv("SGE_CELL", "default")
        monkeypatch.setenv("SGE_JOB_SPOOL_DIR", str(spool))
    theirs = zocalo_status(status, task_information)
    step = {"wrapper": {"task_information": task_information}} if task_information else {}
    beat = heartbeat.Heartbeat(
        lambda: EmbeddedTransport(tmp_path / "q"), heartbeat.task_name("generic", step)
    )
    beat.set(code)
    ours = beat.message()
    # zocalo's own version field is `zocalo`; zbatch names itself instead (as dlstbx adds
    # `dlstbx`). Every other field zocalo.wrap sends is there, with the same value and type.
    assert set(theirs) - {"zocalo"} <= set(ours)
    for field in set(theirs) - {"zocalo"}:
        assert (field, ours[field]) == (field, theirs[field])
        assert type(ours[field]) is type(theirs[field])
    assert ours["host"] == workflows.util.generate_unique_host_id()
    assert ours["workflows"] == workflows.version()
    assert (ours["status"], ours["statustext"]) == (status.intval, status.description)
    if sge:
        assert (ours["cluster_JOB_ID"], ours["cluster_SGE_CELL"]) == ("4242", "cell7")
