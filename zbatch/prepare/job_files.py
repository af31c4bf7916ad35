"""Prepare a step for submission: spec, job command, envelope files and the rendered script."""

from __future__ import annotations

import dataclasses
import functools
import os
import shlex
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Protocol

from zbatch.errors import ParameterError, RecipeError, WrapperError
from zbatch.model import safety
from zbatch.model.jobs import JobPaths, PreparedJob
from zbatch.model.message import StepMessage, step_key
from zbatch.model.profiles import Profile
from zbatch.prepare.parameters import (
    WRAPPER_DIRECTORY_KEYS,
    UnknownKeyCounter,
    confinement_root,
    envelope_files,
    is_wrapper_step,
    named_paths,
    read_step,
    step_commands,
    wrapper_directory,
    wrapper_name,
)
from zbatch.prepare.render import render_script
from zbatch.transport.factory import job_transport_args

# Real paths of many paths at once, on the host where jobs run (`Cluster.resolve_paths`).
ResolvePaths = Callable[[Sequence[str]], list[str]]


class ResolvesPaths(Protocol):
    """Anything that resolves paths where jobs run: a cluster (this layer may not import it)."""

    def resolve_paths(self, paths: Sequence[str]) -> list[str]: ...


def resolve_here(paths: Sequence[str]) -> list[str]:
    return [os.path.realpath(path) for path in paths]


class PathResolver:
    """One job's paths resolved on the job's host: all that the step names in one batch (one
    round trip over SSH), remembered for this job only, so a later change on disk is seen by
    the next job."""

    def __init__(self, resolve_paths: ResolvePaths) -> None:
        self._resolve_paths = resolve_paths
        self._known: dict[str, str] = {}

    def prefetch(self, paths: Iterable[str]) -> None:
        wanted = [path for path in dict.fromkeys(paths) if path not in self._known]
        if wanted:
            self._known.update(zip(wanted, self._resolve_paths(wanted), strict=True))

    def __call__(self, path: str) -> str:
        self.prefetch([path])
        return self._known[path]


@dataclass(frozen=True)
class JobContext:
    """How a job reaches back: the zbatch command on the cluster and its transport options;
    and how the paths a step names are resolved where the job runs."""

    transport_args: list[str] = field(default_factory=list)
    zbatch_command: list[str] | None = None
    # The cluster's resolver (`on`): SFTP REALPATH over SSH, realpath(3) here. Without one, a
    # profile whose jobs run on this machine resolves here, and a remote one gets text checks
    # only (`zbatch render` must work for an SSH profile whose host it cannot reach): its
    # symbolic links are checked when the step is submitted, through the cluster.
    resolve_paths: ResolvePaths | None = None
    # Counts unknown `parameters.cluster` keys a profile ignores (unknown_cluster_keys: warn):
    # the dispatcher's metric; None: logged only.
    count_unknown_cluster_key: UnknownKeyCounter | None = None

    def command_for(self, profile: Profile) -> list[str]:
        # The profile knows where zbatch lives on the cluster; this process is the fallback.
        return profile.zbatch_command or self.zbatch_command or [sys.executable, "-m", "zbatch"]

    def counting(self, count: UnknownKeyCounter) -> JobContext:
        """This context, telling `count` each unknown cluster key a profile ignores."""
        return dataclasses.replace(self, count_unknown_cluster_key=count)

    def on(self, cluster: ResolvesPaths) -> JobContext:
        """This context, resolving paths through `cluster` (on the host its jobs run on)."""
        return dataclasses.replace(self, resolve_paths=cluster.resolve_paths)

    def resolver(self, profile: Profile) -> PathResolver | None:
        """A fresh per-job resolver, or None where only the text of paths can be checked."""
        if self.resolve_paths is not None:
            return PathResolver(self.resolve_paths)
        if profile.connection.type in ("local", "drmaa"):  # DRMAA submits from this machine
            return PathResolver(resolve_here)
        return None


@functools.lru_cache(maxsize=1)
def installed_wrappers() -> list[str]:
    """Entry points are read once per process: scanning them costs milliseconds per step."""
    return sorted(ep.name for ep in entry_points(group="zbatch.wrappers"))


# Wrappers whose job_parameters name the program to run: as powerful as recipe commands, so
# only where the profile allows those.
ANY_PROGRAM_WRAPPERS = frozenset({"generic"})


def job_tag(message: StepMessage) -> str:
    return f"{safety.safe_tag(message.recipe_id, 8)}-{message.pointer}"


