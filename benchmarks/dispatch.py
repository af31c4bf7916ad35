"""Dispatcher throughput: steps published to a queue until Slurm accepted them all.

    python benchmarks/dispatch.py [--steps N] [--workers W] [--rounds R]

Runs, in one go against the local Slurm: a raw `sbatch --parsable` loop (the limit), the
dispatcher consuming N steps from RabbitMQ, from ActiveMQ over STOMP, and from the embedded
SQLite queue. Prints a markdown table with steps/s, the ratio to the raw loop and
the dispatcher's peak RSS; each dispatcher run is paired with a raw loop run right before it,
R times, and the median pair is shown. Needs `scripts/services/up slurm rabbitmq activemq`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python benchmarks/...`
import yaml

from benchmarks.common import Row, held, paired, release_all, step_messages, table, timed
from zbatch.model.profiles import load_profile
from zbatch.transport.admin import setup_broker
from zbatch.transport.base import Transport
from zbatch.transport.embedded import EmbeddedTransport
from zbatch.transport.pika import PikaTransport
from zbatch.transport.stomp import StompTransport

STOMP_INI = "/var/lib/zbatch-services/stomp.ini"  # written by scripts/services/up activemq


def publish(transport: Transport, queue: str, count: int, workdir: Path) -> None:
    for message in step_messages(count, workdir):
        message.step["queue"] = queue
        transport.send_step(message)


def held_profile(folder: Path) -> Path:
    """slurm-local with jobs held, written to a file the dispatcher process can load."""
    path = folder / "slurm-local-held.yaml"
    data = held(load_profile("slurm-local")).model_dump(mode="json", exclude={"source"})
    path.write_text(yaml.safe_dump(data))
    return path


def steady_rate(state: Path) -> float:
    """Jobs/s from the dispatcher's first submission to its last (its ledger's timestamps):
    the rate without the start-up that the wall-clock figure includes."""
    with sqlite3.connect(state / "ledger.sqlite") as db:
        count, first, last = db.execute(
            "SELECT count(*), min(submitted_at), max(submitted_at) FROM jobs"
        ).fetchone()
    return (count - 1) / (last - first) if count > 1 and last > first else 0.0


def run_dispatcher(args: list[str], count: int, state: Path) -> tuple[float, float]:
    """Seconds until the dispatcher has handled `count` messages, and its peak RSS in MiB."""
    env = {**os.environ, "ZBATCH_STATE_DIR": str(state)}
    argv = [
        sys.executable,
        "-m",
        "zbatch",
        "dispatcher",
        "--max-messages",
        str(count),
        *args,
    ]
    started = time.perf_counter()
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=errors)
        peak_kib = 0
        while proc.poll() is None:
            # VmHWM: the dispatcher's own peak (wait4's ru_maxrss would be the largest of it
            # and every sbatch it ran).
            peak_kib = max(peak_kib, _vm_hwm_kib(proc.pid))
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        if proc.returncode != 0:
            errors.seek(0)
            raise SystemExit(f"dispatcher failed: {errors.read().decode(errors='replace')}")
    return elapsed, peak_kib / 1024


def _vm_hwm_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass  # it has just exited
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=8, help="dispatcher --workers")
    parser.add_argument("--rounds", type=int, default=3, help="raw/dispatcher pairs (median)")
    options = parser.parse_args()
    count = options.steps
    workers = ["--workers", str(options.workers)]
    tmp = Path(tempfile.mkdtemp(prefix="zbatch-bench-dispatch-"))
    script = tmp / "raw.sh"
    script.write_text(
        "#!/bin/bash\n#SBATCH --output=/dev/null\n#SBATCH --time=5\n#SBATCH --hold\ntrue\n"
    )
    profile = ["--profile", str(held_profile(tmp))]
    runs = iter(range(1_000_000))  # a fresh queue, workdir and state for every run

    def raw() -> Row:
        argv = ["sbatch", "--parsable", str(script)]
        return timed(
            "raw sbatch --parsable loop",
            count,
            lambda: [subprocess.run(argv, capture_output=True, check=True) for _ in range(count)],
            "the limit",
        )

    def drain() -> None:
        release_all("slurm")

    def through_rabbitmq() -> Row:
        run = next(runs)
        queue = f"zbatch-bench.{uuid.uuid4().hex[:8]}"
        with PikaTransport() as rabbit:
            setup_broker(rabbit, [queue])
            publish(rabbit, queue, count, tmp / f"pika-{run}")
            state = tmp / f"state-pika-{run}"
            seconds, rss = run_dispatcher(
                [*profile, "--transport", "pika", "--queue", queue, *workers], count, state
            )
            rabbit.delete_queue(queue)
            rabbit.delete_queue(f"dlq.{queue}")
        name = "zbatch dispatcher (RabbitMQ -> Slurm)"
        note = f"peak RSS {rss:.0f} MiB; {steady_rate(state):.0f} jobs/s after start-up"
        return Row(name, count, seconds, note)

    def through_activemq() -> Row:
        run = next(runs)
        queue = f"zbatch-bench.{uuid.uuid4().hex[:8]}"
        with StompTransport.from_conf(STOMP_INI) as activemq:
            publish(activemq, queue, count, tmp / f"stomp-{run}")
        state = tmp / f"state-stomp-{run}"
        stomp = ["--transport", "stomp", "--stomp-conf", STOMP_INI, "--queue", queue]
        seconds, rss = run_dispatcher([*profile, *stomp, *workers], count, state)
        name = "zbatch dispatcher (ActiveMQ STOMP -> Slurm)"
        note = f"peak RSS {rss:.0f} MiB; {steady_rate(state):.0f} jobs/s after start-up"
        return Row(name, count, seconds, note)

    def through_embedded() -> Row:
        run = next(runs)
        db = tmp / f"queue-{run}.sqlite"
        embedded = EmbeddedTransport(db)
        publish(embedded, "cluster.submission", count, tmp / f"embedded-{run}")
        embedded.disconnect()
        state = tmp / f"state-embedded-{run}"
        seconds, rss = run_dispatcher(
            [*profile, "--transport", "embedded", "--embedded-db", str(db), *workers], count, state
        )
        name = "zbatch dispatcher (embedded SQLite -> Slurm)"
        note = f"peak RSS {rss:.0f} MiB; {steady_rate(state):.0f} jobs/s after start-up"
        return Row(name, count, seconds, note)

    try:
        drain()
        rows = [raw()]
        drain()
        for method in (through_rabbitmq, through_activemq, through_embedded):
            rows.append(paired(raw, method, drain, options.rounds))
        print("### Dispatcher: queued steps accepted by Slurm\n\n" + table(rows, rows[0]))
        print(
            "\nThe jobs/s column is wall clock: it includes the dispatcher's start-up (imports, "
            "broker connection) and its status polling while it submits; the note gives the "
            "rate from its first submission to its last."
        )
    finally:
        drain()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
