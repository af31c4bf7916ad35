"""Prepare a step for submission: spec, job command, envelope files and the rendered script."""

from __future__ import annotations

import dataclasses
import functools
import shlex
import sys
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path

from zbatch import safety
from zbatch.envelope import StepMessage
from zbatch.errors import ParameterError, RecipeError, WrapperError
from zbatch.jobs import JobPaths
from zbatch.ledger import step_key
from zbatch.profiles import Profile
from zbatch.render import render_script
from zbatch.steps import PreparedJob, envelope_files, is_wrapper_step, read_step, step_commands


@dataclass(frozen=True)
class JobContext:
    """How a job reaches back: the zbatch command on the cluster and its transport options."""

    transport_args: list[str] = field(default_factory=list)
    zbatch_command: list[str] | None = None

    def command_for(self, profile: Profile) -> list[str]:
        # The profile knows where zbatch lives on the cluster; this process is the fallback.
        return profile.zbatch_command or self.zbatch_command or [sys.executable, "-m", "zbatch"]


@functools.lru_cache(maxsize=1)
def installed_wrappers() -> list[str]:
    """Entry points are read once per process: scanning them costs milliseconds per step."""
    return sorted(ep.name for ep in entry_points(group="zbatch.wrappers"))


def job_tag(message: StepMessage) -> str:
    return f"{safety.safe_tag(message.recipe_id, 8)}-{message.pointer}"


def _wrapper_command(
    name: object, message: StepMessage, recipewrapper: Path, profile: Profile, context: JobContext
) -> str:
    where = f"step {message.pointer}: parameters.wrapper"
    wrapper = safety.check(safety.NAME, name, where)
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
        *context.transport_args,
    ]
    return shlex.join(argv)


def _commands_text(
    lines: list[str], files: dict[Path, str], recipewrapper: Path, message: StepMessage
) -> str:
    """dlstbx's placeholders; paths were pattern-checked, so plain replacement is safe."""
    params = message.step.get("parameters", {})
    text = "\n".join(lines).replace("$RECIPEWRAP", str(recipewrapper))
    for key, placeholder in (("recipefile", "$RECIPEFILE"), ("recipeenvironment", "$RECIPEENV")):
        if params.get(key):
            text = text.replace(placeholder, str(Path(params[key])))
    return text.replace("$RECIPEPOINTER", str(message.pointer))


def prepare_job(message: StepMessage, profile: Profile, context: JobContext) -> PreparedJob:
    if not is_wrapper_step(message.step):
        raise RecipeError(
            f"step {message.pointer} is not a wrapper step: its parameters name no "
            "'wrapper', 'cluster' or 'commands'"
        )
    spec = read_step(message, profile)
    paths = JobPaths(Path(spec.workdir), job_tag(message))
    recipewrapper, files = envelope_files(message, paths)
    params = message.step["parameters"]
    lines = step_commands(message, profile)
    if params.get("wrapper") is not None:
        if lines is not None:
            raise ParameterError(
                f"step {message.pointer}: names both a wrapper and commands; give one of them"
            )
        command = _wrapper_command(params["wrapper"], message, recipewrapper, profile, context)
    elif lines:
        command = _commands_text(lines, files, recipewrapper, message)
    else:
        raise ParameterError(f"step {message.pointer}: names neither a wrapper nor commands")
    spec = dataclasses.replace(spec, command=command, marker=step_key(message))
    return PreparedJob(spec, paths, render_script(profile, spec, paths), files)