def _wrapper_command(
    name: object, message: StepMessage, recipewrapper: Path, profile: Profile, context: JobContext
) -> str:
    where = f"step {message.pointer}: parameters.wrapper"
    wrapper = safety.check(safety.NAME, name, where)
    if profile.wrappers is not None and wrapper not in profile.wrappers:
        permitted = ", ".join(profile.wrappers) or "none"
        raise WrapperError(
            f"{where}: wrapper {wrapper!r} is not permitted by profile {profile.name!r}; "
            f"permitted: {permitted}"
        )
    # This is the gate: inside the job `zbatch wrap` cannot know the profile, so a wrapper
    # that runs whatever program the message names is refused here, before any job exists.
    if wrapper in ANY_PROGRAM_WRAPPERS and not profile.allow_commands:
        raise WrapperError(
            f"{where}: wrapper {wrapper!r} runs any program the message names, and profile "
            f"{profile.name!r} does not allow recipe commands (allow_commands: false)"
        )
    if profile.connection.type == "local" and wrapper not in installed_wrappers():
        raise WrapperError(
            f"{where}: unknown wrapper {wrapper!r}; installed: {', '.join(installed_wrappers())}"
        )
    argv = [
        *context.command_for(profile),
        "wrap",
        "--wrap",
        wrapper,
        "--recipewrapper",
        str(recipewrapper),
        *job_transport_args(context.transport_args, profile.job_broker_config),
    ]
    root = confinement_root(profile)
    if root is not None:  # from the profile, never the message: the wrapper's folders stay in it
        argv += ["--workdir-root", root]
    return shlex.join(argv)


def _commands_text(lines: list[str], recipewrapper: Path, message: StepMessage) -> str:
    """dlstbx's placeholders; paths were pattern-checked, so plain replacement is safe."""
    params = message.step.get("parameters", {})
    text = "\n".join(lines).replace("$RECIPEWRAP", str(recipewrapper))
    for key, placeholder in (("recipefile", "$RECIPEFILE"), ("recipeenvironment", "$RECIPEENV")):
        if params.get(key):
            text = text.replace(placeholder, str(Path(params[key])))
    return text.replace("$RECIPEPOINTER", str(message.pointer))


def check_wrapper_directories(
    message: StepMessage, workdir: str, root: str | None, resolve: Callable[[str], str] | None
) -> None:
    """job_parameters.working_directory / results_directory inside the root, as written and
    resolved (refused here, before a job is queued; `zbatch wrap` checks them again)."""
    job = message.step.get("job_parameters")
    if root is None or not isinstance(job, dict):
        return
    for key in WRAPPER_DIRECTORY_KEYS:
        what = f"step {message.pointer}: job_parameters.{key}"
        path = wrapper_directory(job.get(key), workdir, what)
        if path is not None:
            safety.check_within(path, root, what, resolve)


def prepare_job(message: StepMessage, profile: Profile, context: JobContext) -> PreparedJob:
    if not is_wrapper_step(message.step):
        raise RecipeError(
            f"step {message.pointer} is not a wrapper step: its parameters name no "
            "'wrapper', 'cluster' or 'commands'"
        )
    root = confinement_root(profile)
    resolve = context.resolver(profile)
    if root is not None and resolve is not None:
        resolve.prefetch([root, *named_paths(message, profile)])  # one batch for the job
    spec = read_step(message, profile, resolve, context.count_unknown_cluster_key)
    paths = JobPaths(Path(spec.workdir), job_tag(message))
    recipewrapper, files = envelope_files(message, paths, root, resolve)
    check_wrapper_directories(message, spec.workdir, root, resolve)
    params = message.step["parameters"]
    lines = step_commands(message, profile)
    # A `wrapper` holding a path is the recipe-wrapper file (cryoem-services), read above.
    wrapper = wrapper_name(params)
    if wrapper is not None:
        if lines is not None:
            raise ParameterError(
                f"step {message.pointer}: names both a wrapper and commands; give one of them"
            )
        command = _wrapper_command(wrapper, message, recipewrapper, profile, context)
    elif lines:
        command = _commands_text(lines, recipewrapper, message)
    elif params.get("wrapper") is not None:
        raise ParameterError(
            f"step {message.pointer}: parameters.wrapper names a recipe-wrapper file (it holds "
            "'/'), not a wrapper, and the step has no commands to run"
        )
    else:
        raise ParameterError(f"step {message.pointer}: names neither a wrapper nor commands")
    spec = dataclasses.replace(spec, command=command, marker=step_key(message))
    return PreparedJob(
        spec, paths, render_script(profile, spec, paths), files, message_file=recipewrapper
    )
