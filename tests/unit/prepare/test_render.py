"""render_script's division of labour: Python decides, templates print, directives re-checked.

Issue 12 item 3: the Slurm memory directive is chosen in Python, SGE's exclusive resource is
the profile's name for it, and every value in a directive line passes the `directive` filter.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from zbatch.errors import ProfileError, TemplateError
from zbatch.model.jobs import JobPaths, JobSpec
from zbatch.model.profiles import Profile, parse_profile
from zbatch.prepare.render import (
    DIRECTIVE_LINES,
    DIRECTIVE_PATTERNS,
    SlurmMemory,
    derived_values,
    environment_for,
    render_script,
    shipped_template_dir,
)

PATHS = JobPaths(Path("/data/run"), "tag-1")
DIRECTIVE_PREFIXES = ("#SBATCH", "#$", "# zbatch-local:")


def profile(scheduler: str = "slurm", **resources: Any) -> Profile:
    return parse_profile(
        {"name": f"unit-{scheduler}", "scheduler": scheduler, "resources": resources}, "test"
    )


def job(**fields: Any) -> JobSpec:
    return JobSpec(**{"name": "unit-job", "workdir": "/data/run", "command": "echo hi", **fields})


def directive_lines(script: str) -> list[str]:
    return [line for line in script.splitlines() if line.startswith(DIRECTIVE_PREFIXES)]


# --- 1. the Slurm memory directive is decided in Python --------------------------------------


def test_slurm_template_holds_no_memory_choice() -> None:
    text = (shipped_template_dir() / "slurm.sh.j2").read_text()
    for decision in ("mem-per-cpu", "memory_mb", "memory_per_cpu_mb", "resources.slurm_memory"):
        assert decision not in text, f"slurm.sh.j2 still decides on memory ({decision})"


# (site's slurm_memory, memory_mb, memory_per_cpu_mb, cpus, the directive decided)
MEMORY_CASES: list[tuple[str, int | None, int | None, int, SlurmMemory | None]] = [
    ("mem", 8000, None, 4, SlurmMemory("mem", 8000)),
    ("mem", None, 1000, 4, SlurmMemory("mem-per-cpu", 1000)),
    ("mem", 8000, 1000, 4, SlurmMemory("mem-per-cpu", 1000)),
    ("mem-per-cpu", 8000, None, 3, SlurmMemory("mem-per-cpu", 2667)),
    ("mem-per-cpu", None, 500, 2, SlurmMemory("mem-per-cpu", 500)),
    ("mem", None, None, 4, None),
    ("mem-per-cpu", None, None, 4, None),
]


@pytest.mark.parametrize(("site", "memory_mb", "per_cpu_mb", "cpus", "decided"), MEMORY_CASES)
def test_memory_directive_is_decided_in_python(
    site: str, memory_mb: int | None, per_cpu_mb: int | None, cpus: int, decided: SlurmMemory | None
) -> None:
    spec = job(memory_mb=memory_mb, memory_per_cpu_mb=per_cpu_mb, cpus=cpus)
    site_profile = profile(slurm_memory=site)
    assert derived_values(site_profile, spec)["slurm_memory"] == decided
    script = render_script(site_profile, spec, PATHS)
    memory = [line for line in directive_lines(script) if line.startswith("#SBATCH --mem")]
    assert memory == (
        [] if decided is None else [f"#SBATCH --{decided.option}={decided.megabytes}M"]
    )


def test_slurm_template_prints_the_memory_directive_it_is_given() -> None:
    """Whatever the spec says, the template writes the render context's decision."""
    site_profile = profile(slurm_memory="mem")
    spec = job(memory_mb=8000, cpus=4)
    context = {**derived_values(site_profile, spec), "slurm_memory": SlurmMemory("mem-per-cpu", 7)}
    template = environment_for(site_profile).get_template("slurm.sh.j2")
    script = template.render(
        job=spec, paths=PATHS, profile=site_profile, resources=site_profile.resources,
        setup=[], **context,
    )  # fmt: skip
    assert [line for line in script.splitlines() if line.startswith("#SBATCH --mem")] == [
        "#SBATCH --mem-per-cpu=7M"
    ]


# --- 2. SGE's exclusive resource is the profile's ---------------------------------------------


def test_sge_exclusive_resource_defaults_to_exclusive() -> None:
    script = render_script(profile("sge"), job(exclusive=True), PATHS)
    assert "#$ -l exclusive=true" in directive_lines(script)


def test_custom_sge_exclusive_resource_is_rendered() -> None:
    script = render_script(profile("sge", sge_exclusive="excl"), job(exclusive=True), PATHS)
    lines = directive_lines(script)
    assert "#$ -l excl=true" in lines
    assert not any("exclusive" in line for line in lines)


