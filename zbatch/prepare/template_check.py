"""Check a profile's job-script template before any step relies on it.

A site template may change a script freely, but a few parts are what zbatch itself relies on:
the output and error paths and the working directory (where a job's files are found), the
marker (which stops a redelivered step being submitted twice), the resources a step asked for,
and the exit record (how a job's outcome is known). `profiles check` renders a sample step with
the profile's templates and with the shipped ones, and names any of these lines the site's
script lacks.
"""

from __future__ import annotations

from pathlib import Path

from zbatch.errors import TemplateError
from zbatch.model.jobs import JobPaths, JobSpec
from zbatch.model.profiles import Profile
from zbatch.prepare.render import render_script, shquote

DIRECTIVE_PREFIXES = ("#SBATCH", "#$", "# zbatch-local:")
SAMPLE_PATHS = JobPaths(Path("/zbatch-check/work"), "check-0001")


def sample_step(profile: Profile) -> JobSpec:
    """A step asking for every resource a template must pass on (as a step may)."""
    return JobSpec(
        name="zbatch-check",
        workdir=str(SAMPLE_PATHS.workdir),
        command="true",
        partition=profile.defaults.partition or "zbatch-check",
        cpus=2,
        memory_mb=1024,
        time_limit_s=3600,
        marker="0123456789abcdef",
    )


def _required_lines(script: str) -> list[str]:
    """The directive lines and the exit-record lines of a shipped script."""
    lines = [line for line in script.splitlines() if line.startswith(DIRECTIVE_PREFIXES)]
    lines.append(f"zbatch_exit_record={shquote(SAMPLE_PATHS.exit_record)}")
    lines.append("trap zbatch_write_exit EXIT")
    return lines


def template_problems(profile: Profile) -> list[str]:
    """Why the profile's template would break zbatch, one line each; none for the shipped."""
    if not profile.template_dir:
        return []
    where = f"{profile.source or profile.name}: template_dir {profile.template_dir}"
    step = sample_step(profile)
    shipped = profile.model_copy(update={"template_dir": None})
    try:
        script = render_script(profile, step, SAMPLE_PATHS)
    except TemplateError as exc:
        return [f"{where}: a sample step does not render: {exc}"]
    have = set(script.splitlines())
    missing = [
        line
        for line in _required_lines(render_script(shipped, step, SAMPLE_PATHS))
        if line not in have
    ]
    if not missing:
        return []
    return [
        f"{where}: {profile.scheduler}.sh.j2 leaves out {missing[0]!r}"
        + (f" and {len(missing) - 1} more required lines" if len(missing) > 1 else "")
        + f': start it with {{% extends "{profile.scheduler}.sh.j2" %}} and add lines in its '
        "directives and setup blocks (README: Overriding a template)"
    ]
