"""Render job scripts from Jinja2 templates: strict, quoted, deterministic.

Templates hold every scheduler directive; Python only prepares values. A site overrides a
template by putting a file of the same name in its profile's `template_dir`, best one that
`{% extends %}` the shipped template and fills its `directives` and `setup` blocks.
"""

from __future__ import annotations

import functools
import math
import re
import shlex
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePath
from typing import Any, Literal

import jinja2

from zbatch.errors import ParameterError, TemplateError
from zbatch.model import safety
from zbatch.model.jobs import JobPaths, JobSpec
from zbatch.model.profiles import Profile
from zbatch.model.units import format_clock

# `format_clock`'s H:MM:SS, the one directive value computed here rather than checked in `safety`.
CLOCK = re.compile(r"[0-9]{1,12}:[0-5][0-9]:[0-5][0-9]")
# The pattern each value in a directive line (`#SBATCH`, `#$`, `# zbatch-local:`) must match
# as a whole, by the field the template names: the patterns `safety` checked the values with
# before. A second wall: a value that slipped past those checks (or a JobSpec built by hand)
# fails the render instead of starting a new line or option in a directive.
DIRECTIVE_PATTERNS: dict[str, re.Pattern[str]] = {
    "job.name": safety.NAME,
    "job.workdir": safety.PATH,
    "job.marker": safety.NAME,
    "job.partition": safety.NAME,
    "job.account": safety.NAME,
    "job.qos": safety.NAME,
    "job.cpus": safety.DIGITS,
    "job.tasks": safety.DIGITS,
    "job.nodes": safety.DIGITS,
    "job.gpus": safety.DIGITS,
    "job.gpus_per_node": safety.DIGITS,
    "job.time_limit_s": safety.DIGITS,
    "job.constraints": safety.CONSTRAINT,
    "job.prefer": safety.CONSTRAINT,
    "job.array": safety.ARRAY,
    "paths.stdout": safety.PATH,
    "paths.stderr": safety.PATH,
    "time_clock": CLOCK,
    "memory_per_cpu_mb": safety.DIGITS,
    "slurm_memory.option": safety.NAME,
    "slurm_memory.megabytes": safety.DIGITS,
    "resources.sge_memory": safety.NAME,
    "resources.sge_parallel_environment": safety.NAME,
    "resources.sge_gpu_resource": safety.NAME,
    "resources.sge_exclusive": safety.NAME,
}
# Whole directives (the profile's `extra_directives`, a legacy recipe's raw qsub arguments)
# hold spaces: they are checked as one line of text, as the profile and `qsub_args` did.
DIRECTIVE_LINES = frozenset({"job.extra_directives"})


def shquote(value: object) -> str:
    return shlex.quote(str(value))


@jinja2.pass_context
def directive(context: jinja2.runtime.Context, value: object, field: str) -> str:
    """`value` as text for a directive line, once it matches `field`'s strict pattern again;
    otherwise a TemplateError naming the field, and nothing is rendered."""
    where = f"template {context.name}: directive value"
    if isinstance(value, PurePath | int) and not isinstance(value, bool):
        value = str(value)  # paths and counts; a bool is no count
    try:
        if field in DIRECTIVE_LINES:
            return safety.check_text(value, field, limit=safety.MAX_LINE)
        pattern = DIRECTIVE_PATTERNS.get(field)
        if pattern is None:
            known = ", ".join(sorted(DIRECTIVE_PATTERNS.keys() | DIRECTIVE_LINES))
            raise TemplateError(f"{where}: no pattern for field {field!r}; known fields: {known}")
        return safety.check(pattern, value, field)
    except ParameterError as exc:
        raise TemplateError(f"{where} {exc}") from None


def shipped_template_dir() -> Path:
    return Path(str(resources.files("zbatch_templates")))


# A site template reaches the shipped one of the same name as `shipped:slurm.sh.j2`; plain
# `{% extends "slurm.sh.j2" %}` in the site's slurm.sh.j2 means the same (see join_path).
SHIPPED_PREFIX = "shipped"


