"""Render job scripts from Jinja2 templates: strict, quoted, deterministic.

Templates hold every scheduler directive; Python only prepares values. A site overrides a
template by putting a file of the same name in its profile's `template_dir`.
"""

from __future__ import annotations

import functools
import math
import shlex
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2

from zbatch.errors import TemplateError
from zbatch.model.jobs import JobPaths, JobSpec
from zbatch.model.profiles import Profile
from zbatch.model.units import format_clock


def shquote(value: object) -> str:
    return shlex.quote(str(value))


def shipped_template_dir() -> Path:
    return Path(str(resources.files("zbatch_templates")))


def environment_for(profile: Profile) -> jinja2.Environment:
    return _environment(profile.template_dir)


@functools.lru_cache(maxsize=32)
def _environment(template_dir: str | None) -> jinja2.Environment:
    """One environment per template folder, so each template is compiled once per process
    (Jinja2 then checks the file's mtime, so an edited site template is still picked up)."""
    search = [shipped_template_dir()]
    if template_dir:
        search.insert(0, Path(template_dir).expanduser())
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(p) for p in search]),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 - shell scripts, not HTML; values go through shquote
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["shquote"] = shquote
    return env


def derived_values(profile: Profile, spec: JobSpec) -> dict[str, Any]:
    """Values computed once in Python so that templates stay declarative."""
    per_cpu = spec.memory_per_cpu_mb
    if per_cpu is None and spec.memory_mb is not None:
        per_cpu = math.ceil(spec.memory_mb / spec.cpus)
    return {
        "time_clock": format_clock(spec.time_limit_s) if spec.time_limit_s else None,
        "memory_per_cpu_mb": per_cpu,
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
        raise TemplateError(f"template {exc.name!r} not found in {env.loader.searchpath}") from None  # type: ignore[union-attr]
    except jinja2.TemplateError as exc:
        where = getattr(exc, "filename", None) or name
        line = getattr(exc, "lineno", None)
        raise TemplateError(f"template {where}{f' line {line}' if line else ''}: {exc}") from None