def test_no_exclusive_directive_unless_asked() -> None:
    script = render_script(profile("sge", sge_exclusive="excl"), job(), PATHS)
    assert not any("excl" in line for line in directive_lines(script))


@pytest.mark.parametrize("name", ["excl=true -P other", "excl\n#$ -P other", "", "-excl"])
def test_profile_refuses_an_exclusive_resource_that_is_no_name(name: str) -> None:
    with pytest.raises(ProfileError, match="sge_exclusive"):
        profile("sge", sge_exclusive=name)


# --- 3. the directive filter ------------------------------------------------------------------

TEMPLATES = ["slurm.sh.j2", "sge.sh.j2", "local.sh.j2"]
INTERPOLATION = re.compile(r"\{\{(.*?)\}\}")


@pytest.mark.parametrize("name", TEMPLATES)
def test_every_value_in_a_directive_line_passes_the_filter(name: str) -> None:
    """Each `{{ value }}` of a directive line is `{{ value | directive("value") }}`, with a
    field the filter knows."""
    known = DIRECTIVE_PATTERNS.keys() | DIRECTIVE_LINES
    lines = (shipped_template_dir() / name).read_text().splitlines()
    found = 0
    for line in (line for line in lines if line.startswith(DIRECTIVE_PREFIXES)):
        for expression in INTERPOLATION.findall(line):
            found += 1
            match = re.fullmatch(r'\s*([\w.]+)\s*\|\s*directive\("([\w.]+)"\)\s*', expression)
            assert match, f"{name}: {line!r} writes {expression!r} unchecked"
            assert match.group(2) in known, f"{name}: no pattern for {match.group(2)!r}"
    assert found >= 5


@pytest.mark.parametrize("scheduler", ["slurm", "sge", "local"])
def test_a_line_break_in_a_hand_built_spec_never_renders(scheduler: str) -> None:
    """No Python check ran on this spec: the filter is the one wall left, and it holds."""
    spec = job(name="job\n#SBATCH --uid=0\n#$ -u root\n# zbatch-local: workdir=/")
    with pytest.raises(TemplateError, match=r"job\.name") as caught:
        render_script(profile(scheduler), spec, PATHS)
    assert f"template {scheduler}.sh.j2" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_value_off_its_pattern_names_its_field() -> None:
    spec = job(constraints="a b", partition="debug")
    with pytest.raises(TemplateError, match=r"job\.constraints 'a b' is not allowed"):
        render_script(profile(), spec, PATHS)


def test_a_bool_is_no_count() -> None:
    spec = dataclasses.replace(job(), cpus=True)
    with pytest.raises(TemplateError, match=r"job\.cpus"):
        render_script(profile(), spec, PATHS)


def test_a_site_template_naming_an_unknown_field_fails(tmp_path: Path) -> None:
    (tmp_path / "slurm.sh.j2").write_text(
        '#!/bin/bash\n#SBATCH --reservation={{ job.name | directive("job.reservation") }}\n'
    )
    site = profile().model_copy(update={"template_dir": str(tmp_path)})
    with pytest.raises(TemplateError, match=r"no pattern for field 'job\.reservation'"):
        render_script(site, job(), PATHS)


def test_clean_values_render_as_before() -> None:
    spec = job(
        partition="all.q", account="mx1", qos="normal", cpus=4, tasks=2, nodes=1,
        memory_mb=8000, time_limit_s=3723, gpus=1, gpus_per_node=1, exclusive=True,
        constraints="a&b|c", prefer="fast", array="1-4:2%2", extra_directives=["--requeue"],
        marker="0123abcd",
    )  # fmt: skip
    lines = directive_lines(render_script(profile(), spec, PATHS))
    assert lines == [
        "#SBATCH --job-name=unit-job",
        "#SBATCH --output=/data/run/zbatch-tag-1.out",
        "#SBATCH --error=/data/run/zbatch-tag-1.err",
        "#SBATCH --chdir=/data/run",
        "#SBATCH --comment=zbatch:0123abcd",
        "#SBATCH --partition=all.q",
        "#SBATCH --account=mx1",
        "#SBATCH --qos=normal",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --ntasks=2",
        "#SBATCH --nodes=1",
        "#SBATCH --mem=8000M",
        "#SBATCH --time=1:02:03",
        "#SBATCH --gpus=1",
        "#SBATCH --gres=gpu:1",
        "#SBATCH --exclusive",
        "#SBATCH --constraint=a&b|c",
        "#SBATCH --prefer=fast",
        "#SBATCH --array=1-4:2%2",
        "#SBATCH --requeue",
    ]