class _TemplateEnvironment(jinja2.Environment):
    def join_path(self, template: str, parent: str) -> str:
        """`template` as named inside `parent`: a site template that extends or includes its
        own name means the shipped one, which it could otherwise never reach past itself."""
        if template == parent:
            return f"{SHIPPED_PREFIX}:{template}"
        return template


def environment_for(profile: Profile) -> jinja2.Environment:
    return _environment(profile.template_dir)


@functools.lru_cache(maxsize=32)
def _environment(template_dir: str | None) -> jinja2.Environment:
    """One environment per template folder, so each template is compiled once per process
    (Jinja2 then checks the file's mtime, so an edited site template is still picked up)."""
    search = [shipped_template_dir()]
    if template_dir:
        folder = Path(template_dir).expanduser()
        if not folder.is_dir():
            # Falling back to the shipped templates would silently drop the site's changes.
            raise TemplateError(
                f"template_dir {template_dir} is not a folder on this machine: create it with "
                "the site's templates, or remove template_dir to use the shipped ones"
            )
        search.insert(0, folder)
    shipped = jinja2.FileSystemLoader(str(shipped_template_dir()))
    env = _TemplateEnvironment(
        loader=jinja2.ChoiceLoader(
            [
                jinja2.PrefixLoader({SHIPPED_PREFIX: shipped}, delimiter=":"),
                jinja2.FileSystemLoader([str(p) for p in search]),
            ]
        ),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # shell scripts, not HTML; values go through shquote
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["shquote"] = shquote
    env.filters["directive"] = directive
    return env


@dataclass(frozen=True)
class SlurmMemory:
    """The one memory directive of a Slurm job: `--<option>=<megabytes>M`."""

    option: Literal["mem", "mem-per-cpu"]
    megabytes: int


def memory_per_cpu(spec: JobSpec) -> int | None:
    """The step's memory per cpu, or its memory per node shared among its cpus."""
    if spec.memory_per_cpu_mb is None and spec.memory_mb is not None:
        return math.ceil(spec.memory_mb / spec.cpus)
    return spec.memory_per_cpu_mb


def slurm_memory(profile: Profile, spec: JobSpec) -> SlurmMemory | None:
    """`--mem-per-cpu` when the step asks per cpu or the site counts memory per cpu
    (`resources.slurm_memory`), else `--mem` for the node; None when no memory is asked."""
    per_cpu = memory_per_cpu(spec)
    if per_cpu and (spec.memory_per_cpu_mb or profile.resources.slurm_memory == "mem-per-cpu"):
        return SlurmMemory("mem-per-cpu", per_cpu)
    if spec.memory_mb:
        return SlurmMemory("mem", spec.memory_mb)
    return None


def derived_values(profile: Profile, spec: JobSpec) -> dict[str, Any]:
    """Values computed once in Python so that templates stay declarative."""
    return {
        "time_clock": format_clock(spec.time_limit_s) if spec.time_limit_s else None,
        "memory_per_cpu_mb": memory_per_cpu(spec),
        "slurm_memory": slurm_memory(profile, spec),
        "command_lines": spec.command.splitlines(),
    }


def render_script(profile: Profile, spec: JobSpec, paths: JobPaths) -> str:
    env = environment_for(profile)
    name = f"{profile.scheduler}.sh.j2"
    try:
        template = env.get_template(name)
        return template.render(
            job=spec,
            paths=paths,
            profile=profile,
            resources=profile.resources,
            setup=profile.setup,
            **derived_values(profile, spec),
        )
    except jinja2.TemplateNotFound as exc:
        folders = [str(d) for d in (profile.template_dir, shipped_template_dir()) if d]
        raise TemplateError(f"template {exc.name!r} not found in {folders}") from None
    except RecursionError:
        raise TemplateError(f"template {name}: includes or extends itself without end") from None
    except jinja2.TemplateError as exc:
        where = getattr(exc, "filename", None) or name
        line = getattr(exc, "lineno", None)
        raise TemplateError(f"template {where}{f' line {line}' if line else ''}: {exc}") from None
