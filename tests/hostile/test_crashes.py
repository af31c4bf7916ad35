"""Issue 10's crashes, each a case that raised an uncaught exception before.

Through the real CLI (`zbatch render`, `zbatch run`, `zbatch wrap`): a hostile input is a
one-line `zbatch: error:` and exit 2, never a traceback. Below the CLI: the parsers every
message, file and job-written record goes through refuse what they cannot use with a
ZbatchError (or read it as "no record"), never another exception.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ZbatchRun, one_line_error, wrapper_step, write_recipe
from zbatch.errors import ParameterError, RecipeError, ZbatchError
from zbatch.injob.outbox import Outbox, retry_window_s
from zbatch.injob.runner import allocated_cpus, wrap
from zbatch.model import safejson
from zbatch.model.jobs import ExitRecord
from zbatch.model.message import StepMessage, start_messages
from zbatch.model.recipe import MAX_FORMAT_WIDTH, Recipe
from zbatch.model.units import parse_duration, parse_memory_mb
from zbatch.schedulers import localbatch

DEEP = 10_000


def deep_array(depth: int = DEEP) -> str:
    return "[" * depth + "]" * depth


def deep_object(depth: int = DEEP) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def splice(document: dict[str, Any], marker: str, raw: str) -> str:
    """`document` as JSON with the string `marker` replaced by raw JSON text."""
    return json.dumps(document).replace(json.dumps(marker), raw)


def valid_recipe(work: Path) -> dict[str, Any]:
    step = wrapper_step(["echo", "hi"])
    step["parameters"]["workingdir"] = str(work / "step")
    return {"1": step, "start": [[1, []]]}


# --- safejson: size, depth, encoding --------------------------------------------------------


@pytest.mark.parametrize("text", [deep_array(), deep_object(), deep_array(65), deep_object(65)])
def test_deep_json_is_refused_with_one_clear_line(text: str) -> None:
    with pytest.raises(safejson.JsonError) as caught:
        safejson.loads(text, "test message")
    assert str(caught.value) == "test message: nested more than 64 levels deep"


def test_json_at_the_depth_limit_is_accepted() -> None:
    assert safejson.loads(deep_array(64), "x") is not None
    with pytest.raises(RecipeError, match="nested more than 8 levels"):
        safejson.loads(deep_array(9), "x", max_depth=8)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"\xff\xfe{}", "invalid UTF-8 at byte 0"),
        (b'{"a": "\xed\xa0\x80"}', "invalid UTF-8"),  # an encoded surrogate
        (b"{" * 10, "not valid JSON"),
        (b" " * (8 * 1024 * 1024 + 1), "over the 8388608-byte limit"),
        ("9" * 5000, "not valid JSON"),  # beyond Python's int-parsing digit limit
    ],
)
def test_bad_json_is_refused(data: bytes | str, words: str) -> None:
    with pytest.raises(RecipeError) as caught:
        safejson.loads(data, "x")
    assert words in str(caught.value) and "\n" not in str(caught.value)


def test_lone_surrogate_escapes_parse() -> None:
    assert safejson.loads(b'{"a": "\\ud800"}', "x") == {"a": "\ud800"}


def test_load_file_reads_no_more_than_the_limit(tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    big.write_bytes(b"[" + b"1," * 600 + b"1]")
    with pytest.raises(RecipeError, match="over the 1000-byte limit"):
        safejson.load_file(big, max_bytes=1000)
    with pytest.raises(RecipeError, match="cannot read"):
        safejson.load_file(tmp_path / "missing.json")


# --- recipes and step messages --------------------------------------------------------------


@pytest.mark.parametrize("where", ["top", "payload", "node", "environment"])
def test_deep_step_message_is_a_recipe_error(where: str, tmp_path: Path) -> None:
    body = start_messages(Recipe.from_json(valid_recipe(tmp_path)))[0].to_body()
    if where == "top":
        text = deep_array()
    elif where == "payload":
        text = splice({**body, "payload": "DEEP"}, "DEEP", deep_object())
    elif where == "node":
        body["recipe"]["1"]["parameters"]["extra"] = "DEEP"
        text = splice(body, "DEEP", deep_array())
    else:
        text = splice({**body, "environment": "DEEP"}, "DEEP", deep_object())
    with pytest.raises(RecipeError, match="nested more than 64 levels deep"):
        StepMessage.from_body(text.encode())


def test_deep_parsed_objects_are_refused_too() -> None:
    deep: Any = []
    for _ in range(200):
        deep = [deep]
    with pytest.raises(RecipeError, match="nested more than 64"):
        Recipe.from_json({"1": {"parameters": {"a": deep}}, "start": [[1, []]]})


@pytest.mark.parametrize("key", ["²", "\u0661", "9" * 5000, "1\n", " 1"])
def test_odd_node_keys_are_recipe_errors(key: str) -> None:
    with pytest.raises(RecipeError, match="is not a node number"):
        Recipe.from_json({key: {}, "start": [[1, []]]})


@pytest.mark.parametrize(
    "text",
    [
        "{p:>1500000000}",
        "{p:.1500000000}",
        "{p:{w}}",
        "{p:>\u0661\u0665\u0660\u0660\u0660\u0660\u0660\u0660\u0660\u0660}",
        "{p:01001}",
    ],
)
def test_placeholder_widths_do_not_allocate(text: str) -> None:
    recipe = Recipe.from_json({"1": {"parameters": {"a": text}}, "start": [[1, []]]})
    started = time.monotonic()
    with pytest.raises(RecipeError, match=f"over {MAX_FORMAT_WIDTH} is not allowed"):
        recipe.apply_parameters({"p": "x", "w": ">1500000000"})
    assert time.monotonic() - started < 1


def test_small_format_specs_still_work_and_unknown_names_stay() -> None:
    recipe = Recipe.from_json(
        {"1": {"parameters": {"a": "{p:>5}", "b": "{q:>1500000000}"}}, "start": [[1, []]]}
    )
    filled = recipe.apply_parameters({"p": "x"}).nodes[1]["parameters"]
    assert filled == {"a": "    x", "b": "{q:>1500000000}"}


def test_substitution_output_is_bounded() -> None:
    recipe = Recipe.from_json({"1": {"parameters": {"a": "{p}" * 10_000}}, "start": [[1, []]]})
    with pytest.raises(RecipeError, match="adds more than"):
        recipe.apply_parameters({"p": "x" * 10_000})
    replaced = {str(n): {"parameters": {"a": "{$REPLACE:p}"}} for n in range(1, 200)}
    chain = {**replaced, "start": [[n, []] for n in range(1, 200)]}
    with pytest.raises(RecipeError, match="adds more than"):
        Recipe.from_json(chain).apply_parameters({"p": ["y" * 100_000]})


def test_replace_placeholder_in_a_key_must_be_text() -> None:
    recipe = Recipe.from_json({"1": {"parameters": {"{$REPLACE:p}": 1}}, "start": [[1, []]]})
    with pytest.raises(RecipeError, match="must fill in text"):
        recipe.apply_parameters({"p": [1, 2]})


@pytest.mark.parametrize("delay", [1e999, 10**400, -1, float("nan"), True, "5"])
def test_odd_transport_delays_do_not_break_sending(delay: Any) -> None:
    recipe = Recipe.from_json({"1": {"queue": "q", "transport-delay": delay}, "start": [[1, []]]})
    target = start_messages(recipe)[0].destination()
    assert target.delay is None or (math.isfinite(target.delay) and target.delay <= 2**32 / 1000)


# --- sizes and durations --------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["9" * 400, 10**400, "²", "²G", "\u0663G", "4G\n", 2**41, "1" * 17 + "M", 0, -5, True]
)
def test_bad_memory_is_a_parameter_error(value: object) -> None:
    with pytest.raises(ParameterError, match="is not a size"):
        parse_memory_mb(value, "memory_per_node")


@pytest.mark.parametrize(
    "value", ["9" * 400, 10**400, "²", "²:00:00", "\u0663:00:00", "1:00:00\n", 11 * 366 * 86400, -1]
)
def test_bad_duration_is_a_parameter_error(value: object) -> None:
    with pytest.raises(ParameterError, match="is not a duration"):
        parse_duration(value, "time_limit")


def test_good_sizes_and_durations_still_parse() -> None:
    assert parse_memory_mb("4G") == 4096 and parse_memory_mb(" 512 MB") == 512
    assert parse_duration("1-00:00:00") == 86400 and parse_duration("0:05:00") == 300


# --- records a job writes -------------------------------------------------------------------

HOSTILE_RECORDS = [
    "[]",
    "[1]",
    "null",
    '"text"',
    "1",
    '{"exit_code": 1e999, "end_time": 1}',
    '{"exit_code": -1e999, "end_time": 1}',
    '{"exit_code": NaN, "end_time": 1}',
    '{"exit_code": 0, "end_time": Infinity}',
    '{"exit_code": ' + "9" * 400 + ', "end_time": 1}',
    '{"exit_code": ' + "9" * 5000 + ', "end_time": 1}',
    '{"exit_code": "0", "end_time": 1}',
    '{"exit_code": true, "end_time": 1}',
    '{"exit_code": [0], "end_time": 1}',
    '{"exit_code": 0}',
    deep_object(),
    deep_array(),
    "\udcff",
]


@pytest.mark.parametrize("text", HOSTILE_RECORDS)
def test_hostile_exit_records_read_as_no_record(text: str) -> None:
    assert ExitRecord.parse(text) is None


def test_exit_record_side_fields_are_dropped_not_trusted() -> None:
    record = ExitRecord.parse(
        '{"exit_code": 0, "end_time": 1, "signal": {"x": 1}, "job_id": "1; rm -rf ~"}'
    )
    assert record == ExitRecord(0, 1.0, "", "")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[]\n",
        '{"channel": "x"}\n',
        '{"message": 1}\n',
        deep_array() + "\n",
        '{"message": {"recipe": {"1": {}, "start": [[1, []]]}, "recipe-pointer": 1}}\n[1]\n',
        '{"message": {"recipe": {"1": {}, "start": [[1, []]]}, "recipe-pointer": 1}}\n'
        '{"channel": ["x"], "payload": 1}\n',
    ],
)
def test_hostile_outbox_is_a_recipe_error(text: str, tmp_path: Path) -> None:
    with pytest.raises(RecipeError):
        Outbox.from_text(tmp_path / "box.jsonl", text, lambda: None)  # type: ignore[arg-type,return-value]


@pytest.mark.parametrize("value", ["²", "1e999", "nan", "-1", "9" * 400, "10s"])
def test_junk_send_retry_window_is_refused_before_the_job_runs(
    value: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """It used to become 600 s silently; `zbatch wrap` now refuses it before it reads anything."""
    monkeypatch.setenv("ZBATCH_SEND_RETRY_S", value)
    with pytest.raises(
        ParameterError, match=r"\$ZBATCH_SEND_RETRY_S=.* is not a number of seconds"
    ):
        retry_window_s()
    with pytest.raises(ParameterError, match="ZBATCH_SEND_RETRY_S"):
        wrap("generic", tmp_path / "missing.json", lambda: None)  # type: ignore[arg-type,return-value]


@pytest.mark.parametrize(("value", "seconds"), [("", 600.0), (" 5 ", 5.0), ("0.5", 0.5)])
def test_send_retry_window(value: str, seconds: float, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZBATCH_SEND_RETRY_S", value)
    assert retry_window_s() == seconds


@pytest.mark.parametrize(
    "record",
    [
        b"[]",
        b"null",
        deep_array().encode(),
        b'{"state": ["RUNNING"], "runner": "x", "exit_code": 1e999}',
        b'{"state": "RUNNING", "runner": -1}',
        b'{"state": "PENDING", "runner": 1e999, "marker": ["m"]}',
    ],
)
def test_hostile_localbatch_records_do_not_crash_status(record: bytes, tmp_path: Path) -> None:
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "7.json").write_bytes(record)
    lines = localbatch.status(tmp_path, ["7"])
    assert all(line.count("|") == 2 for line in lines)
    assert localbatch.find(tmp_path) == []
    # A runner pid of -1 must never reach kill(): kill(-1) signals every process we own.
    assert localbatch.cancel(tmp_path, ["7"]) in (0, 1)


# --- cpus inside the job --------------------------------------------------------------------


@pytest.mark.parametrize("junk", ["²", "", "-1", "0", "9" * 400, "1e3", " ", "\u0663"])
def test_junk_cpu_variables_fall_back_to_one(junk: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("SLURM_CPUS_PER_TASK", "NSLOTS", "ZBATCH_CPUS"):
        monkeypatch.setenv(var, junk)
    assert allocated_cpus() == 1
    monkeypatch.setenv("ZBATCH_CPUS", "3")
    assert allocated_cpus() == 3


def test_wrap_with_junk_cpu_variables_runs(tmp_path: Path, zbatch: ZbatchRun) -> None:
    message = start_messages(Recipe.from_json(valid_recipe(tmp_path)))[0]
    path = tmp_path / "m.recipewrap.json"
    path.write_text(json.dumps(message.to_body()))
    env = {"SLURM_CPUS_PER_TASK": "²", "NSLOTS": "9" * 400, "ZBATCH_CPUS": ""}
    args = ("wrap", "--wrap", "generic", "--recipewrapper", str(path), "--dry-run", "--json")
    result = zbatch(*args, env=env)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert json.loads(result.stdout)["argv"] == ["echo", "hi"]


# --- through the real CLI -------------------------------------------------------------------


def test_run_with_deep_recipe_file(tmp_path: Path, make_profile: Any, zbatch: ZbatchRun) -> None:
    recipe = valid_recipe(tmp_path / "work")
    recipe["1"]["job_parameters"]["deep"] = "DEEP"
    path = tmp_path / "deep.json"
    path.write_text(splice(recipe, "DEEP", deep_array()))
    result = zbatch("run", str(path), "--profile", str(make_profile()), timeout=60)
    assert "nested more than 64 levels deep" in one_line_error(result)
    assert result.returncode == 2


def test_run_with_deep_top_level(tmp_path: Path, make_profile: Any, zbatch: ZbatchRun) -> None:
    path = tmp_path / "deep.json"
    path.write_text(deep_object())
    result = zbatch("run", str(path), "--profile", str(make_profile()), timeout=60)
    assert "nested more than 64 levels deep" in one_line_error(result)
    assert result.returncode == 2


@pytest.mark.parametrize("document", [deep_array(), deep_object(), "DEEP-PAYLOAD"])
def test_wrap_with_deep_recipewrapper(tmp_path: Path, zbatch: ZbatchRun, document: str) -> None:
    if document == "DEEP-PAYLOAD":
        body = start_messages(Recipe.from_json(valid_recipe(tmp_path)))[0].to_body()
        document = splice({**body, "payload": "DEEP"}, "DEEP", deep_array())
    path = tmp_path / "deep.recipewrap.json"
    path.write_text(document)
    result = zbatch("wrap", "--wrap", "generic", "--recipewrapper", str(path), timeout=60)
    assert "nested more than 64 levels deep" in one_line_error(result)
    assert result.returncode == 2


def render(
    zbatch: ZbatchRun, profile: Path, recipe: dict[str, Any], tmp: Path, *params: str
) -> Any:
    path = write_recipe(tmp / "recipe.json", recipe)
    extra = [arg for p in params for arg in ("--param", p)]
    return zbatch("render", "--profile", str(profile), "--recipe", str(path), *extra, timeout=60)


@pytest.mark.parametrize(
    ("where", "text"),
    [
        ("job_parameters", "{p:>1500000000}"),
        ("job_parameters", "{p:.1500000000}"),
        ("workingdir", "/x/{p:>1500000000}"),
    ],
)
def test_render_with_huge_placeholder_width(
    where: str, text: str, tmp_path: Path, make_profile: Any, zbatch: ZbatchRun
) -> None:
    recipe = valid_recipe(tmp_path / "work")
    if where == "job_parameters":
        recipe["1"]["job_parameters"]["command"] = ["echo", text]
    else:
        recipe["1"]["parameters"]["workingdir"] = text
    started = time.monotonic()
    result = render(zbatch, make_profile(), recipe, tmp_path, "p=x")
    assert "is not allowed" in one_line_error(result) and result.returncode == 2
    assert time.monotonic() - started < 30


def test_run_with_huge_placeholder_width(
    tmp_path: Path, make_profile: Any, zbatch: ZbatchRun
) -> None:
    recipe = valid_recipe(tmp_path / "work")
    recipe["1"]["job_parameters"]["command"] = ["echo", "{p:>1500000000}"]
    path = write_recipe(tmp_path / "recipe.json", recipe)
    result = zbatch("run", str(path), "--profile", str(make_profile()), "--param", "p=x")
    assert "is not allowed" in one_line_error(result) and result.returncode == 2


CLUSTER_CASES: list[tuple[str, str, Any]] = [
    ("cluster", "memory_per_node", "9" * 400),
    ("cluster", "memory_per_node", 10**400),
    ("cluster", "memory_per_node", "²G"),
    ("cluster", "min_memory_per_cpu", "9" * 400),
    ("cluster", "time_limit", "9" * 400 + ":00:00"),
    ("cluster", "time_limit", 10**400),
    ("cluster", "cpus_per_task", "²"),
    ("cluster", "gpus", "²"),
    ("cluster", "tasks", "²"),
    ("cluster", "nodes", "²"),
    ("cluster", "gpus_per_node", "²"),
    ("cluster", "cpus_per_task", "9" * 400),
    ("parameters", "cluster_queue", ["a", "b"]),
    ("parameters", "cluster_queue", {"a": 1}),
    ("parameters", "cluster_submission_parameters", "-pe smp ²"),
    ("parameters", "cluster_submission_parameters", "-pe smp " + "9" * 400),
]


@pytest.mark.parametrize(("level", "key", "value"), CLUSTER_CASES)
def test_render_refuses_odd_numbers_and_types(
    level: str, key: str, value: Any, tmp_path: Path, make_profile: Any, zbatch: ZbatchRun
) -> None:
    recipe = valid_recipe(tmp_path / "work")
    target = recipe["1"]["parameters"]
    (target["cluster"] if level == "cluster" else target)[key] = value
    # No memory or time limit in the profile: nothing caps the number before it is used.
    result = render(zbatch, make_profile(), recipe, tmp_path)
    one_line_error(result)
    assert result.returncode == 2


def test_recipe_errors_are_zbatch_errors() -> None:
    # The services dead-letter ZbatchErrors as refusals: every parser's error must be one.
    assert issubclass(safejson.JsonError, ZbatchError)
