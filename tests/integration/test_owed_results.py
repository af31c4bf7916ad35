"""Results a job could not send are owed in the ledger and delivered exactly once.

The embedded queue plays the broker; a `FlakyTransport` refuses sends the way an unreachable
RabbitMQ does. Jobs run `zbatch wrap` on the local scheduler with a queue they cannot reach,
so they leave their results in the outbox, as a job that ends during a broker outage does.
A dispatcher "restart" is a second `Dispatcher` over the same ledger file.
"""

from __future__ import annotations

import json
import logging
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ZbatchRun, claim, wrapper_step
from zbatch.clusters import cluster_for
from zbatch.errors import TransportError
from zbatch.injob.outbox import Outbox
from zbatch.model.jobs import JobState, outbox_path
from zbatch.model.message import StepMessage, start_messages, step_key
from zbatch.model.profiles import Profile, load_profile_file
from zbatch.model.recipe import Recipe
from zbatch.prepare.job_files import JobContext
from zbatch.service.dispatcher import Dispatcher, DispatcherConfig
from zbatch.service.ledger import COLUMNS, Ledger, LedgerEntry, Owed, Reported
from zbatch.service.owed import Deliverer, owed_at_end
from zbatch.transport.embedded import EmbeddedTransport

QUEUES = {3: "failed", 4: "done", 5: "started", 6: "done-too", 7: "completed"}
OUTPUT = {"starting": 5, "success": [4, 6], "failure": 3, "completed": 7}


