"""`zbatch logs`: a job's stdout and stderr, wherever the job ran."""

from __future__ import annotations

import time
from pathlib import PurePosixPath

import click

from zbatch.cli._entries import address, resolve
from zbatch.clusters import Cluster
from zbatch.model.profiles import load_profile_file
from zbatch.service import status_refresh
from zbatch.service.ledger import Ledger, LedgerEntry
from zbatch.service.tracker import Tracker


@click.command()
@click.argument("job")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output until the job ends.")
@click.option("--stdout", "which", flag_value="stdout", help="Only the job's stdout.")
@click.option("--stderr", "which", flag_value="stderr", help="Only the job's stderr.")
def logs(job: str, follow: bool, which: str | None) -> None:
    """Print a job's stdout and stderr, read where the job ran (locally or over SSH).

    Without --stdout or --stderr the job's stdout goes to stdout and its stderr to stderr;
    with one of them, that one goes to stdout. A JOB is `profile:id`, or a bare job id or
    step key that only one job has.

    \b
    Example:
      zbatch logs local:1234 --stderr
      zbatch logs 1234 --follow
    """
    ledger = Ledger()
    (entry,) = resolve(ledger, [job])
    streams = [which] if which else ["stdout", "stderr"]
    profile = load_profile_file(entry.profile_source)
    with status_refresh.cluster_of(entry.profile_source) as cluster:
        follower = Follower(cluster, entry, streams, to_stderr=which is None)
        tracker = Tracker(cluster, ledger, profile.name, recipe_ids={entry.recipe_id})
        while True:
            current = ledger.get(entry.key) or entry
            follower.show()  # after reading the state: an ended job's output is complete
            if not follow or not current.active:
                break
            time.sleep(profile.poll_interval_s)
            tracker.poll_once()
    if not follower.seen:
        click.echo(f"zbatch: warning: {address(entry)} has left no output yet", err=True)


class Follower:
    """Prints what is new in a job's output files since the last look."""

    def __init__(
        self, cluster: Cluster, entry: LedgerEntry, streams: list[str], to_stderr: bool
    ) -> None:
        paths = entry.paths
        self.cluster = cluster
        self.files = {s: PurePosixPath(getattr(paths, s)) for s in streams}
        self.printed = dict.fromkeys(streams, 0)
        self.to_stderr = to_stderr
        self.seen = False

    def show(self) -> None:
        for stream, path in self.files.items():
            text = self.cluster.read_text(path)
            if text is None:
                continue
            self.seen = True
            if len(text) < self.printed[stream]:  # rewritten from the start
                self.printed[stream] = 0
            new = text[self.printed[stream] :]
            self.printed[stream] = len(text)
            if new:
                click.echo(new, nl=False, err=self.to_stderr and stream == "stderr")
