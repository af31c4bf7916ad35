"""What `zbatch run` and `zbatch submit --wait` share: the checks before a run, the dry run,
and waiting with progress, cancelling the run's jobs when the user stops waiting."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any, NoReturn

import click

from zbatch.cli._common import fail
from zbatch.cli._entries import address
from zbatch.cli._progress import ProgressView
from zbatch.clusters import Cluster, cluster_for
from zbatch.model.profiles import Profile
from zbatch.model.recipe import Recipe
from zbatch.prepare.recipe_check import CheckedStep, unused_parameters
from zbatch.service.ledger import Ledger, LedgerEntry
from zbatch.service.local_run import RecipeRunner, RunPlan, RunTimeout, StepOutcome

EXIT_INTERRUPTED = 130  # what a shell reports for a command ended by SIGINT


def run_root(workdir_root: str | None) -> Path:
    return Path(os.path.expanduser(workdir_root or "~/zbatch-runs"))


def make_runner(
    profile: Profile, cluster: Cluster, view: ProgressView, run_root_dir: Path | None = None
) -> RecipeRunner:
    root = run_root_dir or run_root(profile.workdir_root)
    return RecipeRunner(profile, cluster, Ledger(), root, view.echo, listener=view.changed)


def warn_unused(recipe: Recipe, params: dict[str, str]) -> None:
    unused = unused_parameters(recipe, params)
    if unused:
        names = ", ".join(unused)
        click.echo(f"zbatch: warning: no placeholder of the recipe uses --param {names}", err=True)


def show_dry_run(steps: list[CheckedStep]) -> None:
    """Each wrapper step's command and job script, as they would be submitted."""
    for step in steps:
        job = step.job
        click.echo(
            f"### step {step.message.pointer}: {job.paths.script} (workdir {job.spec.workdir})"
        )
        click.echo(f"### command: {job.spec.command}")
        click.echo(job.script.rstrip("\n"))
    click.echo(f"dry run: {len(steps)} wrapper step(s) checked, nothing submitted")


def _describe(entry: LedgerEntry) -> str:
    return f"step {entry.pointer} ({entry.scheduler} job {entry.job_id})"


def _stop(runner: RecipeRunner, view: ProgressView, why: str, keep_running: bool) -> None:
    # A second Ctrl-C must not leave the cancellation half done.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        if keep_running:
            for entry in runner.unfinished():
                view.echo(
                    f"{why}: left running {_describe(entry)} (--keep-running); "
                    f"`zbatch cancel {address(entry)}` stops it"
                )
            return
        cancelled = runner.stop()
        for entry in cancelled:
            view.echo(f"{why}: cancelled {_describe(entry)}")
        if not cancelled:
            view.echo(f"{why}: no job of the run was still running")
    finally:
        view.close()
        signal.signal(signal.SIGINT, previous)


def drive(
    runner: RecipeRunner,
    plan: RunPlan,
    view: ProgressView,
    timeout: float | None,
    keep_running: bool,
) -> list[StepOutcome]:
    """Run the plan to its end; on Ctrl-C or `timeout`, cancel its jobs (unless
    `keep_running`), say which, and exit non-zero (130 for Ctrl-C)."""
    try:
        outcomes = runner.run(plan, timeout)
    except KeyboardInterrupt:
        _stop(runner, view, "interrupted", keep_running)
        _exit(EXIT_INTERRUPTED)
    except RunTimeout as exc:
        _stop(runner, view, "timed out", keep_running)
        fail(str(exc), 1)
    view.close()
    return outcomes


def drive_recipe(
    profile: Profile,
    recipe: Recipe,
    values: dict[str, str],
    view: ProgressView,
    *,
    dry_run: bool,
    timeout: float | None,
    keep_running: bool,
) -> tuple[RecipeRunner, list[StepOutcome]] | None:
    """Check every step of `recipe`, then drive it to its end on the profile's cluster
    (`drive`); a dry run only shows the checked steps and gives None."""
    cluster = cluster_for(profile)
    try:
        runner = make_runner(profile, cluster, view)
        plan = checked_plan(runner, recipe, values, dry_run)
        if dry_run:
            show_dry_run(plan.steps)
            return None
        return runner, drive(runner, plan, view, timeout, keep_running)
    finally:
        cluster.close()


def _exit(code: int) -> NoReturn:
    raise SystemExit(code)


def checked_plan(
    runner: RecipeRunner, recipe: Recipe, params: dict[str, Any], dry_run: bool
) -> RunPlan:
    """Every wrapper step checked up front (a ZbatchError ends the command with one line)."""
    plan = runner.plan(recipe, params, resolve_on_cluster=not dry_run)
    warn_unused(recipe, params)
    return plan
