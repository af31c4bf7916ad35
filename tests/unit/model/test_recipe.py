"""Recipe loading, validation and substitution, checked against python-workflows itself."""

from __future__ import annotations

import json
from typing import Any

import pytest
from workflows.recipe import Recipe as WorkflowsRecipe

from zbatch.errors import RecipeError
from zbatch.model.recipe import Recipe

GOOD: dict[str, Any] = {
    "1": {
        "queue": "cluster.submission",
        "parameters": {"workingdir": "/data/{visit}"},
        "output": {"success": [2], "failure": 3},
    },
    "2": {"queue": "ispyb", "parameters": {"dc": "{ispyb_dc_info[dcid]}"}, "output": 3},
    "3": {"queue": "notify"},
    "start": [[1, []]],
    "error": [3],
}


def test_good_recipe_loads_and_round_trips() -> None:
    recipe = Recipe.from_json(json.dumps(GOOD))
    assert sorted(recipe.nodes) == [1, 2, 3]
    assert recipe.start == [(1, [])]
    assert recipe.outputs(1) == {"success": [2], "failure": [3]}
    assert recipe.outputs(2) == [3]
    assert Recipe.from_json(recipe.to_json()).to_json() == recipe.to_json()


def test_workflows_accepts_what_zbatch_writes() -> None:
    recipe = Recipe.from_json(GOOD)
    theirs = WorkflowsRecipe(json.dumps(recipe.to_json()))
    theirs.validate()
    assert theirs.recipe[1]["output"] == {"success": [2], "failure": 3}


BAD: list[tuple[str, Any, str]] = [
    ("empty", {}, "non-empty JSON object"),
    ("no start", {"1": {"queue": "a"}}, "'start' must be a non-empty list"),
    ("empty start", {"1": {"queue": "a"}, "start": []}, "'start' must be a non-empty list"),
    ("start pair", {"1": {}, "start": [[1]]}, "[node number, payload] pair"),
    ("start string id", {"1": {}, "start": [["1", []]]}, "[node number, payload] pair"),
    ("missing start node", {"1": {}, "start": [[2, []]]}, "start refers to node 2"),
    ("non-numeric key", {"foo": {}, "start": [[1, []]]}, "node key 'foo'"),
    ("node zero", {"0": {}, "start": [[1, []]]}, "node 0"),
    ("node not object", {"1": [], "start": [[1, []]]}, "node 1 must be an object"),
    (
        "missing output",
        {"1": {"output": 2}, "start": [[1, []]]},
        "node 1 field 'output' refers to node 2",
    ),
    ("string link", {"1": {"output": ["2"]}, "2": {}, "start": [[1, []]]}, "invalid link"),
    ("self loop", {"1": {"output": 1}, "start": [[1, []]]}, "cycle"),
    ("cycle", {"1": {"output": 2}, "2": {"output": {"x": 1}}, "start": [[1, []]]}, "cycle"),
    ("unreachable", {"1": {}, "2": {}, "start": [[1, []]]}, "node 2 is not reachable"),
    ("bad error", {"1": {}, "start": [[1, []]], "error": {"a": 1}}, "top-level 'error'"),
]


@pytest.mark.parametrize(("_name", "data", "message"), BAD, ids=[b[0] for b in BAD])
def test_invalid_recipes_name_the_problem(_name: str, data: Any, message: str) -> None:
    with pytest.raises(RecipeError, match=None) as caught:
        Recipe.from_json(data, source="r.json")
    assert message in str(caught.value)
    assert str(caught.value).startswith("r.json")


# workflows accepts a node that is not an object; zbatch is stricter there.
ALSO_BAD_FOR_WORKFLOWS = [b for b in BAD[1:] if b[0] != "node not object"]


@pytest.mark.parametrize(
    ("_name", "data", "_message"),
    ALSO_BAD_FOR_WORKFLOWS,
    ids=[b[0] for b in ALSO_BAD_FOR_WORKFLOWS],
)
def test_workflows_also_rejects_them(_name: str, data: Any, _message: str) -> None:
    with pytest.raises(Exception):  # noqa: B017 - workflows raises several types
        WorkflowsRecipe(json.dumps(data)).validate()


def test_invalid_json_is_reported() -> None:
    with pytest.raises(RecipeError, match="not valid JSON"):
        Recipe.from_json(b"{not json", source="x.json")


SUBSTITUTION_CASES: list[tuple[Any, dict[str, Any]]] = [
    ({"a": "{x}", "b": ["{y}-{x}", 5], "{x}": "key"}, {"x": "1", "y": 2}),
    ({"a": "{unknown} stays", "b": "{d[k]} and {unknown[k]}"}, {"d": {"k": "v"}}),
    (
        {"a": "{$REPLACE:obj}", "b": "{$REPLACE:nothing}", "c": "{$REPLACE:obj[deep]}"},
        {"obj": {"deep": [1, 2]}},
    ),
]


@pytest.mark.parametrize(("node", "params"), SUBSTITUTION_CASES)
def test_apply_parameters_matches_workflows(node: dict[str, Any], params: dict[str, Any]) -> None:
    data = {"1": {"parameters": node}, "start": [[1, []]]}
    ours = Recipe.from_json(data).apply_parameters(params).to_json()["1"]["parameters"]
    theirs = WorkflowsRecipe(json.dumps(data))
    theirs.apply_parameters(params)
    assert ours == theirs.recipe[1]["parameters"]


@pytest.mark.parametrize("text", ["text with { stray brace", "{0}", "{d[missing]}", "{x:>{y}"])
def test_text_workflows_would_crash_on_is_left_alone(text: str) -> None:
    data = {"1": {"parameters": {"a": text}}, "start": [[1, []]]}
    result = Recipe.from_json(data).apply_parameters({"d": {}}).to_json()
    assert result["1"]["parameters"]["a"] == text


def test_attribute_placeholders_do_not_reach_python_internals() -> None:
    data = {"1": {"parameters": {"a": "{p.__class__}"}}, "start": [[1, []]]}
    result = Recipe.from_json(data).apply_parameters({"p": {}}).to_json()
    assert result["1"]["parameters"]["a"] == "{p.__class__}"


def test_merge_matches_workflows() -> None:
    first = {"1": {"queue": "a", "output": {"ok": [2]}}, "2": {"queue": "b"}, "start": [[1, []]]}
    second = {
        "1": {"queue": "c", "output": 2, "error": [3]},
        "2": {"queue": "d"},
        "3": {"queue": "e"},
        "start": [[1, {"x": 1}]],
        "error": [3],
    }
    ours = Recipe.from_json(first).merge(Recipe.from_json(second))
    theirs = WorkflowsRecipe(json.dumps(first)).merge(WorkflowsRecipe(json.dumps(second)))
    assert json.loads(json.dumps(ours.to_json())) == json.loads(theirs.serialize())
