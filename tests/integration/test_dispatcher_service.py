"""`zbatch dispatcher` as a service: endpoints, metrics, and a clean stop on SIGTERM."""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.helpers import wrapper_step
from zbatch.model.message import start_messages
from zbatch.model.recipe import Recipe
from zbatch.transport.embedded import EmbeddedTransport


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 - our loopback server
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_endpoints_metrics_and_sigterm(tmp_path: Path, make_profile: Any, work_root: Path) -> None:
    db = tmp_path / "queue.sqlite"
    transport = EmbeddedTransport(db)
    step = wrapper_step(["true"])
    step["parameters"]["workingdir"] = str(work_root / "s")
    transport.send_step(start_messages(Recipe.from_json({"1": step, "start": [[1, {}]]}))[0])
    transport.publish("cluster.submission", b"{broken", {"workflows-recipe": True})
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "zbatch",
            "dispatcher",
            "--profile",
            str(make_profile()),
            "--transport",
            "embedded",
            "--embedded-db",
            str(db),
            "--metrics-port",
            "0",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stderr is not None
    stream = proc.stderr

    def pump() -> None:
        for line in stream:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    port_line = lines.get(timeout=30)
    match = re.search(r"http://127\.0\.0\.1:(\d+)/", port_line)
    assert match, port_line
    base = f"http://127.0.0.1:{match.group(1)}"
    deadline = time.monotonic() + 30
    while transport.depth("cluster.submission") and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    assert get(base + "/healthz") == (200, "ok\n")
    assert get(base + "/readyz") == (200, "ready\n")
    status, metrics = get(base + "/metrics")
    assert status == 200
    assert "zbatch_messages_received_total 2.0" in metrics
    assert "zbatch_steps_submitted_total 1.0" in metrics
    assert 'zbatch_messages_dead_lettered_total{reason="malformed"} 1.0' in metrics
    assert "zbatch_submit_latency_seconds_count 1.0" in metrics
    assert get(base + "/nothing")[0] == 404
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    rest = []
    while not lines.empty():
        rest.append(lines.get())
    (summary,) = [line for line in rest if line.startswith("dispatcher stopped: ")]
    assert summary == "dispatcher stopped: 1 dead-lettered, 1 submitted\n"
