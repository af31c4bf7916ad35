"""Issue 10: property-based tests of the validation layer and of rendering (hypothesis).

For arbitrary text (control characters, lone surrogates and hostile fragments included) in
every string field of a wrapper step, `prepare_job` either raises a ZbatchError or produces a
script that `bash -n` accepts and whose directives and commands are exactly the template's
(the corpus' script check, against a known-good render of the same profile). The safety
functions raise nothing but ParameterError, and what they accept is what they promise.
"""

from __future__ import annotations

import copy
import json
import re
import unicodedata
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.hostile.conftest import RENDER_OUTSIDE, HostileWorld, Target
from tests.hostile.corpus_cases import bases, expand_text
from tests.hostile.corpus_checks import profile_shape, run_inprocess, script_problems

EXAMPLES = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Pieces that make the interesting inputs likely: line breaks before directives, shell
# syntax, quotes, NUL, surrogates, escapes, Unicode digits, path syntax.
FRAGMENTS = [
    "\n", "\r", "\n#SBATCH --uid=0", "\n#$ -l h_rt=999:00:00", "\n# zbatch-local: time-limit=9",
    "$(touch /tmp/zbatch-hostile-property)", "`", "'", '"', ";", "|", "&", "\\", "\x00",
    "\ud800", "\udfff", "\x1b[2J", "\u2028", "\u0085", "\x0b", "\u00b2", "\u0663", "\uff14",
    "..", "/", " ", "\t", "#", "=", ":", "{", "}", "%", "~", "*", "-", "--", "x", "1", "0",
    "9999999999999", "@@root@@/", "/etc/passwd", "PATH", "LD_PRELOAD", "$", "!", "[", "]",
]  # fmt: skip
ANY_CHAR = st.characters(exclude_categories=())  # surrogates included
TEXT = st.one_of(
    st.text(alphabet=ANY_CHAR, max_size=30),
    st.lists(st.one_of(st.sampled_from(FRAGMENTS), ANY_CHAR), max_size=10).map("".join),
)
# Printable text full of shell syntax: what quoting must keep inert.
SHELLISH = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=24)
IDENTIFIER = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True)
SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**15, max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    TEXT,
)
JSONISH = st.recursive(
    SCALAR,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(TEXT, inner, max_size=3)),
    max_leaves=8,
)

CLUSTER_TEXT_FIELDS = [
    "scheduler", "partition", "job_name", "account", "qos", "constraints", "prefer", "array",
    "time_limit", "memory_per_node", "min_memory_per_cpu", "cpus_per_task", "tasks", "nodes",
    "gpus", "gpus_per_node", "exclusive",
]  # fmt: skip
PATH_FIELDS = [
    ("parameters", "workingdir"),
    ("parameters", "recipewrapper"),
    ("parameters", "recipefile"),
    ("parameters", "recipeenvironment"),
    ("job_parameters", "working_directory"),
    ("job_parameters", "results_directory"),
]
STRING_FIELDS: list[tuple[str, ...]] = [
    *[("parameters", "cluster", name) for name in CLUSTER_TEXT_FIELDS],
    *PATH_FIELDS,
    ("parameters", "wrapper"),
    ("parameters", "cluster_project"),
    ("parameters", "cluster_queue"),
    ("parameters", "cluster_submission_parameters"),
    ("parameters", "cluster", "qsub_submission_parameters"),
    ("parameters", "cluster"),  # legacy: a cluster's name
]


@cache
def loaded_profile(path: str) -> Any:
    from zbatch.model.profiles import load_profile_file

    return load_profile_file(path)


def base_node(base: str, target: Target) -> dict[str, Any]:
    node: dict[str, Any] = copy.deepcopy(bases()["bases"][base]["node"])
    node["parameters"]["workingdir"] = f"{target.root}/step"
    return node


