"""Dispatcher throughput: steps published to a queue until Slurm accepted them all.

    python benchmarks/dispatch.py [--steps N] [--workers W] [--rounds R]

Runs, in one go against the local Slurm: a raw `sbatch --parsable` loop (the limit), the
dispatcher consuming N steps from RabbitMQ, and the dispatcher consuming the same N steps from
the embedded SQLite queue. Prints a markdown table with steps/s, the ratio to the raw loop and
the dispatcher's peak RSS; each dispatcher run is paired with a raw loop run right before it,
R times, and the median pair is shown. Needs `scripts/services/up slurm rabbitmq`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python benchmarks/...`
import yaml

from benchmarks.common import Row, held, paired, release_all, step_messages, table, timed
from zbatch.broker import setup_broker
from zbatch.profiles import load_profile
from zbatch.transport.base import Transport
from zbatch.transport.embedded import EmbeddedTransport
from zbatch.transport.pika import PikaTransport


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
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"dispatcher failed: {proc.stderr.read().decode() if proc.stderr else ''}")
    return elapsed, usage.ru_maxrss / 1024


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
            seconds, rss = run_dispatcher(
                [*profile, "--transport", "pika", "--queue", queue, *workers],
                count,
                tmp / f"state-pika-{run}",
            )
            rabbit.delete_queue(queue)
            rabbit.delete_queue(f"dlq.{queue}")
        name = "zbatch dispatcher (RabbitMQ -> Slurm)"
        return Row(name, count, seconds, f"peak RSS {rss:.0f} MiB")

    def through_embedded() -> Row:
        run = next(runs)
        db = tmp / f"queue-{run}.sqlite"
        embedded = EmbeddedTransport(db)
        publish(embedded, "cluster.submission", count, tmp / f"embedded-{run}")
        embedded.disconnect()
        seconds, rss = run_dispatcher(
            [*profile, "--transport", "embedded", "--embedded-db", str(db), *workers],
            count,
            tmp / f"state-embedded-{run}",
        )
        name = "zbatch dispatcher (embedded SQLite -> Slurm)"
        return Row(name, count, seconds, f"peak RSS {rss:.0f} MiB")

    try:
        drain()
        rows = [raw()]
        drain()
        for method in (through_rabbitmq, through_embedded):
            rows.append(paired(raw, method, drain, options.rounds))
        print("### Dispatcher: queued steps accepted by Slurm\n\n" + table(rows, rows[0]))
        print(
            "\nDispatcher times include its start-up (imports, broker connection) and its "
            "status polling while it submits."
        )
    finally:
        drain()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
