"""Issue 10's injections, each a case that got through before: line breaks and directives.

Every case goes through the real `zbatch render` with a copy of each shipped profile (its
workdir_root pointed at this test's folder), so the Slurm, SGE, DRMAA and local templates
are all exercised.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import ZbatchRun, one_line_error, write_recipe
from zbatch.errors import TemplateError
from zbatch.model.jobs import JobPaths, JobSpec
from zbatch.model.profiles import Profile, parse_profile
from zbatch.prepare.render import render_script

SHIPPED = Path(__file__).resolve().parents[2] / "site-configs"
# reference.yaml lists every key at its default: documentation, not a site's settings.
PROFILES = sorted(p.stem for p in SHIPPED.glob("*.yaml") if p.stem != "reference")
CANARY = "/tmp/zbatch-canary-injection"


@pytest.fixture(autouse=True)
def no_canary() -> Any:
    Path(CANARY).unlink(missing_ok=True)
    yield
    assert not Path(CANARY).exists(), "a hostile value was executed"


def shipped_copy(name: str, root: Path, **changes: Any) -> Path:
    """A shipped profile confined to `root`, with commands allowed unless said otherwise."""
    data = yaml.safe_load((SHIPPED / f"{name}.yaml").read_text())
    data.update(workdir_root=str(root), allow_commands=True, **changes)
    data.pop("template_dir", None)
    path = root.parent / f"{name}-copy.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def commands_step(root: Path, **cluster: Any) -> dict[str, Any]:
    return {
        "1": {
            "queue": "cluster.submission",
            "parameters": {
                "workingdir": str(root / "step"),
                "cluster": {"commands": ["echo hello"], **cluster},
            },
        },
        "start": [[1, []]],
    }


def render(
    zbatch: ZbatchRun, profile: Path, recipe: dict[str, Any], tmp_path: Path, *params: str
) -> Any:
    path = write_recipe(tmp_path / "recipe.json", recipe)
    extra = [arg for p in params for arg in ("--param", p)]
    return zbatch("render", "--profile", str(profile), "--recipe", str(path), *extra)


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    return work


# (case id, cluster values, words in the error): each one a line break into a script.
LINE_BREAKS: list[tuple[str, dict[str, Any], str]] = [
    ("env key trailing newline", {"environment": {"X\n": "1"}}, "environment variable name"),
    ("env value SGE directive", {"environment": {"A": "x\n#$ -l h_rt=99:00:00"}}, "line break"),
    ("env value carriage return", {"environment": {"A": "x\rid"}}, "line break"),
    ("env value ANSI escape", {"environment": {"A": "\x1b[2Jhello"}}, "control character"),
    ("env value line separator", {"environment": {"A": "x\u2028y"}}, "line break"),
    ("job name trailing newline", {"job_name": "job\n"}, "job_name"),
    ("partition trailing newline", {"partition": "debug\n"}, "partition"),
    ("account trailing newline", {"account": "mx\n"}, "account"),
    ("qos trailing newline", {"qos": "normal\n"}, "qos"),
    ("array trailing newline", {"array": "1-4\n"}, "array"),
    ("constraints trailing newline", {"constraints": "a&b\n"}, "constraints"),
    ("prefer trailing newline", {"prefer": "fast\n"}, "prefer"),
    ("commands SGE directive", {"commands": ["echo a", "#$ -l h_rt=999:00:00"]}, "directive"),
    ("commands SBATCH directive", {"commands": ["  #SBATCH --uid=0"]}, "directive"),
    ("commands directive after newline", {"commands": "echo a\n#$ -P other"}, "directive"),
    ("commands carriage return", {"commands": ["echo a\r#$ -P other"]}, "line break"),
]  # fmt: skip


@pytest.mark.parametrize("profile_name", PROFILES)
@pytest.mark.parametrize(
    ("_case", "cluster", "words"), LINE_BREAKS, ids=[c[0] for c in LINE_BREAKS]
)
def test_no_line_break_reaches_a_script(
    _case: str,
    cluster: dict[str, Any],
    words: str,
    profile_name: str,
    root: Path,
    tmp_path: Path,
    zbatch: ZbatchRun,
) -> None:
    profile = shipped_copy(profile_name, root)
    line = one_line_error(render(zbatch, profile, commands_step(root, **cluster), tmp_path))
    assert words in line


@pytest.mark.parametrize("profile_name", PROFILES)
@pytest.mark.parametrize("key", ["workingdir", "recipewrapper", "recipefile", "recipeenvironment"])
def test_trailing_newline_in_a_path_is_refused(
    key: str, profile_name: str, root: Path, tmp_path: Path, zbatch: ZbatchRun
) -> None:
    """`$` matched before a final newline: "/x\\n" cut the header short and ran a bare line."""
    recipe = commands_step(root)
    recipe["1"]["parameters"][key] = f"{root}/x\n"
    line = one_line_error(render(zbatch, shipped_copy(profile_name, root), recipe, tmp_path))
    assert key in line and "line break" in line


def test_param_with_newline_filled_into_a_path_and_a_key(
    root: Path, tmp_path: Path, zbatch: ZbatchRun
) -> None:
    recipe = commands_step(root, environment={"{name}": "1"})
    recipe["1"]["parameters"]["workingdir"] = str(root) + "/{p}"
    profile = shipped_copy("sge-local", root)
    line = one_line_error(render(zbatch, profile, recipe, tmp_path, "p=x\n", "name=A"))
    assert "workingdir" in line
    line = one_line_error(render(zbatch, profile, recipe, tmp_path, "p=x", "name=A\n"))
    assert "environment variable name" in line


@pytest.mark.parametrize("profile_name", PROFILES)
def test_directives_are_the_templates_own(
    profile_name: str, root: Path, tmp_path: Path, zbatch: ZbatchRun
) -> None:
    """Hostile but single-line values stay values: quoted in the body, never a directive."""
    hostile = {"A": f"x; touch {CANARY}", "B": f"$(touch {CANARY})", "C": "'\"`id`#$ -P x"}
    profile = shipped_copy(profile_name, root)
    result = render(zbatch, profile, commands_step(root, environment=hostile), tmp_path)
    assert result.returncode == 0, result.stderr
    body = result.stdout.split("\n")
    header = [line for line in body if line.startswith(("#SBATCH", "#$", "# zbatch-local:"))]
    assert all(CANARY not in line and "-P x" not in line for line in header)
    exports = [line for line in body if line.startswith("export ")]
    assert sorted(line.split("=")[0] for line in exports if line[7] in "ABC") == [
        "export A", "export B", "export C",
    ]  # fmt: skip


def test_render_prints_the_staged_script_byte_for_byte(
    root: Path, tmp_path: Path, zbatch: ZbatchRun
) -> None:
    """The preview is what is submitted: click.echo stripped escape bytes from it."""
    profile = shipped_copy("local", root, setup=["printf '\x1b[0m'"])
    recipe = commands_step(root, environment={"GREETING": "grüße"})
    rendered = render(zbatch, profile, recipe, tmp_path)
    assert rendered.returncode == 0, rendered.stderr
    result = zbatch("run", str(tmp_path / "recipe.json"), "--profile", str(profile))
    assert result.returncode == 0, result.stdout + result.stderr
    (script,) = root.rglob("zbatch-*.sh")
    staged, staged_form = script.read_text(), rendered.stdout
    # Each run draws its own recipe ID (render: "preview"): it names the files and the marker.
    for pattern in (r"zbatch-(?:preview|[0-9a-f]{8})-1", r"marker=[0-9a-f]{32}"):
        (ours,) = set(re.findall(pattern, staged))
        staged_form = re.sub(pattern, ours, staged_form)
    assert staged.encode() == staged_form.encode()
    assert "\x1b[0m" in staged_form and "grüße" in staged_form


def test_image_templates_with_hashes_reach_xia2_as_one_argument(
    tmp_path: Path, zbatch: ZbatchRun
) -> None:
    """argv never meets a shell, and phil reads '#' inside a value as text (x_####.cbf)."""
    message = {
        "environment": {"ID": "hash-test"},
        "payload": [],
        "recipe": {
            "1": {
                "queue": "cluster.submission",
                "parameters": {"wrapper": "xia2"},
                "job_parameters": {
                    "working_directory": str(tmp_path / "xia2"),
                    "xia2": {"image": "/data/x_####.cbf:1:20"},
                },
            },
            "start": [[1, []]],
        },
        "recipe-path": [],
        "recipe-pointer": 1,
    }
    path = tmp_path / "step.recipewrap.json"
    path.write_text(json.dumps(message))
    result = zbatch("wrap", "--wrap", "xia2", "--recipewrapper", str(path), "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    assert "image=/data/x_####.cbf:1:20" in result.stdout


# Issue 12: the templates' own wall. Specs built by hand skip every check in zbatch.prepare,
# so only the `directive` filter stands between each hostile value and a directive line.
SCHEDULER_FIELDS = {
    "slurm": [
        "name", "workdir", "marker", "partition", "account", "qos", "cpus", "tasks", "nodes",
        "gpus", "gpus_per_node", "constraints", "prefer", "array", "extra_directives",
    ],
    "sge": [
        "name", "workdir", "marker", "partition", "account", "gpus", "array", "extra_directives",
    ],
    "local": ["name", "workdir", "marker", "time_limit_s"],
}  # fmt: skip
# Per field: a line break carrying each scheduler's directives, and a value of one line that
# its pattern refuses (a space starts another option in a directive). The time limit is
# computed with before rendering, so it can only be an int off its pattern.
HOSTILE_VALUES: dict[str, tuple[object, ...]] = {
    "extra_directives": (["--requeue\n#SBATCH --uid=0"], ["--requeue\x1b[2J"]),
    "workdir": (f"/tmp/x\n#$ -u root\ntouch {CANARY}", "/tmp/x y"),
    "time_limit_s": (-60,),
}
DIRECTIVE_INJECTION = "1\n#SBATCH --uid=0\n#$ -u root\n# zbatch-local: workdir=/"
HAND_BUILT = [
    (scheduler, field, value)
    for scheduler, fields in SCHEDULER_FIELDS.items()
    for field in fields
    for value in HOSTILE_VALUES.get(field, (DIRECTIVE_INJECTION, "1 -P other"))
]


def hand_built_profile(scheduler: str) -> Profile:
    return parse_profile({"name": "hand-built", "scheduler": scheduler}, "test")


def hand_built_id(scheduler: str, field: str, value: object) -> str:
    return f"{scheduler}-{field}-{'newline' if chr(10) in str(value) else 'pattern'}"


@pytest.mark.parametrize(
    ("scheduler", "field", "value"),
    HAND_BUILT,
    ids=[hand_built_id(*case) for case in HAND_BUILT],
)
def test_directive_filter_refuses_a_hand_built_spec(
    scheduler: str, field: str, value: object
) -> None:
    fields: dict[str, Any] = {"name": "hostile", "workdir": "/tmp/x", "command": "echo hi"}
    spec = JobSpec(**{**fields, field: value})
    paths = JobPaths(Path("/tmp/x"), "tag")
    with pytest.raises(TemplateError) as caught:
        render_script(hand_built_profile(scheduler), spec, paths)
    assert f"job.{field}" in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("scheduler", ["slurm", "sge", "local"])
def test_directive_filter_refuses_hand_built_paths(scheduler: str) -> None:
    spec = JobSpec(name="hostile", workdir="/tmp/x", command="echo hi")
    paths = JobPaths(Path("/tmp/x"), "tag.out\n#SBATCH --uid=0\n#$ -u root")
    with pytest.raises(TemplateError, match=r"paths\.stdout"):
        render_script(hand_built_profile(scheduler), spec, paths)


@pytest.mark.parametrize(
    "resource", ["sge_exclusive", "sge_gpu_resource", "sge_parallel_environment", "sge_memory"]
)
def test_directive_filter_refuses_a_profile_that_skipped_validation(resource: str) -> None:
    """A profile copied with `model_copy(update=...)` is not validated again."""
    profile = hand_built_profile("sge")
    hostile = profile.resources.model_copy(update={resource: "x=true\n#$ -u root"})
    profile = profile.model_copy(update={"resources": hostile})
    spec = JobSpec(
        name="hostile", workdir="/tmp/x", command="echo hi", cpus=2, memory_mb=100, gpus=1,
        exclusive=True,
    )  # fmt: skip
    with pytest.raises(TemplateError, match=rf"resources\.{resource}"):
        render_script(profile, spec, JobPaths(Path("/tmp/x"), "tag"))