class FlakyTransport(EmbeddedTransport):
    """The embedded queue behind a broker that can go down: while `allowed` is not None,
    only that many more sends succeed; the others fail as an unreachable RabbitMQ does."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.allowed: int | None = None
        self.refused = 0

    def publish(
        self,
        queue: str,
        body: bytes,
        headers: dict[str, Any],
        *,
        exchange: str = "",
        delay: float | None = None,
    ) -> None:
        if self.allowed is not None:
            if self.allowed <= 0:
                self.refused += 1
                raise TransportError("cannot connect to the broker (test outage)", transient=True)
            self.allowed -= 1
        super().publish(queue, body, headers, exchange=exchange, delay=delay)


@pytest.fixture()
def profile(tmp_path: Path, make_profile: Any) -> Profile:
    return load_profile_file(
        make_profile(
            local={"slots": 3, "state_dir": str(tmp_path / "localbatch")}, poll_interval_s=0.25
        )
    )


def unreachable_queue(tmp_path: Path) -> list[str]:
    """`zbatch wrap` options naming a queue no job can open (a file where its folder is)."""
    blocker = tmp_path / "no-broker"
    blocker.write_text("a file where the queue's folder should be")
    return ["--transport", "embedded", "--embedded-db", str(blocker / "q.sqlite")]


def dispatcher(profile: Profile, tmp_path: Path, job_args: list[str]) -> Dispatcher:
    """A dispatcher process as a restart makes it: its own ledger and queue connections."""
    return Dispatcher(
        profile,
        cluster_for(profile),
        Ledger(),
        FlakyTransport(tmp_path / "queue.sqlite"),
        JobContext(job_args),
        DispatcherConfig(backoff_s=0.01),
    )


def flaky(d: Dispatcher) -> FlakyTransport:
    assert isinstance(d.transport, FlakyTransport)
    return d.transport


def step(work: Path, command: list[str], wrapper: bool = True) -> StepMessage:
    node = wrapper_step(command, output=OUTPUT)
    node["parameters"]["workingdir"] = str(work)
    if not wrapper:
        del node["parameters"]["wrapper"]
        node["parameters"]["cluster"]["commands"] = command
    nodes = {str(n): {"queue": q} for n, q in QUEUES.items()}
    return start_messages(Recipe.from_json({"1": node, **nodes, "start": [[1, {}]]}))[0]


def track_until(dispatchers: list[Dispatcher], done: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out"
        for d in dispatchers:
            d.track()
        time.sleep(0.05)


def entries(ledger: Ledger, messages: list[StepMessage]) -> list[LedgerEntry]:
    found = [ledger.get(step_key(m)) for m in messages]
    assert all(found)
    return [e for e in found if e]


def delivered(transport: EmbeddedTransport) -> dict[str, Counter[str]]:
    """Per output queue, how many messages arrived for each recipe run (step)."""
    out: dict[str, Counter[str]] = {}
    for queue in QUEUES.values():
        rows = transport.db.execute("SELECT body FROM messages WHERE queue = ?", (queue,))
        out[queue] = Counter(json.loads(body)["environment"]["ID"] for (body,) in rows)
    return out


def test_kept_results_are_delivered_once_across_an_outage_and_restarts(
    profile: Profile, tmp_path: Path, work_root: Path, zbatch: ZbatchRun, caplog: Any
) -> None:
    caplog.set_level(logging.INFO)
    messages = [step(work_root / f"s{i}", ["echo", f"step {i}"]) for i in range(3)]
    first = dispatcher(profile, tmp_path, unreachable_queue(tmp_path))
    for message in messages:
        first.transport.send_step(message)
    first.serve(threading.Event(), max_messages=3)
    flaky(first).allowed = 0  # the broker goes down while the jobs run
    track_until([first], lambda: all(e.owes for e in entries(first.ledger, messages)), timeout=120)
    # Every job ended with its results in its outbox; the failed sends left them owed.
    for entry in entries(first.ledger, messages):
        assert entry.state == JobState.SUCCEEDED.value
        assert entry.owes.channels == ["starting", "success", "completed"]
    track_until([first], lambda: flaky(first).refused >= 2, timeout=30)  # a retry, refused
    shown = json.loads(zbatch("status", "--json", "--no-refresh").stdout)["jobs"]
    assert [s["owed"] for s in shown] == [["starting", "success", "completed"]] * 3
    assert any("test outage" in s["owed_error"] for s in shown)
    text = zbatch("status", "--owed", "--no-refresh").stdout
    assert text.count("owes: starting, success, completed") == 3, text
    outage_logs = [r for r in caplog.records if "wait for the broker" in r.getMessage()]
    assert len(outage_logs) == 1  # once per outage, not per try

    # Restarted while the broker is still down; it comes back for six sends: one step's
    # four, then `starting` and the first of `success`'s two destinations of the next.
    second = dispatcher(profile, tmp_path, unreachable_queue(tmp_path))
    flaky(second).allowed = 6
    track_until([second], lambda: flaky(second).refused > 0, timeout=30)
    partway = [e for e in entries(second.ledger, messages) if e.owed_sent]
    assert [(e.owes.channels, e.owed_sent) for e in partway] == [(["success", "completed"], 2)]
    assert sum(not e.owes for e in entries(second.ledger, messages)) == 1

    # Restarted again; the broker is back for good.
    third = dispatcher(profile, tmp_path, unreachable_queue(tmp_path))
    track_until([third], lambda: not any(e.owes for e in entries(third.ledger, messages)), 30)
    for _ in range(10):  # more cycles, by all three: nothing is sent again
        for d in (first, second, third):
            flaky(d).allowed = None
            d._owed_next = 0.0
            d.track()
    ids = {m.recipe_id for m in messages}
    per_queue = delivered(flaky(third))
    for queue in ("started", "done", "done-too", "completed"):
        assert per_queue[queue] == Counter(dict.fromkeys(ids, 1)), queue
    assert not per_queue["failed"]
    for entry in entries(third.ledger, messages):
        assert entry.reported & Reported.OUTBOX and not entry.owed_by and not entry.owed_error
    shown = json.loads(zbatch("status", "--json", "--no-refresh").stdout)["jobs"]
    assert shown[0]["owed"] == []


def test_failure_owed_by_a_silently_dead_job_is_reported_once_after_a_restart(
    profile: Profile, tmp_path: Path, work_root: Path
) -> None:
    message = step(work_root / "dead", ["exit 3"], wrapper=False)
    first = dispatcher(profile, tmp_path, unreachable_queue(tmp_path))
    first.transport.send_step(message)
    first.serve(threading.Event(), max_messages=1)
    flaky(first).allowed = 0
    track_until([first], lambda: bool(entries(first.ledger, [message])[0].owes), timeout=60)
    (entry,) = entries(first.ledger, [message])
    assert entry.owes == Owed((), f"job {entry.job_id} failed (exit code 3)")
    second = dispatcher(profile, tmp_path, unreachable_queue(tmp_path))
    track_until([second], lambda: not entries(second.ledger, [message])[0].owes, timeout=30)
    for _ in range(5):
        for d in (first, second):
            flaky(d).allowed = None
            d._owed_next = 0.0
            d.track()
    assert delivered(flaky(second))["failed"] == {message.recipe_id: 1}
    (entry,) = entries(second.ledger, [message])
    assert entry.reported & Reported.FAILURE


def owing_entry(ledger: Ledger, folder: Path) -> LedgerEntry:
    """A settled step owing its failure report, with its message file."""
    folder.mkdir(parents=True, exist_ok=True)
    message = step(folder / "w", ["true"], wrapper=False)
    path = folder / "zbatch-x.recipewrap.json"
    path.write_text(json.dumps(message.to_body()))
    key = step_key(message)
    claim(ledger, key, message_path=str(path), profile="test-local", workdir=str(folder))
    ledger.update(key, job_id="7", state=JobState.RUNNING.value)
    assert ledger.settle(key, JobState.FAILED, 1, "exit code 1", Owed((), "job 7 failed"))
    entry = ledger.get(key)
    assert entry is not None
    return entry


def test_only_one_replica_sends_and_a_dead_ones_claim_is_taken_over(
    profile: Profile, tmp_path: Path
) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    transport = EmbeddedTransport(tmp_path / "q.sqlite")
    replica = Deliverer(ledger, cluster_for(profile), transport)
    entry = owing_entry(ledger, tmp_path / "a")
    # Another replica, elsewhere, is sending (its claim holds for a while): hands off.
    assert ledger.claim_owed(entry.key, "otherhost:1#a", lease_s=0.5)
    assert not replica.deliver(entry)
    assert transport.depth("failed") == 0
    time.sleep(0.6)  # its claim lapsed (it died mid-send, or hangs): taken over
    assert replica.deliver(entry)
    assert transport.depth("failed") == 1
    assert not replica.deliver(ledger.get(entry.key) or entry)  # nothing owed any more
    # Claims by processes of this host: a dead one's is taken over at once, a live one's holds.
    here = socket.gethostname()
    dead_pid = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    of_dead, of_live = owing_entry(ledger, tmp_path / "b"), owing_entry(ledger, tmp_path / "c")
    assert ledger.claim_owed(of_dead.key, f"{here}:{dead_pid}#b", lease_s=300)
    assert ledger.claim_owed(of_live.key, f"{here}:1#c", lease_s=300)  # pid 1 lives
    assert replica.deliver(ledger.get(of_dead.key) or of_dead)
    assert not replica.deliver(ledger.get(of_live.key) or of_live)
    assert transport.depth("failed") == 2


def test_a_job_is_settled_once_whoever_polls(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    claim(ledger, "k")
    ledger.update("k", job_id="1", state="running")
    assert ledger.settle("k", JobState.FAILED, 1, "", Owed(("success",), ""))
    assert not ledger.settle("k", JobState.FAILED, 1, "", Owed((), "job 1 failed"))
    entry = ledger.get("k")
    assert entry is not None and entry.owes == Owed(("success",), "")


OLD_SCHEMA = """
CREATE TABLE jobs (
    key TEXT PRIMARY KEY, recipe_id TEXT NOT NULL, pointer INTEGER NOT NULL,
    profile TEXT NOT NULL, profile_source TEXT NOT NULL, scheduler TEXT NOT NULL,
    job_name TEXT NOT NULL, job_id TEXT, state TEXT NOT NULL, exit_code INTEGER,
    reason TEXT NOT NULL DEFAULT '', workdir TEXT NOT NULL, tag TEXT NOT NULL,
    message_path TEXT NOT NULL, claimed_by TEXT NOT NULL DEFAULT '',
    reported INTEGER NOT NULL DEFAULT 0, cancel_requested INTEGER NOT NULL DEFAULT 0,
    submitted_at REAL, updated_at REAL NOT NULL
);
INSERT INTO jobs VALUES ('k', 'r', 1, 'p', 'p.yaml', 'slurm', 'j', '42', 'succeeded', 0, '',
    '/w', 't', '/w/m.json', 'me', 1, 0, 1.0, 2.0);