def put(node: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    target = node
    for key in path[:-1]:
        child = target.get(key)
        if not isinstance(child, dict):
            child = {}
            target[key] = child
        target = child
    target[path[-1]] = value


def with_root(value: Any, target: Target) -> Any:
    """The drawn value with @@root@@ standing for the profile's folder."""
    if isinstance(value, str):
        return value.replace("@@root@@", target.root)
    if isinstance(value, list):
        return [with_root(v, target) for v in value]
    if isinstance(value, dict):
        return {with_root(k, target): with_root(v, target) for k, v in value.items()}
    return value


def strings_in(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in strings_in(v)]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [*strings_in(k), *strings_in(v)]]
    return []


def render_problems(
    hostile: HostileWorld, target: Target, base: str, node: dict[str, Any], drawn: Any
) -> list[str]:
    """[] when the step is refused with a ZbatchError or renders to a safe script."""
    from zbatch.errors import ZbatchError
    from zbatch.model.message import StepMessage
    from zbatch.prepare.job_files import JobContext, prepare_job

    info = bases()
    node = {**node, "output": copy.deepcopy(info["output"])}
    recipe = {"1": node, **copy.deepcopy(info["recipe"])}
    recipe = json.loads(expand_text(json.dumps(recipe), _markers(target)))
    body = {
        "environment": {"ID": "preview"},
        "payload": {"n": 1},
        "recipe": recipe,
        "recipe-path": [],
        "recipe-pointer": 1,
    }
    try:
        message = StepMessage.from_body(body)
        job = prepare_job(message, loaded_profile(str(target.path)), JobContext())
    except ZbatchError:
        event("refused with a ZbatchError")
        return []
    event("rendered")
    baseline = hostile.baseline(target, base)
    assert baseline is not None, f"the {base} step does not render with {target.name}"
    mode = str(info["bases"][base]["mode"])
    return script_problems(
        job.script, baseline, profile_shape(str(target.path)), mode=mode, hostile=strings_in(drawn)
    )


def _markers(target: Target) -> Any:
    from tests.hostile.corpus_cases import Markers

    return Markers(target.root, RENDER_OUTSIDE, "/nonexistent-canary")


def explain(target: Target, field: Any, value: Any, problems: list[str]) -> str:
    return f"{target.name}, {field} = {value!r}:\n" + "\n".join(problems)


# ---------------------------------------------------------------------------------------------
# Rendering


@EXAMPLES
@given(data=st.data())
def test_any_text_in_any_string_field(hostile: HostileWorld, data: st.DataObject) -> None:
    target = data.draw(st.sampled_from(hostile.targets), label="profile")
    field = data.draw(st.sampled_from(STRING_FIELDS), label="field")
    text = (
        TEXT if field not in PATH_FIELDS else st.one_of(TEXT, TEXT.map(lambda t: "@@root@@/" + t))
    )
    value = with_root(data.draw(text, label="value"), target)
    node = base_node("wrapper", target)
    put(node, field, value)
    problems = render_problems(hostile, target, "wrapper", node, value)
    assert not problems, explain(target, field, value, problems)


@EXAMPLES
@given(data=st.data())
def test_any_environment(hostile: HostileWorld, data: st.DataObject) -> None:
    target = data.draw(st.sampled_from(hostile.targets), label="profile")
    names = st.one_of(IDENTIFIER, IDENTIFIER, TEXT)  # mostly names that may pass
    environment = data.draw(
        st.dictionaries(names, st.one_of(TEXT, SCALAR, SHELLISH), min_size=1, max_size=3),
        label="env",
    )
    node = base_node("wrapper", target)
    node["parameters"]["cluster"]["environment"] = environment
    problems = render_problems(hostile, target, "wrapper", node, environment)
    assert not problems, explain(target, "environment", environment, problems)


