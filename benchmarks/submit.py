"""Submission throughput and tracking cost against the real single-node Slurm and SGE.

    python benchmarks/submit.py [--jobs N] [--slow-jobs M] [--track-jobs K] [--sge-jobs S]
                                [--drmaa-jobs D] [--rounds R] [--only slurm|sge|track]

Prints markdown tables: jobs/s per method and the ratio to the raw scheduler loop measured in
the same run, right before the method; methods with a target run R such pairs (the median is
shown, with the range). Needs `scripts/services/up all` and `pip install -e .[bench]`
(submitit, psij).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import paramiko

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python benchmarks/...`
from benchmarks.common import (
    Row,
    ensure_sge_env,
    held,
    paired,
    release_all,
    step_messages,
    table,
    timed,
)
from zbatch.clusters import CommandCluster, cluster_for
from zbatch.connections.base import CommandResult
from zbatch.connections.local import LocalConnection
from zbatch.model.message import StepMessage, step_key
from zbatch.model.profiles import Profile, load_profile
from zbatch.prepare.job_files import JobContext, prepare_job
from zbatch.schedulers import scheduler_for
from zbatch.service.ledger import Ledger
from zbatch.service.tracker import Tracker

KEY = "/var/lib/zbatch-services/ssh/id_ed25519"
KNOWN_HOSTS = "/var/lib/zbatch-services/ssh/known_hosts"
SSH = [
    "ssh",
    "-i",
    KEY,
    "-p",
    "2222",
    "-o",
    f"UserKnownHostsFile={KNOWN_HOSTS}",
    "-o",
    "BatchMode=yes",
    "root@127.0.0.1",
]
SQUEUE_ALL = ["squeue", "-h", "-o", "%i"]
QSTAT_ALL = ["qstat", "-u", "*"]


def raw_loop(argv: list[str], count: int) -> None:
    for _ in range(count):
        subprocess.run(argv, capture_output=True, check=True)


def zbatch_submit(profile: Profile, count: int, workdir: Path, workers: int = 1) -> Row:
    """Render, stage and submit `count` steps; `workers` at once, as the dispatcher does.
    Connections are opened before the clock starts, as the dispatcher opens them at start."""
    cluster = cluster_for(profile)
    cluster.warm_up()
    messages = step_messages(count, workdir)

    def one(message: StepMessage) -> str:
        return cluster.submit(prepare_job(message, profile, JobContext()))

    def run_all() -> None:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, messages))

    how = "1 at a time" if workers == 1 else f"{workers} at once (as the dispatcher)"
    row = timed(
        f"zbatch {profile.connection.type} ({profile.name}), {how}",
        count,
        run_all,
        "render + stage + submit",
    )
    cluster.close()
    return row


def zbatch_rows(
    names: Sequence[str],
    jobs: Callable[[str], int],
    raw: Callable[[], Row],
    drain: Callable[[], None],
    args: argparse.Namespace,
    tmp: Path,
) -> list[Row]:
    """Each profile (with jobs held) one at a time and 8 at once, paired with raw loops."""
    rows = []
    for name in names:
        for workers in (1, 8):
            profile = held(load_profile(name))
            submit = functools.partial(
                zbatch_submit, profile, jobs(name), tmp / f"{name}-{workers}", workers
            )
            rows.append(paired(raw, submit, drain, args.rounds))
    return rows


def paramiko_client() -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.load_host_keys(KNOWN_HOSTS)
    client.connect("127.0.0.1", 2222, "root", key_filename=KEY)
    return client


def paramiko_exec_loop(client: paramiko.SSHClient, script: str, count: int) -> None:
    """One exec_command per job over one open connection (connected before the clock)."""
    for _ in range(count):
        _, stdout, _ = client.exec_command(f"sbatch --parsable {script}")
        stdout.channel.recv_exit_status()


def submitit_loop(count: int, folder: Path) -> None:
    import submitit

    executor = submitit.SlurmExecutor(folder=str(folder))
    # Jobs wait (--begin) instead of running, as every method's do, so none eats the CPU.
    executor.update_parameters(
        time=5, partition="debug", additional_parameters={"begin": "now+1hour"}
    )
    for _ in range(count):
        executor.submit(int, 0)


def psij_loop(count: int) -> None:
    import psij

    executor = psij.JobExecutor.get_instance("slurm")
    attributes = psij.JobAttributes(custom_attributes={"slurm.begin": "now+1hour"})
    for _ in range(count):
        executor.submit(psij.Job(psij.JobSpec(executable="/bin/true", attributes=attributes)))


def slurm_rows(args: argparse.Namespace, tmp: Path) -> list[Row]:
    script = tmp / "raw.sh"
    script.write_text(
        "#!/bin/bash\n#SBATCH --output=/dev/null\n#SBATCH --time=5\n#SBATCH --hold\ntrue\n"
    )

    def drain() -> None:
        release_all("slurm")

    def raw(count: int = args.jobs) -> Row:
        argv = ["sbatch", "--parsable", str(script)]
        return timed(
            "raw sbatch --parsable loop", count, lambda: raw_loop(argv, count), "the limit"
        )

    rows = [raw()]
    drain()
    rows += zbatch_rows(
        ("slurm-local", "slurm-over-ssh"), lambda _: args.jobs, raw, drain, args, tmp
    )
    slow = args.slow_jobs
    rows.append(
        paired(
            raw,
            lambda: timed(
                "naive `ssh host sbatch` per job",
                slow,
                lambda: raw_loop([*SSH, "sbatch", "--parsable", str(script)], slow),
            ),
            drain,
        )
    )
    client = paramiko_client()
    rows.append(
        paired(
            raw,
            lambda: timed(
                "paramiko exec_command per job",
                slow,
                lambda: paramiko_exec_loop(client, str(script), slow),
            ),
            drain,
            args.rounds,
        )
    )
    client.close()
    peers = args.peer_jobs
    rows.append(
        paired(
            raw,
            lambda: timed(
                "submitit SlurmExecutor.submit",
                peers,
                lambda: submitit_loop(peers, tmp / "submitit"),
            ),
            drain,
        )
    )
    rows.append(
        paired(
            raw, lambda: timed("psij slurm executor.submit", peers, lambda: psij_loop(peers)), drain
        )
    )
    return rows


def ssh_versus_exec(rows: list[Row]) -> str:
    """zbatch over SSH against one exec_command per job: straight, and with each rate first
    divided by the raw loop measured right before it (the machine's speed drifts)."""
    zbatch = next(r for r in rows if r.method.startswith("zbatch ssh") and "8 at once" in r.method)
    execs = next(r for r in rows if r.method.startswith("paramiko exec"))
    straight = zbatch.rate / execs.rate
    normalised = (zbatch.rate / (zbatch.baseline or zbatch.rate)) / (
        execs.rate / (execs.baseline or execs.rate)
    )
    return (
        f"zbatch ssh (8 at once) vs paramiko exec_command per job: {straight:.1f}x "
        f"({zbatch.rate:.1f} vs {execs.rate:.1f} jobs/s); {normalised:.1f}x with each rate "
        "divided by its raw loop."
    )


class CountingConnection(LocalConnection):
    """Counts the scheduler commands zbatch runs, to show one status query per interval."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[str, int] = {}

    def run(self, argv: Sequence[str], timeout: float | None = None) -> CommandResult:
        self.calls[argv[0]] = self.calls.get(argv[0], 0) + 1
        return super().run(argv, timeout)


def tracking_row(count: int, tmp: Path) -> str:
    profile = load_profile("slurm-local")
    connection = CountingConnection()
    cluster = CommandCluster(scheduler_for(profile), connection)
    ledger = Ledger(tmp / "track-ledger.sqlite")
    for message in step_messages(count, tmp / "track"):
        job = prepare_job(message, profile, JobContext())
        key = step_key(message)
        ledger.claim(
            key,
            recipe_id=message.recipe_id,
            pointer=1,
            profile=profile.name,
            profile_source=profile.source,
            scheduler="slurm",
            job_name=job.spec.name,
            workdir=job.spec.workdir,
            tag=job.paths.tag,
            message_path="",
            claimed_by="b",
        )
        ledger.update(key, job_id=cluster.submit(job), state="pending")
    tracker = Tracker(cluster, ledger, profile.name, interval_s=1.0)
    polls = 0
    while tracker.has_active():
        before = connection.calls.get("squeue", 0)
        tracker.poll_once()
        polls += 1
        assert connection.calls.get("squeue", 0) - before <= 1
        time.sleep(tracker.next_delay())
    squeue = connection.calls.get("squeue", 0)
    return (
        f"Tracking {count} Slurm jobs to completion: {polls} poll intervals, {squeue} squeue "
        f"queries ({squeue / max(polls, 1):.2f} per interval), "
        f"{connection.calls.get('scontrol', 0)} scontrol look-ups for jobs gone from squeue."
    )


# The test cluster runs SGE's scheduler every second (and 1 s after each submission or end),
# so tests see jobs start at once; while it runs, qmaster holds submissions back for a second.
# SGE's own defaults schedule every 15 s and flush nothing: both timings are measured.
SGE_TIMINGS = {
    "test cluster: scheduler every 1 s": ("0:0:1", "1"),
    "SGE defaults: scheduler every 15 s": ("0:0:15", "0"),
}


@contextlib.contextmanager
def sge_scheduler_timing(interval: str, flush: str, tmp: Path) -> Iterator[None]:
    """Set schedule_interval and flush_submit/finish_sec for a while, then restore them."""
    saved = tmp / "sched_conf.saved"
    saved.write_text(
        subprocess.run(["qconf", "-ssconf"], capture_output=True, text=True, check=True).stdout
    )
    values = {"schedule_interval": interval, "flush_submit_sec": flush, "flush_finish_sec": flush}
    lines = []
    for line in saved.read_text().splitlines():
        key = line.split(maxsplit=1)[0] if line.strip() else ""
        lines.append(f"{key} {values[key]}" if key in values else line)
    changed = tmp / "sched_conf.bench"
    changed.write_text("\n".join(lines) + "\n")
    subprocess.run(["qconf", "-Msconf", str(changed)], capture_output=True, check=True)
    try:
        yield
    finally:
        subprocess.run(["qconf", "-Msconf", str(saved)], capture_output=True, check=True)


def sge_rows(args: argparse.Namespace, tmp: Path) -> list[Row]:
    script = tmp / "raw-sge.sh"
    script.write_text(
        "#!/bin/bash\n#$ -o /dev/null\n#$ -e /dev/null\n#$ -S /bin/bash\n#$ -h\ntrue\n"
    )
    script.chmod(0o755)

    def drain() -> None:
        release_all("sge")

    def raw() -> Row:
        argv = ["qsub", "-terse", str(script)]
        return timed(
            "raw qsub -terse loop",
            args.sge_jobs,
            lambda: raw_loop(argv, args.sge_jobs),
            "the limit",
        )

    rows = [raw()]
    drain()
    rows += zbatch_rows(
        ("sge-local", "sge-drmaa"),
        lambda name: args.drmaa_jobs if name == "sge-drmaa" else args.sge_jobs,
        raw,
        drain,
        args,
        tmp,
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=500, help="jobs per fast Slurm method")
    parser.add_argument("--slow-jobs", type=int, default=30, help="jobs per ssh-per-job method")
    parser.add_argument("--peer-jobs", type=int, default=100, help="jobs for submitit and psij")
    parser.add_argument("--track-jobs", type=int, default=2000, help="jobs tracked to completion")
    parser.add_argument("--sge-jobs", type=int, default=100, help="jobs per qsub method")
    # DRMAA submits in ~2 ms but qmaster stalls a request for 1 s now and then: a run long
    # enough to include its share of stalls, not 0.2 s that one stall can triple.
    parser.add_argument("--drmaa-jobs", type=int, default=1000, help="jobs per DRMAA method")
    parser.add_argument(
        "--rounds", type=int, default=3, help="raw/method pairs per targeted method (median)"
    )
    parser.add_argument("--only", choices=["slurm", "sge", "track"], default=None)
    args = parser.parse_args()
    ensure_sge_env()
    tmp = Path(tempfile.mkdtemp(prefix="zbatch-bench-"))
    try:
        if args.only in (None, "slurm"):
            rows = slurm_rows(args, tmp)
            print("### Slurm submission\n\n" + table(rows, rows[0]) + "\n")
            print(ssh_versus_exec(rows) + "\n")
        if args.only in (None, "track"):
            print(tracking_row(args.track_jobs, tmp) + "\n")
        if args.only in (None, "sge"):
            for timing, (interval, flush) in SGE_TIMINGS.items():
                with sge_scheduler_timing(interval, flush, tmp):
                    rows = sge_rows(args, tmp)
                print(f"### SGE submission ({timing})\n\n" + table(rows, rows[0]) + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