"""


def test_a_ledger_from_before_owed_results_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(OLD_SCHEMA)
    ledgers = [Ledger(path), Ledger(path)]  # two processes opening it: both fine
    entry = ledgers[0].get("k")
    assert entry is not None and entry.job_id == "42" and entry.reported == Reported.SUBMITTED
    assert not entry.owes and entry.owed_sent == 0
    columns = [r[1] for r in ledgers[1].db.execute("PRAGMA table_info(jobs)")]
    assert columns == list(COLUMNS)
    assert list(ledgers[1].owing("p")) == []


def kept(path: Path, message: StepMessage, channels: list[str]) -> None:
    """An outbox as `zbatch wrap` leaves it when the broker is down."""
    box = Outbox(path, message, lambda: EmbeddedTransport(path.parent / "unused.sqlite"))
    for channel in channels:
        box.add(channel, f"{channel} payload")


@pytest.mark.parametrize(
    ("state", "outbox", "owed"),
    [
        (JobState.SUCCEEDED, None, Owed()),
        (JobState.SUCCEEDED, ["success", "completed"], Owed(("success", "completed"))),
        (JobState.FAILED, ["failure", "completed"], Owed(("failure", "completed"))),
        # Killed mid-tool with only `starting` kept: the outbox and zbatch's own report.
        (JobState.TIMEOUT, ["starting"], Owed(("starting",), "job 9 timeout (time limit)")),
        (JobState.LOST, None, Owed((), "job 9 lost (time limit)")),
        # An outbox zbatch did not write is never sent; the job is reported failed.
        (JobState.FAILED, "junk", Owed((), "job 9 failed (time limit)")),
    ],
)
def test_what_an_ended_job_owes(
    state: JobState, outbox: list[str] | str | None, owed: Owed, profile: Profile, tmp_path: Path
) -> None:
    message = step(tmp_path, ["true"])
    wrapper_file = tmp_path / "zbatch-t-1.recipewrap.json"
    wrapper_file.write_text(json.dumps(message.to_body()))
    box = Path(outbox_path(str(wrapper_file)))
    if outbox == "junk":
        box.write_text("not an outbox\n")
    elif isinstance(outbox, list):
        kept(box, message, outbox)
    ledger = Ledger(tmp_path / "ledger.sqlite")
    claim(ledger, "k", message_path=str(wrapper_file), workdir=str(tmp_path))
    ledger.update("k", job_id="9", state="running")
    entry = ledger.get("k")
    assert entry is not None
    assert owed_at_end(cluster_for(profile), entry, state, "time limit") == owed