@EXAMPLES
@given(data=st.data())
def test_any_json_in_any_field(hostile: HostileWorld, data: st.DataObject) -> None:
    target = data.draw(st.sampled_from(hostile.targets), label="profile")
    field = data.draw(
        st.sampled_from([*STRING_FIELDS, ("parameters", "cluster", "environment")]), label="field"
    )
    value = with_root(data.draw(JSONISH, label="value"), target)
    node = base_node("wrapper", target)
    put(node, field, value)
    problems = render_problems(hostile, target, "wrapper", node, value)
    assert not problems, explain(target, field, value, problems)


@EXAMPLES
@given(data=st.data())
def test_any_recipe_commands(hostile: HostileWorld, data: st.DataObject) -> None:
    """Recipe commands are shell by design where a profile allows them, but they must stay
    inside the job's command block: no directive, no line break of their own, valid syntax."""
    allowed = [t for t in hostile.targets if t.facts.allow_commands]
    target = data.draw(st.sampled_from(allowed), label="profile")
    commands = data.draw(st.one_of(TEXT, st.lists(TEXT, min_size=1, max_size=3)), label="cmds")
    node = base_node("commands", target)
    node["parameters"]["cluster"]["commands"] = commands
    problems = render_problems(hostile, target, "commands", node, commands)
    assert not problems, explain(target, "commands", commands, problems)


# ---------------------------------------------------------------------------------------------
# The wrapper's argument list (`zbatch wrap --dry-run`)

PHIL_ARGUMENT = re.compile(
    r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*=(?!-)[^\s;{}\"'=$\\]+"
)


@EXAMPLES
@given(
    xia2=st.dictionaries(TEXT, st.one_of(SCALAR, st.lists(TEXT, max_size=2)), max_size=3),
    ispyb=st.dictionaries(TEXT, SCALAR, max_size=2),
)
def test_xia2_arguments_stay_single_assignments(
    hostile: HostileWorld, tmp_path_factory: pytest.TempPathFactory, xia2: Any, ispyb: Any
) -> None:
    from tests.hostile.corpus_cases import dumps

    info = bases()
    node = copy.deepcopy(info["bases"]["wrapper"]["node"])
    node["job_parameters"] = {"xia2": xia2, "ispyb_parameters": ispyb}
    node["output"] = info["output"]
    recipe = json.loads(expand_text(json.dumps(info["recipe"]), _markers(hostile.targets[0])))
    body = {
        "environment": {"ID": "property"},
        "payload": {},
        "recipe": {"1": node, **recipe},
        "recipe-path": [],
        "recipe-pointer": 1,
    }
    path = Path(tmp_path_factory.getbasetemp()) / "property.recipewrap.json"
    path.write_bytes(dumps(body).encode("utf-8", "surrogatepass"))
    outcome = run_inprocess(
        ["wrap", "--wrap", "xia2", "--recipewrapper", str(path), "--dry-run", "--json"]
    )
    assert outcome.crash is None, outcome.crash
    assert "Traceback" not in outcome.stderr, outcome.stderr
    if outcome.exit_code != 0:
        lines = [ln for ln in outcome.stderr.splitlines() if ln.strip()]
        assert outcome.exit_code == 2 and len(lines) == 1, outcome.stderr
        assert lines[0].startswith("zbatch: error: "), outcome.stderr
        return
    argv = json.loads(outcome.stdout)["argv"]
    assert argv[0] == "xia2"
    for arg in argv[1:]:
        assert PHIL_ARGUMENT.fullmatch(arg) and arg.isprintable(), (arg, xia2, ispyb)


# ---------------------------------------------------------------------------------------------
# The validation layer


def is_control(char: str) -> bool:
    return unicodedata.category(char) in ("Cc", "Cs") or char in "\u2028\u2029"


def patterns() -> list[tuple[str, re.Pattern[str]]]:
    from zbatch.model import safety

    return sorted(
        (name, value)
        for name, value in vars(safety).items()
        if isinstance(value, re.Pattern) and not name.startswith("_")
    )


@EXAMPLES
@given(data=st.data(), value=st.one_of(TEXT, JSONISH))
def test_check_raises_only_parameter_errors_and_accepts_whole_matches(
    data: st.DataObject, value: Any
) -> None:
    from zbatch.errors import ParameterError
    from zbatch.model import safety

    name, pattern = data.draw(st.sampled_from(patterns()), label="pattern")
    try:
        accepted = safety.check(pattern, value, "value")
    except ParameterError:
        return
    assert accepted == value and isinstance(accepted, str), (name, value)
    assert pattern.fullmatch(accepted), (name, value)
    assert not any(is_control(c) for c in accepted), (name, value)


@EXAMPLES
@given(value=st.one_of(TEXT, JSONISH), multiline=st.booleans())
def test_check_text_accepts_no_control_characters(value: Any, multiline: bool) -> None:
    """Single-line text keeps no control character (a tab is whitespace, inside its line);
    multi-line text (a profile's own commands) keeps line breaks and tabs only."""
    from zbatch.errors import ParameterError
    from zbatch.model import safety

    try:
        accepted = safety.check_text(value, "value", multiline=multiline)
    except ParameterError:
        return
    assert accepted == value
    kept = "\t\n\r" if multiline else "\t"
    bad = [c for c in accepted if is_control(c) and c not in kept]
    assert not bad, (value, bad)


INT_TEXT = st.one_of(
    TEXT,
    st.text(alphabet=st.characters(categories=("Nd", "No", "Nl", "Zs")), max_size=6),
    st.text(alphabet="0123456789 +-_.,e\n\t", max_size=8),
    st.integers().map(str),
    st.integers(min_value=10**12, max_value=10**600).map(str),
)


@EXAMPLES
@given(
    value=st.one_of(INT_TEXT, SCALAR, st.lists(st.integers(), max_size=2)),
    low=st.integers(min_value=-5, max_value=5),
    span=st.integers(min_value=0, max_value=10**7),
)
def test_parse_int_accepts_only_ascii_digits_within_bounds(value: Any, low: int, span: int) -> None:
    from zbatch.errors import ParameterError
    from zbatch.model import safety

    high = low + span
    try:
        number = safety.parse_int(value, "value", low, high)
    except ParameterError:
        return
    assert type(number) is int and low <= number <= high, (value, number)
    if isinstance(value, str):
        digits = value.strip(" ")
        assert digits and all(c in "0123456789" for c in digits), value
        assert int(digits) == number
    else:
        assert type(value) is int and value == number, value


@EXAMPLES
@given(value=st.one_of(TEXT, JSONISH, st.sampled_from(["PATH", "LD_PRELOAD", "PYTHONPATH", "IFS"])))
def test_env_names_are_identifiers_and_not_denied(value: Any) -> None:
    from zbatch.errors import ParameterError
    from zbatch.model import safety

    try:
        name = safety.check_env_name(value, "name")
    except ParameterError:
        return
    assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name), value
    assert not safety.env_name_denied(name), value
    assert name not in ("PATH", "IFS", "ENV", "BASH_ENV", "PS4", "SHELLOPTS")
    assert not name.upper().startswith(("LD_", "PYTHON", "BASH_FUNC_")), value


@EXAMPLES
@given(
    value=st.one_of(
        TEXT,
        TEXT.map(lambda t: "/" + t),
        st.lists(st.sampled_from(["/", "..", ".", "a", "b", "//", "\n", " ", ":", "\x00"])).map(
            "".join
        ),
    )
)
def test_paths_are_absolute_normalised_and_plain(value: Any) -> None:
    import posixpath

    from zbatch.errors import ParameterError
    from zbatch.model import safety

    try:
        path = safety.check_path(value, "path")
    except ParameterError:
        return
    assert path.startswith("/") and ".." not in path.split("/"), value
    assert posixpath.normpath(path) == path, value
    assert not any(is_control(c) for c in path), value
    assert not re.search(r"[\s'\"`$;|&<>\\*?]", path), value
